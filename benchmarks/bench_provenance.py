"""What provenance costs per image: the time each mark adds to writing one 1024² image.

Each row is one function `row(image, fmt, meta) -> bytes` that makes the final bytes of one image
the way spo writes them with that mark; `baseline` is the bare encode (spo's metadata, no
provenance). Rows run interleaved on the same image, in memory (no disk), the median of --repeat runs;
the table gives each row's time, the time it adds to the baseline, and the ratio.

    python benchmarks/bench_provenance.py [--size 1024] [--repeat 7] [--formats png,jpg,webp]

Rows: baseline; c2pa (sign with a C2PA manifest, outputs.credentials, a local ES256 key).
One-off costs (the signer's set-up and trial signing, once per run) are printed apart.
Add a row: write `def row_NAME(image, fmt, meta) -> bytes` and list it in ROWS.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

META = {"schema": "spo-cli/1", "prompt": "a child and a penguin sitting on the moon", "negative_prompt": None,
        "seed": 1, "steps": 30, "guidance": 5.0, "width": 1024, "height": 1024,
        "scheduler": {"class": "EulerDiscreteScheduler", "a1111": "Euler"},
        "model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", "commit": "0" * 40},
        "versions": {"spo-cli": "bench"}, "file": "bench.png"}

_SIGNER = None
# One 1024² image at 30 steps, spo's default, on an H200 (benchmarks/README.md, run 2): the share of it
# each mark adds. On a GPU the writes overlap the next pipeline call (render's writer thread), so
# this share is an upper bound on the wall time a mark adds.
GPU_S_PER_IMAGE = 1.802


def test_image(size: int):
    """A picture-like image (smooth shapes plus grain), so PNG compresses it as it would a render;
    pure noise would make the baseline unrealistically slow and the marks look cheap."""
    from PIL import Image, ImageFilter

    base = Image.effect_mandelbrot((size, size), (-2.0, -1.25, 0.75, 1.25), 60).convert("RGB")
    grain = Image.effect_noise((size, size), 24).convert("RGB")
    return Image.blend(base.filter(ImageFilter.GaussianBlur(3)), grain, 0.15)


# ---------------------------------------------------------------------------------------------
# Rows


def row_baseline(image, fmt: str, meta: dict) -> bytes:
    from spo_cli.outputs import files

    return files.encode(image, fmt, meta)[0]


def row_c2pa(image, fmt: str, meta: dict) -> bytes:
    from spo_cli.outputs import files

    return files.encode(image, fmt, meta, _SIGNER)[0]


ROWS = {"baseline": row_baseline, "c2pa": row_c2pa}


# ---------------------------------------------------------------------------------------------


def setup() -> dict[str, float]:
    """One-off costs, in seconds: making the local key and certificate, and a signer's checks."""
    import os

    global _SIGNER
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="spo-bench-config-")  # never the user's own
    from spo_cli.outputs import credentials

    t0 = time.perf_counter()
    credentials.local_credentials()
    t1 = time.perf_counter()
    _SIGNER = credentials.signer_from_options(True, None, None)
    t2 = time.perf_counter()
    return {"local certificate, made once per user": t1 - t0, "signer checks + trial signing, once per run": t2 - t1}


def measure(image, fmt: str, repeat: int) -> dict[str, float]:
    """Median seconds per row. The rows are interleaved (each repeat runs every row once), so a
    busy machine slows them alike instead of whichever row ran during the busy spell."""
    for fn in ROWS.values():
        fn(image, fmt, META)  # warm: imports, first-call set-up
    times: dict[str, list[float]] = {name: [] for name in ROWS}
    for _ in range(repeat):
        for name, fn in ROWS.items():
            t0 = time.perf_counter()
            fn(image, fmt, META)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--formats", default="png,jpg,webp")
    args = ap.parse_args()
    once = setup()
    image = test_image(args.size)
    print(f"{args.size}x{args.size}, median of {args.repeat}; ms per image")
    print(f"{'format':<6} {'row':<10} {'ms':>9} {'added ms':>9} {'ratio':>7} {'bytes':>10} {'of GPU image':>12}")
    for fmt in args.formats.split(","):
        medians = measure(image, fmt, args.repeat)
        base = medians["baseline"]
        for name, fn in ROWS.items():
            t, size = medians[name], len(fn(image, fmt, META))
            print(f"{fmt:<6} {name:<10} {t * 1e3:>9.1f} {(t - base) * 1e3:>9.1f} {t / base:>7.3f} {size:>10,} "
                  f"{(t - base) / GPU_S_PER_IMAGE:>12.2%}")
        # The step alone, on bytes already encoded: what a row adds, without the encoder's noise
        # (on a busy machine the encode varies by more than the signing costs).
        data = row_baseline(image, fmt, META)
        alone = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _SIGNER.sign(data, fmt, META)
            alone.append(time.perf_counter() - t0)
        t = statistics.median(alone)
        print(f"{fmt:<6} {'c2pa step alone':<17} {t * 1e3:>9.1f} ms, {t / base:.1%} of the bare encode, "
              f"{t / GPU_S_PER_IMAGE:.2%} of a GPU image")
    for what, s in once.items():
        print(f"one-off: {what}: {s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

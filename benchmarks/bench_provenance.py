"""What provenance costs per image: the time each mark adds to one 1024² image.

Two kinds of mark, timed where spo spends them:

- written with the file (XMP, C2PA): one function per row, `row(image, fmt, meta) -> bytes`, the final
  bytes of one image as spo writes them (outputs.files.encode); `baseline` is the bare encode (spo's
  metadata, no provenance), `xmp` spo's default, `c2pa` the default plus --sign (a local ES256 key). In
  memory (no disk), --repeat runs (see --clock), each against the baseline. The signer's one-off costs
  (making the local certificate, its checks and trial signing) are printed apart.
- made with the pixels (the watermark): diffusers' SDXL watermarker on the decoded image, inside the
  pipeline call, before postprocessing. Timed alone at 1024² (the step the pipeline adds), and end to
  end in spo's engine on the tiny random SDXL (CPU), with and without --watermark, at --tiny-size
  (the tiny model takes minutes per image at 1024² on a CPU; 256² is the smallest the mark takes).

    python benchmarks/bench_provenance.py [--size 1024] [--repeat 7] [--formats png,jpg,webp]
                                          [--tiny-size 256] [--tiny-steps 2] [--tiny-repeat 3] [--clock cpu]

--clock cpu (the default) times the CPU seconds of this process, one torch thread, and keeps the fastest
of the repeats: on a shared machine wall time measures the neighbours (a first run here, at a load
average of 9 on 2 cores, had the XMP rows faster than the baseline). --clock wall, median: on a quiet one.

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

# One 1024² image at 30 steps, spo's default, on an H200 (benchmarks/README.md, "Results", run 1, row
# b: 1.802 s; --fast: 1.094 s, run 4, row c). Marks written with the file overlap the next pipeline call
# on a GPU (render's writer thread), so their share is an upper bound; the watermark runs inside the
# pipeline call, on the CPU, so its share is time added to every image.
GPU_S_PER_IMAGE = 1.802
GPU_FAST_S_PER_IMAGE = 1.094

_SIGNER = None  # outputs.credentials.Signer, made by `setup`


def test_image(size: int):
    """A picture-like image (smooth shapes plus grain), so PNG compresses it as it would a render;
    pure noise would make the baseline unrealistically slow and the marks look cheap."""
    from PIL import Image, ImageFilter

    base = Image.effect_mandelbrot((size, size), (-2.0, -1.25, 0.75, 1.25), 60).convert("RGB")
    grain = Image.effect_noise((size, size), 24).convert("RGB")
    return Image.blend(base.filter(ImageFilter.GaussianBlur(3)), grain, 0.15)


# ---------------------------------------------------------------------------------------------
# Rows: marks written with the file


def _meta(meta: dict, xmp: bool) -> dict:
    from spo_cli.outputs import xmp as marks

    return dict(meta, provenance=marks.record(meta, xmp))


def row_baseline(image, fmt: str, meta: dict) -> bytes:
    from spo_cli.outputs import files

    return files.encode(image, fmt, _meta(meta, False))[0]


def row_xmp(image, fmt: str, meta: dict) -> bytes:
    """spo's default: the XMP packet (PNG iTXt XML:com.adobe.xmp, JPEG APP1, WebP's XMP chunk)."""
    from spo_cli.outputs import files

    return files.encode(image, fmt, _meta(meta, True))[0]


def row_c2pa(image, fmt: str, meta: dict) -> bytes:
    """--sign: the default's bytes, then a C2PA manifest signed into them."""
    from spo_cli.outputs import files

    return files.encode(image, fmt, _meta(meta, True), _SIGNER)[0]


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


ROWS = {"baseline": row_baseline, "xmp": row_xmp, "c2pa": row_c2pa}


CLOCK = {"cpu": (time.process_time, min), "wall": (time.perf_counter, statistics.median)}
clock, summary = CLOCK["cpu"]


def timed(fn, repeat: int) -> float:
    """`fn()`'s time by `clock`, summarised over `repeat` calls after a warm-up (imports, first-call set-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return summary(times)


def measure(fn, image, fmt: str, repeat: int) -> float:
    return timed(lambda: fn(image, fmt, META), repeat)


# ---------------------------------------------------------------------------------------------
# The watermark: made with the pixels


def watermark_step(image, repeat: int) -> float:
    """Seconds diffusers' StableDiffusionXLWatermarker.apply_watermark takes on one decoded image
    (1×3×H×W in [-1, 1], what the VAE hands the pipeline), over `repeat` calls."""
    import numpy as np
    import torch
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    decoded = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    marker = StableDiffusionXLWatermarker()
    return timed(lambda: marker.apply_watermark(decoded), repeat)


def tiny_images(size: int, steps: int, repeat: int) -> tuple[float, float]:
    """(s per image without, with --watermark): spo's engine on the tiny random SDXL, on the CPU, each
    summarised over `repeat` images after a warm-up (alternating, so that load on the machine hits both)."""
    from spo_cli import tiny
    from spo_cli.engine import Engine
    from spo_cli.request import ImageRequest

    folder = Path(tempfile.mkdtemp(prefix="spo-bench-tiny-"))
    (folder / "tokenizer").mkdir()
    tiny.write_tokenizer(folder / "tokenizer")
    engine = Engine(tiny.build_pipeline(folder), "cpu", "float32")
    plain = ImageRequest(META["prompt"], 1, steps=steps, width=size, height=size)
    marked = ImageRequest(META["prompt"], 1, steps=steps, width=size, height=size, watermark=True)
    engine.run([plain]), engine.run([marked])
    times = {False: [], True: []}
    for _ in range(repeat):
        for request in (plain, marked):
            t0 = clock()
            engine.run([request])
            times[request.watermark].append(clock() - t0)
    return summary(times[False]), summary(times[True])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--formats", default="png,jpg,webp")
    ap.add_argument("--tiny-size", type=int, default=256)
    ap.add_argument("--tiny-steps", type=int, default=2)
    ap.add_argument("--tiny-repeat", type=int, default=3)
    ap.add_argument("--clock", choices=list(CLOCK), default="cpu")
    args = ap.parse_args()
    global clock, summary
    clock, summary = CLOCK[args.clock]
    import torch

    torch.set_grad_enabled(False)
    if args.clock == "cpu":
        torch.set_num_threads(1)
    once = setup()
    image = test_image(args.size)
    how = "CPU time, fastest" if args.clock == "cpu" else "wall time, median"
    print(f"{args.size}x{args.size}, {how} of {args.repeat}; ms per image; GPU image: {GPU_S_PER_IMAGE} s "
          f"(H200, spo default, 30 steps)")
    print(f"{'format':<6} {'row':<10} {'ms':>9} {'added ms':>9} {'ratio':>7} {'bytes':>10} {'of GPU image':>12}")
    added: dict[tuple[str, str], float] = {}
    for fmt in args.formats.split(","):
        base = None
        for name, fn in ROWS.items():
            t = measure(fn, image, fmt, args.repeat)
            size = len(fn(image, fmt, META))
            base = base if base is not None else t
            added[fmt, name] = t - base
            print(f"{fmt:<6} {name:<10} {t * 1e3:>9.1f} {(t - base) * 1e3:>9.1f} {t / base:>7.3f} {size:>10,} "
                  f"{(t - base) / GPU_S_PER_IMAGE:>12.2%}")

    step = watermark_step(image, args.repeat)
    print(f"\nwatermark, diffusers' apply_watermark on one decoded {args.size}² image: {step * 1e3:.1f} ms = "
          f"{step / GPU_S_PER_IMAGE:.2%} of the GPU image ({step / GPU_FAST_S_PER_IMAGE:.2%} with --fast)")
    small = watermark_step(test_image(args.tiny_size), args.repeat)
    plain, marked = tiny_images(args.tiny_size, args.tiny_steps, args.tiny_repeat)
    print(f"tiny SDXL on the CPU, spo's engine, {args.tiny_size}², {args.tiny_steps} steps, {how} of "
          f"{args.tiny_repeat}: {plain:.3f} s per image, {marked:.3f} s with --watermark "
          f"(+{(marked - plain) * 1e3:.1f} ms, ratio {marked / plain:.3f}); apply_watermark alone at "
          f"{args.tiny_size}²: {small * 1e3:.1f} ms = {small / plain:.2%} of the tiny image")
    for row in ("xmp", "c2pa"):
        shares = ", ".join(f"{fmt} {t / plain:.4f}×" for (fmt, name), t in added.items() if name == row)
        print(f"time {row} adds per {args.size}² image ÷ one tiny CPU image ({args.tiny_size}²): {shares}")
    print(f"time the watermark adds per {args.size}² image ÷ one tiny CPU image: {step / plain:.3f}×")
    for what, s in once.items():
        print(f"one-off: {what}: {s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

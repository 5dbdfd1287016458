"""Start-up and end-to-end overhead of `spo` on the CPU, against plain Python / diffusers, in one run.

1. `spo --help` against `python -c "import torch"` (goal: ≤ 0.10×): the CLI must not import torch.
   `spo generate --help` (typer and rich render it) is shown beside it, without a goal.
2. The tiny random SDXL end to end: `spo generate` against the bare diffusers snippet doing the same
   generation and PNG write, each a fresh process; wall time and peak resident memory (RSS).

    python benchmarks/bench_cpu.py [--repeat 5] [--size 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, offline_cache  # noqa: E402

# Runs a snippet, then reports its own peak RSS in KiB on the last line of stderr. VmHWM, not
# getrusage: Linux carries ru_maxrss across exec, so a child would inherit this script's peak.
WITH_RSS = """
import runpy, sys
code = sys.argv.pop(1)
try:
    if code.startswith("-m "):
        sys.argv[0] = code[3:]
        runpy.run_module(code[3:], run_name="__main__")
    else:
        exec(compile(code, "<bench>", "exec"), {"__name__": "__main__"})
except SystemExit as e:
    if e.code not in (0, None):
        raise
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]
print(f"MAXRSS {hwm}", file=sys.stderr)
"""

BARE = r"""
import sys, torch
from diffusers import StableDiffusionXLPipeline
out, size, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pipe = StableDiffusionXLPipeline.from_pretrained("SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", torch_dtype=torch.float32)
image = pipe("a child and a penguin sitting on the moon", num_inference_steps=steps, width=size, height=size,
             guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(42)).images[0]
image.save(out)
"""


def run(code: str, args: list[str], env: dict | None = None) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WITH_RSS, code, *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"failed: {code[:60]} {args}\n{proc.stderr[-3000:]}")
    rss_kib = int(proc.stderr.strip().rsplit("MAXRSS ", 1)[1].split()[0])
    return wall, rss_kib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    work, env = offline_cache()

    help_t, torch_t, spo_t, bare_t, cmd_help_t = [], [], [], [], []
    help_rss = torch_rss = spo_rss = bare_rss = 0
    for r in range(args.repeat):  # interleaved, so drift on a shared machine hits all alike
        t, help_rss = run("-m spo_cli", ["--help"], env)
        help_t.append(t)
        t, _ = run("-m spo_cli", ["generate", "--help"], env)  # typer and rich's help, for the record
        cmd_help_t.append(t)
        t, torch_rss = run("import torch", [], env)
        torch_t.append(t)
        t, spo_rss = run("-m spo_cli", ["generate", "a child and a penguin sitting on the moon", "--seed", "42",
                                        "--width", str(args.size), "--height", str(args.size), "--steps",
                                        str(args.steps), "--device", "cpu", "--out", str(work / f"spo{r}"),
                                        "--quiet"], env)
        spo_t.append(t)
        t, bare_rss = run(BARE, [str(work / f"bare{r}.png"), str(args.size), str(args.steps)], env)
        bare_t.append(t)

    med = statistics.median
    print(f"\nMachine: {machine()}")
    print(f"Median of {args.repeat} interleaved runs; tiny random SDXL at {args.size}×{args.size}, {args.steps} steps, "
          "float32 CPU, model in a warm local HF cache\n")
    print("| measure | spo | baseline | ratio | goal |")
    print("|---|---:|---:|---:|---|")
    print(f"| `spo --help` vs `python -c 'import torch'` (s) | {med(help_t):.3f} | {med(torch_t):.3f} | "
          f"{med(help_t) / med(torch_t):.3f}× | ≤ 0.10× |")
    print(f"| `spo generate --help` vs `python -c 'import torch'` (s) | {med(cmd_help_t):.3f} | {med(torch_t):.3f} | "
          f"{med(cmd_help_t) / med(torch_t):.3f}× | |")
    print(f"| `spo generate` vs bare diffusers snippet, whole process (s) | {med(spo_t):.2f} | {med(bare_t):.2f} | "
          f"{med(spo_t) / med(bare_t):.3f}× | ≤ 1.00× (noise ±5 %) |")
    print(f"| peak RSS, `spo --help` vs `import torch` (MiB) | {help_rss / 1024:.0f} | {torch_rss / 1024:.0f} | "
          f"{help_rss / torch_rss:.2f}× | |")
    print(f"| peak RSS, `spo generate` vs bare snippet (MiB) | {spo_rss / 1024:.0f} | {bare_rss / 1024:.0f} | "
          f"{spo_rss / bare_rss:.2f}× | |")


if __name__ == "__main__":
    main()

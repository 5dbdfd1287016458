"""`spo batch` against N `spo generate` calls and a bare diffusers loop, in one run, on the CPU.

Every contender is a fresh process doing the whole job (imports, model load from the local HF cache,
N generations, N PNG files), so the wall times compare like with like. Uses the tiny random SDXL
(real architecture, toy width): it measures the tool's own overhead around the pipeline, not SDXL.

    python benchmarks/bench_batch.py [--images 48] [--size 64] [--steps 3] [--repeat 3] [--generate-calls 0]

The defaults are the per-image-overhead case of issue 8: many small images, where what spo does
around each pipeline call (metadata, files, progress, manifest) shows. The bare loop writes a PNG and
a small JSON per image, as spo writes an image and its sidecar.

The batch and bare-loop runs are interleaved and repeated; the table shows medians, since a shared
machine's speed drifts by ±10 % over minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, offline_cache, timed  # noqa: E402

BARE_LOOP = r"""
import json, sys, torch
from pathlib import Path
from diffusers import StableDiffusionXLPipeline
prompts, out, size, steps, seed = Path(sys.argv[1]).read_text().splitlines(), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
out.mkdir(parents=True)
pipe = StableDiffusionXLPipeline.from_pretrained("SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
for k, prompt in enumerate(prompts):
    image = pipe(prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=5.0,
                 generator=torch.Generator("cpu").manual_seed(seed + k)).images[0]
    image.save(out / f"{k:05d}.png")
    (out / f"{k:05d}.json").write_text(json.dumps({"prompt": prompt, "seed": seed + k, "steps": steps}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--generate-calls", type=int, default=0,
                    help="how many separate `spo generate` processes to time (scaled to --images); 0: none")
    args = ap.parse_args()

    work, env = offline_cache()
    examples = (Path(__file__).parents[1] / "examples" / "prompts.txt").read_text().splitlines()
    prompts = [p for p in examples if p.strip() and not p.startswith("#")]
    prompts = (prompts * (args.images // len(prompts) + 1))[: args.images]
    pfile = work / "prompts.txt"
    pfile.write_text("\n".join(prompts) + "\n")
    spo = [sys.executable, "-m", "spo_cli"]
    common = ["--width", str(args.size), "--height", str(args.size), "--steps", str(args.steps), "--device", "cpu"]
    out = Path(tempfile.mkdtemp(dir=work))

    contenders = {
        "bare diffusers loop (load once, N pipe() calls, PNG + JSON writes)":
            lambda r: [sys.executable, "-c", BARE_LOOP, str(pfile), str(out / f"bare{r}"), str(args.size),
                       str(args.steps), "0"],
        "spo batch --batch-size 1": lambda r: [*spo, "batch", str(pfile), *common, "--out", str(out / f"b1-{r}"),
                                               "--quiet"],
        "spo batch --batch-size 4": lambda r: [*spo, "batch", str(pfile), *common, "--batch-size", "4",
                                               "--out", str(out / f"b4-{r}"), "--quiet"],
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.repeat):
        for name, cmd in contenders.items():
            times[name].append(timed(cmd(r), env))
    rows = [(name, statistics.median(ts)) for name, ts in times.items()]
    bare, b1, b4 = (t for _, t in rows)
    n = min(args.generate_calls, args.images)
    gen = None
    if n:
        gen = sum(timed([*spo, "generate", p, *common, "--seed", str(k), "--out", str(out / "gen"), "--quiet"], env)
                  for k, p in enumerate(prompts[:n])) * args.images / n
        rows.append((f"{args.images} × spo generate (measured {n} calls, scaled)", gen))

    print(f"\nMachine: {machine()}")
    print(f"Work: {args.images} images, {args.size}×{args.size}, {args.steps} steps, tiny random SDXL, float32 CPU; "
          f"median of {args.repeat} interleaved runs\n")
    print("| run | wall s | s/image | vs bare loop |")
    print("|---|---:|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {t:.2f} | {t / args.images:.3f} | {t / bare:.3f}× |")
    print(f"\nspo batch (bs 1) / bare loop = {b1 / bare:.3f} (goal ≤ 1.05); batch size 4 / batch size 1 = "
          f"{b4 / b1:.3f}" + (f"; N × generate / batch = {gen / b1:.2f}" if gen else ""))


if __name__ == "__main__":
    main()

"""Peak memory (RSS) of image to image on the CPU: one load serves text to image and the edit.

`spo generate --image` makes its img2img pipeline from the loaded one (from_pipe: the same modules),
so its peak RSS should be the text-to-image run's, not that plus a second copy of the weights. Each
row is a fresh process on the tiny random SDXL; the baselines are the bare diffusers snippets doing
the same work in the same run (text to image; img2img through from_pipe of the loaded pipeline).

    python benchmarks/bench_img2img.py [--repeat 3] [--size 128] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_cpu import BARE, run  # noqa: E402
from common import machine, offline_cache  # noqa: E402

BARE_IMG2IMG = r"""
import sys, torch
from PIL import Image
from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
out, image, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
pipe = StableDiffusionXLPipeline.from_pretrained("SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", torch_dtype=torch.float32)
i2i = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe, add_watermarker=False)
image = i2i("a child and a penguin sitting on the moon", image=Image.open(image).convert("RGB"), strength=0.75,
            num_inference_steps=steps, guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(42)).images[0]
image.save(out)
"""

# A second pipeline loaded from the folder instead: what from_pipe saves (two copies of the weights).
BARE_TWO_LOADS = BARE_IMG2IMG.replace(
    "StableDiffusionXLImg2ImgPipeline.from_pipe(pipe, add_watermarker=False)",
    'StableDiffusionXLImg2ImgPipeline.from_pretrained("SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", '
    "torch_dtype=torch.float32, add_watermarker=False)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    assert BARE_TWO_LOADS != BARE_IMG2IMG
    work, env = offline_cache()
    from PIL import Image

    source = work / "input.png"
    Image.radial_gradient("L").convert("RGB").resize((args.size, args.size)).save(source)
    size, steps = str(args.size), str(args.steps)
    spo = ["-m spo_cli", "generate", "a child and a penguin sitting on the moon", "--seed", "42", "--steps", steps,
           "--device", "cpu", "--quiet"]
    rows = {name: ([], []) for name in ("spo", "spo-image", "bare", "bare-image", "bare-two")}
    for r in range(args.repeat):  # interleaved, so drift on a shared machine hits all alike
        for name, code, argv in (
            ("spo", spo[0], [*spo[1:], "--width", size, "--height", size, "--out", str(work / f"t{r}")]),
            ("spo-image", spo[0], [*spo[1:], "--image", str(source), "--out", str(work / f"i{r}")]),
            ("bare", BARE, [str(work / f"bare{r}.png"), size, steps]),
            ("bare-image", BARE_IMG2IMG, [str(work / f"bare-i{r}.png"), str(source), steps]),
            ("bare-two", BARE_TWO_LOADS, [str(work / f"bare-2{r}.png"), str(source), steps]),
        ):
            t, rss = run(code, argv, env)
            rows[name][0].append(t)
            rows[name][1].append(rss)

    def med(name: str, i: int) -> float:
        return statistics.median(rows[name][i])

    print(f"\nMachine: {machine()}")
    print(f"Median of {args.repeat} interleaved runs; tiny random SDXL at {size}×{size}, {steps} steps (img2img: "
          "strength 0.75), float32 CPU, each a fresh process\n")
    print("| run | peak RSS MiB | wall s |")
    print("|---|---:|---:|")
    labels = {"spo": "`spo generate` (text to image)", "spo-image": "`spo generate --image`",
              "bare": "bare diffusers, text to image", "bare-image": "bare diffusers, img2img from_pipe",
              "bare-two": "bare diffusers, img2img loaded a second time"}
    for name, label in labels.items():
        print(f"| {label} | {med(name, 1) / 1024:.0f} | {med(name, 0):.2f} |")
    print()
    print(f"- peak RSS, `spo --image` ÷ `spo` text to image: {med('spo-image', 1) / med('spo', 1):.3f}× "
          "(one load: ≈ 1)")
    print(f"- peak RSS, `spo --image` ÷ bare diffusers img2img (from_pipe): "
          f"{med('spo-image', 1) / med('bare-image', 1):.3f}×")
    print(f"- peak RSS, bare img2img loaded twice ÷ from_pipe: {med('bare-two', 1) / med('bare-image', 1):.3f}× "
          "(what a second copy of the weights would cost)")


if __name__ == "__main__":
    main()

"""Peak memory of one SDXL VAE decode and encode, without tiling, on the CPU: the figure behind
spo_cli.engine.VAE_BYTES_PER_PIXEL_FP32 (the engine's estimate of what a decode needs on a GPU).

SDXL's VAE architecture (stabilityai/stable-diffusion-xl-base-1.0 vae/config.json) with random
weights, float32, one thread; each measurement a fresh process: the peak RSS above the loaded,
warmed-up model, per output pixel.

    python benchmarks/vae_memory.py            # decode and encode at 512² and 768²
    python benchmarks/vae_memory.py decode 768 # one measurement (what each child runs)

2026-12-02, 2-core Xeon, torch 2.13 CPU: decode 3878 B/px at 512², 3944 at 768² (linear: no
quadratic attention term); encode 2559 and 2560. Half that in float16.
"""

from __future__ import annotations

import resource
import subprocess
import sys


def measure(op: str, side: int) -> None:
    import psutil
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    torch.set_num_threads(1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512],
                        layers_per_block=2, latent_channels=4, norm_num_groups=32, sample_size=1024,
                        scaling_factor=0.13025).eval()
    with torch.inference_mode():
        vae.decode(torch.randn(1, 4, 8, 8))  # warm-up: lazy allocations out of the way
        vae.encode(torch.randn(1, 3, 64, 64))
        x = torch.randn(1, 4, side // 8, side // 8) if op == "decode" else torch.randn(1, 3, side, side)
        current = psutil.Process().memory_info().rss // 1024
        vae.decode(x) if op == "decode" else vae.encode(x)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(f"| {op} | {side}² | {(peak - current) / 1024:.0f} | {(peak - current) * 1024 / side / side:.0f} |")


def main() -> None:
    if len(sys.argv) == 3:
        measure(sys.argv[1], int(sys.argv[2]))
        return
    print("| pass | size | peak above the model MiB | bytes per pixel (float32) |\n|---|---|---:|---:|")
    for side in (512, 768):
        for op in ("decode", "encode"):
            proc = subprocess.run([sys.executable, __file__, op, str(side)], capture_output=True, text=True, check=False)
            print(proc.stdout.strip() or proc.stderr[-2000:], flush=True)


if __name__ == "__main__":
    main()

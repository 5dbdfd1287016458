from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spo_cli import jobs, presets
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI

EXAMPLES = """[bold]Examples[/]

  spo generate "a child and a penguin sitting on the moon"

  spo generate "a red fox in fresh snow, golden hour" --seed 42 -n 4 --out shots/

  spo generate "a lighthouse in a storm" --model spo-lora --lora-scale 0.8 --scheduler dpm++2m-karras --steps 30

  spo generate "a cat" --json | jq -r '.[].image'

  spo generate "a cat" -n 8 --batch-size 4 --fast     # compiled: much faster after the first run

  spo generate "a cat" --offload model --vae-tiling   # GPUs with little memory
"""


@app.command(epilog=EXAMPLES)
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.", show_default=False)],
    negative: o.Negative = None,
    seed: o.Seed = None,
    num_images: o.NumImages = 1,
    batch_size: o.BatchSize = 1,
    steps: o.Steps = presets.DEFAULT_STEPS,
    guidance: o.Guidance = presets.DEFAULT_GUIDANCE,
    width: o.Width = None,
    height: o.Height = None,
    scheduler: o.Scheduler = "default",
    generator_device: o.GeneratorDevice = "cpu",
    model: o.Model = presets.DEFAULT_PRESET,
    revision: o.Revision = None,
    lora: o.Lora = None,
    lora_file: o.LoraFile = None,
    lora_scale: o.LoraScale = 1.0,
    vae: o.Vae = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    fast: o.Fast = False,
    offload: o.Offload = None,
    vae_tiling: o.VaeTiling = False,
    vae_slicing: o.VaeSlicing = False,
    out: o.Out = Path("outputs"),
    fmt: o.Format = "png",
    json_: o.Json = False,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Generate images from a prompt and write each with a JSON sidecar of its settings."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    with session.handled(ui):
        fmt = session.check_output_format(fmt)
        base = jobs.ImageRequest(
            prompt=prompt, seed=jobs.random_seed() if seed is None else jobs.check_seed(seed),
            negative_prompt=negative or None, steps=steps, guidance=guidance, width=width, height=height,
            scheduler=scheduler, generator_device=generator_device,
        )
        request = jobs.ModelRequest(model=model, revision=revision, lora=lora, lora_file=lora_file,
                                    lora_scale=lora_scale, vae=vae, dtype=dtype, device=device)
        options = jobs.RunOptions(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                                  batch_size=batch_size)
        session.generate_files(ui, request, jobs.expand(base, num_images), batch_size=batch_size, out=out, fmt=fmt,
                               options=options)

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from spo_cli import jobs, outputs
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI
from spo_cli.errors import UsageError

EXAMPLES = """[bold]Examples[/]

  spo replay outputs/20261126-101500-a-red-fox-in-fresh-snow-s42.png

  spo replay outputs/20261126-101500-a-red-fox-in-fresh-snow-s42.json --steps 60 --seed 7
"""


def recorded_requests(meta: dict) -> tuple[jobs.ImageRequest, jobs.ModelRequest]:
    """The requests that made a recorded image, pinned to the commits it was made from."""
    try:
        image = jobs.ImageRequest(
            prompt=meta["prompt"], seed=int(meta["seed"]), negative_prompt=meta.get("negative_prompt"),
            steps=int(meta["steps"]), guidance=float(meta["guidance"]), width=int(meta["width"]),
            height=int(meta["height"]), scheduler=meta["scheduler"]["name"],
            generator_device=meta.get("generator_device", "cpu"),
        )
        asked = dict(meta["model_request"])
        if meta["model"].get("source") == "hub" and meta["model"].get("commit"):
            asked["revision"] = meta["model"]["commit"]  # the exact weights, even if the branch moved
        asked["dtype"] = meta["dtype"]  # what actually ran, not "auto"
        model = jobs.ModelRequest(**asked)
    except (KeyError, TypeError, ValueError) as e:
        raise UsageError(f"The recorded metadata is incomplete or damaged ({type(e).__name__}: {e}).") from None
    return image, model


@app.command(epilog=EXAMPLES)
def replay(
    file: Annotated[Path, typer.Argument(help="A sidecar .json, or a PNG written by spo.", show_default=False)],
    prompt: Annotated[Optional[str], typer.Option(help="Replace the recorded prompt.",
                                                  rich_help_panel="Sampling")] = None,
    negative: o.Negative = None,
    seed: Annotated[Optional[int], typer.Option(help="Replace the recorded seed.", rich_help_panel="Sampling")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Replace the recorded steps.",
                                                 rich_help_panel="Sampling")] = None,
    guidance: Annotated[Optional[float], typer.Option(help="Replace the recorded guidance.",
                                                      rich_help_panel="Sampling")] = None,
    width: o.Width = None,
    height: o.Height = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Replace the recorded scheduler.",
                                                     rich_help_panel="Sampling")] = None,
    generator_device: Annotated[Optional[str], typer.Option(help="Replace the recorded generator device.",
                                                            rich_help_panel="Sampling")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Replace the recorded model.",
                                                 rich_help_panel="Model")] = None,
    lora_scale: Annotated[Optional[float], typer.Option(help="Replace the recorded LoRA strength.",
                                                        rich_help_panel="Model")] = None,
    device: o.Device = "auto",
    dtype: Annotated[Optional[str], typer.Option(help="Replace the recorded dtype.", rich_help_panel="Model")] = None,
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
    """Make a recorded image again, from the same commits; options replace recorded settings."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    with session.handled(ui):
        fmt = session.check_output_format(fmt)
        image, request = recorded_requests(outputs.read_metadata(file))
        overrides = {k: v for k, v in dict(
            prompt=prompt, negative_prompt=negative, seed=seed, steps=steps, guidance=guidance, width=width,
            height=height, scheduler=scheduler, generator_device=generator_device).items() if v is not None}
        image = replace(image, **overrides)
        model_overrides = {k: v for k, v in dict(lora_scale=lora_scale, dtype=dtype).items() if v is not None}
        if model is not None:
            model_overrides.update(model=model, revision=None, lora=None, lora_file=None)
        request = replace(request, device=device, **model_overrides)
        options = jobs.RunOptions(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing)
        session.generate_files(ui, request, [image], batch_size=1, out=out, fmt=fmt, options=options)

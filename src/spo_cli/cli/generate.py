from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spo_cli import presets, validate
from spo_cli.cli import app, loading, options as opts
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, short
from spo_cli.request import ImageRequest, ImageTask, ModelRequest, RunOptions, expand, random_seed

EXAMPLES = """[bold]Examples[/]

  spo generate "a child and a penguin sitting on the moon"

  spo generate "a red fox in fresh snow, golden hour" --seed 42 -n 4 --out shots/

  spo generate "a lighthouse in a storm" --model spo-lora --lora-scale 0.8 --scheduler dpm++2m-karras --steps 30

  spo generate "a fox" --model base --lora style.safetensors:0.8 --lora detail.safetensors:0.4

  spo generate "a fox <lora:style:0.8>" --model base --lora-dir ~/loras   # A1111's tags (or SPO_LORA_DIR)

  spo generate "the same fox, in winter" --image fox.png --strength 0.6 --seed 7

  spo generate "a red scarf" --image fox.png --mask scarf-mask.png --strength 0.9     # white = repaint

  spo generate "a lighthouse in a storm" --hires 1.5     # 1024² → 1536², A1111's hires fix

  spo generate "a cat" --json | jq -r '.[].image'

  spo generate "a cat" -n 8 --batch-size 4 --fast     # compiled: much faster after the first run

  spo generate "a cat" --offload model --vae-tiling   # GPUs with little memory
"""
JSON_HELP = "Print a JSON array of the written files (image, sidecar, seed, prompt) on stdout, nothing else."


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def generate(
    ui: UI,
    prompt: Annotated[str, typer.Argument(help="What to draw.", show_default=False)],
    negative: opts.Negative = None,
    seed: opts.Seed = None,
    num_images: opts.NumImages = 1,
    batch_size: opts.BatchSize = 1,
    steps: opts.Steps = presets.DEFAULT_STEPS,
    guidance: opts.Guidance = presets.DEFAULT_GUIDANCE,
    width: opts.Width = None,
    height: opts.Height = None,
    scheduler: opts.Scheduler = "default",
    generator_device: opts.GeneratorDevice = "cpu",
    prompt_syntax: opts.PromptSyntax = "auto",
    emphasis: opts.Emphasis = "original",
    watermark: opts.Watermark = None,
    no_size_limit: opts.NoSizeLimit = False,
    image: opts.Image = None,
    mask: opts.Mask = None,
    strength: opts.Strength = None,
    mask_blur: opts.MaskBlur = None,
    mask_crop: opts.MaskCrop = None,
    hires: opts.Hires = None,
    hires_upscaler: opts.HiresUpscaler = None,
    hires_steps: opts.HiresSteps = None,
    hires_strength: opts.HiresStrength = None,
    keep_inputs: opts.KeepInputs = False,
    model: opts.Model = presets.DEFAULT_PRESET,
    revision: opts.Revision = None,
    lora: opts.Lora = None,
    lora_file: opts.LoraFile = None,
    lora_scale: opts.LoraScale = None,
    lora_dir: opts.LoraDir = None,
    vae: opts.Vae = None,
    device: opts.Device = "auto",
    dtype: opts.Dtype = "auto",
    quantize: opts.Quantize = None,
    fast: opts.Fast = False,
    offload: opts.Offload = None,
    vae_tiling: opts.VaeTiling = False,
    vae_slicing: opts.VaeSlicing = False,
    out: opts.Out = "outputs",
    image_format: opts.ImageFormat = "png",
    old_format: opts.OldImageFormat = None,
    no_provenance: opts.NoProvenance = False,
    sign: opts.Sign = False,
    sign_key: opts.SignKey = None,
    sign_cert: opts.SignCert = None,
    server: opts.Server = None,
) -> None:
    """Generate images from a prompt and write each with a JSON sidecar of its settings."""
    image_format = opts.image_format(image_format, old_format, ui.warn)
    base, warnings = opts.image_request(
        prompt=prompt, seed=random_seed() if seed is None else seed, negative=negative, steps=steps,
        guidance=guidance, width=width, height=height, scheduler=scheduler, generator_device=generator_device,
        prompt_syntax=prompt_syntax, emphasis=emphasis, watermark=watermark,
        size_limit=not no_size_limit, lora_tags=opts.lora_tags(lora_dir, server))
    base, more = opts.edit_request(base, image=image, mask=mask, strength=strength, mask_blur=mask_blur,
                                   mask_crop=mask_crop, hires=hires, hires_upscaler=hires_upscaler,
                                   hires_steps=hires_steps, hires_strength=hires_strength, size_limit=not no_size_limit)
    warnings += more
    request, more = opts.model_request(model=model, revision=revision, lora=lora, lora_file=lora_file,
                                    lora_scale=lora_scale, vae=vae, dtype=dtype, device=device,
                                    lora_dir=None if server else lora_dir, quantize=None if server else quantize)
    options = opts.run_options(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                            batch_size=batch_size)
    server = opts.server_request(server, revision=revision, lora=lora, lora_file=lora_file, lora_scale=lora_scale,
                              vae=vae, device=device, dtype=dtype, fast=fast, offload=offload, vae_tiling=vae_tiling,
                              vae_slicing=vae_slicing, quantize=quantize)
    signer = opts.signer(sign, sign_key, sign_cert)
    make_images(ui, request, expand(base, num_images), options, out, image_format, warnings + more, server=server,
                provenance=not no_provenance, signer=signer, keep_inputs=keep_inputs)


def make_images(ui: UI, request: ModelRequest, images: list[ImageRequest], options: RunOptions, out: Path,
                image_format: str, warnings: list[str], server: str | None = None, provenance: bool = True,
                signer=None, keep_inputs: bool = False) -> None:
    """The rest of generate and replay, once their checked requests are known: load (or reach the
    server), render, report. `signer`: opts.signer's, already checked."""
    from spo_cli.render import raise_for_failures, render

    if server is None:
        from spo_cli import loras

        request = loras.with_prompt_loras(request, images)  # <lora:name:w> tags, from the LoRA folder
        more = loras.scale_warnings(None, tuple(lr for lr in request.loras if lr.name))
        warnings = warnings + more
        loading.precheck(request, options, images)
    out = validate.output_folder(out)
    for w in warnings:
        ui.warn(w)
    if server is None:
        engine, resolved = loading.open_model(ui, request, options, images)
        loading.warn_truncation(ui, engine, images)
    else:
        from spo_cli.serve import client

        engine, resolved = client.connect(server, request.model, ui)
    tasks = [ImageTask(r) for r in images]
    if keep_inputs:
        tasks = kept_tasks(tasks, out, out)
    outcomes = []  # filled as images are written, so a Ctrl-C still knows what was
    try:
        with ui.images_progress(len(images), [r.denoising_steps for r in images]) as bars:
            render(engine, resolved, tasks, out=out, image_format=image_format,
                   batch_size=options.batch_size, progress=bars, outcomes=outcomes, debug=ui.debug,
                   provenance=provenance, signer=signer)
    except KeyboardInterrupt:
        # Stopped: the images written so far are whole (render waits for their writes) and worth
        # their paths; the error boundary then says "Interrupted" and exits 130.
        report(ui, [oc.written for oc in outcomes if oc.written], stopped_of=len(images))
        raise
    report(ui, [oc.written for oc in outcomes if oc.written])
    raise_for_failures(outcomes, engine.dtype)


def kept_tasks(tasks: list[ImageTask], out: Path, sidecar_dir: Path) -> list[ImageTask]:
    """--keep-inputs: the tasks' inputs copied into OUT/inputs/, each task's sidecar told where."""
    from dataclasses import replace

    from spo_cli.outputs import files, metadata

    kept = files.keep_inputs(out, [t.request for t in tasks])
    return [replace(t, extra={**t.extra, **metadata.kept_fields(t.request, kept, sidecar_dir)}) for t in tasks]


def report(ui: UI, written: list[dict], stopped_of: int | None = None) -> None:
    if ui.json_mode:
        ui.emit_json(written)
        return
    if written and not ui.quiet:
        ui.info(f"Wrote {len(written)} image(s), each with a .json sidecar:" if stopped_of is None else
                f"Stopped after {len(written)} of {stopped_of} image(s); these are complete, each with a "
                ".json sidecar:")
    ui.paths([(w["image"], f"seed {w['seed']}  {short(w['prompt'])}") for w in written])

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from spo_cli import infotext as a1111, loras as lora_names, presets, validate
from spo_cli.cli import app, options as opts
from spo_cli.cli.command import command
from spo_cli.cli.generate import make_images
from spo_cli.cli.ui import UI
from spo_cli.errors import UsageError
from spo_cli.outputs import metadata
from spo_cli.request import ImageRequest, ModelRequest, random_seed

EXAMPLES = """[bold]Examples[/]

  spo replay outputs/20261126-101500-a-red-fox-in-fresh-snow-s42.png

  spo replay outputs/20261126-101500-a-red-fox-in-fresh-snow-s42.json --steps 60 --seed 7

  spo replay shot.png --negative ""        # drop the recorded negative prompt

  spo replay --infotext "$(pbpaste)"       # A1111 "parameters" text: the same settings on SPO

  spo replay a1111_image.png               # a PNG written by A1111, Forge or SD.Next
"""
JSON_HELP = "Print a JSON array of the written files (image, sidecar, seed, prompt) on stdout, nothing else."
# The shared options' own panel names (--no-size-limit, --device): one panel each, not two that
# differ by a suffix. That an option replaces the recorded value is said in the command's help.
SAMPLING_PANEL, MODEL_PANEL = opts.SAMPLING_PANEL, opts.MODEL_PANEL


def _opt(kind, help: str, panel: str = SAMPLING_PANEL, *names: str):
    return Annotated[Optional[kind], typer.Option(*names, help=help, rich_help_panel=panel, show_default=False)]


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def replay(
    ui: UI,
    file: Annotated[Optional[Path], typer.Argument(
        help="A sidecar .json, an image written by spo, or an image with A1111 parameters.",
        show_default=False)] = None,
    infotext: Annotated[Optional[str], typer.Option(
        help="A1111 \"parameters\" text (prompt, Negative prompt:, Steps, Sampler, CFG scale, Seed, Size) "
        "instead of a FILE.", show_default=False)] = None,
    prompt: _opt(str, "Prompt.") = None,
    negative: _opt(str, 'Negative prompt; "" removes the recorded one.', SAMPLING_PANEL, "--negative") = None,
    seed: _opt(int, "Seed (-1: a random one, recorded).") = None,
    steps: _opt(int, "Denoising steps.") = None,
    guidance: _opt(float, "Guidance scale.") = None,
    width: _opt(int, "Width in pixels, a multiple of 8.") = None,
    height: _opt(int, "Height in pixels, a multiple of 8.") = None,
    scheduler: _opt(str, "Sampler (spo's or A1111's name); replaces the text's, even one spo lacks.") = None,
    generator_device: _opt(str, "Where the seeded noise is drawn.") = None,
    prompt_syntax: _opt(str, "auto, a1111 or plain (see spo generate --help).") = None,
    emphasis: _opt(str, "original or none-norm, with a1111 syntax.") = None,
    watermark: opts.Watermark = None,
    no_size_limit: opts.NoSizeLimit = False,
    image_file: Annotated[Optional[str], typer.Option(
        "--image", help="The input image to start from, instead of the recorded one (needed for an A1111 img2img "
        "text). A file other than the recorded one makes other pixels.", rich_help_panel=opts.EDIT_PANEL,
        show_default=False, metavar="FILE")] = None,
    mask: Annotated[Optional[str], typer.Option(
        "--mask", help="The inpainting mask (white = repaint), instead of the recorded one.",
        rich_help_panel=opts.EDIT_PANEL, show_default=False, metavar="FILE")] = None,
    strength: _opt(float, "Denoising strength of the img2img, instead of the recorded one.", opts.EDIT_PANEL) = None,
    keep_inputs: opts.KeepInputs = False,
    model: _opt(str, "Model: preset, Hub repo id, folder or .safetensors file (the recorded revision and LoRA are dropped).", MODEL_PANEL,
                "--model", "-m") = None,
    revision: _opt(str, "Revision of the model repo.", MODEL_PANEL) = None,
    lora: Annotated[Optional[list[str]], typer.Option(
        help="LoRA: local .safetensors or Hub repo id (with --lora-file), FILE:STRENGTH; repeat to stack. Replaces "
        "every recorded LoRA.", rich_help_panel=MODEL_PANEL, show_default=False, metavar="SPEC[:SCALE]")] = None,
    lora_file: _opt(str, "Weight file inside the --lora repo.", MODEL_PANEL) = None,
    lora_scale: _opt(float, "LoRA strength.", MODEL_PANEL) = None,
    lora_dir: Annotated[Optional[str], typer.Option(
        "--lora-dir", help="Folder of the LoRAs that <lora:name:weight> tags in the prompt name (default: the "
        "recorded one, or SPO_LORA_DIR).", rich_help_panel=MODEL_PANEL, show_default=False, metavar="DIR")] = None,
    vae: _opt(str, "VAE repo or folder, or 'model'.", MODEL_PANEL) = None,
    dtype: _opt(str, "fp16, bf16 or fp32.", MODEL_PANEL) = None,
    quantize: _opt(str, "fp8, or none: the UNet's float8 layers (see spo generate --help), instead of what the "
                   "image recorded.", MODEL_PANEL, "--quantize") = None,
    device: opts.Device = "auto",
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
) -> None:
    """Make a recorded image again, from the same commits; a Sampling or Model option replaces the recorded value."""
    image_format = opts.image_format(image_format, old_format, ui.warn)
    if (file is None) == (infotext is None):
        raise UsageError("Give one FILE to replay, or --infotext TEXT." if file is None else
                         "Give FILE or --infotext, not both.")
    # The file is read once: it may be a pipe (`spo replay <(cat x.json)`).
    recorded, foreign = (None, infotext) if infotext is not None else metadata.load(file)
    unset: list[str] = []
    found: list[metadata.RecordedInput] = []
    if recorded is None:
        source = "--infotext" if infotext is not None else str(file)
        image, request, unset, edits = from_infotext(ui, foreign, source, read_sampler=scheduler is None)
        # An A1111 img2img text has the strength but not the image (nor an inpainting's mask).
        if "strength" in edits and image_file is None:
            raise UsageError(f"{source} is from img2img (Denoising strength: {edits['strength']:g}, and no Hires "
                             "upscale), and the image it started from is not in it.",
                             "Give --image FILE, the image it started from.")
        if "mask_blur" in edits and mask is None:
            ui.warn(f"{source} is from inpainting (Mask blur: {edits.pop('mask_blur')}); without --mask the whole "
                    "image is re-drawn.")
        if mask is None:
            edits.pop("mask_crop", None)
    else:
        image, request = metadata.recorded_requests(recorded, file)
        edits, found = metadata.recorded_edits(recorded, file)
    changes = {k: v for k, v in dict(prompt=prompt, seed=seed, steps=steps, guidance=guidance, width=width,
                                    height=height, scheduler=scheduler, generator_device=generator_device,
                                    prompt_syntax=prompt_syntax, emphasis=emphasis, watermark=watermark).items()
               if v is not None}
    if negative is not None:
        changes["negative_prompt"] = negative  # "" is a change too: back to none
    if changes.get("seed") == validate.SEED_RANDOM:
        changes["seed"] = random_seed()
    changes = validate.image_values(changes)
    image = replace(image, **changes)
    defaulted = [k for k in unset if not set(_SETTINGS[k]) & changes.keys()]
    if defaulted:
        source = "--infotext" if infotext is not None else str(file)
        ui.warn(f"{source} does not set {_listed(defaulted)}, so spo's defaults are used: "
                + ", ".join(f"{k} {_default(k, image)}" for k in defaulted) + ".")
    # A value from the file is named as the file's (x.json: 'width'); one the command line changed,
    # as its option.
    meta = recorded
    # The edit values keep the names the source gives them: a sidecar's (hires.steps), A1111's (Hires steps).
    recorded = validate.Where(str(file) if infotext is None else "--infotext",
                              fields=metadata.EDIT_NAMES if meta is not None else a1111.EDIT_NAMES)
    where = validate.ARGV if {"prompt", "negative_prompt", "prompt_syntax"} & changes.keys() else recorded
    validate.readable_prompts(image.prompt, image.negative_prompt, image.prompt_syntax, where)
    where = validate.ARGV if {"width", "height"} & changes.keys() else recorded
    warnings = validate.size(image.width, image.height, where, size_limit=not no_size_limit)
    image, more = replay_edits(ui, image, edits, found, recorded, dict(image=image_file, mask=mask, strength=strength),
                               size_limit=not no_size_limit)
    warnings += more
    if image.watermark:
        where = validate.ARGV if {"width", "height", "watermark"} & changes.keys() else recorded
        validate.watermark_size(image.width, image.height, where)
    model_changes = {k: v for k, v in dict(revision=revision, lora_file=lora_file, lora_scale=lora_scale,
                                          vae=vae, dtype=dtype, quantize=quantize).items() if v is not None}
    if lora:
        # The LoRAs given replace all those recorded; the recorded strength goes with them unless one
        # LoRA is given bare (as before LoRAs could be stacked).
        model_changes = {"lora": lora, "loras": (), **model_changes}
        if len(lora) > 1 or opts.lora_has_scale(lora[0]):
            model_changes.setdefault("lora_scale", None)
    if model is not None:
        # Another model: the recorded pin and LoRAs belonged to the old one.
        model_changes = {"model": model, "revision": None, "lora": None, "lora_file": None, "lora_scale": None,
                         "loras": (), **model_changes}
    elif meta is not None:  # the recorded model; a single file must be there, and the same
        from spo_cli.cli import loading

        warnings += loading.recorded_file(ui, meta)
    model_changes["device"] = device
    merged = replace(request, **model_changes)
    # A folder given now, else the recorded one, else SPO_LORA_DIR's; the recorded one only matters
    # (and must still exist) when the prompt names LoRAs.
    if lora_dir is None and lora_names.tags(image.prompt):
        lora_dir = merged.lora_dir or os.environ.get(lora_names.ENV_DIR) or None
    warnings += validate.unsupported_syntax(image, validate.ARGV if "prompt" in changes else recorded,
                                            lora_tags=opts.lora_tags(lora_dir))
    if quantize is None and merged.quantize:
        from spo_cli import extras

        # Said of the file: the user typed no --quantize, and "--quantize fp8 needs torchao" did not say why.
        if extras.missing("torchao"):
            raise UsageError(f"{file} was made with --quantize fp8, which needs torchao, and it is not installed.",
                             'Install the extra (pip install "spo-cli[fp8]"), or replay it without fp8: '
                             "--quantize none (other pixels).")
    request, more = opts.model_request(**{k: getattr(merged, k) for k in (
        "model", "revision", "lora", "lora_file", "lora_scale", "vae", "dtype", "device", "loras", "quantize")},
        lora_dir=lora_dir)
    options = opts.run_options(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing, batch_size=1)
    signer = opts.signer(sign, sign_key, sign_cert)
    make_images(ui, request, [image], options, out, image_format, warnings + more, provenance=not no_provenance,
                signer=signer, keep_inputs=keep_inputs)


def replay_edits(ui: UI, image: ImageRequest, edits: dict, found: list, recorded: validate.Where, given: dict, *,
                 size_limit: bool) -> tuple[ImageRequest, list[str]]:
    """`image` with the recorded image-to-image settings (`edits`) and input files (`found`), or
    those the command line gives instead (`given`: --image, --mask, --strength).

    A recorded input is read from its --keep-inputs copy when that is there, else from its recorded
    path; either must hold the bytes recorded (its SHA-256), or replay is refused: other bytes make
    other pixels. A file given on the command line is taken as it is, with a warning if it differs."""
    from spo_cli import inputs

    given = {k: v for k, v in given.items() if v is not None}
    values = dict(edits)
    sources: dict[str, metadata.RecordedInput] = {}
    for rec in found:
        if rec.key in given:
            continue
        if rec.copy is not None and rec.copy.is_file():
            values[rec.key] = str(rec.copy)
        elif not os.path.lexists(rec.path):
            raise UsageError(f"The {_what(rec.key)} this was made from is gone: {rec.path} does not exist "
                             f"(recorded SHA-256 {rec.sha256}).",
                             f"Give {validate.ARGV.name(rec.key)} to point at the right file.")
        sources[rec.key] = rec
    for key in ("image", "mask"):  # a file given here is named as its option, whatever else is wrong
        if key in given:
            inputs.check(given[key], key)
    if "strength" in given:  # named as its option here; the file's own values keep the file's names below
        validate.steps_run(image.steps, validate.strength(given["strength"], "strength"), "strength")
    values |= given
    edited, warnings = inputs.edit_request(image, values, recorded, size_limit=size_limit)
    for key, rec in sources.items():
        read = getattr(edited, key)
        if read.sha256 != rec.sha256:
            raise UsageError(f"The {_what(key)} at {read.path} is not the one this was made from: its SHA-256 is "
                             f"{read.sha256}, recorded {rec.sha256}.",
                             f"Give {validate.ARGV.name(key)} to point at the right file.")
    for rec in found:
        if rec.key in given and getattr(edited, rec.key).sha256 != rec.sha256:
            ui.warn(f"{given[rec.key]} is not the {_what(rec.key)} this was made from (its SHA-256 differs from the "
                    f"recorded {rec.sha256[:16]}…), so the pixels will differ from the original.")
    return edited, warnings


def _what(key: str) -> str:
    return "input image" if key == "image" else "mask"


# The settings A1111 writes in every infotext, and the request fields each sets: one missing (a text
# cut short, or only a prompt) is spo's default, which the user is told.
_SETTINGS = {"Steps": ("steps",), "Sampler": ("scheduler",), "CFG scale": ("guidance",), "Seed": ("seed",),
             "Size": ("width", "height")}


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _default(setting: str, image: ImageRequest) -> str:
    if setting == "Steps":
        return str(image.steps)
    if setting == "CFG scale":
        return f"{image.guidance:g}"
    if setting == "Seed":
        return f"random ({image.seed})"
    if setting == "Sampler":
        return "the checkpoint's own" if image.scheduler == "default" else image.scheduler
    return f"the model's ({presets.DEFAULT_SIZE}x{presets.DEFAULT_SIZE} for SDXL)"


def from_infotext(ui: UI, text: str, source: str, *,
                  read_sampler: bool = True) -> tuple[ImageRequest, ModelRequest, list[str], dict]:
    """The settings of an A1111 `parameters` text, on spo's default model (--model replaces it), the
    A1111 settings the text lacks (see _SETTINGS), and its image-to-image and hires settings (values
    for `inputs.edit_request`; an img2img text's image is not in it: --image gives it). `read_sampler`
    False: --scheduler replaces the text's sampler, which may be one spo lacks."""
    where = validate.Where(source)
    notes: list[str] = []
    try:
        info = a1111.parse(text)
        fields, ignored = a1111.to_request_fields(info, sampler=read_sampler, notes=notes)
    except a1111.UnknownSampler as e:
        raise UsageError(f"{source}: {e}", "Give --scheduler (spo's name or A1111's) to make the image with "
                         "that sampler instead.") from None
    except a1111.InfotextError as e:
        raise UsageError(f"{source}: {e}", "Replay takes A1111's \"parameters\" text: the prompt, an optional "
                         "\"Negative prompt:\" line, then \"Steps: …, Sampler: …, CFG scale: …, Seed: …, "
                         "Size: …\".") from None
    values = {"prompt": fields["prompt"], "negative_prompt": fields["negative"],
              "seed": fields.get("seed", random_seed())}
    values |= {k: fields[k] for k in ("steps", "guidance", "width", "height", "scheduler", "emphasis",
                                       "prompt_syntax", "watermark") if k in fields}
    image = ImageRequest(**validate.image_values(values, where))
    for note in notes:
        ui.warn(note)
    edits = {k: fields[k] for k in ("strength", "mask_blur", "mask_crop", "hires", "hires_upscaler", "hires_steps",
                                    "hires_strength") if k in fields}
    if ignored:
        ui.warn(f"Ignored from the A1111 parameters (spo has no equivalent, or sets it itself): {', '.join(ignored)}.")
    short = next((ln.strip() for ln in text.splitlines() if ln.lstrip().startswith("Steps:")), None)
    if not info.params and short is not None:  # else the prompt silently ends in 'Steps: 3, …'
        ui.warn(f"{source}: the line {validate.shown(short)} holds fewer than 3 settings, so it is read as part of "
                "the prompt, as A1111 reads it. Give the settings line whole (Steps: …, Sampler: …, CFG scale: …, "
                "Seed: …, Size: …), or the settings as options.")
    ui.warn("A1111 draws a seed's noise its own way (on the GPU, in its own order), so this image has the same "
            "settings but will not be identical to A1111's.")
    return image, ModelRequest(), [k for k in _SETTINGS if k not in info.params], edits

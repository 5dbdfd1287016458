"""The options the commands share, and the one function per request type that turns their values
into a checked request. A flag means the same thing in every command that has it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from spo_cli import presets, validate
from spo_cli.request import ImageRequest, ModelRequest, RunOptions, random_seed

_M = MODEL_PANEL = "Model"
_S = SAMPLING_PANEL = "Sampling"
_O = "Output"
_P = "Speed and memory"

Model = Annotated[str, typer.Option(
    "--model", "-m", rich_help_panel=_M,
    help=f"Preset ({', '.join(presets.PRESETS)}), Hub repo id, local diffusers folder, or SDXL single-file "
    ".safetensors checkpoint (A1111 layout).")]
Revision = Annotated[Optional[str], typer.Option(
    help="Branch, tag or commit of the model repo.", rich_help_panel=_M)]
Lora = Annotated[Optional[list[str]], typer.Option(
    help="LoRA to add: a local .safetensors file or a Hub repo id (with --lora-file), with its strength after "
    "a colon (style.safetensors:0.8). Repeat to stack LoRAs. It replaces a preset's own LoRA (spo-lora's).",
    rich_help_panel=_M, show_default=False, metavar="SPEC[:SCALE]")]
LoraFile = Annotated[Optional[str], typer.Option(
    help="Weight file inside the --lora repo (one --lora only).", rich_help_panel=_M)]
LoraDir = Annotated[Optional[str], typer.Option(
    "--lora-dir", envvar="SPO_LORA_DIR", help="Folder of LoRA .safetensors files: a prompt's A1111 tag "
    "<lora:name:0.8> loads name.safetensors from it at that strength. Without one, tags are taken out of the "
    "prompt with a warning.", rich_help_panel=_M, show_default=False, metavar="DIR")]
LoraScale = Annotated[Optional[float], typer.Option(
    help="LoRA strength: 0 is the base model, 1 (the default) the full SPO effect. Only for a model with one "
    "LoRA (spo-lora, or one --lora).", rich_help_panel=_M, show_default=False)]
Vae = Annotated[Optional[str], typer.Option(
    help=f"VAE repo or folder; 'model' keeps the checkpoint's own. Default: {presets.FP16_FIX_VAE} in "
    "float16, the checkpoint's own otherwise.", rich_help_panel=_M)]
Device = Annotated[str, typer.Option(help="auto (CUDA, else MPS, else CPU), cuda, cuda:N, mps or cpu.",
                                     rich_help_panel=_M)]
Dtype = Annotated[str, typer.Option(help="auto (fp16 on GPUs, fp32 on CPU), fp16, bf16 or fp32.",
                                    rich_help_panel=_M)]
Quantize = Annotated[Optional[str], typer.Option(
    "--quantize", help="fp8: the UNet's large linear layers as float8 GEMMs (torchao), faster on NVIDIA Ada and "
    "Hopper GPUs. It changes pixels (recorded with each image); `spo eval --columns spo,spo@fp8` measures by how "
    "much. Needs spo-cli\\[fp8].", rich_help_panel=_M, show_default=False, metavar="fp8")]

Negative = Annotated[Optional[str], typer.Option(
    "--negative", help="Negative prompt. Default: none (zero embeddings, as the authors ran).",
    rich_help_panel=_S)]
Seed = Annotated[Optional[int], typer.Option(help="First seed (random when absent or -1, as in A1111; always recorded).",
                                             rich_help_panel=_S)]
NumImages = Annotated[int, typer.Option("--num-images", "-n", help="Images to make, seeds seed, seed+1, …",
                                        rich_help_panel=_S)]
BatchSize = Annotated[int, typer.Option(help="Images per pipeline call (same seeds give the same images).",
                                        rich_help_panel=_S)]
Steps = Annotated[int, typer.Option(help=f"Denoising steps (1 to {validate.STEPS_MAX}).", rich_help_panel=_S)]
Guidance = Annotated[float, typer.Option(help="Classifier-free guidance scale.", rich_help_panel=_S)]
Width = Annotated[Optional[int], typer.Option(help="Width in pixels, a multiple of 8 (default 1024).",
                                              rich_help_panel=_S, show_default=False)]
Height = Annotated[Optional[int], typer.Option(help="Height in pixels, a multiple of 8 (default 1024).",
                                               rich_help_panel=_S, show_default=False)]
Scheduler = Annotated[str, typer.Option(
    help="Sampler: spo's name (euler, euler-a, dpm++2m-karras, dpm++2m-sde-karras, …) or A1111's "
    "(\"DPM++ 2M Karras\"); all of them in the README's sampler table. Default: the checkpoint's own.",
    rich_help_panel=_S)]
GeneratorDevice = Annotated[str, typer.Option(
    help="Where the seeded noise is drawn. cpu makes a seed mean the same image on any machine; "
    "cuda matches the authors' script.", rich_help_panel=_S)]
PromptSyntax = Annotated[str, typer.Option(
    help="How prompts are read. a1111: (word:1.2) emphasis, [word], BREAK, and no 77-token limit, as A1111 "
    "reads them; plain: the text as it is, cut at 77 tokens (the authors' encoding); auto: plain when that "
    "loses nothing, else a1111.", rich_help_panel=_S)]
Emphasis = Annotated[str, typer.Option(
    help="With a1111 syntax: original (A1111's default: weights, then the mean restored) or none-norm "
    "(A1111's \"No norm\": weights only).", rich_help_panel=_S)]
# Optional: in generate, batch and compare absent is off; in replay absent is what the image recorded.
Watermark = Annotated[Optional[bool], typer.Option(
    "--watermark/--no-watermark", help="Add SDXL's invisible watermark (diffusers' DWT-DCT mark, which `spo inspect` "
    "detects). It changes pixels slightly, so it is off by default and recorded with the image. Needs "
    "spo-cli\\[watermark] and images at least 256 px wide.", rich_help_panel=_S, show_default=False)]
NoSizeLimit = Annotated[bool, typer.Option(
    "--no-size-limit", help=f"Allow sides over {validate.SIDE_MAX} px and more than "
    f"{validate.PIXELS_MAX / 1e6:.1f} megapixels (for GPUs with the memory).", rich_help_panel=_S)]

_E = EDIT_PANEL = "Image to image"
Image = Annotated[Optional[str], typer.Option(
    "--image", help="Start from this image (img2img): the output has its size unless --width/--height are given.",
    rich_help_panel=_E, show_default=False, metavar="FILE")]
Mask = Annotated[Optional[str], typer.Option(
    "--mask", help="Inpainting: re-draw only the mask's white part of --image (A1111's convention; a mask with "
    "transparency: its opaque part).", rich_help_panel=_E, show_default=False, metavar="FILE")]
Strength = Annotated[Optional[float], typer.Option(
    help="How much of --image to re-draw: 0.1 keeps almost all of it, 1 draws anew. Runs int(steps × strength) "
    "steps, as diffusers (A1111: one more). Default 0.75 (A1111's).", rich_help_panel=_E, show_default=False)]
MaskBlur = Annotated[Optional[int], typer.Option(
    help="Blur the mask by this many pixels. The pipeline repaints its over-half part (the mask with rounded "
    "corners); only with --mask-crop is the result pasted back through it, with a soft edge. Default 4 (A1111's).",
    rich_help_panel=_E, show_default=False)]
MaskCrop = Annotated[Optional[int], typer.Option(
    help="Inpaint only a crop around the mask, with this many pixels of margin, at full resolution, then paste "
    "it back (A1111's \"Only masked\").", rich_help_panel=_E, show_default=False, metavar="PIXELS")]
Hires = Annotated[Optional[float], typer.Option(
    "--hires", help="A1111's hires fix: make the image at --width×--height, upscale it by this factor (e.g. 1.5), "
    "then re-draw the large image.", rich_help_panel=_E, show_default=False, metavar="SCALE")]
HiresUpscaler = Annotated[Optional[str], typer.Option(
    help="latent (A1111's default: the latents, bilinear) or lanczos (the decoded image).", rich_help_panel=_E,
    show_default=False)]
HiresSteps = Annotated[Optional[int], typer.Option(
    help="Steps the hires pass runs, as A1111 (the last of a schedule of steps ÷ --hires-strength). Default: --steps.",
    rich_help_panel=_E, show_default=False)]
HiresStrength = Annotated[Optional[float], typer.Option(
    help="Denoising strength of the hires pass. Default 0.7 (A1111's).", rich_help_panel=_E, show_default=False)]
KeepInputs = Annotated[bool, typer.Option(
    "--keep-inputs", help="Copy each input image (and mask) into OUT/inputs/ and record the copy in the sidecars, "
    "so the folder replays anywhere, even once the originals are gone.", rich_help_panel=_E)]

# A string, not a Path: typer would turn an empty value (an unset shell variable) into ".".
Out = Annotated[str, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=_O)]
ImageFormat = Annotated[str, typer.Option("--image-format", help="png, jpg or webp.", rich_help_panel=_O)]
PromptFormat = Annotated[Optional[str], typer.Option(
    "--prompt-format", help="txt or jsonl (default: by file name, or by content for stdin).", show_default=False)]
NoProvenance = Annotated[bool, typer.Option(
    "--no-provenance", help="Write no XMP provenance mark (IPTC DigitalSourceType: made by a model, as exiftool, "
    "photo tools and platforms read it; --sign's C2PA manifest is separate). Under the EU AI Act, Art. 50(2), whoever provides an image generator "
    "must mark its outputs machine-readably as AI-generated: turn the mark off only when you mark the images "
    "another way or that duty is not yours. Metadata only: the pixels, the recipe and a resume are the same.",
    rich_help_panel=_O)]
# Until 0.2, --format meant the image format in generate/replay and the prompt-file format in
# batch/compare. Accepted, hidden, for one release.
OldImageFormat = Annotated[Optional[str], typer.Option("--format", hidden=True)]
OldPromptFormat = Annotated[Optional[str], typer.Option("--format", hidden=True)]

Fast = Annotated[bool, typer.Option(
    "--fast", help="Speed-ups that change pixels only by float rounding: torch.compile (cached on disk; the "
    "first run compiles for minutes), channels_last, fused QKV, CUDA graphs.", rich_help_panel=_P)]
Offload = Annotated[Optional[str], typer.Option(
    help="model: keep only the running part of SDXL on the GPU; sequential: stream weights layer by layer "
    "(slowest, least memory).", rich_help_panel=_P)]
VaeTiling = Annotated[bool, typer.Option("--vae-tiling", help="Decode in tiles: large images in less memory.",
                                         rich_help_panel=_P)]
VaeSlicing = Annotated[bool, typer.Option("--vae-slicing", help="Decode a batch one image at a time.",
                                          rich_help_panel=_P)]
Server = Annotated[Optional[str], typer.Option(
    help="Send the work to a running `spo serve` at this URL instead of loading a model here (SPO_TOKEN for its "
    "token); --model picks one of its models. The same files are written here.", rich_help_panel=_M,
    show_default=False)]
Sign = Annotated[bool, typer.Option(
    "--sign", help="Sign each image with C2PA Content Credentials: a manifest saying spo-cli made it with a model "
    "(digital source type trainedAlgorithmicMedia), binding the model and the recipe. With --sign-key/--sign-cert, "
    "your certificate; else a local one spo makes on first use (valid, but from a signer on no trust list). "
    "Needs the extra: pip install \"spo-cli\\[c2pa]\".", rich_help_panel=_O)]
SignKey = Annotated[Optional[str], typer.Option(
    "--sign-key", help="With --sign: your PEM private key (EC P-256/384/521, RSA or Ed25519; or SPO_SIGN_KEY). It "
    "stays on this machine and is never logged or written into an output.", rich_help_panel=_O, show_default=False,
    metavar="PEM")]
SignCert = Annotated[Optional[str], typer.Option(
    "--sign-cert", help="With --sign: the PEM certificate of --sign-key, then its issuers' (or SPO_SIGN_CERT).",
    rich_help_panel=_O, show_default=False, metavar="PEM")]


def _renamed(new, old, new_name: str, warn):
    """The value of an option that still answers to its old spelling, --format."""
    if old is None:
        return new
    warn(f"--format is now {new_name}; the old spelling goes away in the next release.")
    return old


def image_format(value: str, old: str | None, warn) -> str:
    return validate.image_format(_renamed(value, old, "--image-format", warn))


def prompt_format(value: str | None, old: str | None, warn) -> str | None:
    return validate.prompt_format(_renamed(value, old, "--prompt-format", warn))


# ---------------------------------------------------------------------------------------------
# Option values → checked requests (the command line's entry into `validate`)


def image_request(*, prompt: str = "", seed: int, negative: str | None, steps: int, guidance: float,
                  width: int | None, height: int | None, scheduler: str, generator_device: str,
                  prompt_syntax: str = "auto", emphasis: str = "original", watermark: bool | None = False,
                  size_limit: bool = True, check_prompt: bool = True,
                  lora_tags: str = "no folder") -> tuple[ImageRequest, list[str]]:
    if seed == validate.SEED_RANDOM:  # A1111's "random": drawn here, so the seed used is recorded
        seed = random_seed()
    values = dict(seed=seed, negative_prompt=negative, steps=steps, guidance=guidance, width=width, height=height,
                  scheduler=scheduler, generator_device=generator_device, prompt_syntax=prompt_syntax,
                  emphasis=emphasis, watermark=bool(watermark))
    if check_prompt:
        values["prompt"] = prompt
    checked = validate.image_values(values, validate.PROMPT_ARGUMENT, random_seed_ok=True)  # -1 drawn above
    request = ImageRequest(**{"prompt": prompt, **checked})
    warnings = validate.size(width, height, size_limit=size_limit)
    if request.watermark:
        validate.watermark_size(width, height)
    return request, warnings + validate.unsupported_syntax(request, validate.PROMPT_ARGUMENT, lora_tags=lora_tags)


def edit_request(base: ImageRequest, *, image=None, mask=None, strength=None, mask_blur=None, mask_crop=None,
                 hires=None, hires_upscaler=None, hires_steps=None, hires_strength=None,
                 size_limit: bool = True) -> tuple[ImageRequest, list[str]]:
    """`base` with the image-to-image or hires options, every input file checked (before torch)."""
    values = dict(image=image, mask=mask, strength=strength, mask_blur=mask_blur, mask_crop=mask_crop, hires=hires,
                  hires_upscaler=hires_upscaler, hires_steps=hires_steps, hires_strength=hires_strength)
    if all(v is None for v in values.values()):
        return base, []
    from spo_cli import inputs

    return inputs.edit_request(base, values, validate.ARGV, size_limit=size_limit)


def model_request(*, model: str, revision: str | None = None, lora: str | list[str] | None = None,
                  lora_file: str | None = None, lora_scale: float | None = None, vae: str | None = None,
                  dtype: str = "auto", device: str = "auto", loras: tuple = (),
                  lora_dir: str | None = None, quantize: str | None = None) -> tuple[ModelRequest, list[str]]:
    """`lora`: --lora's values (SPEC or SPEC:SCALE each), or one recorded spec; `loras`: recorded
    LoRAs stacked after it (replay); `lora_dir`: --lora-dir / SPO_LORA_DIR; `quantize`: --quantize
    (torchao installed is checked here, before torch)."""
    from spo_cli import loras as lora_names

    lora, lora_scale, extras = lora_names.from_options([lora] if isinstance(lora, str) else lora, lora_file,
                                                       lora_scale)
    extras = extras + tuple(loras)
    checked = validate.model_values(dict(model=model, revision=revision, lora=lora, lora_file=lora_file,
                                         lora_scale=lora_scale, vae=vae, dtype=dtype, device=device,
                                         quantize=quantize))
    if checked["quantize"]:
        from spo_cli import extras as optional

        optional.require("fp8", "--quantize fp8", "torchao")
    validate.lora_applies(model, lora, lora_scale, lora_file=lora_file)
    warnings = lora_names.scale_warnings(lora_scale, extras)
    return ModelRequest(**checked, loras=extras, lora_dir=lora_names.folder(lora_dir)), warnings


def lora_has_scale(value: str) -> bool:
    from spo_cli import loras

    return loras.split_spec(value)[1] is not None


def lora_tags(lora_dir: str | None, server: str | None = None) -> str:
    """What becomes of a prompt's <lora:> tags in a command that can load them (validate.LORA_TAGS)."""
    return "not here" if server else "loaded" if lora_dir else "no folder"


def signer(sign: bool, key: str | None, cert: str | None):
    """--sign/--sign-key/--sign-cert → an outputs.credentials.Signer, or None; every check done
    (exit 2) before a model loads. Imports the SDK only when signing."""
    if not (sign or key or cert):
        return None
    from spo_cli.outputs import credentials

    return credentials.signer_from_options(sign, key, cert)


def run_options(*, fast: bool, offload: str | None, vae_tiling: bool, vae_slicing: bool,
                batch_size: int) -> RunOptions:
    return RunOptions(fast=fast, offload=validate.offload(offload), vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                      batch_size=validate.batch_size(batch_size))


def server_request(server: str | None, *, revision=None, lora=None, lora_file=None, lora_scale=None, vae=None,
                   device="auto", dtype="auto", fast=False, offload=None, vae_tiling=False,
                   vae_slicing=False, quantize=None) -> str | None:
    """--server's URL, checked, after refusing the options only a local model can honour."""
    if server is None:
        return None
    from spo_cli.serve.client import check_url, refuse_local_options

    refuse_local_options({"--revision": revision, "--lora": bool(lora), "--lora-file": lora_file,
                          "--lora-scale": lora_scale is not None, "--vae": vae, "--device": device != "auto",
                          "--dtype": dtype != "auto", "--fast": fast, "--offload": offload,
                          "--vae-tiling": vae_tiling, "--vae-slicing": vae_slicing, "--quantize": quantize})
    return check_url(server)

"""Option types shared by the commands, so a flag means the same thing everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spo_cli import presets

_M = "Model"
_S = "Sampling"
_O = "Output"

Model = Annotated[str, typer.Option(
    "--model", "-m", rich_help_panel=_M,
    help=f"Preset ({', '.join(presets.PRESETS)}), Hub repo id, or local diffusers folder.")]
Revision = Annotated[Optional[str], typer.Option(
    help="Branch, tag or commit of the model repo.", rich_help_panel=_M)]
Lora = Annotated[Optional[str], typer.Option(
    help="LoRA to add: a Hub repo id (with --lora-file) or a local .safetensors file.", rich_help_panel=_M)]
LoraFile = Annotated[Optional[str], typer.Option(
    help="Weight file inside the --lora repo.", rich_help_panel=_M)]
LoraScale = Annotated[float, typer.Option(
    help="LoRA strength: 0 is the base model, 1 the full SPO effect.", rich_help_panel=_M)]
Vae = Annotated[Optional[str], typer.Option(
    help=f"VAE repo or folder; 'model' keeps the checkpoint's own. Default: {presets.FP16_FIX_VAE} in "
    "float16, the checkpoint's own otherwise.", rich_help_panel=_M)]
Device = Annotated[str, typer.Option(help="auto (CUDA, else MPS, else CPU), cuda, cuda:N, mps or cpu.",
                                     rich_help_panel=_M)]
Dtype = Annotated[str, typer.Option(help="auto (fp16 on GPUs, fp32 on CPU), fp16, bf16 or fp32.",
                                    rich_help_panel=_M)]

Negative = Annotated[Optional[str], typer.Option(
    "--negative", help="Negative prompt. Default: none (zero embeddings, as the authors ran).",
    rich_help_panel=_S)]
Seed = Annotated[Optional[int], typer.Option(help="First seed (random when absent; always recorded).",
                                             rich_help_panel=_S)]
NumImages = Annotated[int, typer.Option("--num-images", "-n", help="Images to make, seeds seed, seed+1, …",
                                        rich_help_panel=_S)]
BatchSize = Annotated[int, typer.Option(help="Images per pipeline call (same seeds give the same images).",
                                        rich_help_panel=_S)]
Steps = Annotated[int, typer.Option(help="Denoising steps.", rich_help_panel=_S)]
Guidance = Annotated[float, typer.Option(help="Classifier-free guidance scale.", rich_help_panel=_S)]
Width = Annotated[Optional[int], typer.Option(help="Width in pixels, a multiple of 8 (default 1024).",
                                              rich_help_panel=_S)]
Height = Annotated[Optional[int], typer.Option(help="Height in pixels, a multiple of 8 (default 1024).",
                                               rich_help_panel=_S)]
Scheduler = Annotated[str, typer.Option(
    help="Sampler: " + ", ".join(presets.SCHEDULERS) + " (default: the checkpoint's own).",
    rich_help_panel=_S)]
GeneratorDevice = Annotated[str, typer.Option(
    help="Where the seeded noise is drawn. cpu makes a seed mean the same image on any machine; "
    "cuda matches the authors' script.", rich_help_panel=_S)]

Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=_O)]
Format = Annotated[str, typer.Option("--format", help="png, jpg or webp.", rich_help_panel=_O)]
Json = Annotated[bool, typer.Option("--json", help="Print a JSON array of the written files on stdout, "
                                    "nothing else.", rich_help_panel=_O)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages, only errors.",
                                     rich_help_panel=_O)]
Debug = Annotated[bool, typer.Option("--debug", help="Library logs, and tracebacks on errors.",
                                     rich_help_panel=_O)]

_P = "Speed and memory"
Fast = Annotated[bool, typer.Option(
    "--fast", help="Lossless speed-ups: torch.compile (cached on disk; the first run compiles for minutes), "
    "channels_last, fused QKV, CUDA graphs.", rich_help_panel=_P)]
Offload = Annotated[Optional[str], typer.Option(
    help="model: keep only the running part of SDXL on the GPU; sequential: stream weights layer by layer "
    "(slowest, least memory).", rich_help_panel=_P)]
VaeTiling = Annotated[bool, typer.Option("--vae-tiling", help="Decode in tiles: large images in less memory.",
                                         rich_help_panel=_P)]
VaeSlicing = Annotated[bool, typer.Option("--vae-slicing", help="Decode a batch one image at a time.",
                                          rich_help_panel=_P)]

"""Named models and the settings the SPO authors used. Pure data: no torch, no network."""

from __future__ import annotations

from dataclasses import dataclass

SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"
SPO_MERGED = "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep"
SPO_LORA = "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep_LoRA"
SPO_LORA_FILE = "spo_sdxl_10ep_4k-data_lora_diffusers.safetensors"
# SDXL's own VAE overflows in float16; diffusers then upcasts every decode to float32. The authors'
# inference script swaps in this re-trained VAE instead, and so do we whenever we run in float16.
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"

# The authors' inference script (RockeyCoss/SPO inference_scripts/inference_spo_sdxl.py).
DEFAULT_GUIDANCE = 5.0
DEFAULT_STEPS = 50
DEFAULT_SIZE = 1024


@dataclass(frozen=True)
class Preset:
    name: str
    repo_id: str
    description: str
    lora_repo: str | None = None
    lora_file: str | None = None
    # Whether the repo ships `*.fp16.safetensors` variant files worth taking in float16.
    has_fp16_variant: bool = False


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("spo", SPO_MERGED, "SPO-SDXL, merged checkpoint (the default)"),
        Preset(
            "spo-lora",
            SDXL_BASE,
            "SDXL base 1.0 + the SPO LoRA, strength set by --lora-scale",
            lora_repo=SPO_LORA,
            lora_file=SPO_LORA_FILE,
            has_fp16_variant=True,
        ),
        Preset("base", SDXL_BASE, "SDXL base 1.0 alone, for comparison", has_fp16_variant=True),
    )
}
DEFAULT_PRESET = "spo"
# Each preset's label as a comparison column (spo compare, spo eval, a sweep's model axis).
COLUMN_LABELS = {"base": "SDXL base", "spo": "SPO-SDXL"}


@dataclass(frozen=True)
class SchedulerChoice:
    name: str
    class_name: str
    kwargs: tuple[tuple[str, object], ...] = ()
    a1111: str = ""  # the sampler name AUTOMATIC1111-style "PNG info" readers know
    extra: str = ""  # the spo-cli extra that installs what the scheduler imports (SCHEDULER_EXTRAS)


# diffusers' own table of A1111 equivalents (docs: api/schedulers/overview, "A1111/k-diffusion" and
# "Noise schedules and schedule types"): the class, and the kwargs each A1111 name is built with on top
# of the model's scheduler config. `a1111` is the name A1111 before 1.9 gave the pair, schedule appended,
# which A1111 1.9 on reads too (infotext.sampler_fields writes the few it misreads apart).
_KARRAS = (("use_karras_sigmas", True),)
# Euler's and DPM++ SDE's Karras curves run between the first and last sigma of the config's timesteps,
# which SDXL's "leading" spacing cuts short (11.48 to 0.041 at 30 steps); A1111's Karras runs the model's
# whole range (14.61 to 0.029), as DPMSolverMultistep's does under any spacing: "linspace" gives it.
_KARRAS_FULL_RANGE = (("timestep_spacing", "linspace"), *_KARRAS)
_EXPONENTIAL = (("timestep_spacing", "linspace"), ("use_exponential_sigmas", True))
_SGM_UNIFORM = (("timestep_spacing", "trailing"),)
_SDE = (("algorithm_type", "sde-dpmsolver++"),)
_3M_SDE = (("solver_order", 3), *_SDE)
_DPM = "DPMSolverMultistepScheduler"

SCHEDULERS: dict[str, SchedulerChoice] = {
    s.name: s
    for s in (
        SchedulerChoice("default", "", a1111=""),
        SchedulerChoice("euler", "EulerDiscreteScheduler", a1111="Euler"),
        SchedulerChoice("euler-karras", "EulerDiscreteScheduler", _KARRAS_FULL_RANGE, a1111="Euler Karras"),
        SchedulerChoice("euler-exponential", "EulerDiscreteScheduler", _EXPONENTIAL, a1111="Euler Exponential"),
        SchedulerChoice("euler-sgm-uniform", "EulerDiscreteScheduler", _SGM_UNIFORM, a1111="Euler SGM Uniform"),
        SchedulerChoice("euler-a", "EulerAncestralDiscreteScheduler", a1111="Euler a"),
        SchedulerChoice("heun", "HeunDiscreteScheduler", a1111="Heun"),
        SchedulerChoice("ddim", "DDIMScheduler", a1111="DDIM"),
        SchedulerChoice("dpm++2m", _DPM, a1111="DPM++ 2M"),
        SchedulerChoice("dpm++2m-karras", _DPM, _KARRAS, a1111="DPM++ 2M Karras"),
        SchedulerChoice("dpm++2m-exponential", _DPM, _EXPONENTIAL, a1111="DPM++ 2M Exponential"),
        SchedulerChoice("dpm++2m-sgm-uniform", _DPM, _SGM_UNIFORM, a1111="DPM++ 2M SGM Uniform"),
        SchedulerChoice("dpm++2m-sde", _DPM, _SDE, a1111="DPM++ 2M SDE"),
        SchedulerChoice("dpm++2m-sde-karras", _DPM, (*_SDE, *_KARRAS), a1111="DPM++ 2M SDE Karras"),
        SchedulerChoice("dpm++2m-sde-exponential", _DPM, (*_SDE, *_EXPONENTIAL), a1111="DPM++ 2M SDE Exponential"),
        SchedulerChoice("dpm++3m-sde", _DPM, _3M_SDE, a1111="DPM++ 3M SDE"),
        SchedulerChoice("dpm++3m-sde-karras", _DPM, (*_3M_SDE, *_KARRAS), a1111="DPM++ 3M SDE Karras"),
        SchedulerChoice("dpm++3m-sde-exponential", _DPM, (*_3M_SDE, *_EXPONENTIAL), a1111="DPM++ 3M SDE Exponential"),
        # k-diffusion's sample_dpmpp_sde, which A1111 runs, as diffusers ported it; its Brownian noise
        # needs torchsde, so it is an extra.
        SchedulerChoice("dpm++sde", "DPMSolverSDEScheduler", a1111="DPM++ SDE", extra="sde"),
        SchedulerChoice("dpm++sde-karras", "DPMSolverSDEScheduler", _KARRAS_FULL_RANGE, a1111="DPM++ SDE Karras",
                        extra="sde"),
        SchedulerChoice("unipc", "UniPCMultistepScheduler", a1111="UniPC"),
    )
}
# The modules each extra of a scheduler brings (pyproject.toml's optional dependencies).
SCHEDULER_EXTRAS = {"sde": ("torchsde",)}

# For naming the checkpoint's own scheduler ("default") in A1111 parameters.
A1111_BY_CLASS = {
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "DDIMScheduler": "DDIM",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "UniPCMultistepScheduler": "UniPC",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "HeunDiscreteScheduler": "Heun",
}

DTYPES = {"fp16": "float16", "float16": "float16", "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp32": "float32", "float32": "float32", "auto": "auto"}

# Peak memory of one 1024×1024 float16 image, measured on an H200 (benchmarks/README.md, 2026-11-26):
# GPU memory (torch.cuda.max_memory_allocated) per --offload mode, and the process's host memory.
PEAK_VRAM_GIB = {None: 8.92, "model": 5.23, "sequential": 2.41}
PEAK_HOST_RAM_GIB = 6.6  # 8.5 with --offload model

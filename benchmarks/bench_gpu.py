"""SPO-SDXL at full size on one GPU: the authors' diffusers snippet against `spo`, with no Hub access.

In one process it builds an SDXL with random weights from SDXL-base-1.0's published component
configs (benchmarks/sdxl/*.json: same architecture, same parameter count, same FLOPs as the real
checkpoint), saves it in diffusers layout (float16 safetensors) with the fp16-fix VAE as a separate
folder, then times, at 1024×1024, guidance 5.0, batch 1, for each of --steps.

Phases, in this order by default (each saves WORKDIR/results.json as it ends, so a run cut short
keeps what it measured; --deadline-s starts no phase past it):

  1. load, all kept on the GPU at once (about 7 GiB each): the authors' snippet (under
     torch.inference_mode, as spo runs; and the same pipeline "as written", under the no_grad of
     diffusers' __call__), spo default (noise drawn on the CPU, spo's default; and the same engine
     with --generator-device cuda, the authors' noise device: the parity row), spo --fast and
     spo --fast --quantize fp8 (ModelRequest(quantize="fp8"); a refusal, or a spo-cli without the
     field, makes the row "skipped: <spo's own message>"). Each is warmed up once; the first call of
     a compiled contender is the compile, timed and kept apart.
  2. steady state, interleaved: for each step count, one settling round and then --repeat (N ≥ 3)
     rounds, each round calling every loaded contender once, in an order rotated by one each round
     (snippet, spo, fast, …; then spo, fast, …, snippet). STEADY STATE = the N calls at a step count
     that follow the first call at that step count after the warm-up (or compile) call. Every call's
     raw time is kept in results.json (rows.<key>.calls), with its phase, round and position.
  3. pixels: max and mean |Δ| in /255 on the same seed: --fast vs default, fp8 vs default, the
     snippet vs spo with the same noise device (0 expected), inference_mode vs no_grad (0 expected).
  4. spo --fast in a second process, with the first process's compile cache (TORCHINDUCTOR_CACHE_DIR,
     a fresh folder under --workdir): its first call shows what the cache saves.
  5. the snippet with diffusers' own compile recipe (the SDXL guide, docs/source/en/tutorials/
     fast_diffusion.md, removed in May 2025 by diffusers PR #11583 in favour of the shorter
     "Accelerate inference" guide, optimization/fp16.md; this is the tutorial's full form): inductor's
     conv_1x1_as_mm, coordinate_descent_tuning, epilogue_fusion=False and
     coordinate_descent_check_all_directions; UNet and VAE in channels_last; fuse_qkv_projections;
     torch.compile(mode="max-autotune", fullgraph=True) of the UNet and of vae.decode. Its compile
     (the first call) is timed, then it is interleaved with the snippet and spo --fast (settling
     round + N rounds). Last of the main phases: its max-autotune compile took over 280 s on an
     H200 (benchmarks/README.md), and cannot be stopped part-way in this process.
  6. what is left, one contender at a time (each loaded alone, N timed calls after a settling call):
     spo --offload model and --offload sequential (at --seq-steps), diffusers' img2img (from_pipe of
     the snippet) and spo --image on the same input at strength 0.75, spo --hires 1.5 (latent).

For each: seconds per image (median, min and max of the steady calls), it/s (steps ÷ s/image, end to
end: text encoders, denoising and VAE decode), achieved TFLOP/s and MFU (UNet FLOPs only, counted once
with FlopCounterMode on the meta device at batch 2 for classifier-free guidance, × steps, ÷ s/image ÷
the GPU's dense fp16 peak), VRAM of the weights (allocated by the load) and peak VRAM (the weights +
the highest allocation above them during its calls), and load time (from a warm page cache to ready,
synchronised).

    python benchmarks/bench_gpu.py [--steps 50,30] [--repeat 3] [--deadline-s S] [--only ...|--skip ...]
                                   [--seq-steps 4] [--workdir DIR] [--peak-tflops T] [--keep-cache]
    python benchmarks/bench_gpu.py --toy            # the same code path on the CPU, tiny model
    python benchmarks/bench_gpu.py --check-configs  # parameter counts of benchmarks/sdxl/*.json
    python benchmarks/bench_gpu.py --render results.json   # the tables again, from a saved run

--toy runs the very same code on the CPU with the tiny random SDXL of spo_cli.tiny (64×64, 2 steps,
float32): CUDA-only parts (VRAM, offload modes, CUDA noise, fp8, MFU) are reported as skipped or n/a.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "sdxl"
try:
    import spo_cli  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent / "src"))

# SDXL-base-1.0's published sizes (and those of the fp16-fix VAE, which has the same architecture).
PUBLISHED_PARAMS = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                    "vae": 83_653_863}
PROMPT = "a child and a penguin sitting on the moon"
SEED = 42
CHILD_MARK = "BENCH_GPU_CHILD_RESULT "
GIB = 1024**3
MIN_STEADY = 3  # the definition below asks for at least this many steady calls

STEADY_DEFINITION = (
    "steady state: for each contender, phase and step count, the N calls that follow the first call at that "
    "step count made after the contender's warm-up (or compile) call; that first call (settling: e.g. a CUDA "
    "graph recorded on a later call than the first) is kept in the raw times but not counted. N = --repeat; "
    f"rows with N < {MIN_STEADY} are marked 'not steady state'. Contenders are interleaved: each round calls "
    "every loaded contender once, the order rotated by one each round.")

# Dense (no sparsity) fp16/bf16 tensor-core peaks, TFLOP/s, matched in order against the device name.
PEAKS = [
    ("H100 PCIe", 756.0, "H100 PCIe"),
    ("H100 NVL", 835.5, "H100 NVL (1,671 sparse ÷ 2)"),
    ("H200", 989.4, "H200"),
    ("H100", 989.4, "H100 SXM"),
    ("A100", 312.0, "A100"),
    ("L40S", 362.0, "L40S"),
    ("RTX 4090", 165.2, "RTX 4090"),
]

CONTENDERS = {  # key → table label, in table order
    "snippet": "a. authors' snippet (diffusers), inference_mode",
    "snippet-nograd": "a'. authors' snippet as written (no_grad)",
    "spo": "b. spo (default, CPU noise)",
    "spo-cuda-gen": "b'. spo --generator-device cuda",
    "fast": "c. spo --fast",
    "fast-fp8": "c'. spo --fast --quantize fp8",
    "fast-reuse": "c. spo --fast, 2nd process",
    "recipe": "r. snippet + diffusers' compile recipe",
    "offload-model": "d. spo --offload model",
    "offload-sequential": "d. spo --offload sequential",
    "img2img-snippet": "e. diffusers img2img (from_pipe of a.)",
    "img2img": "f. spo --image",
    "hires": "g. spo --hires 1.5 (latent)",
}
# Phase by phase (see the docstring): what a ~9-minute GPU call can afford comes first.
INTERLEAVED = ["snippet", "snippet-nograd", "spo", "spo-cuda-gen", "fast", "fast-fp8"]
# The rounds' cyclic order (rotation keeps it): two contenders that call one loaded object are never
# neighbours, so that neither always runs right after its twin (same weights, the allocator's blocks
# just freed at the right sizes), and each pair's two rows follow the same kind of contender: the
# snippet's two after fast-fp8 and fast, spo's two after the snippet's two, --fast's two after spo's.
ROUND_ORDER = ["snippet", "spo", "fast", "snippet-nograd", "spo-cuda-gen", "fast-fp8"]
RECIPE_ROUND = ["snippet", "fast", "recipe"]  # the recipe's interleaved phase: it against the snippet and --fast
SOLO = ["offload-model", "offload-sequential", "img2img-snippet", "img2img", "hires"]
RUN_ORDER = [*INTERLEAVED, "fast-reuse", "recipe", *SOLO]
COMPILED = {"fast", "fast-fp8", "fast-reuse", "recipe"}
CUDA_ONLY = {"spo-cuda-gen": "needs CUDA (the CPU toy's default noise is already the CPU's)",
             "offload-model": "needs CUDA", "offload-sequential": "needs CUDA"}
# What the compile table says of the cache its first calls started from (--keep-cache or not).
COMPILE_CACHE = {False: "emptied at the start: the first call compiles",
                 True: "kept from an earlier process (--keep-cache): the first call loads what that one compiled"}
STRENGTH = 0.75  # img2img rows: A1111's default; they run int(steps × STRENGTH) of each step count
HIRES = 1.5  # the hires row: --size, then ×1.5 (1024² → 1536², what must fit a 24 GB GPU)
# Whose time each row is divided by in the table's "÷ snippet" column (same phase).
BASELINE = {k: "snippet" for k in ("snippet-nograd", "spo", "spo-cuda-gen", "fast", "fast-fp8", "recipe",
                                   "offload-model", "offload-sequential")}
BASELINE["img2img"] = "img2img-snippet"
# Ratios of medians worth a line of their own: (numerator, denominator, why).
RATIOS = [
    ("spo", "snippet", "spo's default against the snippet, same grad mode"),
    ("spo-cuda-gen", "snippet", "the parity row: same grad mode and noise device as the snippet"),
    ("fast", "snippet", "spo --fast against the eager snippet"),
    ("fast", "recipe", "spo --fast against diffusers' own compile recipe: what spo adds beyond it"),
    ("fast-fp8", "fast", "fp8 against --fast"),
    ("fast-fp8", "snippet", "fp8 against the eager snippet"),
    ("snippet-nograd", "snippet", "no_grad (as written) against inference_mode"),
]
# Pixel comparisons on the same seed: (a, b, what is expected).
PIXEL_PAIRS = [
    ("fast", "spo", "≤ 2/255 (float rounding; --fast's promise)"),
    ("fast-fp8", "spo", "changes pixels (opt-in); to report"),
    ("fast-fp8", "fast", "to report"),
    ("snippet", "spo-cuda-gen", "0: same pipeline call, same noise device"),
    ("snippet", "spo", "CPU toy: 0 (both draw noise on the CPU); CUDA: other noise, other image"),
    ("snippet-nograd", "snippet", "0: the grad mode changes no pixel"),
    ("recipe", "snippet", "float rounding (compiled kernels)"),
]
# ---------------------------------------------------------------------------------------------
# Configs


def load_config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def model_configs(toy: bool) -> dict[str, dict]:
    """The UNet and (fp16-fix) VAE configs the benchmark builds from."""
    if toy:
        from spo_cli import tiny

        return {"unet": dict(tiny.unet_config()), "vae": tiny.vae_config(force_upcast=False)}
    return {"unet": load_config("unet_config.json"), "vae": load_config("vae_config.json")}


def sdxl_components() -> dict:
    """SDXL's four weighted components from benchmarks/sdxl, on the current default device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    return {
        "unet": UNet2DConditionModel.from_config(load_config("unet_config.json")),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_dict(load_config("text_encoder_config.json"))),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig.from_dict(load_config("text_encoder_2_config.json"))),
        "vae": AutoencoderKL.from_config(load_config("vae_config.json")),
    }


def check_configs() -> tuple[bool, list[str]]:
    """Instantiate each component of benchmarks/sdxl on the meta device; compare parameter counts."""
    import torch

    with torch.device("meta"):
        models = sdxl_components()
    ok, lines = True, []
    for name, model in models.items():
        n = sum(p.numel() for p in model.parameters())
        good = n == PUBLISHED_PARAMS[name]
        ok &= good
        lines.append(f"{name:<15} {type(model).__name__:<28} {n:>13,} params "
                     f"({'matches' if good else 'DIFFERS from'} published {PUBLISHED_PARAMS[name]:,})")
    return ok, lines


# ---------------------------------------------------------------------------------------------
# The model on disk


def config_hash(toy: bool, dtype: str) -> str:
    h = hashlib.sha256(f"{toy}:{dtype}:v1".encode())
    if not toy:
        for f in sorted(CONFIGS.glob("*.json")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def build_and_save(model_dir: Path, vae_dir: Path, toy: bool, device: str, dtype: str) -> None:
    """A random-weight SDXL in diffusers layout in `model_dir`, the fp16-fix VAE in `vae_dir`."""
    import torch

    from spo_cli import tiny

    torch_dtype = getattr(torch, dtype)
    for d in (model_dir, vae_dir):
        shutil.rmtree(d, ignore_errors=True)
    model_dir.mkdir(parents=True)
    if toy:
        pipe = tiny.build_pipeline(model_dir / "_tok", seed=0)
        parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2,
                 "vae": tiny.build_vae(20, force_upcast=False)}
        del pipe
        shutil.rmtree(model_dir / "_tok")
    else:
        # Straight on the GPU (fast random init), then cast: about 13 GiB of float32 for a moment.
        with torch.device(device):
            torch.manual_seed(0)
            parts = sdxl_components()
    for name, module in parts.items():
        module.to(torch_dtype)
        module.save_pretrained(vae_dir if name == "vae" else model_dir / name)  # safetensors by default
    del parts
    # The pipeline's own vae/: SDXL base's VAE has the fp16-fix VAE's architecture, with force_upcast
    # true and sample_size 1024. Neither contender loads it (both pass the fp16-fix VAE), so it
    # shares the weight file (a hard link where possible).
    (model_dir / "vae").mkdir()
    vae_cfg = json.loads((vae_dir / "config.json").read_text())
    vae_cfg.update(force_upcast=True, sample_size=vae_cfg["sample_size"] if toy else 1024)
    (model_dir / "vae" / "config.json").write_text(json.dumps(vae_cfg, indent=2))
    for f in vae_dir.glob("*.safetensors"):
        try:
            os.link(f, model_dir / "vae" / f.name)
        except OSError:
            shutil.copyfile(f, model_dir / "vae" / f.name)
    for name in ("tokenizer", "tokenizer_2"):
        tiny.write_tokenizer(model_dir / name)  # ids stay below its vocab size: fine for timing
    (model_dir / "scheduler").mkdir()
    shutil.copyfile(CONFIGS / "scheduler_config.json", model_dir / "scheduler" / "scheduler_config.json")
    shutil.copyfile(CONFIGS / "model_index.json", model_dir / "model_index.json")


def warm_page_cache(*folders: Path) -> int:
    """Read every file once (untimed), so that loads start from a warm page cache."""
    total = 0
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                with open(p, "rb") as f:
                    while chunk := f.read(1 << 26):
                        total += len(chunk)
    return total


def folder_bytes(*folders: Path) -> int:
    return sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# FLOPs, peaks, memory


def unet_flops(unet_cfg: dict, latent: int, batch: int) -> int:
    """FLOPs of one UNet forward, counted on the meta device (no memory, no GPU)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    pooled = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg)
        sample = torch.randn(batch, unet_cfg["in_channels"], latent, latent)
        cond = torch.randn(batch, 77, unet_cfg["cross_attention_dim"])
        added = {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)}
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            unet(sample, torch.tensor(999.0), encoder_hidden_states=cond, added_cond_kwargs=added)
    return counter.get_total_flops()


def vae_decode_flops(vae_cfg: dict, latent: int) -> int:
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_cfg)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            vae.decode(torch.randn(1, vae_cfg["latent_channels"], latent, latent))
    return counter.get_total_flops()


def peak_for(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, f"{override:g} TFLOP/s (--peak-tflops)"
    for key, tflops, label in PEAKS:
        if key.lower() in device_name.lower():
            return tflops, f"{tflops:g} TFLOP/s ({label}, dense fp16/bf16)"
    return None, f"n/a (no peak known for '{device_name}'; pass --peak-tflops)"


def reset_rss_peak() -> bool:
    """Reset the process's RSS high-water mark (Linux ≥ 4.0: echo 5 > /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_bytes(key: str = "VmHWM") -> int | None:
    """VmHWM (peak) or VmRSS (now) of this process, in bytes; ru_maxrss when /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if key != "VmHWM":
        return None
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def trim_host_memory() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---------------------------------------------------------------------------------------------
# Pure helpers (tested in tests/test_bench_harness.py)


def rotation(keys: list[str], rounds: int, start: int = 0) -> list[list[str]]:
    """The call order of `rounds` interleaved rounds: every key once a round, the order rotated by one
    each round, so that no contender always runs first or last. A rotation keeps the cyclic order: a
    contender follows the same neighbour in every round but the one where it runs first."""
    n = len(keys)
    return [[keys[(r + start + i) % n] for i in range(n)] for r in range(rounds)] if n else []


def steady_times(calls: list[dict], steps: int, phase: str) -> list[float]:
    """The steady-state times of one contender at `steps` in `phase` (STEADY_DEFINITION): the timed
    calls at that step count, less the first of them (settling). Warm-up and compile calls are not timed
    calls."""
    timed = [c["s"] for c in calls if c["kind"] == "timed" and c["steps"] == steps and c["phase"] == phase]
    return timed[1:]


def summary(times: list[float]) -> dict | None:
    if not times:
        return None
    return {"n": len(times), "median": statistics.median(times), "min": min(times), "max": max(times),
            "steady": len(times) >= MIN_STEADY}


def pixel_diff(a, b) -> dict:
    """max and mean |a − b| of two 8-bit RGB images (PIL images or uint8 arrays), in /255."""
    import numpy as np

    x, y = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
    if x.shape != y.shape:
        raise ValueError(f"images of different shapes: {x.shape} and {y.shape}")
    d = np.abs(x - y)
    return {"max": int(d.max()), "mean": round(float(d.mean()), 4)}


# ---------------------------------------------------------------------------------------------
# Contenders


@dataclass
class Ctx:
    toy: bool
    device: str
    dtype: str
    size: int
    guidance: float
    model: Path
    vae: Path
    recipe_mode: str = "max-autotune"  # the recipe contender's torch.compile mode (--recipe-mode)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def input_image(self) -> Path:
        """The img2img rows' input: smooth random colours at --size, written once beside the model."""
        path = self.model.parent / f"input-{self.size}.png"
        if not path.exists():
            import numpy as np
            from PIL import Image

            noise = np.random.default_rng(SEED).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(noise).resize((self.size, self.size), Image.Resampling.BICUBIC).save(path)
        return path

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()


@dataclass
class Row:
    key: str
    label: str
    grad_mode: str | None = None  # the autograd mode the call runs under
    noise_device: str | None = None  # where the initial noise is drawn
    load_s: float | None = None
    first_call_s: float | None = None  # compiled contenders: the call that compiles (steps = first of --steps)
    calls: list[dict] = field(default_factory=list)  # every call: steps, s, kind, phase, round, position
    weights_vram: int | None = None  # bytes allocated by the load (shared objects: the first to load them)
    peak_vram: int | None = None  # weights + the highest allocation above what was held before a call
    peak_rss: int | None = None  # solo contenders and the 2nd process: the process high-water mark
    rss_load: int | None = None  # VmRSS added by the load
    rss_is_cumulative: bool = False
    skipped: str | None = None
    error: str | None = None
    note: str | None = None

    @property
    def live(self) -> bool:
        return not (self.skipped or self.error)


def load_snippet(ctx: Ctx):
    # The SPO authors' inference snippet, with a local folder for the checkpoint and the VAE.
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    dt = getattr(torch, ctx.dtype)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(ctx.model), torch_dtype=dt, vae=AutoencoderKL.from_pretrained(str(ctx.vae), torch_dtype=dt)
    ).to(ctx.device)
    pipe.set_progress_bar_config(disable=True)  # the bar's cost is nil; it only clutters the log
    # With invisible-watermark installed, diffusers marks every image (about 0.12 s of CPU per 1024²
    # image, benchmarks/bench_provenance.py) and spo does not by default: the snippet is timed without
    # it, as on a node without the package. Recorded in results.json.
    pipe.watermark = None
    return pipe


def call_snippet(ctx: Ctx, pipe, steps: int, *, as_written: bool = False):
    """One image, CUDA noise seeded 42 as the authors' script draws it. spo runs under
    torch.inference_mode; the pipeline's own __call__ runs under no_grad: `as_written` keeps that."""
    import torch

    def run():
        return pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=ctx.guidance, height=ctx.size,
                    width=ctx.size, generator=torch.Generator(ctx.device).manual_seed(SEED)).images[0]

    if as_written:
        return run()
    with torch.inference_mode():
        return run()


RECIPE_INDUCTOR = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
                   "coordinate_descent_check_all_directions": True}


def load_recipe(ctx: Ctx):
    """The snippet, then diffusers' SDXL compile recipe as its guide wrote it (see the docstring), in
    --recipe-mode (the guide's max-autotune unless asked). The inductor flags are process-wide: the
    recipe runs in a process of its own (run_recipe_child)."""
    import torch
    import torch._inductor.config as inductor

    pipe = load_snippet(ctx)
    for name, value in RECIPE_INDUCTOR.items():
        setattr(inductor, name, value)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.fuse_qkv_projections()
    pipe.unet = torch.compile(pipe.unet, mode=ctx.recipe_mode, fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode=ctx.recipe_mode, fullgraph=True)
    return pipe


def load_spo(ctx: Ctx, quantize: str | None = None, **options):
    from spo_cli.engine import Engine
    from spo_cli.request import ModelRequest, RunOptions
    from spo_cli.resolve import resolve_model

    extra = {"quantize": quantize} if quantize else {}  # a spo-cli without the field raises TypeError here
    request = ModelRequest(model=str(ctx.model), vae=str(ctx.vae), dtype=ctx.dtype, device=ctx.device, **extra)
    return Engine.load(resolve_model(request, ctx.dtype, local_only=True), ctx.device, RunOptions(**options))


def call_spo(ctx: Ctx, engine, steps: int, generator_device: str = "cpu"):
    from spo_cli.request import ImageRequest

    return engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance, width=ctx.size,
                                    height=ctx.size, generator_device=generator_device)])[0].image


def load_snippet_img2img(ctx: Ctx):
    # diffusers' own img2img on the snippet's components: what spo's --image is checked against.
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe = StableDiffusionXLImg2ImgPipeline.from_pipe(load_snippet(ctx), torch_dtype=getattr(torch, ctx.dtype),
                                                      add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_snippet_img2img(ctx: Ctx, pipe, steps: int):
    import torch
    from PIL import Image

    with Image.open(ctx.input_image) as im:
        image = im.convert("RGB")
    with torch.inference_mode():
        return pipe(prompt=PROMPT, image=image, strength=STRENGTH, num_inference_steps=steps,
                    guidance_scale=ctx.guidance, generator=torch.Generator(ctx.device).manual_seed(SEED)).images[0]


def call_spo_img2img(ctx: Ctx, engine, steps: int):
    from spo_cli import inputs
    from spo_cli.request import ImageRequest

    return engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance,
                                    image=inputs.check(ctx.input_image), strength=STRENGTH)])[0].image


def call_spo_hires(ctx: Ctx, engine, steps: int):
    from spo_cli.request import Hires, ImageRequest

    out = engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance, width=ctx.size,
                                   height=ctx.size, hires=Hires(HIRES))])
    auto = engine.call_facts({}).get("run_options")
    if auto:  # the VAE options spo turned on to fit (the sidecar's run_options.vae_auto)
        print(f"  VAE options turned on to fit: {auto['vae_auto']}", flush=True)
    return out[0].image


@dataclass
class Spec:
    """How to make a contender: `obj` names the loaded object it calls (contenders may share one)."""

    obj: str
    load: object  # (ctx) -> object
    call: object  # (ctx, obj, steps) -> PIL image
    grad_mode: str
    noise_device: str  # "cpu" or "device" (the GPU, or the CPU on the toy)
    fixed_steps: bool = False  # offload-sequential: --seq-steps only


def specs() -> dict[str, Spec]:
    def spo_call(gen: str):
        return lambda ctx, e, s: call_spo(ctx, e, s, "cuda" if gen == "device" and ctx.cuda else "cpu")

    return {
        "snippet": Spec("snippet", load_snippet, call_snippet, "inference_mode", "device"),
        "snippet-nograd": Spec("snippet", load_snippet, lambda ctx, p, s: call_snippet(ctx, p, s, as_written=True),
                               "no_grad (diffusers' __call__)", "device"),
        "spo": Spec("spo", load_spo, spo_call("cpu"), "inference_mode", "cpu"),
        "spo-cuda-gen": Spec("spo", load_spo, spo_call("device"), "inference_mode", "device"),
        "fast": Spec("fast", lambda ctx: load_spo(ctx, fast=True), spo_call("cpu"), "inference_mode", "cpu"),
        "fast-fp8": Spec("fast-fp8", lambda ctx: load_spo(ctx, quantize="fp8", fast=True), spo_call("cpu"),
                         "inference_mode", "cpu"),
        "recipe": Spec("recipe", load_recipe, call_snippet, "inference_mode", "device"),
        "offload-model": Spec("offload-model", lambda ctx: load_spo(ctx, offload="model"), spo_call("cpu"),
                              "inference_mode", "cpu"),
        "offload-sequential": Spec("offload-sequential", lambda ctx: load_spo(ctx, offload="sequential"),
                                   spo_call("cpu"), "inference_mode", "cpu", fixed_steps=True),
        "img2img-snippet": Spec("img2img-snippet", load_snippet_img2img, call_snippet_img2img, "inference_mode",
                                "device"),
        "img2img": Spec("img2img", load_spo, call_spo_img2img, "inference_mode", "cpu"),
        "hires": Spec("hires", load_spo, call_spo_hires, "inference_mode", "cpu"),
    }


def release(ctx: Ctx) -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()  # compiled graphs and CUDA graphs
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    trim_host_memory()


def refusal(e: BaseException) -> str | None:
    """spo's own refusal of a contender (a SpoError's paragraph, or a TypeError from a ModelRequest
    that has no such field yet), as the row's "skipped: ..." text; None for any other failure."""
    from spo_cli.errors import SpoError

    if isinstance(e, SpoError):
        return e.paragraph()
    if isinstance(e, TypeError) and "quantize" in str(e):
        return f"this spo-cli's ModelRequest has no quantize field ({e})"
    return None


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


class Bench:
    """The loaded objects, the rows and the images of one run; save() after every phase."""

    def __init__(self, ctx: Ctx, args, meta: dict, path: Path, log=print):
        self.ctx, self.args, self.meta, self.path, self.log = ctx, args, meta, path, log
        self.rows: dict[str, Row] = {}
        self.objs: dict[str, object] = {}
        self.images: dict[tuple[str, int], object] = {}  # (key, steps) → the last image, uint8 array
        self.pixels: list[dict] = []
        self.order: list[dict] = []  # the interleaved schedule as run
        self.phases: list[dict] = []
        self.specs = specs()

    # -- bookkeeping --

    def row(self, key: str) -> Row:
        if key not in self.rows:
            spec = self.specs.get(key)
            label = CONTENDERS[key] + (f" ({self.ctx.recipe_mode})" if key == "recipe" else "")
            self.rows[key] = Row(key, label, grad_mode=spec and spec.grad_mode,
                                 noise_device=spec and (("cuda" if self.ctx.cuda else "cpu")
                                                        if spec.noise_device == "device" else "cpu"))
        return self.rows[key]

    def save(self, in_progress: str | None = None) -> None:
        data = {**self.meta, "steady_definition": STEADY_DEFINITION, "repeat": self.args.repeat,
                "phases": self.phases, "in_progress": in_progress, "interleaved_order": self.order,
                "pixels": self.pixels, "rows": {k: vars(r) for k, r in self.rows.items()}}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.path)  # a run killed mid-write keeps the previous phase's file whole

    def phase(self, name: str, t0: float) -> None:
        self.phases.append({"phase": name, "s": round(time.perf_counter() - t0, 2)})
        self.save()

    # -- one call --

    def call(self, key: str, steps: int, kind: str, phase: str, rnd: int | None = None, pos: int | None = None):
        """One synchronised, timed call; its raw time and VRAM above what was held go into the row."""
        import numpy as np
        import torch

        ctx, row, spec = self.ctx, self.row(key), self.specs[key]
        if ctx.cuda:
            held = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        ctx.sync()
        t0 = time.perf_counter()
        image = spec.call(ctx, self.objs[spec.obj], steps)
        ctx.sync()
        s = time.perf_counter() - t0
        row.calls.append({"steps": steps, "s": s, "kind": kind, "phase": phase, "round": rnd, "position": pos})
        if ctx.cuda and row.weights_vram is not None:
            row.peak_vram = max(row.peak_vram or 0, row.weights_vram + torch.cuda.max_memory_allocated() - held)
        if image is not None:
            self.images[(key, steps)] = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return s

    def fail(self, key: str, e: BaseException) -> None:
        row = self.row(key)
        row.error = error_text(e)
        self.log(f"  {row.label}: failed: {row.error}")
        traceback.print_exc()

    # -- loading --

    def load(self, key: str) -> bool:
        """Load the object `key` calls (unless another contender loaded it), warm it up (compiled
        contenders: the compile, timed as first_call_s). False when the row is skipped or failed."""
        import torch

        ctx, row, spec = self.ctx, self.row(key), self.specs[key]
        steps = self.args.seq_steps if spec.fixed_steps else self.steps[0]
        shared = spec.obj in self.objs
        try:
            if not shared:
                warm_page_cache(ctx.model, ctx.vae)
                trim_host_memory()
                before = torch.cuda.memory_allocated() if ctx.cuda else None
                rss = rss_bytes("VmRSS")
                row.rss_is_cumulative = not reset_rss_peak()
                ctx.sync()
                t0 = time.perf_counter()
                self.objs[spec.obj] = spec.load(ctx)
                ctx.sync()
                row.load_s = time.perf_counter() - t0
                if ctx.cuda:
                    row.weights_vram = torch.cuda.memory_allocated() - before
                now = rss_bytes("VmRSS")
                row.rss_load = now - rss if now is not None and rss is not None else None
                self.log(f"{row.label}: loaded in {row.load_s:.1f} s"
                         + (f", {row.weights_vram / GIB:.2f} GiB on the GPU" if ctx.cuda else ""))
            else:
                owner = next(r for k, r in self.rows.items() if k != key and self.specs[k].obj == spec.obj)
                row.load_s, row.weights_vram = owner.load_s, owner.weights_vram
                row.note = f"same loaded object as {owner.key}"
            kind = "compile" if key in COMPILED else "warm-up"
            self.save(in_progress=f"{key}: loaded, first call ({kind}) at {steps} steps")
            first = self.call(key, steps, kind, "load")
            if kind == "compile":
                row.first_call_s = first
            self.log(f"  {row.label}: {'first call (compile + run)' if kind == 'compile' else 'warm-up'} at "
                     f"{steps} steps: {first:.2f} s")
            return True
        except Exception as e:  # one contender's failure must not lose the others
            why = refusal(e)
            if why:
                row.skipped = why
                self.log(f"{row.label}: skipped: {why}")
            else:
                self.fail(key, e)
            if not shared:
                self.objs.pop(spec.obj, None)
            return False

    def unload_all(self) -> None:
        import torch

        for key, obj in list(self.objs.items()):
            pipe = getattr(obj, "pipe", obj)
            try:
                pipe.remove_all_hooks()  # accelerate's offload hooks hold the modules
            except Exception:
                pass
            del pipe, obj
        self.objs.clear()
        release(self.ctx)
        if self.ctx.cuda:
            held = torch.cuda.memory_allocated()
            if held > 256 * 1024**2:
                self.log(f"  warning: {held / GIB:.2f} GiB still allocated on the GPU after unloading")

    # -- interleaved rounds --

    def interleave(self, keys: list[str], phase: str, repeat: int) -> None:
        """For each step count: one settling round, then `repeat` rounds, each key once a round, rotated."""
        for steps in self.steps:
            for rnd, order in enumerate(rotation(keys, repeat + 1, start=len(self.order))):
                order = [k for k in order if self.rows[k].live]
                self.order.append({"phase": phase, "steps": steps, "round": rnd, "order": order})
                for pos, key in enumerate(order):
                    try:
                        self.call(key, steps, "timed", phase, rnd, pos)
                    except Exception as e:
                        self.fail(key, e)
                self.save(in_progress=f"{phase}: {steps} steps, round {rnd} of {repeat} done")
            for key in keys:
                st = summary(steady_times(self.rows[key].calls, steps, phase))
                if st:
                    self.log(f"  {self.rows[key].label}, {steps} steps: median {st['median']:.3f} s "
                             f"(min {st['min']:.3f}, max {st['max']:.3f}, N={st['n']})")

    def compare(self, pairs) -> None:
        done = {(p["a"], p["b"], p["steps"]) for p in self.pixels}
        for a, b, expected in pairs:
            for steps in self.steps:
                if (a, b, steps) in done or (a, steps) not in self.images or (b, steps) not in self.images:
                    continue
                d = pixel_diff(self.images[(a, steps)], self.images[(b, steps)])
                self.pixels.append({"a": a, "b": b, "steps": steps, **d, "expected": expected})
                self.log(f"  pixels {a} vs {b}, {steps} steps: max |Δ| {d['max']}/255, mean {d['mean']}/255")

    # -- solo contenders: loaded alone --

    def solo(self, key: str) -> None:
        spec = self.specs[key]
        row = self.row(key)
        try:
            if not self.load(key):
                return
            for steps in ([self.args.seq_steps] if spec.fixed_steps else self.steps):
                for rnd in range(self.args.repeat + 1):
                    self.call(key, steps, "timed", "solo", rnd, 0)
                st = summary(steady_times(row.calls, steps, "solo"))
                self.log(f"  {steps} steps: median {st['median']:.3f} s (N={st['n']})")
        except Exception as e:
            self.fail(key, e)
        finally:
            row.peak_rss = rss_bytes("VmHWM")
            self.unload_all()
            self.save()


def run_child(ctx: Ctx, args, steps: int, timeout: float) -> Row:
    """Start this script again (--_fast-child): load with --fast, first call, then timed calls."""
    row = Row("fast-reuse", CONTENDERS["fast-reuse"], grad_mode="inference_mode", noise_device="cpu")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_fast-child", "--workdir", str(args.workdir),
           "--size", str(ctx.size), "--steps", str(steps), "--dtype", ctx.dtype, "--guidance", str(ctx.guidance),
           "--repeat", str(args.repeat)]
    if args.toy:
        cmd.append("--toy")
    warm_page_cache(ctx.model, ctx.vae)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        row.error = f"second process ran past {timeout:.0f} s"
        return row
    wall = time.perf_counter() - t0
    results = [line for line in proc.stdout.splitlines() if line.startswith(CHILD_MARK)]
    if proc.returncode != 0 or not results:
        sys.stderr.write(proc.stderr[-4000:])
        row.error = f"second process failed (exit {proc.returncode})"
        return row
    data = json.loads(results[-1][len(CHILD_MARK):])
    for name in ("load_s", "first_call_s", "calls", "weights_vram", "peak_vram", "peak_rss", "error"):
        setattr(row, name, data[name])
    row.note = f"process wall time {wall:.1f} s (imports, load, first call, {args.repeat + 1} more calls)"
    return row


def child_main(args) -> None:
    """The second --fast process: same folders, same TORCHINDUCTOR_CACHE_DIR (from the environment)."""
    ctx = make_ctx(args)
    quiet()
    bench = Bench(ctx, args, {}, args.workdir / "child-results.json", log=lambda m: print(m, file=sys.stderr))
    bench.steps = parse_steps(args.steps)[:1]
    bench.specs["fast-reuse"] = bench.specs["fast"]
    row = bench.row("fast-reuse")
    if bench.load("fast-reuse"):
        try:
            for rnd in range(args.repeat + 1):
                bench.call("fast-reuse", bench.steps[0], "timed", "solo", rnd, 0)
        except Exception as e:
            bench.fail("fast-reuse", e)
    row.peak_rss = rss_bytes("VmHWM")
    print(CHILD_MARK + json.dumps({k: getattr(row, k) for k in (
        "load_s", "first_call_s", "calls", "weights_vram", "peak_vram", "peak_rss", "error")}))


def run_recipe_child(bench: Bench, args, keys: list[str], timeout: float) -> None:
    """Phase 5 in a child process (--_recipe-child): it loads `keys`, compiles the recipe, interleaves
    them and saves its own results JSON after every step; whatever it saved is merged here, also when
    it was killed at `timeout` (then the recipe row says where it stood)."""
    import signal

    path = args.workdir / "recipe-results.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_recipe-child", "--workdir", str(args.workdir),
           "--size", str(args.size), "--steps", args.steps, "--dtype", args.dtype, "--guidance", str(args.guidance),
           "--repeat", str(args.repeat), "--recipe-mode", args.recipe_mode, "--only", ",".join(keys)]
    if args.toy:
        cmd.append("--toy")
    t0 = time.perf_counter()
    # A session of its own, so that inductor's compile workers go with it when it is killed.
    proc = subprocess.Popen(cmd, start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        killed = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except BaseException:  # this process interrupted (timeout --signal=INT): the child must not outlive it
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    wall = time.perf_counter() - t0
    row = bench.row("recipe")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = None
    if data is None:
        row.error = (f"killed after {wall:.0f} s (the time allowed) before it saved anything" if killed
                     else f"the recipe's process ended (exit {proc.returncode}) before it saved anything")
        return
    for key, child in data["rows"].items():
        if key == "recipe":
            bench.rows["recipe"] = row = Row(**child)
        elif key in bench.rows:  # the snippet and --fast: their calls of this phase, beside their own
            bench.rows[key].calls += [c for c in child["calls"] if c["phase"] == "recipe"]
    bench.pixels += data["pixels"]
    bench.order += data["interleaved_order"]
    if killed or proc.returncode != 0:
        stood = data.get("in_progress") or "after its last save"
        row.error = row.error or ((f"killed after {wall:.0f} s (the time allowed), during: {stood}") if killed
                                  else f"the recipe's process failed (exit {proc.returncode}), during: {stood}")
    row.note = f"child process, {wall:.0f} s in all (imports, loads, the recipe's compile, the rounds)"


def recipe_child_main(args) -> None:
    ctx = make_ctx(args)
    quiet()
    keys = [k for k in RECIPE_ROUND if k in args.only.split(",")]
    bench = Bench(ctx, args, {}, args.workdir / "recipe-results.json")
    bench.steps = parse_steps(args.steps)
    for key in keys:
        bench.save(in_progress=f"load: {key}" + (" (the compile: first call)" if key in COMPILED else ""))
        bench.load(key)
    bench.save(in_progress="recipe: interleaved rounds")
    live = [k for k in keys if bench.rows[k].live]
    if "recipe" in live:
        bench.interleave(live, "recipe", args.repeat)
        bench.compare([("recipe", "snippet", "float rounding (compiled kernels)")])
    bench.save()


# ---------------------------------------------------------------------------------------------
# Output (from the results JSON alone, so that a saved run can be rendered again: --render)


def fmt(x, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def gib(x) -> str:
    return "n/a" if x is None else f"{x / GIB:.2f}"


def header(ctx: Ctx) -> dict:
    import diffusers
    import torch
    import transformers

    from spo_cli import __version__

    if ctx.cuda:
        name = torch.cuda.get_device_name(0)
        props = torch.cuda.get_device_properties(0)
        device = f"{name} ({props.total_memory / GIB:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        sys.path.insert(0, str(HERE))
        from common import machine

        name, device = "cpu", f"CPU: {machine()}"
    return {"device_name": name, "device": device, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "spo-cli": __version__, "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def row_stats(row: dict, phase: str) -> dict[int, dict]:
    """steps → summary of the row's steady calls in `phase`."""
    out = {}
    for steps in sorted({c["steps"] for c in row.get("calls", []) if c["phase"] == phase}):
        st = summary(steady_times(row["calls"], steps, phase))
        if st:
            out[steps] = st
    return out


TABLE_HEAD = ("| contender | steps | N | s/image median | min – max | it/s | TFLOP/s | MFU | ÷ snippet | grad mode "
              "| noise | VRAM weights / peak GiB | load s |")


def table(results: dict, phase: str, keys: list[str]) -> list[str]:
    rows, flops, peak = results["rows"], results["flops_per_step"], results.get("peak_tflops")
    out = [TABLE_HEAD, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for key in keys:
        row = rows.get(key)
        if row is None:
            continue
        if row.get("skipped") or (row.get("error") and not row.get("calls")):
            why = f"skipped: {row['skipped']}" if row.get("skipped") else f"failed: {row['error']}"
            out.append(f"| {row['label']} | | | {why} | | | | | | | | | |")
            continue
        base = rows.get(BASELINE.get(key, ""))
        base_stats = row_stats(base, phase) if base else {}
        for steps, st in row_stats(row, phase).items():
            t = st["median"]
            ran = int(steps * STRENGTH) if key.startswith("img2img") else steps
            tflops = flops * ran / t / 1e12
            mfu = f"{100 * tflops / peak:.3g} %" if peak and key not in ("offload-sequential", "hires") else "n/a"
            tfl = "n/a" if key == "hires" else f"{tflops:.3g}"
            ratio = f"{t / base_stats[steps]['median']:.3f}" if steps in base_stats else "n/a"
            n = f"{st['n']}" if st["steady"] else f"{st['n']} (not steady state: N < {MIN_STEADY})"
            vram = f"{gib(row.get('weights_vram'))} / {gib(row.get('peak_vram'))}"
            out.append(f"| {row['label']} | {steps} | {n} | {t:.3f} | {st['min']:.3f} – {st['max']:.3f} | "
                       f"{ran / t:.3g} | {tfl} | {mfu} | {ratio} | {row.get('grad_mode') or ''} | "
                       f"{row.get('noise_device') or ''} | {vram} | {fmt(row.get('load_s'), '.1f')} |")
        if row.get("error"):
            out.append(f"| {row['label']} | | | failed after {len(row['calls'])} calls: {row['error']} "
                       f"| | | | | | | | | |")
    return out


def render(results: dict) -> str:
    """The markdown tables of a results JSON: main interleaved phase, compile, ratios, pixels, recipe
    phase, solo contenders."""
    rows = results["rows"]
    out = [f"Steady state, this file's definition: {results['steady_definition']}", ""]
    out += ["Interleaved (all loaded at once):", ""] + table(results, "main", INTERLEAVED)
    compiled = [(k, rows[k]) for k in ("fast", "fast-fp8", "fast-reuse", "recipe")
                if k in rows and rows[k].get("first_call_s") is not None]
    if compiled:
        cache = results.get("compile_cache", COMPILE_CACHE[False])
        out += ["", f"Compile: the first call after the load (TORCHINDUCTOR_CACHE_DIR under the workdir, {cache}; "
                "the 2nd process reuses the 1st's):", "",
                "| contender | load s | steps | first call s | steady median s/image | first call − steady s |",
                "|---|---:|---:|---:|---:|---:|"]
        for key, row in compiled:
            first_steps = next((c["steps"] for c in row["calls"] if c["kind"] == "compile"), None)
            st = {}
            for phase in ("main", "recipe", "solo"):
                st = row_stats(row, phase)
                if first_steps in st:
                    break
            med = st.get(first_steps, {}).get("median")
            out.append(f"| {row['label']} | {fmt(row.get('load_s'), '.1f')} | {first_steps} | "
                       f"{row['first_call_s']:.2f} | {fmt(med, '.3f')} | "
                       f"{fmt(None if med is None else row['first_call_s'] - med, '.2f')} |")
    ratio_lines = []
    for a, b, why in RATIOS:
        for phase in ("main", "recipe"):
            sa = row_stats(rows[a], phase) if a in rows else {}
            sb = row_stats(rows[b], phase) if b in rows else {}
            for steps in sorted(set(sa) & set(sb)):
                x, y = sa[steps], sb[steps]
                n = f"{x['n']} / {y['n']}" + ("" if x["steady"] and y["steady"] else
                                             f" (not steady state: N < {MIN_STEADY})")
                ratio_lines.append(f"| {rows[a]['label']} ÷ {rows[b]['label']} | {phase} | {steps} | {n} | "
                                   f"{x['median'] / y['median']:.3f} | {x['min'] / y['max']:.3f} – "
                                   f"{x['max'] / y['min']:.3f} | {why} |")
    if ratio_lines:
        out += ["", "Ratios of steady medians, same process and phase (range: fastest over slowest to slowest over "
                "fastest call):", "", "| ratio | phase | steps | N | median ÷ median | range | what it says |",
                "|---|---|---:|---:|---:|---:|---|", *ratio_lines]
    if results.get("pixels"):
        out += ["", "Pixels on the same seed (8-bit RGB, |Δ| in /255):", "",
                "| a | b | steps | max abs diff | mean abs diff | expected |", "|---|---|---:|---:|---:|---|"]
        for p in results["pixels"]:
            out.append(f"| {rows[p['a']]['label']} | {rows[p['b']]['label']} | {p['steps']} | {p['max']} | "
                       f"{p['mean']:.4f} | {p['expected']} |")
    if any(c["phase"] == "recipe" for r in rows.values() for c in r.get("calls", [])):
        out += ["", "diffusers' compile recipe, interleaved with the snippet and spo --fast (in a process of its own: the "
                "recipe's inductor flags are process-wide):", ""] + table(results, "recipe", RECIPE_ROUND)
    recipe = rows.get("recipe")
    if recipe and (recipe.get("skipped") or recipe.get("error")):
        why = f"skipped: {recipe['skipped']}" if recipe.get("skipped") else f"failed: {recipe['error']}"
        out += ["", f"{recipe['label']}: {why}" + (f" (load {recipe['load_s']:.1f} s)" if recipe.get("load_s") else "")]
    solo = [k for k in SOLO if k in rows]
    if solo:
        out += ["", "One at a time (each loaded alone):", ""] + table(results, "solo", solo)
    reuse = rows.get("fast-reuse")
    if reuse and (reuse.get("skipped") or reuse.get("error")):
        why = f"skipped: {reuse['skipped']}" if reuse.get("skipped") else f"failed: {reuse['error']}"
        out += ["", f"{reuse['label']}: {why}"]
    elif reuse:
        out += ["", f"{reuse['label']}: {reuse.get('note') or ''}; its timed calls: "
                + ", ".join(f"{c['s']:.3f}" for c in reuse["calls"] if c["kind"] == "timed") + " s"]
    if results.get("in_progress"):
        out += ["", f"**The run stopped during: {results['in_progress']}** (what follows it was not measured)."]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def parse_steps(text: str) -> list[int]:
    steps = [int(s) for s in str(text).split(",") if s.strip()]
    if not steps or min(steps) < 1:
        raise SystemExit(f"--steps: expected a comma-separated list of positive integers, not {text!r}")
    return steps


def make_ctx(args) -> Ctx:
    device = "cpu" if args.toy else "cuda"
    return Ctx(toy=args.toy, device=device, dtype=args.dtype, size=args.size, guidance=args.guidance,
               model=args.workdir / "model", vae=args.workdir / "vae",
               recipe_mode=getattr(args, "recipe_mode", "max-autotune"))


def quiet() -> None:
    from spo_cli.engine import quiet_libraries

    quiet_libraries()


def usage(message: str) -> None:
    print(f"bench_gpu.py: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="tiny model on the CPU: the same code path, in minutes")
    ap.add_argument("--steps", default=None, help="comma-separated step counts (default 50,30; --toy: 2)")
    ap.add_argument("--seq-steps", type=int, default=None, help="steps for --offload sequential (default 4)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024; --toy: 64)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                    help="default float16 (--toy: float32)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=MIN_STEADY,
                    help=f"N, steady calls per contender and step count after the settling call (default {MIN_STEADY})")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no phase, load or solo contender after this many seconds (one already running goes on, "
                         "saving round by round); what is done is kept")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="model folders, compile cache, results.json (default: a folder under the temp dir)")
    ap.add_argument("--rebuild", action="store_true", help="build and save the model even if the workdir has it")
    ap.add_argument("--skip", default="", help="contenders to skip: " + ",".join(RUN_ORDER))
    ap.add_argument("--only", default="", help="run only these contenders (comma-separated)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: by GPU name)")
    ap.add_argument("--child-timeout", type=float, default=600.0, help="seconds for the 2nd --fast process")
    ap.add_argument("--check-configs", action="store_true",
                    help="only check benchmarks/sdxl/*.json against the published parameter counts")
    ap.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                    help="print the tables of a saved results.json and exit")
    ap.add_argument("--recipe-mode", default="max-autotune", choices=["max-autotune", "reduce-overhead"],
                    help="torch.compile mode of the diffusers-recipe contender (default: the guide's max-autotune)")
    ap.add_argument("--recipe-timeout", type=float, default=600.0,
                    help="seconds for the recipe's process (also bounded by --deadline-s)")
    ap.add_argument("--keep-cache", action="store_true",
                    help="keep WORKDIR/inductor-cache from an earlier run (default: emptied at the start, so that "
                         "the first --fast call is the whole compile)")
    ap.add_argument("--_fast-child", dest="fast_child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_recipe-child", dest="recipe_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.render:
        try:
            print(render(json.loads(args.render.read_text())))
        except (OSError, ValueError, KeyError) as e:
            usage(f"cannot render {args.render}: {error_text(e)}")
        return
    args.steps = args.steps or ("2" if args.toy else "50,30")
    args.seq_steps = args.seq_steps or (2 if args.toy else 4)
    args.size = args.size or (64 if args.toy else 1024)
    args.dtype = args.dtype or ("float32" if args.toy else "float16")
    args.workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if args.toy else "spo-bench-gpu"))
    args.workdir = args.workdir.resolve()
    if args.repeat < 1:
        usage(f"--repeat must be at least 1 (steady state needs {MIN_STEADY}), not {args.repeat}.")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    if args.fast_child:
        child_main(args)
        return
    if args.recipe_child:
        recipe_child_main(args)
        return

    if args.check_configs:
        ok, lines = check_configs()
        print("\n".join(lines))
        sys.exit(0 if ok else 1)

    steps = parse_steps(args.steps)
    for name in [*args.skip.split(","), *args.only.split(",")]:
        if name and name not in CONTENDERS:
            usage(f"unknown contender '{name}'; choose from {', '.join(RUN_ORDER)}")
    wanted = [k for k in RUN_ORDER if (not args.only or k in args.only.split(",")) and k not in args.skip.split(",")]

    # A fresh compile cache, shared by this process and the second --fast process (set before torch loads);
    # --keep-cache: the one an earlier process filled (gpu_session.sh's compile phase), so that a compile
    # that runs for minutes is paid, and timed, apart from the interleaved rounds.
    cache = args.workdir / "inductor-cache"
    if not args.keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    # Unset, Triton's kernel cache lives in TORCHINDUCTOR_CACHE_DIR/triton/, as for spo itself; a
    # TRITON_CACHE_DIR from the environment would bring kernels compiled before this run.
    os.environ.pop("TRITON_CACHE_DIR", None)

    t_start = time.perf_counter()
    import torch

    quiet()
    ctx = make_ctx(args)
    if ctx.cuda and not torch.cuda.is_available():
        raise SystemExit(f"No CUDA GPU visible to torch {torch.__version__}; use --toy for the CPU run.")
    info = header(ctx)
    print(f"# spo-cli GPU benchmark{' — CPU TOY RUN (tiny random model, not GPU numbers)' if args.toy else ''}\n")
    print(f"Device: {info['device']}; torch {info['torch']}, diffusers {info['diffusers']}, "
          f"transformers {info['transformers']}, spo-cli {info['spo-cli']}, Python {info['python']}; {info['date']}")

    ok, lines = check_configs()
    print("benchmarks/sdxl configs (meta device): " + ("all parameter counts match the published ones"
                                                      if ok else "MISMATCH"))
    for line in lines:
        print("  " + line)
    if not ok:
        raise SystemExit("The SDXL configs do not give the published parameter counts; fix benchmarks/sdxl.")

    # The model.
    marker = args.workdir / "model" / ".spo-bench.json"
    want = {"hash": config_hash(args.toy, ctx.dtype)}
    build_s = None
    if not args.rebuild and marker.exists() and json.loads(marker.read_text()) == want and ctx.vae.exists():
        print(f"Model: reusing {ctx.model} (--rebuild to build it again)")
    else:
        print(f"Model: building {'the tiny' if args.toy else 'full-size'} SDXL with random weights "
              f"({ctx.dtype}) into {ctx.model} and {ctx.vae} ...", flush=True)
        t0 = time.perf_counter()
        build_and_save(ctx.model, ctx.vae, args.toy, ctx.device, ctx.dtype)
        marker.write_text(json.dumps(want))
        build_s = time.perf_counter() - t0
        release(ctx)
        print(f"  built and saved in {build_s:.1f} s")
    size_on_disk = folder_bytes(ctx.model) - sum(p.stat().st_size for p in (ctx.model / "vae").glob("*.safetensors"))
    size_on_disk += folder_bytes(ctx.vae)

    # FLOPs and the peak.
    cfgs = model_configs(args.toy)
    latent = ctx.size // 2 ** (len(cfgs["vae"]["block_out_channels"]) - 1)
    batch = 2 if ctx.guidance > 1 else 1
    step_flops = unet_flops(cfgs["unet"], latent, batch)
    decode_flops = vae_decode_flops(cfgs["vae"], latent)
    if args.toy:
        peak, peak_text = (args.peak_tflops, f"{args.peak_tflops:g} TFLOP/s (--peak-tflops)") if args.peak_tflops \
            else (None, "n/a (CPU toy run)")
    else:
        peak, peak_text = peak_for(info["device_name"], args.peak_tflops)
    work = (f"{ctx.size}×{ctx.size}, guidance {ctx.guidance:g}, batch 1, {ctx.dtype}, prompt {PROMPT!r}, "
            f"{'tiny random SDXL (spo_cli.tiny)' if args.toy else 'SDXL-base-1.0 architecture, random weights'}"
            f" ({size_on_disk / GIB:.2f} GiB on disk)")
    flops_text = (f"UNet forward at {latent}×{latent} latents, batch {batch}: {step_flops / 1e12:.4g} TFLOP per step "
                  f"(FlopCounterMode, meta device); VAE decode {decode_flops / 1e12:.4g} TFLOP per image, not counted in MFU")
    print(f"Work: {work}\nFLOPs: {flops_text}\nPeak for MFU: {peak_text}\n", flush=True)

    meta = {"info": info, "toy": args.toy, "work": work, "steps": steps, "flops_per_step": step_flops,
            "vae_decode_flops": decode_flops, "peak_tflops": peak, "peak": peak_text, "build_s": build_s,
            "snippet_watermark": "off (pipe.watermark = None): spo adds none by default",
            "compile_cache": COMPILE_CACHE[args.keep_cache],
            "recipe": {"inductor": RECIPE_INDUCTOR, "channels_last": ["unet", "vae"], "fuse_qkv_projections": True,
                       "compile": {"unet": f"{args.recipe_mode}, fullgraph",
                                   "vae.decode": f"{args.recipe_mode}, fullgraph"}}}
    bench = Bench(ctx, args, meta, args.workdir / "results.json")
    bench.steps = steps
    for key in RUN_ORDER:
        row = bench.row(key)
        if key not in wanted:
            row.skipped = "--skip/--only"
        elif key in CUDA_ONLY and not ctx.cuda:
            row.skipped = CUDA_ONLY[key]
    bench.save()

    def left() -> float | None:
        return None if args.deadline_s is None else args.deadline_s - (time.perf_counter() - t_start)

    def past(what: str, keys: list[str]) -> bool:
        if left() is not None and left() <= 0:
            for k in keys:
                if bench.rows[k].live:
                    bench.rows[k].skipped = f"past --deadline-s {args.deadline_s:g} ({what} not started)"
            print(f"{what}: skipped, past --deadline-s {args.deadline_s:g}", flush=True)
            bench.save()
            return True
        return False

    try:
        # 1.-3. Everything of the interleaved phase, loaded at once; then the rounds; then the pixels.
        t0 = time.perf_counter()
        live = [k for k in INTERLEAVED if bench.rows[k].live]
        if live and not past("load and interleave", live):
            print("## Load (all kept loaded) and warm up or compile", flush=True)
            for key in live:
                if left() is not None and left() <= 0:
                    bench.rows[key].skipped = f"past --deadline-s {args.deadline_s:g} (not loaded)"
                    continue
                bench.save(in_progress=f"load: {key}")
                bench.load(key)
                bench.save()
            live = [k for k in live if bench.rows[k].live]
            bench.phase("load", t0)
            t0 = time.perf_counter()
            if live:
                print(f"## Interleaved: {', '.join(live)}; for each of {steps} steps one settling round and "
                      f"{args.repeat} timed rounds", flush=True)
                bench.interleave([k for k in ROUND_ORDER if k in live], "main", args.repeat)
                bench.compare(PIXEL_PAIRS)
                bench.phase("interleaved", t0)

        # The objects of the interleaved phase are done with: the next phases run in other processes.
        bench.unload_all()

        # 4. The second --fast process.
        t0 = time.perf_counter()
        reuse = bench.rows["fast-reuse"]
        if reuse.live and not bench.rows["fast"].calls:
            reuse.skipped = "needs the 1st --fast run (compile cache)"
        if reuse.live and not past("fast-reuse", ["fast-reuse"]):
            timeout = args.child_timeout if left() is None else max(60.0, min(args.child_timeout, left() + 60))
            print("## spo --fast in a second process, compile cache from this one", flush=True)
            bench.save(in_progress="fast-reuse: second process running")
            bench.rows["fast-reuse"] = reuse = run_child(ctx, args, steps[0], timeout)
            print(f"  {reuse.error}" if reuse.error else
                  f"  loaded in {reuse.load_s:.1f} s; first call {reuse.first_call_s:.2f} s ({reuse.note})", flush=True)
            bench.phase("fast-reuse", t0)

        # 5. diffusers' compile recipe, in a process of its own: its max-autotune compile cannot be
        # stopped part-way in-process, and a child killed at the deadline leaves this one running.
        t0 = time.perf_counter()
        if bench.rows["recipe"].live and not past("recipe", ["recipe"]):
            keys = [k for k in RECIPE_ROUND if bench.rows[k].live or k == "recipe"]
            timeout = args.recipe_timeout if left() is None else max(30.0, min(args.recipe_timeout, left()))
            print(f"## Snippet + diffusers' compile recipe ({args.recipe_mode}), interleaved with "
                  f"{', '.join(k for k in keys if k != 'recipe')}, in a child process (at most {timeout:.0f} s)",
                  flush=True)
            bench.save(in_progress="recipe: child process running")
            run_recipe_child(bench, args, keys, timeout)
            bench.phase("recipe", t0)

        # 6. The rest, one at a time.
        for key in SOLO:
            if not bench.rows[key].live or past(key, [key]):
                continue
            t0 = time.perf_counter()
            print(f"## {CONTENDERS[key]} (loaded alone)", flush=True)
            bench.save(in_progress=f"solo: {key}")
            bench.solo(key)
            bench.phase(key, t0)
        bench.compare([("img2img", "img2img-snippet", "CPU toy: 0; CUDA: other noise device")])
    except KeyboardInterrupt:  # `timeout --signal=INT`: keep what was measured, say where it stopped
        print("\nInterrupted: results so far are saved.", flush=True)
        bench.save(in_progress=json.loads(bench.path.read_text()).get("in_progress") or "interrupted")
        raise SystemExit(130)
    bench.save()

    total = time.perf_counter() - t_start
    print(f"\n## Results{' — CPU toy run, not GPU numbers' if args.toy else ''}\n")
    print(f"- Device: {info['device']}")
    print(f"- torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
          f"spo-cli {info['spo-cli']}, Python {info['python']}; {info['date']}")
    print(f"- Work: {work}")
    print(f"- FLOPs: {flops_text}")
    print(f"- MFU = UNet FLOPs × steps ÷ (s/image) ÷ peak; peak: {peak_text}")
    print("- s/image and it/s are end to end (text encoders, denoising, VAE decode); every call's raw time is in "
          "results.json (rows.<key>.calls)")
    print(f"- Model build + save: {'reused from an earlier run' if build_s is None else f'{build_s:.1f} s'}; "
          f"whole benchmark: {total:.0f} s\n")
    print(render(json.loads(bench.path.read_text())))
    print(f"\nResults saved to {bench.path}")


if __name__ == "__main__":
    main()

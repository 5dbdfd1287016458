"""SPO-SDXL at full size on one GPU: the authors' diffusers snippet against `spo`, with no Hub access.

In one process it builds an SDXL with random weights from SDXL-base-1.0's published component
configs (benchmarks/sdxl/*.json: same architecture, same parameter count, same FLOPs as the real
checkpoint), saves it in diffusers layout (float16 safetensors) with the fp16-fix VAE as a separate
folder, then times, at 1024×1024, guidance 5.0, batch 1, for each of --steps:

  a. the authors' snippet: StableDiffusionXLPipeline.from_pretrained(folder, torch_dtype=float16,
     vae=AutoencoderKL.from_pretrained(vae_folder, ...)).to("cuda"), CUDA generator seeded 42;
  b. spo, default options: Engine.load(resolve_model(ModelRequest(model=folder, vae=vae_folder)), "cuda");
  c. spo --fast (torch.compile with CUDA graphs): the first call (compile) apart from steady state, then
     a second process that loads with --fast again and reports its first call, to show that the
     compile cache (TORCHINDUCTOR_CACHE_DIR, a fresh folder under --workdir for both) is reused;
  d. spo --offload model, and --offload sequential (slow: at --seq-steps steps only);
  e. diffusers' img2img made with from_pipe from a.'s pipeline, on an input image at --size, strength 0.75;
  f. spo --image, the same input and strength (its time ÷ e.'s in the ratio column);
  g. spo --hires 1.5 (latent upscaler, A1111's default): --size, then 1.5× — its peak VRAM is what must
     fit a 24 GB GPU at 1024 → 1536; the VAE options spo turns on to fit are printed.

For each: seconds per image, it/s (steps ÷ seconds per image, end to end: text encoders, denoising
and VAE decode), achieved TFLOP/s and MFU (UNet FLOPs only, counted once with FlopCounterMode on
the meta device at batch 2 for classifier-free guidance, × steps, ÷ seconds per image ÷ the GPU's
dense fp16 peak), peak VRAM (torch.cuda.max_memory_allocated, reset before each load), load time
(from a warm page cache to ready, synchronised) and peak host RSS (the process's high-water mark,
reset before each load through /proc/self/clear_refs; ru_maxrss where that is not possible).
Each contender is warmed up once before it is timed (except the compile measurement) and freed
before the next. Rows are printed as they finish and saved to WORKDIR/results.json; the markdown
table comes at the end.

    python benchmarks/bench_gpu.py [--steps 30,50] [--seq-steps 4] [--skip fast-reuse,...]
                                   [--only ...] [--repeat N] [--deadline-s S] [--workdir DIR]
    python benchmarks/bench_gpu.py --toy            # the same code path on the CPU, tiny model
    python benchmarks/bench_gpu.py --check-configs  # parameter counts of benchmarks/sdxl/*.json

--toy runs the very same code on the CPU with the tiny random SDXL of spo_cli.tiny (64×64, 2 steps,
float32): CUDA-only parts (VRAM, offload modes, MFU) are reported as skipped or n/a.
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
    "snippet": "a. authors' snippet (diffusers)",
    "spo": "b. spo (default)",
    "fast": "c. spo --fast",
    "fast-reuse": "c. spo --fast, 2nd process",
    "offload-model": "d. spo --offload model",
    "offload-sequential": "d. spo --offload sequential",
    "img2img-snippet": "e. diffusers img2img (from_pipe of a.)",
    "img2img": "f. spo --image",
    "hires": "g. spo --hires 1.5 (latent)",
}
RUN_ORDER = ["snippet", "spo", "offload-model", "offload-sequential", "fast", "fast-reuse", "img2img-snippet",
             "img2img", "hires"]
STRENGTH = 0.75  # img2img rows: A1111's default; they run int(steps × STRENGTH) of each step count
HIRES = 1.5  # the hires row: --size, then ×1.5 (1024² → 1536², what must fit a 24 GB GPU)
# Whose time each row is divided by in the table's "time ÷ snippet" column.
BASELINE = {"spo": "snippet", "fast": "snippet", "offload-model": "snippet", "offload-sequential": "snippet",
            "img2img": "img2img-snippet"}


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
    load_s: float | None = None
    first_call_s: float | None = None  # --fast: the call that compiles (steps = first of --steps)
    times: dict[int, float] = field(default_factory=dict)  # steps → seconds per image
    peak_vram: int | None = None
    peak_rss: int | None = None
    rss_before: int | None = None
    rss_is_cumulative: bool = False
    skipped: str | None = None
    error: str | None = None
    note: str | None = None


def load_snippet(ctx: Ctx):
    # The SPO authors' inference snippet, with a local folder for the checkpoint and the VAE.
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    dt = getattr(torch, ctx.dtype)
    pipe = StableDiffusionXLPipeline.from_pretrained(
        str(ctx.model), torch_dtype=dt, vae=AutoencoderKL.from_pretrained(str(ctx.vae), torch_dtype=dt)
    ).to(ctx.device)
    pipe.set_progress_bar_config(disable=True)  # the bar's cost is nil; it only clutters the log
    return pipe


def call_snippet(ctx: Ctx, pipe, steps: int) -> None:
    import torch

    pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=ctx.guidance, height=ctx.size, width=ctx.size,
         generator=torch.Generator(ctx.device).manual_seed(SEED)).images[0]


def load_spo(ctx: Ctx, **options):
    from spo_cli.engine import Engine
    from spo_cli.request import ModelRequest, RunOptions
    from spo_cli.resolve import resolve_model

    request = ModelRequest(model=str(ctx.model), vae=str(ctx.vae), dtype=ctx.dtype, device=ctx.device)
    return Engine.load(resolve_model(request, ctx.dtype, local_only=True), ctx.device, RunOptions(**options))


def call_spo(ctx: Ctx, engine, steps: int) -> None:
    from spo_cli.request import ImageRequest

    engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance, width=ctx.size,
                             height=ctx.size)])


def load_snippet_img2img(ctx: Ctx):
    # diffusers' own img2img on the snippet's components: what spo's --image is checked against.
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    return StableDiffusionXLImg2ImgPipeline.from_pipe(load_snippet(ctx), torch_dtype=getattr(torch, ctx.dtype),
                                                      add_watermarker=False)


def call_snippet_img2img(ctx: Ctx, pipe, steps: int) -> None:
    import torch
    from PIL import Image

    with Image.open(ctx.input_image) as im:
        image = im.convert("RGB")
    pipe(prompt=PROMPT, image=image, strength=STRENGTH, num_inference_steps=steps, guidance_scale=ctx.guidance,
         generator=torch.Generator(ctx.device).manual_seed(SEED)).images[0]


def call_spo_img2img(ctx: Ctx, engine, steps: int) -> None:
    from spo_cli import inputs
    from spo_cli.request import ImageRequest

    engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance,
                             image=inputs.check(ctx.input_image), strength=STRENGTH)])


def call_spo_hires(ctx: Ctx, engine, steps: int) -> None:
    from spo_cli.request import Hires, ImageRequest

    engine.run([ImageRequest(prompt=PROMPT, seed=SEED, steps=steps, guidance=ctx.guidance, width=ctx.size,
                             height=ctx.size, hires=Hires(HIRES))])
    auto = engine.call_facts({}).get("run_options")
    if auto:  # the VAE options spo turned on to fit (the sidecar's run_options.vae_auto)
        print(f"  VAE options turned on to fit: {auto['vae_auto']}", flush=True)


def release(ctx: Ctx) -> None:
    import torch

    gc.collect()
    torch._dynamo.reset()  # compiled graphs and CUDA graphs of --fast
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()
    trim_host_memory()


def measure(ctx: Ctx, row: Row, load, call, steps: list[int], *, compile_call: bool = False,
            repeat: int = 1, log=print) -> Row:
    """Load (timed), warm up or compile (timed as first_call_s when `compile_call`), time each of `steps`."""
    import torch

    warm_page_cache(ctx.model, ctx.vae)
    trim_host_memory()
    if ctx.cuda:
        held = torch.cuda.memory_allocated()
        if held > 256 * 1024**2:
            log(f"  warning: {held / GIB:.2f} GiB still allocated on the GPU before this load")
        torch.cuda.reset_peak_memory_stats()
    row.rss_before = rss_bytes("VmRSS")
    row.rss_is_cumulative = not reset_rss_peak()
    obj = None
    try:
        ctx.sync()
        t0 = time.perf_counter()
        obj = load()
        ctx.sync()
        row.load_s = time.perf_counter() - t0
        log(f"  loaded in {row.load_s:.1f} s")
        t0 = time.perf_counter()
        call(obj, steps[0])  # warm-up (or, with --fast, the compiling first call)
        ctx.sync()
        first = time.perf_counter() - t0
        if compile_call:
            row.first_call_s = first
        log(f"  {'first call (compile + run)' if compile_call else 'warm-up'} at {steps[0]} steps: {first:.2f} s")
        for s in steps:
            runs = []
            for _ in range(repeat):
                ctx.sync()
                t0 = time.perf_counter()
                call(obj, s)
                ctx.sync()
                runs.append(time.perf_counter() - t0)
            row.times[s] = statistics.median(runs)
            log(f"  {s} steps: {row.times[s]:.3f} s/image" + (f" (median of {repeat})" if repeat > 1 else ""))
    except Exception as e:  # an OOM or a library error in one contender must not lose the others
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        traceback.print_exc()
    finally:
        if ctx.cuda:
            row.peak_vram = torch.cuda.max_memory_allocated()
        row.peak_rss = rss_bytes("VmHWM")
        if obj is not None:
            pipe = getattr(obj, "pipe", obj)
            try:
                pipe.remove_all_hooks()  # accelerate's offload hooks hold the modules
            except Exception:
                pass
            del pipe
        del obj
        release(ctx)
    return row


def run_child(ctx: Ctx, args, steps: int, timeout: float) -> Row:
    """Start this script again (--_fast-child): load with --fast, first call, steady call."""
    row = Row("fast-reuse", CONTENDERS["fast-reuse"])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_fast-child", "--workdir", str(args.workdir),
           "--size", str(ctx.size), "--steps", str(steps), "--dtype", ctx.dtype, "--guidance", str(ctx.guidance)]
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
    row.load_s, row.first_call_s = data["load_s"], data["first_call_s"]
    row.times = {int(k): v for k, v in data["times"].items()}
    row.peak_vram, row.peak_rss, row.error = data["peak_vram"], data["peak_rss"], data["error"]
    row.note = f"process wall time {wall:.1f} s (imports, load, first and second call)"
    return row


def child_main(args) -> None:
    """The second --fast process: same folders, same TORCHINDUCTOR_CACHE_DIR (from the environment)."""
    ctx = make_ctx(args)
    quiet()
    steps = parse_steps(args.steps)[:1]
    row = measure(ctx, Row("fast-reuse", CONTENDERS["fast-reuse"]), lambda: load_spo(ctx, fast=True),
                  lambda e, s: call_spo(ctx, e, s), steps, compile_call=True, log=lambda m: print(m, file=sys.stderr))
    print(CHILD_MARK + json.dumps({"load_s": row.load_s, "first_call_s": row.first_call_s, "times": row.times,
                                   "peak_vram": row.peak_vram, "peak_rss": row.peak_rss, "error": row.error}))


# ---------------------------------------------------------------------------------------------
# Output


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


def table(ctx: Ctx, info: dict, rows: dict[str, Row], step_flops: int, peak: float | None) -> str:
    out = []
    out.append("| contender | steps | s/image | it/s | TFLOP/s | MFU | time ÷ snippet | peak VRAM GiB "
               "| load s | peak RSS GiB |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key in CONTENDERS:
        row = rows.get(key)
        if row is None:
            continue
        if row.skipped or row.error:
            why = f"skipped: {row.skipped}" if row.skipped else f"failed: {row.error}"
            out.append(f"| {row.label} | | {why} | | | | | {gib(row.peak_vram)} | {fmt(row.load_s, '.1f')} | |")
            continue
        if key == "fast-reuse":
            continue  # in the compile table
        base_row = rows.get(BASELINE.get(key, ""))
        for s, t in sorted(row.times.items()):
            # Steps the UNet ran: img2img runs the last int(steps × strength); the hires row mixes two
            # sizes, so no FLOP count (its it/s are of the steps asked for).
            ran = int(s * STRENGTH) if key.startswith("img2img") else s
            tflops = step_flops * ran / t / 1e12
            mfu = f"{100 * tflops / peak:.3g} %" if peak and key not in ("offload-sequential", "hires") else "n/a"
            if key == "offload-sequential":
                tflops_s, its = "n/a", f"{s / t:.3g} ({t / s:.3g} s/step)"
            else:
                tflops_s, its = ("n/a" if key == "hires" else f"{tflops:.3g}"), f"{ran / t:.3g}"
            base = (base_row.times.get(s) if base_row and not base_row.error and not base_row.skipped else None)
            ratio = f"{t / base:.3f}" if base else "n/a"
            rss = gib(row.peak_rss) + (" (cumulative)" if row.rss_is_cumulative else "")
            out.append(f"| {row.label} | {s} | {t:.3f} | {its} | {tflops_s} | {mfu} | {ratio} | "
                       f"{gib(row.peak_vram)} | {fmt(row.load_s, '.1f')} | {rss} |")
    fast, reuse = rows.get("fast"), rows.get("fast-reuse")
    lines = []
    for row, what in ((fast, "1st process, fresh cache"), (reuse, "2nd process, cache from the 1st")):
        if row is None or row.skipped or row.error or row.first_call_s is None or not row.times:
            continue
        s = min(row.times)
        lines.append(f"| {what} | {fmt(row.load_s, '.1f')} | {s} | {row.first_call_s:.2f} | {row.times[s]:.3f} | "
                     f"{row.first_call_s - row.times[s]:.2f} |")
    if lines:
        out += ["", "spo --fast, compile (TORCHINDUCTOR_CACHE_DIR under the workdir, emptied at the start):", "",
                "| process | load s | steps | first call s | steady s/image | compile overhead s |",
                "|---|---:|---:|---:|---:|---:|", *lines]
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
               model=args.workdir / "model", vae=args.workdir / "vae")


def quiet() -> None:
    from spo_cli.engine import quiet_libraries

    quiet_libraries()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="tiny model on the CPU: the same code path, in minutes")
    ap.add_argument("--steps", default=None, help="comma-separated step counts (default 30,50; --toy: 2)")
    ap.add_argument("--seq-steps", type=int, default=None, help="steps for --offload sequential (default 4)")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024; --toy: 64)")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                    help="default float16 (--toy: float32)")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=1, help="timed calls per step count; the median is shown")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="skip contenders that would start after this many seconds (rows so far are kept)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="model folders, compile cache, results.json (default: a folder under the temp dir)")
    ap.add_argument("--rebuild", action="store_true", help="build and save the model even if the workdir has it")
    ap.add_argument("--skip", default="", help="contenders to skip: " + ",".join(RUN_ORDER))
    ap.add_argument("--only", default="", help="run only these contenders (comma-separated)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: by GPU name)")
    ap.add_argument("--child-timeout", type=float, default=600.0, help="seconds for the 2nd --fast process")
    ap.add_argument("--check-configs", action="store_true",
                    help="only check benchmarks/sdxl/*.json against the published parameter counts")
    ap.add_argument("--_fast-child", dest="fast_child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.steps = args.steps or ("2" if args.toy else "30,50")
    args.seq_steps = args.seq_steps or (2 if args.toy else 4)
    args.size = args.size or (64 if args.toy else 1024)
    args.dtype = args.dtype or ("float32" if args.toy else "float16")
    args.workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if args.toy else "spo-bench-gpu"))
    args.workdir = args.workdir.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

    if args.fast_child:
        child_main(args)
        return

    if args.check_configs:
        ok, lines = check_configs()
        print("\n".join(lines))
        sys.exit(0 if ok else 1)

    steps = parse_steps(args.steps)
    wanted = [k for k in RUN_ORDER if (not args.only or k in args.only.split(",")) and k not in args.skip.split(",")]
    for name in [*args.skip.split(","), *args.only.split(",")]:
        if name and name not in CONTENDERS:
            raise SystemExit(f"unknown contender '{name}'; choose from {', '.join(RUN_ORDER)}")

    # A fresh compile cache, shared by this process and the second --fast process (set before torch loads).
    cache = args.workdir / "inductor-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
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

    # 1. The model.
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

    # 2. FLOPs and the peak.
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

    # 3. The contenders.
    rows: dict[str, Row] = {}
    results_path = args.workdir / "results.json"

    def save() -> None:
        results_path.write_text(json.dumps({
            "info": info, "work": work, "flops_per_step": step_flops, "vae_decode_flops": decode_flops,
            "peak_tflops": peak, "build_s": build_s, "rows": {k: vars(r) for k, r in rows.items()}}, indent=2))

    for key in RUN_ORDER:
        row = Row(key, CONTENDERS[key])
        rows[key] = row
        if key not in wanted:
            row.skipped = "--skip/--only"
        elif key.startswith("offload") and not ctx.cuda:
            row.skipped = "needs CUDA"
            print(f"{row.label}: skipped: needs CUDA", flush=True)
        elif key == "fast-reuse" and (rows["fast"].skipped or rows["fast"].error):
            row.skipped = "needs the 1st --fast run"
        elif args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
            row.skipped = f"past --deadline-s {args.deadline_s:g}"
            print(f"{row.label}: skipped: {row.skipped}", flush=True)
        if row.skipped:
            save()
            continue
        print(f"{row.label} ...", flush=True)
        if key == "snippet":
            measure(ctx, row, lambda: load_snippet(ctx), lambda p, s: call_snippet(ctx, p, s), steps, repeat=args.repeat)
        elif key == "spo":
            measure(ctx, row, lambda: load_spo(ctx), lambda e, s: call_spo(ctx, e, s), steps, repeat=args.repeat)
        elif key == "fast":
            measure(ctx, row, lambda: load_spo(ctx, fast=True), lambda e, s: call_spo(ctx, e, s), steps,
                    compile_call=True, repeat=args.repeat)
        elif key == "fast-reuse":
            timeout = args.child_timeout
            if args.deadline_s:
                timeout = max(60.0, min(timeout, args.deadline_s + 60 - (time.perf_counter() - t_start)))
            rows[key] = row = run_child(ctx, args, steps[0], timeout)
            if row.error:
                print(f"  failed: {row.error}")
            else:
                print(f"  loaded in {row.load_s:.1f} s; first call {row.first_call_s:.2f} s; then "
                      f"{next(iter(row.times.values())):.3f} s/image ({row.note})")
        elif key == "offload-model":
            measure(ctx, row, lambda: load_spo(ctx, offload="model"), lambda e, s: call_spo(ctx, e, s), steps,
                    repeat=args.repeat)
        elif key == "offload-sequential":
            measure(ctx, row, lambda: load_spo(ctx, offload="sequential"), lambda e, s: call_spo(ctx, e, s),
                    [args.seq_steps])
        elif key == "img2img-snippet":
            measure(ctx, row, lambda: load_snippet_img2img(ctx), lambda p, s: call_snippet_img2img(ctx, p, s), steps,
                    repeat=args.repeat)
        elif key == "img2img":
            measure(ctx, row, lambda: load_spo(ctx), lambda e, s: call_spo_img2img(ctx, e, s), steps,
                    repeat=args.repeat)
        elif key == "hires":
            measure(ctx, row, lambda: load_spo(ctx), lambda e, s: call_spo_hires(ctx, e, s), steps, repeat=args.repeat)
        if ctx.cuda and row.peak_vram is not None:
            print(f"  peak VRAM {gib(row.peak_vram)} GiB, peak RSS {gib(row.peak_rss)} GiB", flush=True)
        save()

    total = time.perf_counter() - t_start
    print(f"\n## Results{' — CPU toy run, not GPU numbers' if args.toy else ''}\n")
    print(f"- Device: {info['device']}")
    print(f"- torch {info['torch']}, diffusers {info['diffusers']}, transformers {info['transformers']}, "
          f"spo-cli {info['spo-cli']}, Python {info['python']}; {info['date']}")
    print(f"- Work: {work}")
    print(f"- FLOPs: {flops_text}")
    print(f"- MFU = UNet FLOPs × steps ÷ (s/image) ÷ peak; peak: {peak_text}")
    print("- s/image and it/s are end to end (text encoders, denoising, VAE decode); each contender warmed up "
          "once; peak RSS is the process high-water mark from just before the load")
    print(f"- Model build + save: {'reused from an earlier run' if build_s is None else f'{build_s:.1f} s'}; "
          f"whole benchmark: {total:.0f} s\n")
    print(table(ctx, info, rows, step_flops, peak))
    print(f"\nResults saved to {results_path}")


if __name__ == "__main__":
    main()

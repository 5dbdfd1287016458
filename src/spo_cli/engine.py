"""The SDXL pipeline: build it from resolved folders, set its speed and memory options, run one call.

One of the few modules that import torch and diffusers at module level (with `encoding`, `bank`,
`tiny` and the scorers' `scores/models`); the CLI reaches it only through `cli/loading`, after every
check that needs no model.

It knows nothing of paths, file names or metadata; it takes resolved local folders and image
requests and gives back PIL images and plain facts about how they were made.
"""

from __future__ import annotations

import math
import os
import platform
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace

# Library chatter (offline notices, per-component loading bars, "No LoRA keys for the text
# encoder") is not for users of a CLI; set before the libraries read these variables on import.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _default_compile_cache() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spo-cli", "torch-compile")


# diffusers imports torch._inductor.config, which sets TORCHINDUCTOR_CACHE_DIR to /tmp/torchinductor_$USER
# when unset (cleared between jobs on many GPU nodes): spo's persistent default must come first.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _default_compile_cache())

import torch  # noqa: E402

from spo_cli import __version__, devices, encoding, presets, quantize, speed, validate  # noqa: E402
from spo_cli.errors import GenerationError, ModelError, UsageError, oom_hint, translate  # noqa: E402
from spo_cli.request import Generated, ImageRequest, RunOptions  # noqa: E402

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LORA_ADAPTER = "spo"


def quiet_libraries(debug: bool = False) -> None:
    """Silence diffusers / transformers / huggingface_hub logging and bars (unless debugging)."""
    if not debug:
        import logging

        # torchao (spo-cli[fp8]), which diffusers imports whenever it is installed, says at import which of
        # its CUDA kernels it could not load and which of its enums torch now handles: nothing for a user.
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    import diffusers
    import huggingface_hub
    import transformers

    check_torchao()
    if debug:
        for lib in (diffusers, transformers, huggingface_hub):
            lib.utils.logging.set_verbosity_warning()
        return
    warnings.filterwarnings("ignore")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.logging.set_verbosity_error()


def check_torchao() -> None:
    """diffusers imports torchao with its models whenever it is installed (spo-cli[fp8]), with or without
    --quantize: one that is installed but cannot be imported (built for another torch) failed every model
    as an "Unexpected RuntimeError" from inside diffusers."""
    from diffusers.utils import is_torchao_available

    if not is_torchao_available():
        return
    try:
        import torchao  # noqa: F401
    except Exception as e:
        why = "".join(c if c.isprintable() else "?" for c in (str(e).strip().splitlines() or [""])[0][:200])
        raise ModelError(f"torchao {quantize.torchao_version()} is installed but cannot be imported "
                         f"({type(e).__name__}: {why}), and "
                         "diffusers imports it whenever it is installed, so no model can load.",
                         f'Install the torchao that goes with torch {torch.__version__} (pip install -U '
                         '"spo-cli[fp8]"), or uninstall it (pip uninstall torchao) if you do not use --quantize '
                         'fp8.') from e


def machine() -> devices.Machine:
    cuda = torch.cuda.is_available()
    return devices.Machine(torch.__version__, bool(torch.version.cuda or getattr(torch.version, "hip", None)),
                           torch.cuda.device_count() if cuda else 0, torch.backends.mps.is_available())


def pick_device(requested: str = "auto", local_rank: int | None = None) -> tuple[str, list[str]]:
    """(device, warnings): `auto` is CUDA, else Apple MPS, else CPU. Under torchrun / accelerate
    launch (`local_rank` set), a bare `cuda` becomes this process's own GPU, cuda:LOCAL_RANK."""
    notes = []
    if local_rank is not None and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank}", notes
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda", notes
        if torch.backends.mps.is_available():
            return "mps", notes
        notes.append("No GPU found: running on the CPU, which takes minutes per full-size image.")
        return "cpu", notes
    devices.check(requested, (), None, machine())
    return requested, notes


def check_generator_devices(generator_devices) -> None:
    """Seeded noise drawn on a device this machine lacks: say so, before anything loads."""
    devices.check("auto", generator_devices, None, machine())


def pick_dtype(device: str, requested: str = "auto") -> tuple[str, list[str]]:
    """(dtype, warnings): float16 on GPUs (what the authors ran), float32 on the CPU."""
    requested = presets.DTYPES.get(requested, requested)
    if requested == "auto":
        return ("float32" if device == "cpu" else "float16"), []
    if requested not in TORCH_DTYPES:
        raise UsageError(f"Unknown dtype '{requested}'.", "Use auto, fp16, bf16 or fp32.")
    if device == "cpu" and requested != "float32":
        return requested, [f"--dtype {requested} on the CPU is many times slower than float32, and some "
                           "operations fall back or lose precision; float32 is the CPU default."]
    return requested, []


def check_options(options: RunOptions, device: str) -> None:
    if options.offload and not device.startswith(("cuda", "mps")):
        raise UsageError(devices.offload_refusal(options.offload, device), devices.OFFLOAD_HINT)
    speed.sdpa_order()  # SPO_SDPA_BACKENDS, refused before anything loads


def configure_compile_cache() -> str:
    """Where torch.compile keeps its artifacts (graphs, kernels, autotuning) for later processes:
    TORCHINDUCTOR_CACHE_DIR if set, else ~/.cache/spo-cli/torch-compile."""
    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", _default_compile_cache())


def versions() -> dict:
    import diffusers
    import huggingface_hub
    import transformers

    return {
        "spo-cli": __version__,
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }


@contextmanager
def unloadable(part):
    """Turn what diffusers raises for files it cannot build a model from (a config with impossible
    values, weights of the wrong shape, keys it does not know) into a message naming the model.
    Out of memory and a full disk keep their own messages."""
    try:
        yield
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        if translate(e) is not None:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:200]
        fix = (f"For a Hub model, `spo download {part.id} --force` fetches its files again." if part.source == "hub"
               else "spo loads SDXL single-file checkpoints in the original (A1111) layout." if part.sha256
               else "Check its config files and weights: spo loads standard diffusers SDXL folders.")
        raise ModelError(f"'{part.id}' could not be loaded: {type(e).__name__}: {first}", fix) from e


def _json_safe(value):
    """Scheduler configs hold values like -inf (DPM-Solver's lambda_min_clipped); JSON has no such
    numbers, so they are recorded as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


# Peak memory of one SDXL VAE decode without tiling, in bytes per output pixel per image at float32
# (float16: half). ESTIMATED, not measured on a GPU: benchmarks/vae_memory.py measured it on the CPU
# with SDXL's VAE architecture (random weights), where a decode at 512² and 768² peaked at about
# 3.9 kB per pixel above the loaded model (2026-12-02), linear in the pixels: about 7.5 float32 tensors of the
# decoder's last 128 channels at full size alive at once. CUDA's memory-efficient attention is
# linear too, and its caching allocator rounds blocks up, hence the margin. An encode (img2img's
# input) peaked at two thirds of that, so the decode's figure covers both.
VAE_BYTES_PER_PIXEL_FP32 = 3900
VAE_MARGIN = 1.3


def vae_bytes(width: int, height: int, images: int, element_bytes: int) -> int:
    """Estimated GPU memory one un-tiled SDXL VAE decode of `images` images needs."""
    return int(VAE_BYTES_PER_PIXEL_FP32 * element_bytes / 4 * width * height * images * VAE_MARGIN)


def vae_plan(width: int, height: int, images: int, element_bytes: int, available: int | None,
             tile_above: int) -> dict:
    """What a VAE pass of `images` images at width×height needs to fit in `available` bytes (None:
    not a GPU, nothing to decide): {} when it fits; else slicing (one image at a time) when a batch
    is what does not fit, and tiling when one image does not, if the image is larger than a tile
    (`tile_above` pixels a side: diffusers tiles only such images). Each entry is a fact for the sidecar."""
    if available is None or vae_bytes(width, height, images, element_bytes) <= available:
        return {}
    plan = {"estimated_gib": round(vae_bytes(width, height, images, element_bytes) / 2**30, 2),
            "available_gib": round(available / 2**30, 2)}
    if images > 1:
        plan["vae_slicing"] = True
    if vae_bytes(width, height, 1, element_bytes) > available and max(width, height) > tile_above:
        plan["vae_tiling"] = True
    return plan if len(plan) > 2 else {}


def load_loras(pipe, resolved) -> tuple[str, ...]:
    """Load the model's LoRA (the preset's, or the first --lora) as adapter LORA_ADAPTER and those
    stacked after it (more --lora, a prompt's <lora:> tags) as adapters of their own, then weigh them
    all with one set_adapters: diffusers' multi-adapter API, which sums each adapter's update at its
    weight. The adapters' names, in that order."""
    loras = ([(LORA_ADAPTER, resolved.lora, resolved.lora_scale)] if resolved.lora is not None else [])
    for i, (part, asked) in enumerate(resolved.extra_loras, 1):
        # A1111's <lora:name:te:unet> gives the text encoders a weight apart from the UNet's.
        weight = asked.scale if asked.unet_scale is None else {
            "unet": asked.unet_scale, "text_encoder": asked.scale, "text_encoder_2": asked.scale}
        loras.append((f"lora{i}", part, weight))
    for name, part, _ in loras:
        with unloadable(part):
            pipe.load_lora_weights(str(part.path.parent), weight_name=part.path.name, adapter_name=name)
    if loras:
        pipe.set_adapters([name for name, _, _ in loras], adapter_weights=[weight for _, _, weight in loras])
    return tuple(name for name, _, _ in loras)


class Engine:
    """A loaded pipeline on a device, ready to run batches of `ImageRequest`s."""

    def __init__(self, pipe, device: str, dtype: str, *, lora_scale: float | None = None,
                 options: RunOptions = RunOptions(), adapters: tuple[str, ...] | None = None):
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.lora_scale = lora_scale
        # The LoRA adapters in use, for fast mode to fold in: the one LoRA's unless stacked.
        self.adapters = adapters if adapters is not None else ((LORA_ADAPTER,) if lora_scale is not None else ())
        self.options = options
        self.quantize: str | None = None  # ModelRequest.quantize, applied by Engine.load (spo_cli.quantize)
        pipe.set_progress_bar_config(disable=True)
        self._schedulers = {"default": pipe.scheduler}
        self._schedules_ok: set[tuple[str, int]] = set()
        self._plans: dict[tuple, encoding.Plan] = {}
        self._derived: dict[str, object] = {}
        self._watermarker = None  # diffusers' StableDiffusionXLWatermarker, made on the first --watermark
        self._vae_auto: dict = {}  # what the last run turned on for the VAE to fit (vae_plan), for its sidecars
        self._sdpa = speed.sdpa_order()  # SPO_SDPA_BACKENDS: the UNet's attention backends (None: torch's order)
        self.decode_warmup = speed.DecodeWarmup()  # made to call the decode by make_fast, on CUDA

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, resolved, device: str, options: RunOptions = RunOptions()) -> Engine:
        """Build the pipeline the way the SPO authors' inference script does, from local folders,
        then apply the memory and speed options."""
        from diffusers import AutoencoderKL, StableDiffusionXLPipeline

        check_options(options, device)
        quantize.check_machine(resolved.request.quantize, device, resolved.dtype)  # before anything loads
        torch_dtype = TORCH_DTYPES[resolved.dtype]
        # Straight to the GPU: safetensors are memory-mapped and each tensor is copied once, to the
        # device, in the target dtype (no float32 detour, no second copy in host memory). diffusers
        # takes only the bare "cuda" here; other devices load to host memory and move.
        # (diffusers' single-file loader takes no device_map.)
        direct = device == "cuda" and options.offload is None and resolved.config is None
        kwargs = {"device_map": "cuda"} if direct else {}
        if resolved.vae is not None:
            with unloadable(resolved.vae):
                kwargs["vae"] = AutoencoderKL.from_pretrained(
                    resolved.vae.path, subfolder=resolved.vae.subfolder, torch_dtype=torch_dtype,
                    use_safetensors=True, variant=resolved.vae.variant, **({"device_map": "cuda"} if direct else {}),
                )
        with unloadable(resolved.pipeline):
            if resolved.config is not None:
                # One file in the original layout, built with SDXL base's configs from the cache
                # (resolve has checked it is an SDXL safetensors file); nothing is fetched here.
                pipe = StableDiffusionXLPipeline.from_single_file(
                    str(resolved.pipeline.path), config=str(resolved.config.path), torch_dtype=torch_dtype,
                    local_files_only=True, add_watermarker=False, **kwargs,
                )
            else:
                # add_watermarker=False: diffusers' default (None) marks every image whenever
                # invisible-watermark is installed; spo marks only on --watermark (see `run`).
                pipe = StableDiffusionXLPipeline.from_pretrained(
                    resolved.pipeline.path, torch_dtype=torch_dtype, use_safetensors=True,
                    variant=resolved.pipeline.variant, add_watermarker=False, **kwargs,
                )
        lora_scale = resolved.lora_scale if resolved.lora is not None else None
        adapters = load_loras(pipe, resolved)
        if options.offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        elif options.offload == "sequential":
            pipe.enable_sequential_cpu_offload(device=device)
        elif not direct:
            pipe.to(device)
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        if options.vae_slicing:
            pipe.vae.enable_slicing()
        engine = cls(pipe, device, resolved.dtype, lora_scale=lora_scale, options=options, adapters=adapters)
        engine.quantize = resolved.request.quantize
        if options.fast:
            engine.make_fast()  # quantizes between its fusing and its compiling
        elif engine.quantize:
            engine.adapters = quantize.apply(engine.pipe, engine.adapters)
        return engine

    def make_fast(self) -> None:
        """Lossless speed-ups: LoRA folded in, fused QKV, channels_last, torch.compile of the UNet (with
        its GEMMs autotuned on CUDA), the VAE decoder and both text encoders, and on CUDA each new VAE
        decode shape run ahead of its first image. Compiled code and autotuning results are cached on
        disk (TORCHINDUCTOR_CACHE_DIR); what each part is told is in `speed.compile_options`."""
        pipe = self.pipe
        if self.adapters:
            # Fused QKV projections cannot carry separate LoRA layers: fold the adapters in first.
            # lora_scale=1: each adapter's weight, set by set_adapters, is already the user's scale.
            pipe.fuse_lora(lora_scale=1.0, adapter_names=list(self.adapters))
            pipe.unload_lora_weights()
        pipe.fuse_qkv_projections()
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        if self.quantize:  # after the LoRA and QKV fusing above, before compiling (spo_cli.quantize)
            self.adapters = quantize.apply(pipe, self.adapters)
        configure_compile_cache()
        cuda = self.device.startswith("cuda")
        import torch._dynamo.config as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), 64))
        if self._sdpa is not None:
            speed.keep_attention_out_of_the_cache()
        # Fixed shapes (dynamic=False), which padding short batches to the batch size gives the UNet and
        # the VAE. The text encoders see at most two: (batch size, 77) through diffusers' encoding and
        # (1, 77) through spo's A1111 one, which encodes each 77-token window of each prompt on its own;
        # a prompt's length or window count never reaches them as a shape.
        pipe.unet = torch.compile(pipe.unet, fullgraph=True, dynamic=False, options=speed.compile_options("unet", cuda))
        pipe.vae.decode = torch.compile(pipe.vae.decode, fullgraph=True, dynamic=False,
                                        options=speed.compile_options("vae", cuda))
        for name in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, name, None)
            if encoder is None:
                continue
            # transformers 5 installs the hooks that collect hidden states on a model's first call, under a
            # threading lock that dynamo cannot trace: one eager call of one window installs them first.
            window = torch.zeros(1, pipe.tokenizer.model_max_length, dtype=torch.long, device=encoding._device(encoder))
            with torch.inference_mode():
                encoder(window, output_hidden_states=True)
            setattr(pipe, name, torch.compile(encoder, fullgraph=True, dynamic=False,
                                              options=speed.compile_options("text_encoder", cuda)))
        if cuda and self.options.offload is None:
            # Two decodes: the warm-up run and the recording; the image's own then replays. Not on the CPU,
            # which has no CUDA graphs: there they would only cost two decodes per new size.
            self.decode_warmup.calls = 2

    def scheduler(self, name: str):
        if name not in self._schedulers:
            import diffusers

            choice = presets.SCHEDULERS[name]
            if choice.extra:  # diffusers' stand-in class would fail later, with pip's name for nothing
                from spo_cli import extras

                extras.require(choice.extra, f"--scheduler {name}", *presets.SCHEDULER_EXTRAS[choice.extra])
            scheduler_cls = getattr(diffusers, choice.class_name)
            self._schedulers[name] = scheduler_cls.from_config(self._schedulers["default"].config, **dict(choice.kwargs))
        return self._schedulers[name]

    def _watermark(self, pipe, request: ImageRequest) -> None:
        """SDXL's invisible watermark on this call's images, or none: diffusers' own watermarker, which
        its pipeline applies to the decoded images before postprocessing (--watermark)."""
        if not request.watermark:
            pipe.watermark = None
            return
        if self._watermarker is None:
            from spo_cli import watermark

            watermark.require()
            from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

            self._watermarker = StableDiffusionXLWatermarker()
        pipe.watermark = self._watermarker

    # -- facts ------------------------------------------------------------------------------------

    def default_size(self) -> tuple[int, int]:
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return side, side

    def scheduler_facts(self, name: str) -> dict:
        s = self.scheduler(name)
        cls_name = type(s).__name__
        a1111 = presets.SCHEDULERS[name].a1111 or presets.A1111_BY_CLASS.get(cls_name, "")
        config = {k: _json_safe(v) for k, v in dict(s.config).items() if not k.startswith("_")}
        return {"name": name, "class": cls_name, "a1111": a1111, "config": config}

    def check_schedule(self, name: str, steps: int) -> None:
        """Refuse, before any denoising, a step count the scheduler cannot lay out on this model's
        training timesteps (DDIM's 'leading' spacing at 1000 steps indexes timestep 1000)."""
        if (name, steps) in self._schedules_ok:
            return
        import copy

        trial = copy.deepcopy(self.scheduler(name))
        n = trial.config.num_train_timesteps
        try:
            trial.set_timesteps(steps)
            ok = 0 <= int(trial.timesteps.min()) and int(trial.timesteps.max()) < n
        except Exception:  # whatever the scheduler objects to, the message below says what to do
            ok = False
        if not ok:
            raise GenerationError(
                f"The {name} scheduler cannot run {steps} steps with this model's scheduler settings: its "
                f"timesteps would fall outside the {n} the model was trained on.",
                "Use fewer --steps, or another --scheduler.")
        self._schedules_ok.add((name, steps))

    def device_fault(self, exc: BaseException) -> str | None:
        """Why this engine's device can run nothing more after a call failed with `exc`, or None. A CUDA
        fault (an illegal memory access, a device-side assert, an ECC error) is sticky: the process's
        context on that GPU is lost and every later call fails at once, unlike an out-of-memory error
        or a request's own. Told apart by one tiny operation on the device, after a CUDA error only."""
        if not isinstance(exc, RuntimeError) or isinstance(exc, torch.OutOfMemoryError):
            return None  # torch.AcceleratorError (torch ≥ 2.8) is a RuntimeError, as older CUDA errors were
        try:
            probe = torch.ones(1, device=self.device) + 1
            if self.device.startswith("cuda"):
                torch.cuda.synchronize(self.device)
            probe.cpu()
        except Exception as e:  # what a lost context answers: the device is gone for this process
            return f"{type(exc).__name__}: {exc}; then even a one-element sum failed there ({type(e).__name__}: {e})"
        return None

    def facts(self) -> dict:
        from dataclasses import asdict

        facts = {"device": self.device, "dtype": self.dtype, "versions": versions(),
                 "run_options": asdict(self.options)}
        if self.device.startswith("cuda"):
            facts["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        if self.quantize:  # its kernels decide the pixels too
            facts["versions"]["torchao"] = quantize.torchao_version()
        return facts

    def call_facts(self, facts: dict) -> dict:
        """`facts` (from `facts()`) for the sidecars of the call `run` has just made: the VAE options it
        had to turn on to fit in memory join run_options (tiling changes pixels slightly)."""
        if not self._vae_auto:
            return facts
        options = dict(facts.get("run_options") or {})
        for key in ("vae_slicing", "vae_tiling"):
            options[key] = options.get(key) or bool(self._vae_auto.get(key))
        options["vae_auto"] = self._vae_auto
        return {**facts, "run_options": options}

    def vae_note(self) -> str | None:
        """What the call `run` has just made turned on for its VAE pass to fit in the GPU's memory, as a
        sentence for the user (the sidecar records it too), or None."""
        on = [k[4:] for k in ("vae_slicing", "vae_tiling") if self._vae_auto.get(k)]
        if not on:
            return None
        return (f"The VAE pass would not have fit in the GPU memory left, so VAE {' and '.join(on)} was turned on "
                "for it (recorded in the sidecar; tiling changes pixels slightly). --vae-tiling and --vae-slicing "
                "turn them on for every image; a smaller size or batch avoids them.")

    def _available_memory(self) -> int | None:
        """Bytes a VAE pass could use now on this GPU: free memory, plus what torch's caching allocator
        holds unused. None off CUDA (the CPU has no such limit spo can see; MPS shares host memory)."""
        if not self.device.startswith("cuda"):
            return None
        dev = torch.device(self.device)
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)

    @contextmanager
    def _vae_fits(self, width: int, height: int, images: int):
        """For one pipeline call at width×height: VAE slicing and tiling turned on when its decode
        would not fit in the GPU memory left (vae_plan), and off again after; the user's own
        --vae-tiling / --vae-slicing are left alone."""
        vae = self.pipe.vae
        slicing, tiling = self.options.vae_slicing or vae.use_slicing, self.options.vae_tiling or vae.use_tiling
        if tiling and slicing:
            yield
            return
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # diffusers decodes in float32 then
        element = 4 if upcast or vae.dtype == torch.float32 else 2
        plan = vae_plan(width, height, 1 if slicing else images, element, self._available_memory(),
                        vae.tile_sample_min_size)
        turn_on = [k for k in ("vae_slicing", "vae_tiling") if plan.get(k) and not {"vae_slicing": slicing,
                                                                                  "vae_tiling": tiling}[k]]
        if not turn_on:
            yield
            return
        self._vae_auto |= {**plan, **{k: True for k in turn_on}}
        for k in turn_on:
            getattr(vae, "enable_" + k[4:])()
        try:
            yield
        finally:
            for k in turn_on:
                getattr(vae, "disable_" + k[4:])()

    def plan(self, request: ImageRequest) -> encoding.Plan:
        """How `request`'s prompts become embeddings: the syntax `auto` resolves to, and the windows."""
        key = (request.prompt, request.negative_prompt, request.prompt_syntax)
        if key not in self._plans:
            self._plans[key] = encoding.plan(self.pipe, *key)
        return self._plans[key]

    def call_key(self, request: ImageRequest) -> tuple:
        """What images must share to go through one pipeline call. The number of 77-token windows
        is a shape: images are grouped by it rather than padded, since padding with empty windows
        would make an image depend on the prompts it happened to share a call with."""
        key = (request.group_key(), self.plan(request))
        if request.mask_crop is not None:
            # diffusers' padding_mask_crop takes one PIL image, not one per image of the call; given one,
            # the inpaint pipeline samples its encoding with the first generator only, and the others'
            # noise would then differ from their seeds' made alone. One image per call keeps a seed one image.
            key += (request.seed,)
        return key

    def encoding_facts(self, request: ImageRequest) -> dict:
        """For the sidecar: the syntax the prompts were read with (and, for a1111, the emphasis
        mode and the number of windows)."""
        p = self.plan(request)
        if p.syntax == "plain":
            return {"prompt_syntax": "plain"}
        return {"prompt_syntax": "a1111", "emphasis": request.emphasis, "prompt_windows": p.chunks}

    def dropped_words(self, prompt: str | None) -> str | None:
        """The end of `prompt` that CLIP's 77-token window silently cuts off, if any."""
        if not prompt:
            return None
        tok = self.pipe.tokenizer
        ids = tok(prompt, add_special_tokens=False, truncation=False).input_ids
        room = tok.model_max_length - 2  # start and end tokens
        if len(ids) <= room:
            return None
        return tok.decode(ids[room:]).strip()

    # -- running ----------------------------------------------------------------------------------

    def _noise_device(self, asked: str) -> str:
        """Where an image's noise is drawn. On GPUs of one model, torch's Philox stream does not depend on
        which of them draws it, so noise asked of any GPU is drawn on this engine's: a request recorded on
        cuda:1 gives the same pixels on cuda:0, and `spo serve --devices` may hand it to any of its GPUs (diffusers refuses a
        generator on another GPU than the latents)."""
        if asked.startswith("cuda") and self.device.startswith("cuda"):
            return self.device
        return asked

    def derived(self, mode: str):
        """The pipeline for `mode` (img2img, inpaint), made from the loaded one with from_pipe: the same
        modules, not a second copy of the weights. The watermarker stays off (diffusers turns it on
        when invisible-watermark is installed), and the dtype is the loaded one (from_pipe casts every
        shared module to float32 otherwise)."""
        if mode in ("txt2img",):
            return self.pipe
        if mode not in self._derived:
            from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

            cls = StableDiffusionXLInpaintPipeline if mode == "inpaint" else StableDiffusionXLImg2ImgPipeline
            pipe = cls.from_pipe(self.pipe, torch_dtype=TORCH_DTYPES[self.dtype], add_watermarker=False)
            pipe.set_progress_bar_config(disable=True)
            if self.options.offload == "model":
                # The offload hooks live on the shared modules, so they already move each one to the GPU
                # when it runs (AutoencoderKL's encode and decode included); but the new pipeline does
                # not know it offloads, and its maybe_free_model_hooks, which puts every module back in
                # host memory after a call, would do nothing, leaving the last one on the GPU. Enabling
                # it here re-hooks the same modules in the same order (every SDXL pipeline's
                # model_cpu_offload_seq); each pipeline re-hooks them after its own calls.
                pipe.enable_model_cpu_offload(device=self.device)
            # Sequential offload is left as loaded: its hooks sit on every submodule and keep no state
            # on the pipeline (the execution device is read from them), and enabling it again would
            # rebuild the modules' weights from the meta tensors they now hold.
            self._derived[mode] = pipe
        return self._derived[mode]

    def output_size(self, request: ImageRequest) -> tuple[int, int]:
        """The size of the image `request` makes (hires: after the upscale)."""
        if request.image is not None:
            from spo_cli import inputs

            w, h, _ = inputs.output_size(request.image, request.width, request.height)
            return w, h
        w, h = request.width or self.default_size()[0], request.height or self.default_size()[1]
        if request.hires is not None:
            return validate.hires_size(w, h, request.hires.scale)
        return w, h

    def recorded_size(self, request: ImageRequest) -> dict:
        """The sidecar's width and height: the image's, but for hires the first pass's (as A1111's
        `Size`; the hires block records the final size)."""
        if request.hires is not None:
            return {"width": request.width or self.default_size()[0], "height": request.height or self.default_size()[1]}
        w, h = self.output_size(request)
        return {"width": w, "height": h}

    def run(self, batch: list[ImageRequest], on_step: Callable[[int, int], None] | None = None) -> list[Generated]:
        """One pipeline call for `batch` (requests sharing `group_key`), one generator per image
        (hires: two calls, the second re-seeded with the same seeds, as A1111 does)."""
        first = batch[0]
        if any(self.call_key(r) != self.call_key(first) for r in batch):
            raise ValueError("a batch must share steps, guidance, size, scheduler, generator device and "
                             "the shape of its prompt embeddings")
        self.check_schedule(first.scheduler, first.steps)
        if first.hires is not None:
            self.check_schedule(first.scheduler,
                                validate.hires_schedule(first.hires.steps or first.steps, first.hires.strength)[0])
        if first.watermark:  # the size the model makes when none is asked: known only now
            validate.watermark_size(*self.output_size(first))
        real = len(batch)
        if self.options.fast and real < self.options.batch_size:
            # Same shapes every call: a short batch would recompile (and re-capture CUDA graphs).
            batch = batch + [batch[-1]] * (self.options.batch_size - real)
        negatives = [r.negative_prompt for r in batch]
        plan = self.plan(first)
        if plan.syntax == "plain":
            # None, not "": SDXL then uses zero embeddings for the unconditional branch, as the
            # authors' script does by passing no negative prompt at all.
            prompts = {"prompt": [r.prompt for r in batch],
                       "negative_prompt": None if negatives[0] is None else negatives}
        else:
            prompts = encoding.embeddings(self.pipe, [r.prompt for r in batch], negatives, plan.chunks, first.emphasis)

        total = first.denoising_steps
        done_before = 0
        reported = 0

        def step_end(pipe, i, t, kwargs):
            nonlocal reported
            # Second-order samplers (Heun, DPM++ SDE) call the model twice a step, and their timesteps
            # hold both calls: the callback comes 2×steps−1 times. Steps are what the user asked for;
            # an image-to-image pass runs only its share of them.
            done = done_before + (i + 1) * pass_steps // max(pipe.num_timesteps, pass_steps)
            if on_step and done > reported:
                reported = done
                on_step(done, total)
            if first.mask_crop is not None:  # its images come back as PIL, where NaN no longer shows
                latent_nan[:] = kwargs["latents"].isnan().flatten(1).any(1).tolist()
            return kwargs

        def call(mode: str, steps: int, *, last: bool = True, **kwargs):
            pipe = self.derived(mode)
            pipe.scheduler = self.scheduler(first.scheduler)
            # The watermark goes on the image made, not on hires' first pass that is drawn over.
            self._watermark(pipe, first if last else replace(first, watermark=False))
            if hasattr(pipe.scheduler, "noise_sampler_seed"):
                # DPM++ SDE's Brownian noise comes from seeds of its own, not the generators; unset, from
                # torch's global one. One tree per image, seeded with the image's seed: a seed is one image
                # whatever the batch.
                pipe.scheduler.noise_sampler_seed = [r.seed for r in batch]
            generators = [torch.Generator(self._noise_device(first.generator_device)).manual_seed(r.seed)
                          for r in batch]
            w, h = size
            with self._vae_fits(w, h, len(batch)), speed.attention(pipe.unet, self._sdpa):
                if kwargs.get("output_type") != "latent":  # inside _vae_fits: with the flags the decode will have
                    self.decode_warmup(pipe.vae, len(batch), w, h, pipe.vae_scale_factor)
                return pipe(**prompts, **kwargs, num_inference_steps=steps, guidance_scale=first.guidance,
                            generator=generators, callback_on_step_end=step_end)

        latent_nan: list[bool] = []
        width, height = self.output_size(first)
        size = (width, height)  # of the images the next pipeline call decodes (hires: the first pass's, then this)
        pass_steps = first.steps
        self._vae_auto = {}
        try:
            with torch.inference_mode():
                if first.image is not None:
                    from spo_cli import inputs

                    pass_steps = first.denoising_steps
                    # The img2img pipeline takes no size (its **kwargs swallow width and height): it makes
                    # the input's size, so the input comes at the size asked; inpainting takes a size.
                    image = inputs.as_rgb(inputs.load(first.image), None if first.mask is not None else (width, height))
                    edit = {"strength": first.strength}
                    # One per image, but padding_mask_crop takes a single image (call_key makes such calls
                    # one seed each; --fast pads them with copies, the first generator still the seed's).
                    each = (lambda x: [x] * len(batch)) if first.mask_crop is None else (lambda x: x)
                    if first.mask is not None:
                        mask = inputs.as_mask(inputs.load(first.mask, "mask"), image.size, first.mask_blur)
                        edit |= {"mask_image": each(mask), "padding_mask_crop": first.mask_crop,
                                 "width": width, "height": height}
                    edit["image"] = each(image)
                    # diffusers pastes a mask crop back only into PIL images (and takes no other output_type).
                    out = call(first.mode, first.steps, output_type="pil" if first.mask_crop is not None else "np",
                               **edit)
                elif first.hires is not None:
                    # A1111's hires fix: the first pass at the asked size, the upscale, then img2img of the
                    # large image over the second pass's share of its steps.
                    hr = first.hires
                    latent = hr.upscaler == "latent"
                    size = (first.width or self.default_size()[0], first.height or self.default_size()[1])
                    low = call("txt2img", first.steps, last=False, width=first.width, height=first.height,
                               output_type="latent" if latent else "pil").images
                    size = (width, height)
                    if latent:  # A1111's "Latent": bilinear, no antialiasing, in the latent space
                        f = self.pipe.vae_scale_factor
                        big = torch.nn.functional.interpolate(low, size=(height // f, width // f), mode="bilinear",
                                                              antialias=False)
                    else:
                        from PIL import Image

                        big = [im.resize((width, height), Image.Resampling.LANCZOS) for im in low]
                    # A1111 runs all the hires steps, of a schedule stretched to steps / strength.
                    second = hr.steps or first.steps
                    schedule, strength = validate.hires_schedule(second, hr.strength)
                    done_before, pass_steps = first.steps, second
                    out = call("img2img", schedule, image=big, strength=strength, output_type="np")
                else:
                    out = call("txt2img", first.steps, width=first.width, height=first.height, output_type="np")
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise GenerationError(
                f"The GPU ran out of memory generating {real} image(s) at {width}×{height}.",
                oom_hint(batch=real, pixels=width * height, options=self.options, hires=first.hires,
                         edit=first.image is not None),
            ) from None
        batch = batch[:real]
        if first.mask_crop is not None:
            # The latents are what can be checked: a NaN there is a NaN image. (A float16 VAE overflow
            # would not show, but diffusers decodes in float32 with a VAE that needs it, and spo's
            # float16 default is the fp16-fix VAE.)
            return [Generated(img, req, nan) for img, req, nan in zip(out.images[:real], batch, latent_nan)]
        arrays = out.images[:real]
        images = self.pipe.image_processor.numpy_to_pil(arrays)  # what output_type="pil" would return
        return [
            Generated(img, req, bool(torch.from_numpy(arr).isnan().any()))
            for img, req, arr in zip(images, batch, arrays)
        ]

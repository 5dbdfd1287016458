"""The only module that imports torch and diffusers: build the pipeline, run batches.

It knows nothing of paths, file names or metadata; it takes resolved local folders and image
requests and gives back PIL images and plain facts about how they were made.
"""

from __future__ import annotations

import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass

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

from spo_cli import __version__, presets  # noqa: E402
from spo_cli.errors import GenerationError, ModelError, UsageError, oom_hint  # noqa: E402
from spo_cli.jobs import ImageRequest, RunOptions  # noqa: E402

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
SDXL_CLASSES = ("StableDiffusionXLPipeline",)
LORA_ADAPTER = "spo"


def quiet_libraries(debug: bool = False) -> None:
    """Silence diffusers / transformers / huggingface_hub logging and bars (unless debugging)."""
    import diffusers
    import huggingface_hub
    import transformers

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
    base = requested.split(":")[0]
    if base == "cuda" and not torch.cuda.is_available():
        raise UsageError(
            f"--device {requested} was asked for, but this PyTorch ({torch.__version__}) sees no CUDA GPU.",
            "Check `nvidia-smi` and that torch was installed with CUDA support, or use --device cpu.",
        )
    if base == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {requested} was asked for, but Apple MPS is not available here.")
    if base not in ("cuda", "mps", "cpu"):
        raise UsageError(f"Unknown device '{requested}'.", "Use auto, cuda, cuda:N, mps or cpu.")
    return requested, notes


def pick_dtype(device: str, requested: str = "auto") -> str:
    """float16 on GPUs (what the authors ran), float32 on the CPU (where half is slow and partial)."""
    requested = presets.DTYPES.get(requested, requested)
    if requested == "auto":
        return "float32" if device == "cpu" else "float16"
    if requested not in TORCH_DTYPES:
        raise UsageError(f"Unknown dtype '{requested}'.", "Use auto, fp16, bf16 or fp32.")
    return requested


def init_distributed(device: str) -> None:
    """Join the process group torchrun / accelerate launch describe in the environment."""
    import datetime

    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # A rank that finishes its shard early waits for the others at the final barrier: allow long runs.
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(hours=48))


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def check_options(options: RunOptions, device: str) -> None:
    if options.offload and not device.startswith(("cuda", "mps")):
        raise UsageError(
            f"--offload {options.offload} moves weights between host memory and a GPU, and this run is on "
            f"{device}.", "Drop --offload here; it is for GPUs with too little memory for SDXL.",
        )


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


@dataclass
class Result:
    image: object  # PIL.Image.Image
    request: ImageRequest
    nan: bool


class Engine:
    """A loaded pipeline on a device, ready to run batches of `ImageRequest`s."""

    def __init__(self, pipe, device: str, dtype: str, *, lora_scale: float | None = None,
                 options: RunOptions = RunOptions()):
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.lora_scale = lora_scale
        self.options = options
        pipe.set_progress_bar_config(disable=True)
        self._schedulers = {"default": pipe.scheduler}

    # -- set-up ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, resolved, device: str, options: RunOptions = RunOptions()) -> Engine:
        """Build the pipeline the way the SPO authors' inference script does, from local folders,
        then apply the memory and speed options."""
        import json

        from diffusers import AutoencoderKL, StableDiffusionXLPipeline

        check_options(options, device)
        torch_dtype = TORCH_DTYPES[resolved.dtype]
        index = json.loads((resolved.pipeline.path / "model_index.json").read_text())
        if index.get("_class_name") not in SDXL_CLASSES:
            raise ModelError(
                f"'{resolved.pipeline.id}' is a {index.get('_class_name')}, not an SDXL pipeline.",
                "spo-cli runs StableDiffusionXLPipeline checkpoints (SDXL base and its fine-tunes).",
            )
        # Straight to the GPU: safetensors are memory-mapped and each tensor is copied once, to the
        # device, in the target dtype (no float32 detour, no second copy in host memory). diffusers
        # takes only the bare "cuda" here; other devices load to host memory and move.
        direct = device == "cuda" and options.offload is None
        kwargs = {"device_map": "cuda"} if direct else {}
        if resolved.vae is not None:
            kwargs["vae"] = AutoencoderKL.from_pretrained(
                resolved.vae.path, subfolder=resolved.vae.subfolder, torch_dtype=torch_dtype,
                use_safetensors=True, variant=resolved.vae.variant, **({"device_map": "cuda"} if direct else {}),
            )
        pipe = StableDiffusionXLPipeline.from_pretrained(
            resolved.pipeline.path, torch_dtype=torch_dtype, use_safetensors=True,
            variant=resolved.pipeline.variant, **kwargs,
        )
        lora_scale = None
        if resolved.lora is not None:
            lora_scale = resolved.request.lora_scale
            pipe.load_lora_weights(
                str(resolved.lora.path.parent), weight_name=resolved.lora.path.name, adapter_name=LORA_ADAPTER
            )
            pipe.set_adapters([LORA_ADAPTER], adapter_weights=[lora_scale])
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
        engine = cls(pipe, device, resolved.dtype, lora_scale=lora_scale, options=options)
        if options.fast:
            engine.make_fast()
        return engine

    def make_fast(self) -> None:
        """Lossless speed-ups: LoRA folded in, fused QKV, channels_last, torch.compile of the UNet
        and the VAE decoder. Compiled code is cached on disk (TORCHINDUCTOR_CACHE_DIR)."""
        pipe = self.pipe
        if self.lora_scale is not None:
            # Fused QKV projections cannot carry separate LoRA layers: fold the adapter in first.
            # lora_scale=1: the adapter's weight, set by set_adapters, is already the user's scale.
            pipe.fuse_lora(lora_scale=1.0, adapter_names=[LORA_ADAPTER])
            pipe.unload_lora_weights()
        pipe.fuse_qkv_projections()
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
        configure_compile_cache()
        cuda = self.device.startswith("cuda")
        if cuda:
            import torch._inductor.config as inductor

            # From diffusers' SDXL speed guide, less its autotuning flags (below).
            inductor.conv_1x1_as_mm = True
            inductor.epilogue_fusion = False
        # CUDA graphs remove the per-kernel launch cost, which bounds SDXL's eager speed on a fast
        # GPU; they need fixed shapes, which padding short batches to the batch size gives. Not
        # max-autotune: on an H200 its GEMM autotuning alone outlasted 280 s of the first call
        # (benchmarks/README.md), where cuBLAS already wins SDXL's large GEMMs.
        mode = "reduce-overhead" if cuda else "default"
        import torch._dynamo.config as dynamo

        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(dynamo, name):
                setattr(dynamo, name, max(getattr(dynamo, name), 64))
        pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True, dynamic=False)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode=mode, fullgraph=True, dynamic=False)

    def scheduler(self, name: str):
        if name not in self._schedulers:
            import diffusers

            choice = presets.SCHEDULERS[name]
            scheduler_cls = getattr(diffusers, choice.class_name)
            self._schedulers[name] = scheduler_cls.from_config(self._schedulers["default"].config, **dict(choice.kwargs))
        return self._schedulers[name]

    # -- facts ------------------------------------------------------------------------------------

    def default_size(self) -> tuple[int, int]:
        side = self.pipe.default_sample_size * self.pipe.vae_scale_factor
        return side, side

    def scheduler_facts(self, name: str) -> dict:
        s = self.scheduler(name)
        cls_name = type(s).__name__
        a1111 = presets.SCHEDULERS[name].a1111 or presets.A1111_BY_CLASS.get(cls_name, "")
        config = {k: v for k, v in dict(s.config).items() if not k.startswith("_")}
        return {"name": name, "class": cls_name, "a1111": a1111, "config": config}

    def facts(self) -> dict:
        from dataclasses import asdict

        facts = {"device": self.device, "dtype": self.dtype, "versions": versions(),
                 "run_options": asdict(self.options)}
        if self.device.startswith("cuda"):
            facts["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return facts

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

    def run(self, batch: list[ImageRequest], on_step: Callable[[int, int], None] | None = None) -> list[Result]:
        """One pipeline call for `batch` (requests sharing `group_key`), one generator per image."""
        first = batch[0]
        if any(r.group_key() != first.group_key() for r in batch):
            raise ValueError("a batch must share steps, guidance, size, scheduler and generator device")
        self.pipe.scheduler = self.scheduler(first.scheduler)
        real = len(batch)
        if self.options.fast and real < self.options.batch_size:
            # Same shapes every call: a short batch would recompile (and re-capture CUDA graphs).
            batch = batch + [batch[-1]] * (self.options.batch_size - real)
        generators = [torch.Generator(first.generator_device).manual_seed(r.seed) for r in batch]
        negatives = [r.negative_prompt for r in batch]

        def step_end(pipe, i, t, kwargs):
            if on_step:
                on_step(i + 1, first.steps)
            return kwargs

        try:
            with torch.inference_mode():
                out = self.pipe(
                    prompt=[r.prompt for r in batch],
                    # None, not "": SDXL then uses zero embeddings for the unconditional branch,
                    # as the authors' script does by passing no negative prompt at all.
                    negative_prompt=None if negatives[0] is None else negatives,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance,
                    width=first.width,
                    height=first.height,
                    generator=generators,
                    output_type="np",
                    callback_on_step_end=step_end,
                )
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            w, h = first.width or self.default_size()[0], first.height or self.default_size()[1]
            raise GenerationError(
                f"The GPU ran out of memory generating {real} image(s) at {w}×{h}.",
                oom_hint(batch=real, pixels=w * h, options=self.options),
            ) from None
        arrays = out.images[:real]
        batch = batch[:real]
        images = self.pipe.image_processor.numpy_to_pil(arrays)  # what output_type="pil" would return
        return [
            Result(img, req, bool(torch.from_numpy(arr).isnan().any()))
            for img, req, arr in zip(images, batch, arrays)
        ]



# ---------------------------------------------------------------------------------------------
# Several models in one run (spo compare): load what is shared once


def _content_id(path) -> str:
    """A content hash of a file, free for Hugging Face cache files (their blob name is one)."""
    import hashlib
    import os

    real = os.path.realpath(path)
    if os.path.basename(os.path.dirname(real)) == "blobs":
        return os.path.basename(real)
    h = hashlib.sha256()
    with open(real, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(folder, files: list[str]) -> str:
    """Identity of a component: the hashes of its config and weight files, whatever their names
    (a `model.fp16.safetensors` of one repo equals a `model.safetensors` of another byte for byte)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.rsplit("/", 1)[-1].replace(".fp16", "")):
        h.update(_content_id(folder / f).encode())
    return h.hexdigest()[:20]


class Bank:
    """Builds the pipeline of each column of a comparison from components it loads once.

    Every component (text encoders, tokenizers, VAE, UNet) is identified by a fingerprint of its
    files; a column whose component has a fingerprint already loaded reuses that module. SPO-SDXL
    changes only the UNet, so SDXL base and SPO share all but the UNet, and LoRA columns share the
    UNet too, with the adapter loaded once and its scale set per column.
    """

    PARTS = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae", "unet")

    def __init__(self, device: str, dtype: str, *, keep_loaded: bool = False, log=lambda msg: None):
        self.device = device
        self.dtype = dtype
        self.keep_loaded = keep_loaded
        self.log = log
        self.modules: dict[tuple[str, str], object] = {}  # (part, fingerprint) → module
        self.adapters: dict[tuple[str, str], str] = {}  # (unet fingerprint, lora fingerprint) → adapter
        self.bytes_loaded = 0

    def parts(self, resolved) -> dict[str, tuple[object, list[str], str]]:
        """For each part: (folder, files relative to it, fingerprint)."""
        out = {}
        p = resolved.pipeline
        for part in self.PARTS:
            if part == "vae" and resolved.vae is not None:
                v = resolved.vae
                folder = v.path / v.subfolder if v.subfolder else v.path
                prefix = f"{v.subfolder}/" if v.subfolder else ""
                files = [f[len(prefix):] for f in v.files if f.startswith(prefix)]
            else:
                folder = p.path / part
                files = [f.split("/", 1)[1] for f in p.files if f.startswith(part + "/")]
            out[part] = (folder, files, fingerprint(folder, files))
        return out

    def release(self, keep: set[tuple[str, str]]) -> None:
        """Free every loaded module not in `keep` (unless --keep-loaded)."""
        if self.keep_loaded:
            return
        freed = [k for k in self.modules if k not in keep]
        if freed:
            self.log("free " + ", ".join(part for part, _ in freed))
        for key in freed:
            del self.modules[key]
            self.adapters = {a: n for a, n in self.adapters.items() if a[0] != key[1] or key[0] != "unet"}
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _load(self, part: str, folder, files: list[str], variant: str | None):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        torch_dtype = TORCH_DTYPES[self.dtype]
        if part.startswith("tokenizer"):
            return CLIPTokenizer.from_pretrained(folder)
        cls = {"text_encoder": CLIPTextModel, "text_encoder_2": CLIPTextModelWithProjection,
               "vae": AutoencoderKL, "unet": UNet2DConditionModel}[part]
        kwargs = {"use_safetensors": True} if part in ("vae", "unet") else {}
        module = cls.from_pretrained(folder, torch_dtype=torch_dtype, variant=variant, **kwargs)
        self.bytes_loaded += sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))
        return module.to(self.device)

    def engine(self, resolved, needed_later: set[tuple[str, str]] = frozenset()) -> Engine:
        """The pipeline for one column, loading only what is not loaded yet."""
        import json

        from diffusers import StableDiffusionXLPipeline

        parts = self.parts(resolved)
        wanted = {(part, fp) for part, (_, _, fp) in parts.items()}
        self.release(wanted | set(needed_later))
        components, loaded, reused = {}, [], []
        for part, (folder, files, fp) in parts.items():
            if (part, fp) not in self.modules:
                variant = resolved.vae.variant if part == "vae" and resolved.vae else resolved.pipeline.variant
                self.modules[(part, fp)] = self._load(part, folder, files, variant)
                loaded.append(part)
            else:
                reused.append(part)
            components[part] = self.modules[(part, fp)]
        self.log("; ".join(f"{verb} {', '.join(ps)}" for verb, ps in (("load", loaded), ("reuse", reused)) if ps))
        index = json.loads((resolved.pipeline.path / "model_index.json").read_text())
        scheduler_cls = getattr(__import__("diffusers"), index["scheduler"][1])
        components["scheduler"] = scheduler_cls.from_pretrained(resolved.pipeline.path / "scheduler")
        pipe = StableDiffusionXLPipeline(
            **components,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            add_watermarker=False,
        )
        lora_scale = None
        unet_fp = parts["unet"][2]
        if resolved.lora is not None:
            lora_fp = _content_id(resolved.lora.path)[:20]
            name = self.adapters.get((unet_fp, lora_fp))
            if name is None:
                name = f"lora_{lora_fp[:12]}"  # by content: unique even after UNets were freed
                self.log(f"load LoRA {resolved.lora.file} as adapter {name}")
                pipe.load_lora_weights(str(resolved.lora.path.parent), weight_name=resolved.lora.path.name,
                                       adapter_name=name)
                self.bytes_loaded += resolved.lora.path.stat().st_size
                self.adapters[(unet_fp, lora_fp)] = name
            lora_scale = resolved.request.lora_scale
            pipe.enable_lora()
            pipe.set_adapters([name], adapter_weights=[lora_scale])
            self.log(f"LoRA {name} at scale {lora_scale}")
        elif any(key[0] == unet_fp for key in self.adapters):
            pipe.disable_lora()  # the same UNet serves LoRA columns: switch the adapter off here
            self.log("LoRA off")
        return Engine(pipe, self.device, self.dtype, lora_scale=lora_scale)

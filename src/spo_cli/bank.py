"""Several models in one run (spo compare): each component is loaded once and shared by every
column whose files are the same, byte for byte.

Identity is by content: a Hugging Face cache names each file's blob by its hash, so that costs
nothing there; a local file is hashed once.
"""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import torch

from spo_cli.engine import TORCH_DTYPES, Engine, unloadable


def _content_id(path) -> str:
    """A content hash of a file, free for Hugging Face cache files (their blob name is one)."""
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
        """For each part: (folder, files relative to it, fingerprint). A single-file checkpoint's
        models are one file: their folder is None and their fingerprint the file's SHA-256."""
        out = {}
        p = resolved.pipeline
        for part in self.PARTS:
            if resolved.config is not None and not part.startswith("tokenizer") and not (
                    part == "vae" and resolved.vae is not None):
                out[part] = (None, [], f"{p.sha256[:20]}:{part}")
                continue
            if resolved.config is not None and part.startswith("tokenizer"):
                folder = resolved.config.path / part
                files = [f.split("/", 1)[1] for f in resolved.config.files if f.startswith(part + "/")]
            elif part == "vae" and resolved.vae is not None:
                v = resolved.vae
                folder = v.path / v.subfolder if v.subfolder else v.path
                prefix = f"{v.subfolder}/" if v.subfolder else ""
                files = [f[len(prefix):] for f in v.files if f.startswith(prefix)]
            else:
                folder = p.path / part
                files = [f.split("/", 1)[1] for f in p.files if f.startswith(part + "/")]
            out[part] = (folder, files, fingerprint(folder, files))
        if resolved.request.quantize:
            # A quantized UNet is a module of its own, with its column's LoRA folded in at its scale:
            # shared with no plain column, nor with one of another LoRA strength.
            folder, files, fp = out["unet"]
            lora = f":{_content_id(resolved.lora.path)[:20]}:{resolved.lora_scale!r}" if resolved.lora else ""
            out["unet"] = (folder, files, f"{fp}:{resolved.request.quantize}{lora}")
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
        with unloadable(SimpleNamespace(id=str(folder), source="local")):
            module = cls.from_pretrained(folder, torch_dtype=torch_dtype, variant=variant, **kwargs)
        self.bytes_loaded += sum((folder / f).stat().st_size for f in files if f.endswith(".safetensors"))
        return module.to(self.device)

    def _load_single(self, resolved, parts: dict, needed: list[str]) -> None:
        """The `needed` models of a single-file checkpoint, in one pass over the file, as Engine.load
        builds them; the parts already loaded are handed in, so they are not built again."""
        from diffusers import StableDiffusionXLPipeline

        given = {part: self.modules[(part, fp)] for part, (_, _, fp) in parts.items()
                 if part not in needed and (part, fp) in self.modules}
        with unloadable(resolved.pipeline):
            pipe = StableDiffusionXLPipeline.from_single_file(
                str(resolved.pipeline.path), config=str(resolved.config.path), torch_dtype=TORCH_DTYPES[self.dtype],
                local_files_only=True, **given)
        self.bytes_loaded += resolved.pipeline.path.stat().st_size
        for part in needed:
            self.modules[(part, parts[part][2])] = getattr(pipe, part).to(self.device)

    def engine(self, resolved, needed_later: set[tuple[str, str]] = frozenset()) -> Engine:
        """The pipeline for one column, loading only what is not loaded yet."""
        import diffusers
        from diffusers import StableDiffusionXLPipeline

        parts = self.parts(resolved)
        wanted = {(part, fp) for part, (_, _, fp) in parts.items()}
        self.release(wanted | set(needed_later))
        components, loaded, reused = {}, [], []
        single = [part for part, (folder, _, fp) in parts.items() if folder is None and (part, fp) not in self.modules]
        for part, (folder, files, fp) in parts.items():
            if part in single:
                continue  # below, in one pass over the file
            if (part, fp) not in self.modules:
                variant = resolved.vae.variant if part == "vae" and resolved.vae else resolved.pipeline.variant
                self.modules[(part, fp)] = self._load(part, folder, files, variant)
                loaded.append(part)
            else:
                reused.append(part)
            components[part] = self.modules[(part, fp)]
        if single:
            self._load_single(resolved, parts, single)
            loaded += single
            components |= {part: self.modules[(part, parts[part][2])] for part in single}
        self.log("; ".join(f"{verb} {', '.join(ps)}" for verb, ps in (("load", loaded), ("reuse", reused)) if ps))
        index = resolved.model_index  # parsed and checked once, by resolve
        scheduler_cls = getattr(diffusers, index["scheduler"][1])
        configs = resolved.config.path if resolved.config is not None else resolved.pipeline.path
        components["scheduler"] = scheduler_cls.from_pretrained(configs / "scheduler")
        pipe = StableDiffusionXLPipeline(
            **components,
            force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
            add_watermarker=False,
        )
        lora_scale = None
        unet_fp = parts["unet"][2]
        if resolved.request.quantize:
            lora_scale = self._quantized(pipe, resolved)
        elif resolved.lora is not None:
            lora_fp = _content_id(resolved.lora.path)[:20]
            name = self.adapters.get((unet_fp, lora_fp))
            if name is None:
                name = f"lora_{lora_fp[:12]}"  # by content: unique even after UNets were freed
                self.log(f"load LoRA {resolved.lora.file} as adapter {name}")
                pipe.load_lora_weights(str(resolved.lora.path.parent), weight_name=resolved.lora.path.name,
                                       adapter_name=name)
                self.bytes_loaded += resolved.lora.path.stat().st_size
                self.adapters[(unet_fp, lora_fp)] = name
            lora_scale = resolved.lora_scale
            pipe.enable_lora()
            pipe.set_adapters([name], adapter_weights=[lora_scale])
            self.log(f"LoRA {name} at scale {lora_scale}")
        elif any(key[0] == unet_fp for key in self.adapters):
            pipe.disable_lora()  # the same UNet serves LoRA columns: switch the adapter off here
            self.log("LoRA off")
        engine = Engine(pipe, self.device, self.dtype, lora_scale=lora_scale)
        engine.quantize = resolved.request.quantize
        return engine

    def _quantized(self, pipe, resolved) -> float | None:
        """A quantized column's UNet, quantized once (the LoRA folded in first, as Engine.load does);
        its LoRA scale. The LoRA goes into this UNet alone: the text encoders are shared with other columns."""
        from spo_cli import quantize
        from spo_cli.errors import UsageError

        unet = pipe.unet
        if hasattr(unet, "spo_fp8_layers"):
            return resolved.lora_scale
        adapters = []
        if resolved.lora is not None:
            name = f"lora_{_content_id(resolved.lora.path)[:12]}"
            with unloadable(resolved.lora):
                state, alphas, meta = pipe.lora_state_dict(str(resolved.lora.path.parent),
                                                           weight_name=resolved.lora.path.name,
                                                           unet_config=unet.config, return_lora_metadata=True)
            if any(not key.startswith("unet.") for key in state):
                raise UsageError(f"{resolved.lora.id} has text-encoder weights, which a quantized comparison column "
                                 "does not take (its text encoders are shared with the other columns).",
                                 "Render it with spo generate --quantize fp8 instead.")
            self.log(f"load LoRA {resolved.lora.file} into the fp8 UNet, folded in at scale {resolved.lora_scale}")
            pipe.load_lora_into_unet(state, alphas, unet=unet, adapter_name=name, metadata=meta, _pipeline=pipe)
            self.bytes_loaded += resolved.lora.path.stat().st_size
            unet.set_adapters([name], weights=[resolved.lora_scale])
            adapters = [name]
        unet.spo_fp8_layers = quantize.quantize_unet(unet, adapters)
        self.log(f"fp8: {len(unet.spo_fp8_layers)} UNet linear layers quantized")
        return resolved.lora_scale

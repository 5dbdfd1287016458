"""Tiny random SDXL components, built offline in about a second.

They have the real SDXL architecture (two CLIP text encoders, a text-time conditioned UNet, a KL VAE)
at toy width, so every code path that runs on the real checkpoint runs on them too. `spo doctor`
uses them for its smoke generation; the test-suite saves them as Hub repos in a temporary cache.
Like `engine`, this module imports torch and diffusers and is only ever imported lazily.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Character-level byte-BPE plus whole-word merges for the words prompts use most, so that short
# prompts stay well under CLIP's 77 tokens while long ones still get cut, as on the real tokenizer.
_WORDS = (
    "a an the and of in on at with by from to for under over near into across through is "
    "child penguin moon red fox fresh snow golden hour cat dog bird tree forest city street "
    "night light sky sea ocean mountain river portrait photo photograph painting oil watercolor "
    "detailed cinematic lighting sunset sunrise old young woman man girl boy house castle "
    "lighthouse storm rain fog glass water fire blue green yellow white black soft warm cold "
    "close up wide shot lens bokeh sitting standing walking flying small large tiny giant "
    "style art illustration render studio macro landscape"
).split()


def _bytes_to_unicode() -> dict[int, str]:
    # The byte→unicode table of GPT-2/CLIP BPE: printable bytes map to themselves, the rest are
    # shifted past 255 so every byte has a visible, whitespace-free character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tokenizer(folder: Path, pad: str = "<|endoftext|>") -> int:
    """Write a working CLIP BPE tokenizer (vocab.json, merges.txt, configs); return its vocab size.
    SDXL's first tokenizer pads with its end token, the second with "!" (`pad`)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in _WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            line = f"{parts[0]} {parts[1]}"
            if line not in merges:
                merges.append(line)
                vocab.setdefault(merged, len(vocab))
            parts = [merged] + parts[2:]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad,
            }
        )
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": pad,
                "do_lower_case": True,
            }
        )
    )
    return len(vocab)


def unet_config() -> dict:
    return dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids × 8 + 32 pooled text dims
        cross_attention_dim=64,  # the two text encoders' hidden states, concatenated
        norm_num_groups=1,
    )


def vae_config(*, force_upcast: bool = True) -> dict:
    return dict(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.13025,
        force_upcast=force_upcast,
    )


def scheduler_config() -> dict:
    # SDXL-base-1.0's scheduler_config.json, verbatim in what matters.
    return dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )


def build_vae(seed: int, *, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(**vae_config(force_upcast=force_upcast))


def build_pipeline(folder: Path, seed: int = 0, unet: dict | None = None, text_2_width: int | None = None):
    """A tiny random `StableDiffusionXLPipeline`; `folder` receives its tokenizer files; `unet`
    overrides entries of `unet_config()`. `text_2_width` gives the second text encoder its own
    width (the UNet's cross-attention and added-embedding inputs follow): diffusers' single-file
    loader tells SDXL's two encoders apart by width (768 and 1280), which the default, both 32,
    would not let it do."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab_size = write_tokenizer(folder / "tokenizer")
    text_cfg = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=vocab_size,
        hidden_act="gelu",
        projection_dim=32,
    )
    text_2_cfg = text_cfg
    if text_2_width is not None:
        text_2_cfg = CLIPTextConfig(**{**text_cfg.to_dict(), "hidden_size": text_2_width})
        width = text_cfg.hidden_size + text_2_width
        unet = {"cross_attention_dim": width, "projection_class_embeddings_input_dim": 6 * 8 + text_cfg.projection_dim,
                **(unet or {})}
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**unet_config(), **(unet or {})})
    torch.manual_seed(seed + 1)
    text_encoder = CLIPTextModel(text_cfg)
    torch.manual_seed(seed + 2)
    text_encoder_2 = CLIPTextModelWithProjection(text_2_cfg)
    vae = build_vae(seed + 3)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**scheduler_config()),
        add_watermarker=False,
    )


def lora_state_dict(unet, rank: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random UNet LoRA in the SPO release's format: diffusers keys
    `unet.<module>.{to_q,to_k,to_v,to_out.0}.lora.{down,up}.weight`, alpha = rank (no alpha keys)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            if name.endswith((".attn1", ".attn2")):
                linear = module.get_submodule(proj)
                down = torch.randn(rank, linear.in_features, generator=gen) * 0.1
                up = torch.randn(linear.out_features, rank, generator=gen) * 0.1
                state[f"unet.{name}.{proj}.lora.down.weight"] = down.contiguous()
                state[f"unet.{name}.{proj}.lora.up.weight"] = up.contiguous()
    return state


def merge_lora(unet, state: dict[str, torch.Tensor], scale: float = 1.0) -> None:
    """Fold a LoRA of `lora_state_dict`'s format into `unet` in place, as the merged release was made."""
    with torch.no_grad():
        for key, down in state.items():
            if not key.endswith(".lora.down.weight"):
                continue
            module_path = key[len("unet.") : -len(".lora.down.weight")]
            up = state[key.replace(".lora.down.", ".lora.up.")]
            linear = unet.get_submodule(module_path)
            linear.weight += scale * (up.float() @ down.float()).to(linear.weight.dtype)


# ---------------------------------------------------------------------------------------------
# Tiny stand-ins for the published repos, for tests and CPU benchmarks


def _replace_tokenizers(folder: Path) -> None:
    # Write the tokenizers the way the SDXL repos ship them (vocab.json + merges.txt).
    import shutil

    for name, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        shutil.rmtree(folder / name, ignore_errors=True)
        write_tokenizer(folder / name, pad)


def save_repos(dest: Path, seed: int = 0) -> dict[str, Path]:
    """Save tiny versions of the four repos SPO-SDXL needs, under their real ids, in `dest`.

    - SDXL base: float32 weights under plain names plus `fp16` variant files, and the kinds of
      file spo must never fetch or load (pickles, ONNX, OpenVINO, Flax, a single-file checkpoint);
    - the merged SPO checkpoint: the base with the LoRA folded into its UNet, float16, plain names;
    - the SPO LoRA, in the release's diffusers key format;
    - the fp16-fix VAE: a different VAE with `force_upcast: false`.
    """
    from safetensors.torch import save_file

    from spo_cli import presets

    dest.mkdir(parents=True, exist_ok=True)
    pipe = build_pipeline(dest / "_tok", seed)
    lora = lora_state_dict(pipe.unet, seed=seed + 10)

    base = dest / "base"
    pipe.save_pretrained(base, safe_serialization=True)
    pipe.to(torch.float16).save_pretrained(base, safe_serialization=True, variant="fp16")
    pipe.to(torch.float32)
    _replace_tokenizers(base)
    junk = {
        "sd_xl_base_1.0.safetensors": b"single-file checkpoint",
        "unet/diffusion_pytorch_model.bin": b"pickle: must never be fetched or loaded",
        "unet/diffusion_flax_model.msgpack": b"flax",
        "unet/openvino_model.xml": b"openvino",
        "text_encoder/model.onnx": b"onnx",
        "text_encoder/pytorch_model.bin": b"pickle",
        "vae_decoder/model.onnx": b"onnx",
    }
    for rel, data in junk.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)

    merged = dest / "merged"
    merge_lora(pipe.unet, lora)
    pipe.to(torch.float16).save_pretrained(merged, safe_serialization=True)
    _replace_tokenizers(merged)

    lora_dir = dest / "lora"
    lora_dir.mkdir(exist_ok=True)
    save_file(lora, lora_dir / presets.SPO_LORA_FILE)

    vae_dir = dest / "vae"
    build_vae(seed + 20, force_upcast=False).save_pretrained(vae_dir, safe_serialization=True)
    (vae_dir / "diffusion_pytorch_model.bin").write_bytes(b"pickle: must never be fetched")
    (vae_dir / "sdxl_vae.safetensors").write_bytes(b"single-file VAE")

    return {
        presets.SDXL_BASE: base,
        presets.SPO_MERGED: merged,
        presets.SPO_LORA: lora_dir,
        presets.FP16_FIX_VAE: vae_dir,
    }


def save_smaller(dest: Path, seed: int = 0) -> tuple[Path, Path]:
    """An SDXL smaller still (one ResNet per block, one transformer layer per attention block) as a
    local diffusers folder, and a LoRA for it: for the test that compiles the model, whose time is
    the graph's size. Returns (model folder, LoRA file)."""
    from safetensors.torch import save_file

    pipe = build_pipeline(dest / "_tok", seed, unet=dict(layers_per_block=1, transformer_layers_per_block=(1, 1)))
    pipe.save_pretrained(dest / "model", safe_serialization=True)
    _replace_tokenizers(dest / "model")
    save_file(lora_state_dict(pipe.unet, seed=seed + 10), dest / "lora.safetensors")
    return dest / "model", dest / "lora.safetensors"


def add_to_cache(cache: Path, repo_id: str, source: Path, *, ref: str = "main", repo_type: str = "model") -> str:
    """Add every file under `source` to a Hugging Face cache as one commit of `repo_id` (blobs,
    snapshot symlinks, refs, as huggingface_hub lays them out); return the commit hash."""
    import hashlib
    import os
    import shutil

    files = {str(p.relative_to(source)).replace(os.sep, "/"): p for p in source.rglob("*") if p.is_file()}
    h = hashlib.sha1(repo_id.encode())
    for rel in sorted(files):
        h.update(rel.encode() + hashlib.sha256(files[rel].read_bytes()).digest())
    commit = h.hexdigest()
    root = cache / (f"{repo_type}s--" + repo_id.replace("/", "--"))
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    for rel, src in files.items():
        blob = root / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = root / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs" / ref).write_text(commit)
    return commit

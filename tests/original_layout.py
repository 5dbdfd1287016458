"""A diffusers SDXL pipeline written as one file in the original Stability / A1111 key layout
(`model.diffusion_model.*`, `conditioner.embedders.0.transformer.*`, `conditioner.embedders.1.model.*`,
`first_stage_model.*`), as the SDXL fine-tunes people share are: the test stand-in for them.

A port of diffusers' scripts/convert_diffusers_to_original_sdxl.py, with two changes:
- the block counts come from the model instead of being SDXL's (3 UNet levels, 4 VAE levels), so
  the tiny pipeline converts too; on SDXL's own sizes the mapping is the script's;
- the second text encoder's projection is written as OpenCLIP's `text_projection` (transposed:
  OpenCLIP multiplies `x @ proj`), which is what A1111 checkpoints hold and what diffusers'
  from_single_file reads; the script leaves it under its diffusers name, where no loader finds it.

Test-only: it imports torch, and spo itself never writes single-file checkpoints.
"""

from __future__ import annotations

import re

import torch

# -- UNet ---------------------------------------------------------------------------------------
# (original, diffusers) pairs, as in the script.

_UNET = [
    ("time_embed.0.weight", "time_embedding.linear_1.weight"),
    ("time_embed.0.bias", "time_embedding.linear_1.bias"),
    ("time_embed.2.weight", "time_embedding.linear_2.weight"),
    ("time_embed.2.bias", "time_embedding.linear_2.bias"),
    ("input_blocks.0.0.weight", "conv_in.weight"),
    ("input_blocks.0.0.bias", "conv_in.bias"),
    ("out.0.weight", "conv_norm_out.weight"),
    ("out.0.bias", "conv_norm_out.bias"),
    ("out.2.weight", "conv_out.weight"),
    ("out.2.bias", "conv_out.bias"),
    ("label_emb.0.0.weight", "add_embedding.linear_1.weight"),
    ("label_emb.0.0.bias", "add_embedding.linear_1.bias"),
    ("label_emb.0.2.weight", "add_embedding.linear_2.weight"),
    ("label_emb.0.2.bias", "add_embedding.linear_2.bias"),
]
_UNET_RESNET = [
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("emb_layers.1", "time_emb_proj"),
    ("skip_connection", "conv_shortcut"),
]


def _unet_layers(unet) -> list[tuple[str, str]]:
    """The script's block-prefix map, for `unet`'s number of levels and resnets per level (SDXL:
    3 levels of 2 down / 3 up resnets, which is what the script hard-codes)."""
    levels, per = len(unet.down_blocks), unet.config.layers_per_block
    layers = []
    for i in range(levels):
        for j in range(per):
            layers.append((f"input_blocks.{(per + 1) * i + j + 1}.0.", f"down_blocks.{i}.resnets.{j}."))
            if hasattr(unet.down_blocks[i], "attentions"):
                layers.append((f"input_blocks.{(per + 1) * i + j + 1}.1.", f"down_blocks.{i}.attentions.{j}."))
        for j in range(per + 1):
            layers.append((f"output_blocks.{(per + 1) * i + j}.0.", f"up_blocks.{i}.resnets.{j}."))
            if hasattr(unet.up_blocks[i], "attentions"):
                layers.append((f"output_blocks.{(per + 1) * i + j}.1.", f"up_blocks.{i}.attentions.{j}."))
        if i < levels - 1:
            layers.append((f"input_blocks.{(per + 1) * (i + 1)}.0.op.", f"down_blocks.{i}.downsamplers.0.conv."))
            # The upsampler follows the level's last resnet, and its attention when it has one.
            slot = 2 if hasattr(unet.up_blocks[i], "attentions") else 1
            layers.append((f"output_blocks.{(per + 1) * i + per}.{slot}.", f"up_blocks.{i}.upsamplers.0."))
    layers.append(("middle_block.1.", "mid_block.attentions.0."))
    for j in range(2):
        layers.append((f"middle_block.{2 * j}.", f"mid_block.resnets.{j}."))
    return layers


def _rename(mapping: dict[str, str], pairs, within: str = "") -> None:
    """The script's renaming pass: in each new name whose diffusers key holds `within`, every
    diffusers part replaced by its original one, in the order given."""
    for k, v in mapping.items():
        if within in k:
            for sd_part, hf_part in pairs:
                v = v.replace(hf_part, sd_part)
            mapping[k] = v


def unet_state_dict(unet) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    mapping = {k: k for k in state}
    for sd_name, hf_name in _UNET:
        mapping[hf_name] = sd_name
    _rename(mapping, _UNET_RESNET, within="resnets")
    _rename(mapping, _unet_layers(unet))
    return {sd_name: state[hf_name] for hf_name, sd_name in mapping.items()}


# -- VAE ----------------------------------------------------------------------------------------

_VAE_ATTN = [("norm.", "group_norm."), ("q.", "to_q."), ("k.", "to_k."), ("v.", "to_v."), ("proj_out.", "to_out.0.")]


def vae_state_dict(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.encoder.down_blocks)
    pairs = [("nin_shortcut", "conv_shortcut"), ("norm_out", "conv_norm_out"), ("mid.attn_1.", "mid_block.attentions.0.")]
    for i in range(levels):
        for j in range(len(vae.encoder.down_blocks[i].resnets)):
            pairs.append((f"encoder.down.{i}.block.{j}.", f"encoder.down_blocks.{i}.resnets.{j}."))
        if i < levels - 1:
            pairs.append((f"down.{i}.downsample.", f"down_blocks.{i}.downsamplers.0."))
            # Up levels are numbered in reverse in the original layout.
            pairs.append((f"up.{levels - 1 - i}.upsample.", f"up_blocks.{i}.upsamplers.0."))
        for j in range(len(vae.decoder.up_blocks[i].resnets)):
            pairs.append((f"decoder.up.{levels - 1 - i}.block.{j}.", f"decoder.up_blocks.{i}.resnets.{j}."))
    for i in range(2):
        pairs.append((f"mid.block_{i + 1}.", f"mid_block.resnets.{i}."))
    state = vae.state_dict()
    mapping = {k: k for k in state}
    _rename(mapping, pairs)
    _rename(mapping, _VAE_ATTN, within="attentions")
    out = {v: state[k] for k, v in mapping.items()}
    for k, w in out.items():
        # The original's attention projections are 1×1 convolutions.
        if any(f"mid.attn_1.{n}.weight" in k for n in ("q", "k", "v", "proj_out")) and w.ndim != 1:
            out[k] = w.reshape(*w.shape, 1, 1)
    return out


# -- Text encoders ------------------------------------------------------------------------------

_OPENCLIP = [
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    (".c_fc.", ".fc1."),
    (".c_proj.", ".fc2."),
    (".attn", ".self_attn"),
    ("ln_final.", "text_model.final_layer_norm."),
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
]
_PROTECTED = {re.escape(hf): sd for sd, hf in _OPENCLIP}
_PATTERN = re.compile("|".join(_PROTECTED))


def _relabel(key: str) -> str:
    return _PATTERN.sub(lambda m: _PROTECTED[re.escape(m.group(0))], key)


def openclip_state_dict(text_encoder_2) -> dict[str, torch.Tensor]:
    state = text_encoder_2.state_dict()
    out, qkv = {}, {}
    for k, v in state.items():
        m = re.match(r"(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$", k)
        if m:
            qkv.setdefault((m.group(1) + ".self_attn", m.group(3)), {})[m.group(2)] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        else:
            out[_relabel(k)] = v
    for (prefix, kind), parts in qkv.items():
        out[f"{_relabel(prefix)}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    # transformers ≥ 5.6 dropped CLIPTextModel's `text_model.` level; the original keys have it.
    state = text_encoder.state_dict()
    return {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def state_dict(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline (UNet, VAE, both text encoders) in the original single-file layout."""
    out = {}
    for prefix, part in (("model.diffusion_model.", unet_state_dict(pipe.unet)),
                         ("first_stage_model.", vae_state_dict(pipe.vae)),
                         ("conditioner.embedders.0.transformer.", clip_state_dict(pipe.text_encoder)),
                         ("conditioner.embedders.1.model.", openclip_state_dict(pipe.text_encoder_2))):
        out.update({prefix + k: v.contiguous() for k, v in part.items()})
    return out


def save(pipe, path, dtype: torch.dtype | None = None, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    tensors = state_dict(pipe)
    if dtype is not None:
        tensors = {k: v.to(dtype) for k, v in tensors.items()}
    save_file(tensors, str(path), metadata=metadata)

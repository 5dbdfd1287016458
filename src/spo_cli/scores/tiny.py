"""Tiny random stand-ins for every scorer's Hub repo, with the real file names and formats.

The transformers repos (PickScore, CLIP-H's processor and config, CLIP ViT-L) are saved as
transformers saves them; the three `.pt`/`.pth` checkpoints are written in their releases' own
key layouts (OpenCLIP for HPSv2, BLIP + reward head for ImageReward, the LAION MLP), so loading
them exercises the same renaming a real download goes through. Tests and benchmarks only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from spo_cli import scores
from spo_cli.scores.models import OPENAI_MEAN, OPENAI_STD, _BLIP_VISION_RENAMES, _reward_mlp

IMAGE = 32  # pixels a side the tiny vision towers take
BERT_WORDS = ("a an the and of in on at with red fox snow cat dog moon child penguin sitting photo painting "
              "lighthouse storm sea sky blue green golden hour portrait city night").split()


def _randomise(module: torch.nn.Module, seed: int) -> None:
    # transformers' init leaves LayerNorms at 1/0 and projections tiny: spread everything so that
    # different images and prompts get clearly different scores.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_((1 + noise) if re.search(r"(layer_?norm|LayerNorm|ln_|layrnorm).*weight$", name) else noise)


def clip_config(vocab: int, *, act: str, eos_legacy: bool):
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=77, hidden_act=act, bos_token_id=vocab - 2,
                eos_token_id=2 if eos_legacy else vocab - 1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE,
                  patch_size=8, hidden_act=act)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16, logit_scale_init_value=2.6592)


def _processor_files(folder: Path, pad: str = "<|endoftext|>") -> int:
    from spo_cli import tiny

    vocab = tiny.write_tokenizer(folder, pad)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE, "width": IMAGE}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD), "do_convert_rgb": True}))
    return vocab


def _clip(folder: Path, seed: int, *, act: str, eos_legacy: bool, weights: bool, pad: str = "<|endoftext|>"):
    from transformers import CLIPModel

    vocab = _processor_files(folder, pad)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config(vocab, act=act, eos_legacy=eos_legacy))
    _randomise(model, seed)
    if weights:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        model.config.save_pretrained(folder)
    return model


def to_openclip(state: dict) -> dict:
    """transformers CLIPModel keys → OpenCLIP's (the inverse of models.openclip_to_transformers)."""
    inverse = {
        "vision_model.embeddings.patch_embedding.": "visual.conv1.",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.pre_layrnorm.": "visual.ln_pre.", "vision_model.post_layernorm.": "visual.ln_post.",
        "vision_model.encoder.layers.": "visual.transformer.resblocks.",
        "text_model.encoder.layers.": "transformer.resblocks.",
        "text_model.embeddings.token_embedding.": "token_embedding.",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.": "ln_final.",
        ".layer_norm1.": ".ln_1.", ".layer_norm2.": ".ln_2.", ".mlp.fc1.": ".mlp.c_fc.", ".mlp.fc2.": ".mlp.c_proj.",
        ".self_attn.out_proj.": ".attn.out_proj.",
    }
    out, qkv = {}, {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key == "visual_projection.weight":
            out["visual.proj"] = value.t().contiguous()
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()
            continue
        new = key
        for a, b in inverse.items():
            new = new.replace(a, b)
        m = re.search(r"\.self_attn\.([qkv])_proj\.(weight|bias)$", new)
        if m:
            qkv.setdefault((new[: m.start()], m.group(2)), {})[m.group(1)] = value
            continue
        out[new] = value
    for (stem, kind), parts in qkv.items():
        out[f"{stem}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def _bert_vocab(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,!?'-")
    tokens = ["[PAD]", "[unused0]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS + chars + ["##" + c for c in chars]
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512,
                                                              "tokenizer_class": "BertTokenizer"}))
    return len(tokens)


def _imagereward(folder: Path, bert_vocab: int, seed: int) -> None:
    from transformers import BlipTextConfig, BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    folder.mkdir(parents=True, exist_ok=True)
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 2,
           "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": bert_vocab + 2,
           "encoder_width": 64, "add_cross_attention": True}
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=1, image_size=IMAGE, patch_size=8,
                                              layer_norm_eps=1e-6))
    text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=32, encoder_hidden_size=64,
                                        intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                        max_position_embeddings=64, is_decoder=True), add_pooling_layer=False)
    mlp = _reward_mlp(32)
    for i, m in enumerate((vision, text, mlp)):
        _randomise(m, seed + i)
    torch.save(imagereward_checkpoint(vision, text, mlp, seed), folder / "ImageReward.pt")


def imagereward_checkpoint(vision, text, mlp, seed: int) -> dict:
    """The ImageReward release's state dict (BLIP's timm-style vision keys, med BERT keys, the reward
    MLP, and the projections score() never uses) from transformers' BLIP modules: the tiny stand-in's
    and the GPU benchmark's full-size one (benchmarks/bench_eval.py)."""
    inverse = {}
    for pattern, repl in _BLIP_VISION_RENAMES:  # the renames are one-to-one: read them backwards
        src = pattern.strip("^$").replace("\\.", ".").replace("(\\d+)", "{i}")
        inverse[repl.replace("\\1", "{i}")] = src
    state = {}
    for key, value in vision.state_dict().items():
        new = key
        for hf, blip in inverse.items():
            m = re.match(re.escape(hf).replace(r"\{i\}", r"(\d+)"), new)
            if m:
                new = blip.replace("{i}", m.group(1) if m.groups() else "") + new[m.end():]
                break
        state["blip.visual_encoder." + new] = value
    state.update({"blip.text_encoder." + k: v for k, v in text.state_dict().items() if not k.endswith("position_ids")})
    positions = text.config.max_position_embeddings
    state["blip.text_encoder.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)  # persistent in med.py
    state.update({"mlp." + k: v for k, v in mlp.state_dict().items()})
    g = torch.Generator().manual_seed(seed + 7)
    width, hidden = vision.config.hidden_size, text.config.hidden_size
    state["blip.vision_proj.weight"] = torch.randn(256, width, generator=g)  # in the release, unused by score()
    state["blip.vision_proj.bias"] = torch.randn(256, generator=g)
    state["blip.text_proj.weight"] = torch.randn(256, hidden, generator=g)
    state["blip.text_proj.bias"] = torch.randn(256, generator=g)
    return state


def save_repos(dest: Path, seed: int = 100) -> dict[str, Path]:
    """Tiny versions of every scorer repo, under their real ids, in `dest`."""
    from safetensors.torch import save_file  # noqa: F401  (transformers saves safetensors)

    dest.mkdir(parents=True, exist_ok=True)
    folders = {repo: dest / repo.replace("/", "--") for repo in
               (scores.CLIP_H, scores.PICKSCORE, scores.HPSV2, scores.CLIP_L, scores.AESTHETIC, scores.IMAGEREWARD,
                scores.BERT)}
    # CLIP-H: config + processor only (PickScore brings its own weights; HPS its own checkpoint).
    _clip(folders[scores.CLIP_H], seed, act="gelu", eos_legacy=False, weights=False)
    _clip(folders[scores.PICKSCORE], seed + 1, act="gelu", eos_legacy=False, weights=True)
    folders[scores.HPSV2].mkdir(parents=True, exist_ok=True)
    for i, (version, name) in enumerate(scores.HPS_FILES.items()):
        hps = _clip(dest / f"_hps-{version}", seed + 2 + i, act="gelu", eos_legacy=False, weights=False)
        torch.save({"state_dict": to_openclip(hps.state_dict())}, folders[scores.HPSV2] / name)
    # seed + 5: cosines of both signs on the test images, so CLIP score's clamp at 0 is exercised
    clip_l = _clip(folders[scores.CLIP_L], seed + 5, act="quick_gelu", eos_legacy=True, weights=True)
    mlp = _reward_mlp(clip_l.config.projection_dim)
    _randomise(mlp, seed + 8)
    folders[scores.AESTHETIC].mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), folders[scores.AESTHETIC] / scores.AESTHETIC_FILE)
    vocab = _bert_vocab(folders[scores.BERT])
    _imagereward(folders[scores.IMAGEREWARD], vocab, seed + 6)
    return folders

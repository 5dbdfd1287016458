"""The five scorers, on transformers and plain torch, each computing what its authors' code does.

No scorer runs remote code or unpickles: transformers checkpoints are safetensors, and the three
that exist only as `.pt`/`.pth` (HPSv2, ImageReward, the aesthetic MLP) are read with
`torch.load(weights_only=True)` into a known architecture whose every weight must be matched.

HPSv2 is an OpenCLIP ViT-H-14 and ImageReward a BLIP ViT-L with a BERT text encoder; both are
rebuilt as the equivalent transformers models (CLIPModel; BlipVisionModel + BlipTextModel) with
the checkpoints' keys renamed, so no second model library is needed (open_clip needs torchvision,
whose wheels are tied to one torch build). The tests check every scorer against a separate
reimplementation of its authors' code on tiny random weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spo_cli.errors import ModelError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072


def clip_transform(image: Image.Image, size: int) -> torch.Tensor:
    """torchvision's Resize(size, BICUBIC), CenterCrop(size), RGB, ToTensor, Normalize(OpenAI CLIP)
    on a PIL image: the preprocessing of OpenAI CLIP, OpenCLIP and ImageReward, without torchvision."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_long = int(size * long / short)
        image = image.resize((size, new_long) if w <= h else (new_long, size), Image.BICUBIC)
    w, h = image.size
    left, top = int(round((w - size) / 2.0)), int(round((h - size) / 2.0))
    if (w, h) != (size, size):
        image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image.convert("RGB"), copy=True)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return pixels.sub(mean).div(std)


def hps_transform(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's `preprocess_val` (its open_clip fork, `light_augmentation=True` → `ResizeMaxSize`):
    ToTensor first, then the LONGER side scaled to `size` by a bicubic, antialiased tensor resize,
    zero-padded to a square (centred, odd pixel right/bottom), then Normalize. An RGBA image, which
    their code passes on as 4 channels and then fails on, is scored as RGB here."""
    import torch.nn.functional as F

    pixels = torch.from_numpy(np.array(image.convert("RGB"), copy=True)).permute(2, 0, 1).float().div(255)
    h, w = pixels.shape[1:]
    scale = size / float(max(h, w))
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        if (new_h, new_w) != (h, w):
            pixels = F.interpolate(pixels[None], size=(new_h, new_w), mode="bicubic", align_corners=False,
                                   antialias=True)[0]
        pad_h, pad_w = size - new_h, size - new_w
        pixels = F.pad(pixels, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    mean = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(3, 1, 1)
    return pixels.sub(mean).div(std)


def _features(out) -> torch.Tensor:
    """A tower's projected embedding, in float32 whatever the tower ran in.

    On a GPU the towers run in float16, whose step at 1 is 1e-3; a cosine multiplied there by
    PickScore's logit scale (100) comes out in steps of ~0.016 at ~22, against differences between
    models of the same size. So normalisation and every final product run in float32."""
    # transformers 5 returns an output object whose pooler_output is the projected embedding.
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def _normalised(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _trusted_load(path: Path, what: str) -> dict:
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ModelError(f"{path.name} ({what}) could not be read as plain weights: {str(e).splitlines()[0][:200]}",
                         "spo loads .pt checkpoints with torch.load(weights_only=True) only. The file may be "
                         "damaged: `spo download score-models --force` fetches it again.") from e
    if not isinstance(state, dict):
        raise ModelError(f"{path.name} ({what}) holds a {type(state).__name__}, not a state dict.")
    return state


def _load_exact(module: torch.nn.Module, state: dict, what: str, allow_missing=()) -> None:
    """Every weight of the architecture must come from the checkpoint, and nothing may be left over."""
    _check_keys(module, state, what, allow_missing)
    module.load_state_dict(state, strict=False)


def _reward_mlp(width: int) -> torch.nn.Module:
    # ImageReward's and the LAION aesthetic predictor's MLP (the same layout): keys layers.{0,2,4,6,7}.
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(
                torch.nn.Linear(width, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
                torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16),
                torch.nn.Linear(16, 1))

        def forward(self, x):
            return self.layers(x)

    return MLP()


def _image_processor(folder: Path):
    import transformers

    # The PIL processor is the one PickScore's and torchmetrics' code ran with (transformers 5 would
    # otherwise pick the torchvision one when it is installed, which resizes differently).
    cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return cls.from_pretrained(folder)


def _clip_model(folder: Path, device, dtype):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, dtype=dtype, use_safetensors=True).eval().to(device)


class Scorer:
    name = ""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype

    def score(self, images: list[Image.Image], prompts: list[str]) -> list[float]:
        raise NotImplementedError


class _ClipPair(Scorer):
    """A transformers CLIP model with the tokenizer and image processor of another repo: PickScore
    (CLIP-H's processor, PickScore's weights) and CLIP score (CLIP-L's own). Each adds its formula."""

    repos: tuple[str, str]  # the names in `spo_cli.scores` of the processor's repo and the weights' repo

    def __init__(self, folders: dict[str, Path], device, dtype):
        from spo_cli import scores
        from transformers import CLIPTokenizer

        super().__init__(device, dtype)
        processor, weights = (getattr(scores, name) for name in self.repos)
        self.images = _image_processor(folders[processor])
        self.tokenizer = CLIPTokenizer.from_pretrained(folders[processor])
        self.model = _clip_model(folders[weights], device, dtype)

    def _embeddings(self, images, text: dict) -> tuple:
        """L2-normalised image and text embeddings, in float32 whatever the towers ran in."""
        pixels = self.images(images=images, return_tensors="pt")["pixel_values"].to(self.device, self.dtype)
        return (_normalised(_features(self.model.get_image_features(pixel_values=pixels))),
                _normalised(_features(self.model.get_text_features(**text))))


class PickScore(_ClipPair):
    """PickScore README: processor of CLIP-H, `logit_scale.exp() * text_embs @ image_embs.T`."""

    name = "pickscore"
    repos = ("CLIP_H", "PICKSCORE")

    @torch.no_grad()
    def score(self, images, prompts):
        text = self.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        image_embs, text_embs = self._embeddings(images, text)
        return (self.model.logit_scale.float().exp() * (text_embs * image_embs).sum(-1)).tolist()


class ClipScore(_ClipPair):
    """torchmetrics' CLIPScore per image: max(100 · cos(image, text), 0), text cut at 77 tokens as
    torchmetrics cuts it (after tokenizing, so a long prompt loses its end token, as there)."""

    name = "clip"
    repos = ("CLIP_L", "CLIP_L")

    @torch.no_grad()
    def score(self, images, prompts):
        text = self.tokenizer(prompts, padding=True, return_tensors="pt")
        limit = self.model.config.text_config.max_position_embeddings
        img, txt = self._embeddings(images, {k: v[..., :limit].to(self.device) for k, v in text.items()})
        return (100 * (img * txt).sum(-1)).clamp(min=0).tolist()


class Aesthetic(Scorer):
    """LAION improved-aesthetic-predictor (simple_inference.py): the MLP on the L2-normalised
    CLIP ViT-L/14 image embedding, OpenAI CLIP's preprocessing."""

    name = "aesthetic"

    def __init__(self, folders, device, dtype):
        from spo_cli import scores

        super().__init__(device, dtype)
        self.model = _clip_model(folders[scores.CLIP_L], device, dtype)
        self.size = self.model.config.vision_config.image_size
        self.mlp = _reward_mlp(self.model.config.projection_dim)
        _load_exact(self.mlp, _trusted_load(folders[scores.AESTHETIC] / scores.AESTHETIC_FILE, "aesthetic predictor"),
                    "aesthetic predictor")
        self.mlp.eval().to(device)  # float32, as the reference casts the embedding to FloatTensor

    @torch.no_grad()
    def score(self, images, prompts):
        pixels = torch.stack([clip_transform(im, self.size) for im in images]).to(self.device, self.dtype)
        emb = _features(self.model.get_image_features(pixel_values=pixels))
        norm = emb.norm(p=2, dim=-1, keepdim=True)
        emb = emb / torch.where(norm == 0, torch.ones_like(norm), norm)  # their numpy normalized(): 0 → 1
        return self.mlp(emb).squeeze(-1).tolist()


# --- HPSv2: OpenCLIP ViT-H-14 weights in a transformers CLIPModel -------------------------------

_OPENCLIP_RENAMES = [
    (r"visual\.conv1\.", "vision_model.embeddings.patch_embedding."),
    (r"visual\.class_embedding", "vision_model.embeddings.class_embedding"),
    (r"visual\.positional_embedding", "vision_model.embeddings.position_embedding.weight"),
    (r"visual\.ln_pre\.", "vision_model.pre_layrnorm."),
    (r"visual\.ln_post\.", "vision_model.post_layernorm."),
    (r"visual\.transformer\.resblocks\.(\d+)\.", r"vision_model.encoder.layers.\1."),
    (r"^transformer\.resblocks\.(\d+)\.", r"text_model.encoder.layers.\1."),
    (r"^token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^positional_embedding$", "text_model.embeddings.position_embedding.weight"),
    (r"^ln_final\.", "text_model.final_layer_norm."),
    (r"\.ln_1\.", ".layer_norm1."), (r"\.ln_2\.", ".layer_norm2."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    (r"\.attn\.out_proj\.", ".self_attn.out_proj."),
]


def openclip_to_transformers(state: dict) -> dict:
    """OpenCLIP CLIP keys → transformers CLIPModel keys (the in-projection split into q, k, v;
    projections transposed: OpenCLIP multiplies `x @ proj`, a Linear computes `x @ W.T`).

    `scores/tiny.py` writes the other direction with a table of its own, on purpose: the tiny HPS
    checkpoint is the test of this mapping, and one shared table would pass its own round trip
    however wrong it were."""
    out = {}
    for key, value in state.items():
        if key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
            continue
        if key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()
            continue
        if key == "attn_mask":  # the causal mask, rebuilt by transformers
            continue
        m = re.search(r"\.attn\.in_proj_(weight|bias)$", key)
        new = key
        for pattern, repl in _OPENCLIP_RENAMES:
            new = re.sub(pattern, repl, new)
        if m:
            stem = new[: -len(m.group(0))] + ".self_attn."
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{stem}{name}.{m.group(1)}"] = part.contiguous()
            continue
        if new == "vision_model.embeddings.class_embedding":
            value = value.reshape(-1)
        out[new] = value
    return out


class HPSv2(Scorer):
    """HPSv2 img_score.py: OpenCLIP ViT-H-14 with the HPS weights; score = image_features ·
    text_features (both L2-normalised), OpenCLIP's tokenizer (77 tokens, zero padding) and its
    validation transform (`hps_transform`)."""

    name = "hpsv2"

    def __init__(self, folders, device, dtype, version: str = "v2.1"):
        from accelerate import init_empty_weights
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        from spo_cli import scores

        super().__init__(device, dtype)
        clip_h = folders[scores.CLIP_H]
        config = CLIPConfig.from_pretrained(clip_h)
        checkpoint = _trusted_load(folders[scores.HPSV2] / scores.HPS_FILES[version], f"HPS {version}")
        state = openclip_to_transformers(checkpoint.get("state_dict", checkpoint))
        with init_empty_weights(include_buffers=False):
            model = CLIPModel(config)
        _check_keys(model, state, f"HPS {version}", allow_missing=(r".*position_ids",))
        model.load_state_dict(state, strict=False, assign=True)
        self.model = model.eval().to(device, dtype)
        self.tokenizer = CLIPTokenizer.from_pretrained(clip_h)
        self.size = config.vision_config.image_size
        self.context = config.text_config.max_position_embeddings

    def tokens(self, prompts: list[str]) -> torch.Tensor:
        """OpenCLIP's SimpleTokenizer call: cleaned, lower-cased BPE between start and end tokens,
        cut to the context with the end token kept last, padded with zeros."""
        sot, eot = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        rows = []
        for p in prompts:
            ids = [sot] + self.tokenizer.encode(_openclip_clean(p), add_special_tokens=False) + [eot]
            if len(ids) > self.context:
                ids = ids[: self.context]
                ids[-1] = eot
            rows.append(ids + [0] * (self.context - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    @torch.no_grad()
    def score(self, images, prompts):
        pixels = torch.stack([hps_transform(im, self.size) for im in images]).to(self.device, self.dtype)
        text = self.tokens(prompts).to(self.device)
        img = _normalised(_features(self.model.get_image_features(pixel_values=pixels)))
        # OpenCLIP pools the text at argmax(token id), the end token; no padding mask (causal only).
        txt = _normalised(_features(self.model.get_text_features(input_ids=text)))
        return (img * txt).sum(-1).tolist()


def _openclip_clean(text: str) -> str:
    import html

    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # only changes mis-encoded text ("cafÃ©"); plain prompts are untouched
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip().lower()


def _check_keys(module, state, what, allow_missing=()):
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state and not any(re.fullmatch(p, k) for p in allow_missing))
    unexpected = sorted(k for k in state if k not in own)
    wrong = sorted(k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or wrong:
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}{' …' if len(keys) > 4 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", unexpected),
                                               ("wrong shape", wrong)) if keys)
        raise ModelError(f"The {what} checkpoint does not match the architecture ({detail}).",
                         "The file may be damaged or a different release: `spo download score-models --force` "
                         "fetches it again.")


# --- ImageReward: BLIP in transformers' Blip models -------------------------------------------

_BLIP_VISION_RENAMES = [
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.", "embeddings.patch_embedding."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.", r"encoder.layers.\1.mlp."),
    (r"^norm\.", "post_layernorm."),
]
# Parts of BLIP_Pretrain that ImageReward.score never runs.
_BLIP_UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.itm_head.", "blip.text_decoder.", "blip.temp",
                "blip.visual_encoder_m.", "blip.text_encoder_m.", "blip.vision_proj_m.", "blip.text_proj_m.",
                "blip.image_queue", "blip.text_queue", "blip.idx_queue", "blip.ptr_queue")


def _blip_vision(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _BLIP_VISION_RENAMES:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


class ImageReward(Scorer):
    """ImageReward.score: BLIP ViT-L image embeds, cross-attended by the BERT text encoder over the
    prompt (35 tokens), first token into the reward MLP, normalised by the release's mean and std."""

    name = "imagereward"

    def __init__(self, folders, device, dtype):
        import json

        from transformers import BertTokenizer, BlipTextConfig, BlipVisionConfig
        from transformers.models.blip.modeling_blip import BlipVisionModel
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        from spo_cli import scores

        super().__init__(device, dtype)
        folder = folders[scores.IMAGEREWARD]
        state = _trusted_load(folder / "ImageReward.pt", "ImageReward")
        vision = {k[len("blip.visual_encoder."):]: v for k, v in state.items() if k.startswith("blip.visual_encoder.")}
        text = {k[len("blip.text_encoder."):]: v for k, v in state.items() if k.startswith("blip.text_encoder.")}
        text.pop("embeddings.position_ids", None)  # a persistent buffer in BLIP's med.py: 0, 1, 2, … again
        mlp = {k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")}
        rest = [k for k in state if not k.startswith(("blip.visual_encoder.", "blip.text_encoder.", "mlp.") + _BLIP_UNUSED)]
        if rest or "patch_embed.proj.weight" not in vision or "pos_embed" not in vision:
            raise ModelError("ImageReward.pt is not the ImageReward release's state dict "
                             f"({'unexpected keys: ' + ', '.join(rest[:4]) if rest else 'no BLIP vision encoder'}).",
                             "`spo download score-models --force` fetches it again.")
        patch = vision["patch_embed.proj.weight"]
        width, kernel = patch.shape[0], patch.shape[-1]
        grid = int(round((vision["pos_embed"].shape[1] - 1) ** 0.5))
        depth = len({k.split(".")[1] for k in vision if k.startswith("blocks.")})
        # BLIP's ViT-L: 16 heads of 64; the image size follows from the position table.
        vconfig = BlipVisionConfig(hidden_size=width, intermediate_size=vision["blocks.0.mlp.fc1.weight"].shape[0],
                                   num_hidden_layers=depth, num_attention_heads=width // 64, image_size=grid * kernel,
                                   patch_size=kernel, hidden_act="gelu", layer_norm_eps=1e-6)
        med = json.loads((folder / "med_config.json").read_text())
        tconfig = BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=width,
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            hidden_act=med.get("hidden_act", "gelu"), layer_norm_eps=med.get("layer_norm_eps", 1e-12),
            pad_token_id=med.get("pad_token_id", 0), is_decoder=True)  # True builds the cross-attention; forward runs it bidirectionally
        self.vision = BlipVisionModel(vconfig)
        _load_exact(self.vision, _blip_vision(vision), "ImageReward (vision)")
        self.text = BlipTextModel(tconfig, add_pooling_layer=False)
        _load_exact(self.text, text, "ImageReward (text)", allow_missing=(r".*position_ids",))
        self.mlp = _reward_mlp(med["hidden_size"])
        _load_exact(self.mlp, mlp, "ImageReward (reward head)")
        for m in (self.vision, self.text):
            m.eval().to(device, dtype)
        self.mlp.eval().to(device)
        self.size = vconfig.image_size
        tokenizer = BertTokenizer.from_pretrained(folders[scores.BERT])
        # As ImageReward's init_tokenizer does; they only matter to a prompt that spells them.
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        self.tokenizer = tokenizer

    @torch.no_grad()
    def score(self, images, prompts):
        text = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                              return_tensors="pt").to(self.device)
        pixels = torch.stack([clip_transform(im, self.size) for im in images]).to(self.device, self.dtype)
        image_embeds = self.vision(pixel_values=pixels).last_hidden_state
        image_atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device)
        out = self.text(input_ids=text["input_ids"], attention_mask=text["attention_mask"],
                        encoder_hidden_states=image_embeds, encoder_attention_mask=image_atts)
        rewards = self.mlp(out.last_hidden_state[:, 0, :].float()).squeeze(-1)
        return ((rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD).tolist()


SCORERS = {cls.name: cls for cls in (PickScore, HPSv2, ImageReward, Aesthetic, ClipScore)}


def load(name: str, folders: dict[str, Path], device: str, dtype: torch.dtype, hps_version: str = "v2.1") -> Scorer:
    if name == "hpsv2":
        return HPSv2(folders, device, dtype, hps_version)
    return SCORERS[name](folders, device, dtype)

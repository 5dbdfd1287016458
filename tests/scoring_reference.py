"""Independent test references for the preference scores of `spo score`.

Each function recomputes one score the way its authors' reference code does, in plain torch + PIL +
numpy (transformers only where the authors' own code runs on transformers: PickScore, the aesthetic
predictor's CLIP embedding, torchmetrics' CLIP score). The models are small re-implementations whose
module trees carry the authors' key names, so an authors' checkpoint (or a tiny random one made by
the `*_random_state_dict` helpers here) loads with `load_state_dict(strict=True)`.

Sources read (snapshots; line numbers are of these files):
  tgxs002/HPSv2 @866735e           hpsv2/img_score.py, hpsv2/src/open_clip/{factory,transform,model,
                                   transformer,tokenizer,pretrained}.py
  THUDM/ImageReward @c1392c6       ImageReward/ImageReward.py, ImageReward/utils.py,
                                   ImageReward/models/BLIP/{blip,blip_pretrain,med,vit}.py
  yuvalkirstain/PickScore @f79607f README.md (inference snippet)
  christophschuhmann/improved-aesthetic-predictor @6934dd8  simple_inference.py
  Lightning-AI/torchmetrics @dab0333  src/torchmetrics/functional/multimodal/clip_score.py,
                                   src/torchmetrics/multimodal/clip_score.py
  openai/CLIP clip/clip.py (_transform); torchvision transforms/functional.py (resize, center_crop,
  pad), transforms/_functional_tensor.py (resize).

Everything runs on the CPU in float32. The authors run HPSv2 under CUDA autocast (fp16) and the
aesthetic CLIP in fp16 on CUDA; the references here are the float32 versions of the same maths.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --------------------------------------------------------------------------------------------------
# Image preprocessing (torchvision semantics, re-implemented)
# --------------------------------------------------------------------------------------------------


def _shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision `_compute_resized_output_size` for an int size and no max_size: (new_h, new_w)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    return new_h, new_w


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision ToTensor for an 8-bit PIL image: HWC uint8 -> CHW float32 in [0, 1]."""
    array = np.array(image, dtype=np.uint8, copy=True)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def _normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """torchvision Normalize: (x - mean) / std per channel, mean/std cast to the tensor's dtype."""
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


def _pil_center_crop(image: Image.Image, size: int) -> Image.Image:
    """torchvision F.center_crop on a PIL image, including its zero padding when the image is smaller
    than the crop (pad left/top = deficit // 2, right/bottom = (deficit + 1) // 2, fill 0, as
    F_pil.pad -> ImageOps.expand does). After Resize(size) the shorter side equals `size` and the
    longer side is int(size * long / short) >= size, so in Resize+CenterCrop the padding never fires."""
    width, height = image.size
    if size > width or size > height:
        border = (
            (size - width) // 2 if size > width else 0,
            (size - height) // 2 if size > height else 0,
            (size - width + 1) // 2 if size > width else 0,
            (size - height + 1) // 2 if size > height else 0,
        )
        bands = len(image.getbands())
        image = ImageOps.expand(image, border=border, fill=(0,) * bands if bands > 1 else 0)
        width, height = image.size
        if (width, height) == (size, size):
            return image
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def preprocess_torchvision(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """OpenAI CLIP's `_transform(n_px)` (clip/clip.py:79-86), the same Compose as ImageReward's
    `_transform` (ImageReward/ImageReward.py:30-37): Resize(size, BICUBIC) on the PIL image,
    CenterCrop(size), convert('RGB') (after the resize and crop), ToTensor, Normalize. Returns CHW
    float32."""
    width, height = image.size
    new_h, new_w = _shorter_side_size(height, width, size)
    if (new_h, new_w) != (height, width):  # torchvision returns the image untouched at equal size
        image = image.resize((new_w, new_h), Image.BICUBIC)
    image = _pil_center_crop(image, size)
    image = image.convert("RGB")
    return _normalize(_to_tensor(image), mean, std)


def preprocess_hps(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    antialias: bool = True,
) -> torch.Tensor:
    """HPSv2's `preprocess_val`, which is NOT Resize+CenterCrop.

    hpsv2/img_score.py:20-38 calls create_model_and_transforms('ViT-H-14', ..., light_augmentation=True);
    factory.py:368-376 then builds preprocess_val = image_transform(image_size, is_train=False,
    resize_longest_max=True). transform.py:141-157 makes that
        Compose([_convert_to_rgb_or_rgba, ToTensor(), ResizeMaxSize(image_size, fill=0), normalize])
    i.e. the resize runs on the float TENSOR (after ToTensor), not on the PIL image, and
    ResizeMaxSize (transform.py:26-49) scales the LONGER side to `size` (new dims =
    round(dim * size / max(h, w)), Python round), resizes with F.resize(tensor, (h, w), BICUBIC),
    then zero-pads (0 in [0, 1] space, i.e. black before Normalize) to size x size with
    [left, top, right, bottom] = [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2].
    When the longer side already equals `size` (scale == 1.0) it does nothing at all, not even pad.
    Mean/std: pretrained.py:138-140 gives no mean/std for laion2b_s32b_b79k, so factory.py:231-232
    falls back to the OpenAI constants.

    Tensor bicubic resize = torch interpolate(mode='bicubic', align_corners=False, antialias=...), no
    clamp for float input (torchvision _functional_tensor.resize). `antialias` defaults to True, the
    default of torchvision >= 0.17 (what an unpinned `pip install hpsv2` gets); torchvision 0.15/0.16
    resized tensors without antialiasing.

    `_convert_to_rgb_or_rgba` keeps RGBA as 4 channels, which the 3-channel conv1 of the model then
    rejects: hpsv2.score fails on RGBA input, so this raises instead. Other modes go to RGB.
    """
    if image.mode == "RGBA":
        raise ValueError("HPSv2's preprocess_val keeps RGBA as 4 channels, which its model rejects")
    tensor = _to_tensor(image.convert("RGB"))
    height, width = tensor.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = round(height * scale), round(width * scale)
        if (new_h, new_w) != (height, width):
            tensor = F.interpolate(
                tensor[None], size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias
            )[0]
        pad_h, pad_w = size - new_h, size - new_w
        # torch pad order for the last two dims: (left, right, top, bottom)
        tensor = F.pad(tensor, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return _normalize(tensor, mean, std)


# --------------------------------------------------------------------------------------------------
# Random weights that make tiny models non-trivial
# --------------------------------------------------------------------------------------------------


def _randomize_(module: nn.Module, seed: int) -> None:
    """Deterministic, non-trivial random parameters: weight matrices ~ N(0, 1/fan_in), LayerNorm
    weight ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), embeddings ~ N(0, 0.5^2). Buffers untouched."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod_name, mod in module.named_modules():
            for name, param in mod.named_parameters(recurse=False):
                if isinstance(mod, nn.LayerNorm):
                    value = (1.0 if name == "weight" else 0.0) + 0.1 * torch.randn(param.shape, generator=gen)
                elif isinstance(mod, nn.Embedding) or name in (
                    "class_embedding", "positional_embedding", "cls_token", "pos_embed"
                ):
                    value = 0.5 * torch.randn(param.shape, generator=gen)
                elif name == "logit_scale":
                    value = math.log(1 / 0.07) + 0.1 * torch.randn(param.shape, generator=gen)
                elif name in ("proj", "text_projection"):  # used as x @ P: fan_in is dim 0
                    value = torch.randn(param.shape, generator=gen) / math.sqrt(param.shape[0])
                elif param.dim() >= 2:  # Linear / Conv2d / MHA in_proj: fan_in is everything but dim 0
                    value = torch.randn(param.shape, generator=gen) / math.sqrt(param[0].numel())
                else:
                    value = 0.1 * torch.randn(param.shape, generator=gen)
                param.copy_(value)


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().contiguous() for key, value in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------
# Reward MLP (ImageReward/ImageReward.py:40-68; improved-aesthetic-predictor simple_inference.py:40-64)
# --------------------------------------------------------------------------------------------------


class RewardMLP(nn.Module):
    """input -> 1024 -> 128 -> 64 -> 16 -> 1, no activations, dropouts at 1, 3, 5 (keys layers.{0,2,4,6,7})."""

    def __init__(self, input_size: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def mlp_random_state_dict(input_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for the aesthetic predictor's MLP (save with torch.save as the .pth)."""
    mlp = RewardMLP(input_size)
    _randomize_(mlp, seed)
    return _cpu_state_dict(mlp)


# --------------------------------------------------------------------------------------------------
# HPSv2: OpenCLIP ViT CLIP (hpsv2/src/open_clip/model.py:176-255, transformer.py:189-632)
# --------------------------------------------------------------------------------------------------


class _OCResidualBlock(nn.Module):
    """ResidualAttentionBlock (transformer.py:189-244) with ls_* = Identity, no ln_1_kv."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)  # eps 1e-5
        self.attn = nn.MultiheadAttention(width, heads)  # seq-first (LND), as open_clip
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _OCTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList([_OCResidualBlock(width, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


class _OCVisionTransformer(nn.Module):
    """VisionTransformer (transformer.py:323-504) with input_patchnorm, patch_dropout, attentional
    pooling and global_average_pool all off (ViT-H-14): these leave no parameters behind."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, output_dim: int):
        super().__init__()
        grid = image_size // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _OCTransformer(width, layers, heads, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
        pooled = self.ln_post(x[:, 0])  # pool (CLS) first, then ln_post, as _global_pool + ln_post
        return pooled @ self.proj


class OpenCLIP(nn.Module):
    """open_clip `CLIP` (model.py:176-255): text tower hoisted to the top level; `attn_mask` is a
    non-persistent buffer (model.py:199, persistent=False), so it is not in the state dict."""

    def __init__(self, arch: dict):
        super().__init__()
        mlp_ratio = float(arch.get("mlp_ratio", 4.0))
        self.visual = _OCVisionTransformer(
            arch["image_size"], arch["patch_size"], arch["vision_width"], arch["vision_layers"],
            arch["vision_heads"], mlp_ratio, arch["embed_dim"],
        )
        ctx, width = arch["context_length"], arch["text_width"]
        self.transformer = _OCTransformer(width, arch["text_layers"], arch["text_heads"], mlp_ratio)
        self.token_embedding = nn.Embedding(arch["vocab_size"], width)
        self.positional_embedding = nn.Parameter(torch.zeros(ctx, width))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.zeros(width, arch["embed_dim"]))
        mask = torch.full((ctx, ctx), float("-inf")).triu_(1)  # build_attention_mask, transformer.py:580-586
        self.register_buffer("attn_mask", mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        x = self.token_embedding(text) + self.positional_embedding
        x = self.transformer(x.permute(1, 0, 2), attn_mask=self.attn_mask).permute(1, 0, 2)
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection  # eot = highest id
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.encode_image(image, normalize=True),
            "text_features": self.encode_text(text, normalize=True),
            "logit_scale": self.logit_scale.exp(),
        }


def openclip_tokens(ids: Sequence[int], context_length: int, sot: int, eot: int) -> torch.Tensor:
    """open_clip tokenize (hpsv2/src/open_clip/tokenizer.py:159-188; upstream SimpleTokenizer.__call__):
    [sot] + ids + [eot]; when longer than context_length, cut to context_length and set the last token
    to eot; zero padding. Shape (1, context_length), int64."""
    tokens = [sot, *ids, eot]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = eot
    result = torch.zeros(1, context_length, dtype=torch.long)
    result[0, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return result


def openclip_random_state_dict(arch: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights for the OpenCLIP model (save as torch.save({'state_dict': sd}, path))."""
    model = OpenCLIP(arch)
    _randomize_(model, seed)
    return _cpu_state_dict(model)


@torch.no_grad()
def hps_scores(
    checkpoint_path,
    arch: dict,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    token_ids: Callable[[str], list[int]],
    sot: int = 49406,
    eot: int = 49407,
) -> list[float]:
    """HPSv2 score of image i against prompt i, as hpsv2/img_score.py:42-113 computes it: one image and
    one prompt per forward, preprocess_val (see preprocess_hps), model(image, text) with output_dict,
    features L2-normalised inside forward (model.py:246-254), score = diag(image_features @
    text_features.T). The checkpoint is torch.load(...)['state_dict'], loaded strictly
    (img_score.py:54-55). `tokenize` is called with its default context_length 77 in HPSv2; here the
    arch's context_length is used (77 for ViT-H-14)."""
    model = OpenCLIP(arch).eval()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        pixel = preprocess_hps(image, arch["image_size"])[None]
        text = openclip_tokens(token_ids(prompt), arch["context_length"], sot, eot)
        out = model(pixel, text)
        logits_per_image = out["image_features"] @ out["text_features"].T
        scores.append(float(torch.diagonal(logits_per_image)[0]))
    return scores


# --------------------------------------------------------------------------------------------------
# ImageReward: BLIP ViT (models/BLIP/vit.py) + med BERT (models/BLIP/med.py) + MLP
# --------------------------------------------------------------------------------------------------

IMAGEREWARD_MEAN = 0.16717362830052426  # ImageReward.py:80
IMAGEREWARD_STD = 1.0333394966054072  # ImageReward.py:81
IMAGEREWARD_PROJ_DIM = 256  # BLIP_Pretrain(embed_dim=256) default, blip_pretrain.py:20; ImageReward does not override it

# Keys of ImageReward.pt beyond blip.visual_encoder.*, blip.text_encoder.* and mlp.*: the ImageReward
# module (ImageReward.py:71-81) holds only `blip` (BLIP_Pretrain) and `mlp`; BLIP_Pretrain
# (blip_pretrain.py:13-42) holds visual_encoder, text_encoder (BertModel, add_pooling_layer=False, so
# no pooler), vision_proj and text_proj. `tokenizer` and `preprocess` are not modules. The projections
# are unused by ImageReward.score. Shapes as functions of d = {"vision_width", "text_width"}.
IMAGEREWARD_EXTRA_KEYS: dict[str, Callable[[dict], tuple[int, ...]]] = {
    "blip.vision_proj.weight": lambda d: (IMAGEREWARD_PROJ_DIM, d["vision_width"]),
    "blip.vision_proj.bias": lambda d: (IMAGEREWARD_PROJ_DIM,),
    "blip.text_proj.weight": lambda d: (IMAGEREWARD_PROJ_DIM, d["text_width"]),
    "blip.text_proj.bias": lambda d: (IMAGEREWARD_PROJ_DIM,),
}
# The one buffer in the state dict: med.py:58 registers position_ids with the default persistent=True,
# so it is saved (int64, shape (1, max_position_embeddings), values arange). Inside text_encoder.*.
IMAGEREWARD_BUFFER_KEYS: dict[str, Callable[[dict], tuple[int, ...]]] = {
    "blip.text_encoder.embeddings.position_ids": lambda d: (1, d["max_position_embeddings"]),
}

_BERT_DEFAULTS = {  # transformers BertConfig defaults for fields a med_config.json may leave out
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "add_cross_attention": False,
    "intermediate_size": 3072,
}


def _bert_act(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "gelu":  # transformers ACT2FN["gelu"]: exact erf GELU
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"hidden_act {name!r} not covered by this reference")


class _BlipPatchEmbed(nn.Module):  # timm PatchEmbed, norm Identity
    def __init__(self, patch_size: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class _BlipAttention(nn.Module):  # vit.py:40-82, qkv_bias=True, scale head_dim ** -0.5
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class _BlipMlp(nn.Module):  # vit.py:19-37
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _BlipBlock(nn.Module):  # vit.py:85-106, drop_path is identity in eval
    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _BlipAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _BlipMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipViT(nn.Module):
    """BLIP VisionTransformer (vit.py:109-190): LayerNorm eps 1e-6, GELU, qkv bias, no head."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.image_size = image_size
        self.patch_embed = _BlipPatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        self.blocks = nn.ModuleList([_BlipBlock(width, heads, int(width * mlp_ratio)) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):  # timm PatchEmbed asserts this
            raise ValueError(f"input {tuple(x.shape[-2:])} does not match the model's {self.image_size}")
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed[:, : x.size(1), :]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _BertEmbeddings(nn.Module):  # med.py:44-86: word + absolute position, LayerNorm; no token types
    def __init__(self, cfg: dict):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], padding_idx=cfg["pad_token_id"])
        self.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])
        self.register_buffer("position_ids", torch.arange(cfg["max_position_embeddings"]).expand((1, -1)))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        position_ids = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(position_ids))


class _BertSelfAttention(nn.Module):  # med.py:89-217 (absolute positions: no distance embedding)
    def __init__(self, cfg: dict, kv_width: int):
        super().__init__()
        hidden, self.heads = cfg["hidden_size"], cfg["num_attention_heads"]
        self.head_size = hidden // self.heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_size).permute(0, 2, 1, 3)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        source = hidden if context is None else context
        q, k, v = self._split(self.query(hidden)), self._split(self.key(source)), self._split(self.value(source))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size) + mask
        out = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).contiguous()
        return out.view(*out.shape[:-2], self.heads * self.head_size)


class _BertSelfOutput(nn.Module):  # med.py:220-231: LayerNorm(dense(x) + residual)
    def __init__(self, cfg: dict):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _BertAttention(nn.Module):
    def __init__(self, cfg: dict, kv_width: int):
        super().__init__()
        self.self = _BertSelfAttention(cfg, kv_width)
        self.output = _BertSelfOutput(cfg)

    def forward(self, hidden, mask, context=None):
        return self.output(self.self(hidden, mask, context), hidden)


class _BertIntermediate(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.dense = nn.Linear(cfg["hidden_size"], cfg["intermediate_size"])
        self.act = _bert_act(cfg["hidden_act"])

    def forward(self, x):
        return self.act(self.dense(x))


class _BertOutput(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.dense = nn.Linear(cfg["intermediate_size"], cfg["hidden_size"])
        self.LayerNorm = nn.LayerNorm(cfg["hidden_size"], eps=cfg["layer_norm_eps"])

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class _BertLayer(nn.Module):  # med.py:312-375, mode='multimodal'
    def __init__(self, cfg: dict):
        super().__init__()
        self.attention = _BertAttention(cfg, cfg["hidden_size"])
        self.crossattention = _BertAttention(cfg, cfg["encoder_width"])
        self.intermediate = _BertIntermediate(cfg)
        self.output = _BertOutput(cfg)

    def forward(self, hidden, self_mask, context, context_mask):
        hidden = self.attention(hidden, self_mask)
        hidden = self.crossattention(hidden, context_mask, context)
        return self.output(self.intermediate(hidden), hidden)


class _BertEncoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layer = nn.ModuleList([_BertLayer(cfg) for _ in range(cfg["num_hidden_layers"])])

    def forward(self, hidden, self_mask, context, context_mask):
        for layer in self.layer:
            hidden = layer(hidden, self_mask, context, context_mask)
        return hidden


class MedBert(nn.Module):
    """med.py BertModel(add_pooling_layer=False) in its default mode='multimodal', is_decoder=False."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = _BertEmbeddings(cfg)
        self.encoder = _BertEncoder(cfg)

    def forward(self, input_ids, attention_mask, encoder_hidden_states, encoder_attention_mask):
        # get_extended_attention_mask (med.py:601-660), encoder branch: (1 - m) * -10000
        self_mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        # invert_attention_mask (transformers ModuleUtilsMixin): (1 - m) * finfo.min
        context_mask = (1.0 - encoder_attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        hidden = self.embeddings(input_ids)
        return self.encoder(hidden, self_mask, encoder_hidden_states, context_mask)  # last_hidden_state


class _BlipPretrain(nn.Module):  # blip_pretrain.py:13-42, minus the tokenizer
    def __init__(self, vision: dict, cfg: dict):
        super().__init__()
        heads = vision.get("heads", vision["width"] // 64)
        self.visual_encoder = BlipViT(vision["image_size"], vision["patch_size"], vision["width"], vision["depth"],
                                      heads, vision.get("mlp_ratio", 4.0))
        self.text_encoder = MedBert(cfg)
        self.vision_proj = nn.Linear(vision["width"], IMAGEREWARD_PROJ_DIM)
        self.text_proj = nn.Linear(cfg["hidden_size"], IMAGEREWARD_PROJ_DIM)


class ImageRewardModel(nn.Module):
    def __init__(self, vision: dict, med_config: dict):
        super().__init__()
        cfg = _med_cfg(med_config, vision["width"])
        self.blip = _BlipPretrain(vision, cfg)
        self.mlp = RewardMLP(cfg["hidden_size"])  # MLP(768) for the real model


def _med_cfg(med_config: dict, vision_width: int) -> dict:
    cfg = {**_BERT_DEFAULTS, **med_config}
    cfg["encoder_width"] = vision_width  # blip_pretrain.py:36
    if not cfg["add_cross_attention"]:
        raise ValueError("ImageReward's text encoder needs add_cross_attention (mode='multimodal')")
    if cfg["position_embedding_type"] != "absolute":
        raise ValueError("only absolute position embeddings are covered by this reference")
    return cfg


def imagereward_vision_from_state_dict(state_dict: dict) -> dict:
    """Vision dims of the BLIP ViT from an ImageReward state dict (heads = width // 64: ViT-L 1024/16)."""
    weight = state_dict["blip.visual_encoder.patch_embed.proj.weight"]
    width, patch = weight.shape[0], weight.shape[-1]
    depth = len({key.split(".")[3] for key in state_dict if key.startswith("blip.visual_encoder.blocks.")})
    grid = math.isqrt(state_dict["blip.visual_encoder.pos_embed"].shape[1] - 1)
    mlp_hidden = state_dict["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    return {"width": width, "patch_size": patch, "depth": depth, "image_size": grid * patch,
            "heads": width // 64, "mlp_ratio": mlp_hidden / width}


def imagereward_random_state_dict(vision: dict, med_config: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random weights with the full ImageReward.pt key set. vision = {"width", "depth", "patch_size",
    "image_size"}; med_config = the contents of med_config.json (BertConfig fields)."""
    model = ImageRewardModel(vision, med_config)
    _randomize_(model, seed)
    return _cpu_state_dict(model)


@torch.no_grad()
def imagereward_scores(checkpoint_path, med_config_path, images: Sequence[Image.Image], prompts: Sequence[str],
                       tokenizer) -> list[float]:
    """ImageReward.score(prompt, image) (ImageReward.py:103-136) for each pair i:
    tokenizer(prompt, padding='max_length', truncation=True, max_length=35, return_tensors='pt') and its
    input_ids are used as they are (input_ids[:, 0] stays [CLS]; no [ENC] replacement in score),
    _transform(224) (= preprocess_torchvision at the ViT's image size), image_embeds =
    visual_encoder(image), all-ones image_atts, text_encoder(ids, attention_mask, encoder_hidden_states,
    encoder_attention_mask) in mode 'multimodal', last_hidden_state[:, 0, :].float(), mlp,
    (r - mean) / std. The authors load ImageReward.pt with strict=False (utils.py:79); here strictly."""
    state_dict = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    with open(med_config_path, encoding="utf-8") as handle:
        med_config = json.load(handle)
    vision = imagereward_vision_from_state_dict(state_dict)
    model = ImageRewardModel(vision, med_config).eval()
    model.load_state_dict(state_dict, strict=True)
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        text_input = tokenizer(prompt, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        pixel = preprocess_torchvision(image, vision["image_size"])[None]
        image_embeds = model.blip.visual_encoder(pixel)
        image_atts = torch.ones(image_embeds.size()[:-1], dtype=torch.long)
        hidden = model.blip.text_encoder(text_input.input_ids, text_input.attention_mask, image_embeds, image_atts)
        rewards = model.mlp(hidden[:, 0, :].float())
        rewards = (rewards - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
        scores.append(rewards.detach().cpu().numpy().item())
    return scores


# --------------------------------------------------------------------------------------------------
# transformers-based scores (the authors' own code runs on transformers or on OpenAI clip)
# --------------------------------------------------------------------------------------------------


def _pooled(output) -> torch.Tensor:
    """transformers 5 get_*_features return a ModelOutput whose pooler_output is the projection."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.no_grad()
def pickscore_scores(model_dir, processor_dir, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
    """PickScore README snippet, one prompt per image: logit_scale.exp() * (text_embs @ image_embs.T)
    for image i against prompt i (the README's `scores` before its softmax). `.float()` is a no-op for
    the fp32 PickScore_v1 weights and keeps the reference in fp32 if transformers loads another dtype."""
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(processor_dir)
    model = AutoModel.from_pretrained(model_dir).eval().float()
    scores = []
    for image, prompt in zip(images, prompts, strict=True):
        image_inputs = processor(images=[image], padding=True, truncation=True, max_length=77, return_tensors="pt")
        text_inputs = processor(text=prompt, padding=True, truncation=True, max_length=77, return_tensors="pt")
        image_embs = _pooled(model.get_image_features(**image_inputs))
        image_embs = image_embs / torch.norm(image_embs, dim=-1, keepdim=True)
        text_embs = _pooled(model.get_text_features(**text_inputs))
        text_embs = text_embs / torch.norm(text_embs, dim=-1, keepdim=True)
        scores.append(float((model.logit_scale.exp() * (text_embs @ image_embs.T)[0])[0]))
    return scores


def aesthetic_normalized(a: np.ndarray, axis: int = -1, order: int = 2) -> np.ndarray:
    """simple_inference.py:84-89 `normalized`."""
    l2 = np.atleast_1d(np.linalg.norm(a, order, axis))
    l2[l2 == 0] = 1
    return a / np.expand_dims(l2, axis)


@torch.no_grad()
def aesthetic_scores(clip_dir, mlp_path, images: Sequence[Image.Image]) -> list[float]:
    """improved-aesthetic-predictor simple_inference.py:92-120: OpenAI CLIP encode_image (= transformers
    CLIPModel.get_image_features for openai/clip-vit-large-patch14) on clip's _transform(n_px) with
    n_px = the vision config's image_size, numpy L2 normalisation, then MLP (strict load)."""
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval().float()
    n_px = model.config.vision_config.image_size
    mlp = RewardMLP(model.config.projection_dim).eval()
    mlp.load_state_dict(torch.load(mlp_path, map_location="cpu", weights_only=True), strict=True)
    scores = []
    for image in images:
        pixel = preprocess_torchvision(image, n_px)[None]
        features = _pooled(model.get_image_features(pixel_values=pixel))
        embedding = aesthetic_normalized(features.cpu().detach().numpy())
        prediction = mlp(torch.from_numpy(embedding).to(torch.float32))
        scores.append(float(prediction[0, 0]))
    return scores


@torch.no_grad()
def clip_scores(clip_dir, images: Sequence[Image.Image], prompts: Sequence[str], clamp: bool = True) -> list[float]:
    """torchmetrics clip_score (functional/multimodal/clip_score.py:107-203), per image.

    Images go in as uint8 CHW tensors (torchmetrics takes tensors; the processor treats them as it
    does the PIL image): processor(images=[...], return_tensors='pt', padding=True). Text:
    processor(text=prompts, return_tensors='pt', padding=True) with NO truncation in the call; when the
    padded length exceeds text_config.max_position_embeddings, torchmetrics warns and SLICES input_ids
    and attention_mask to that length (lines 137-148), which drops the end-of-text token of a long
    caption (unlike tokenizer truncation, which keeps it). Features are divided by their L2 norm and
    score = 100 * (img * txt).sum(-1). torchmetrics clamps max(., 0) on the MEAN over the batch
    (functional: line 357-358; CLIPScore.compute: max(score_sum / n, 0)); here it is applied per
    image, which equals torchmetrics called with one image and its caption. clamp=False returns the
    raw 100 * cos values (tests on random weights, where the cosine is often negative)."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(clip_dir).eval().float()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    tensors = [torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1) for image in images]
    processed = processor(images=tensors, return_tensors="pt", padding=True)
    image_features = _pooled(model.get_image_features(processed["pixel_values"]))
    processed = processor(text=list(prompts), return_tensors="pt", padding=True)
    max_pos = model.config.text_config.max_position_embeddings
    input_ids, attention_mask = processed["input_ids"], processed["attention_mask"]
    if attention_mask.shape[-1] > max_pos:
        input_ids, attention_mask = input_ids[..., :max_pos], attention_mask[..., :max_pos]
    text_features = _pooled(model.get_text_features(input_ids, attention_mask))
    if len(image_features) != len(text_features):
        raise ValueError("one prompt per image")
    image_features = image_features / image_features.norm(p=2, dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(p=2, dim=-1, keepdim=True)
    score = 100 * (image_features * text_features).sum(axis=-1)
    if clamp:
        score = torch.max(score, torch.zeros_like(score))
    return [float(s) for s in score]

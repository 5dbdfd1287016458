"""What to generate, independent of how: frozen requests, seeds and stable ids."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace

from spo_cli import presets
from spo_cli.errors import UsageError

SEED_MAX = 2**32 - 1  # what other SD tools accept, so a seed can be typed into any of them


@dataclass(frozen=True)
class ModelRequest:
    """Which weights to load; everything `resolve` needs."""

    model: str = presets.DEFAULT_PRESET
    revision: str | None = None
    lora: str | None = None
    lora_file: str | None = None
    lora_scale: float = 1.0
    vae: str | None = None  # None: the fp16-fix VAE in float16, the model's own otherwise; "model": always its own
    dtype: str = "auto"
    device: str = "auto"


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what to make: none of these changes the images beyond float rounding."""

    fast: bool = False  # torch.compile, channels_last, fused QKV, fixed batch shapes
    offload: str | None = None  # None, "model" or "sequential" (diffusers' CPU offload)
    vae_tiling: bool = False
    vae_slicing: bool = False
    batch_size: int = 1  # with `fast`, short batches are padded to this, so shapes never change

    def __post_init__(self):
        if self.offload not in (None, "model", "sequential"):
            raise UsageError(f"Unknown --offload '{self.offload}'.", "Use model or sequential.")


@dataclass(frozen=True)
class ImageRequest:
    """Everything that decides one image's pixels once the model is loaded."""

    prompt: str
    seed: int
    negative_prompt: str | None = None
    steps: int = presets.DEFAULT_STEPS
    guidance: float = presets.DEFAULT_GUIDANCE
    width: int | None = None  # None: the pipeline's default (1024 for SDXL)
    height: int | None = None
    scheduler: str = "default"
    generator_device: str = "cpu"

    def group_key(self) -> tuple:
        """Images sharing this key can go through one pipeline call together."""
        # A negative prompt of None means zero embeddings for the unconditional branch (SDXL's
        # force_zeros_for_empty_prompt); that choice is per pipeline call, so it splits groups too.
        return (self.steps, self.guidance, self.width, self.height, self.scheduler, self.generator_device,
                self.negative_prompt is None)

    def spec_hash(self, model: dict | None = None) -> str:
        """A stable id of the settings (and model identity) that produce this image."""
        payload = {"image": asdict(self), "model": model or {}}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def random_seed() -> int:
    import secrets

    return secrets.randbelow(SEED_MAX + 1)


def check_seed(seed: int) -> int:
    if not 0 <= seed <= SEED_MAX:
        raise UsageError(f"Seed {seed} is out of range.", f"Use a whole number from 0 to {SEED_MAX}.")
    return seed


def check_size(width: int | None, height: int | None) -> list[str]:
    """Validate a size; return warnings (SDXL was trained around one megapixel)."""
    warnings = []
    for name, value in (("width", width), ("height", height)):
        if value is None:
            continue
        if value <= 0 or value % 8:
            raise UsageError(
                f"--{name} {value} is not a positive multiple of 8.",
                f"SDXL works on 8×8-pixel latents; try {max(8, round(value / 8) * 8)}.",
            )
    if width or height:
        # A missing side is the pipeline's default, 1024 for SDXL.
        mpix = (width or 1024) * (height or 1024) / (1024 * 1024)
        if mpix < 0.5 or mpix > 2.0:
            warnings.append(
                f"{width or 1024}×{height or 1024} is far from SDXL's training size of about 1024×1024 "
                "(e.g. 1024×1024, 1152×896, 1216×832); expect weaker images."
            )
    return warnings


def check_scheduler(name: str) -> str:
    if name not in presets.SCHEDULERS:
        raise UsageError(
            f"Unknown scheduler '{name}'.", "Valid names: " + ", ".join(presets.SCHEDULERS) + "."
        )
    return name


def expand(base: ImageRequest, num_images: int) -> list[ImageRequest]:
    """`num_images` requests with seeds seed, seed+1, …: one generator per image, so an image's
    pixels do not depend on how many others share its pipeline call."""
    if num_images < 1:
        raise UsageError(f"--num-images must be at least 1, not {num_images}.")
    check_seed(base.seed)
    check_seed(base.seed + num_images - 1)
    return [replace(base, seed=base.seed + i) for i in range(num_images)]


def batches(items: list, batch_size: int, request=lambda item: item) -> list[list]:
    """Group items whose requests are compatible, keeping order within a group, into calls of
    `batch_size`; `request(item)` gives an item's ImageRequest."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(request(item).group_key(), []).append(item)
    out = []
    for group in groups.values():
        out.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    return out


"""What to make, independent of how: the request types every command builds, and the image task.

Plain frozen data. Values are checked once, by `validate`, before these are built; nothing here
imports torch or touches the disk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace

from spo_cli import presets, validate


@dataclass(frozen=True)
class LoraRequest:
    """One more LoRA stacked on the model: from `--lora SPEC:SCALE` (repeated), or a prompt's
    `<lora:name:te:unet>` tag found in the LoRA folder."""

    spec: str  # Hub repo id or local .safetensors path (a tag's: the folder's file, absolute)
    scale: float = 1.0  # its weight (A1111's te multiplier; the UNet's too unless `unet_scale`)
    unet_scale: float | None = None  # A1111's unet multiplier, when a tag gives one apart
    name: str | None = None  # a tag's name: the LoRA came from the prompt, not the command line


@dataclass(frozen=True)
class ModelRequest:
    """Which weights to load; everything `resolve` needs."""

    model: str = presets.DEFAULT_PRESET
    revision: str | None = None
    lora: str | None = None
    lora_file: str | None = None
    lora_scale: float | None = None  # None: 1.0 when there is a LoRA (the full SPO effect)
    vae: str | None = None  # None: the fp16-fix VAE in float16, the model's own otherwise; "model": always its own
    dtype: str = "auto"
    device: str = "auto"
    # Stacked after the one LoRA above (the preset's, or the first --lora), each with its own weight.
    loras: tuple[LoraRequest, ...] = ()
    lora_dir: str | None = None  # where a prompt's <lora:name> tags are looked up (absolute)
    # "fp8": the UNet's large linear layers as float8 GEMMs (spo_cli.quantize). It changes pixels, so it
    # belongs to the weights (spec hash, sidecar, replay), not to RunOptions.
    quantize: str | None = None

    @property
    def effective_lora_scale(self) -> float:
        return 1.0 if self.lora_scale is None else self.lora_scale


@dataclass(frozen=True)
class RunOptions:
    """How to run, not what to make: none of these changes the images beyond float rounding."""

    fast: bool = False  # torch.compile, channels_last, fused QKV, fixed batch shapes
    offload: str | None = None  # None, "model" or "sequential" (diffusers' CPU offload)
    vae_tiling: bool = False
    vae_slicing: bool = False
    batch_size: int = 1  # images per pipeline call; with `fast`, short calls are padded to it


@dataclass(frozen=True)
class InputImage:
    """An image file a request starts from (img2img's image, inpainting's mask), known by its bytes.

    Checked by `spo_cli.inputs` before anything loads; the engine reads the file again and refuses
    it if its bytes have changed since."""

    path: str  # absolute, as read: for the sidecar, and for replay to find it again
    sha256: str  # of the file's bytes: what the image is (resume and replay compare it)
    width: int  # as a viewer shows it, EXIF rotation applied
    height: int
    bytes: int  # the file's size

    def describe(self) -> dict:
        return asdict(self)


HIRES_UPSCALERS = ("latent", "lanczos")  # A1111's "Latent" (its default) and "Lanczos"


@dataclass(frozen=True)
class Hires:
    """A1111's hires fix: the first pass at the asked size, an upscale by `scale`, then img2img of
    the large image at `strength`, running `steps` steps (None: the first pass's steps, A1111's 0)
    of a schedule stretched to steps / strength (validate.hires_schedule), as A1111 does."""

    scale: float
    upscaler: str = "latent"
    steps: int | None = None
    strength: float = 0.7  # A1111's txt2img default denoising strength for the second pass


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
    prompt_syntax: str = "auto"  # auto, a1111 or plain: how the prompts become embeddings (spo_cli.encoding)
    emphasis: str = "original"  # A1111's emphasis mode, for a1111 syntax
    # Image to image: the image to start from and how much of it to re-draw (0 keeps it, 1 draws anew);
    # with a mask, only its white part is re-drawn (inpainting), its edge blurred by `mask_blur` pixels,
    # and with `mask_crop` only a crop around the mask (that many pixels of margin) is worked on at the
    # full size (A1111's "Only masked"). Width and height None: the image's own size.
    image: InputImage | None = None
    mask: InputImage | None = None
    strength: float | None = None
    mask_blur: int = 0
    mask_crop: int | None = None
    hires: Hires | None = None  # text to image only: a second pass at a larger size
    watermark: bool = False  # SDXL's invisible watermark (diffusers' DWT-DCT 48 bits): it changes pixels

    @property
    def mode(self) -> str:
        return "inpaint" if self.mask else "img2img" if self.image else "hires" if self.hires else "txt2img"

    @property
    def denoising_steps(self) -> int:
        """The steps actually run: img2img runs the last int(steps × strength) of a `steps` schedule
        (diffusers' get_timesteps); hires adds its second pass's steps (A1111 runs all of them)."""
        if self.image is not None:
            return min(int(self.steps * self.strength), self.steps)
        if self.hires is not None:
            return self.steps + (self.hires.steps or self.steps)
        return self.steps

    def group_key(self) -> tuple:
        """Images sharing this key can go through one pipeline call together."""
        # A negative prompt of None means zero embeddings for the unconditional branch (SDXL's
        # force_zeros_for_empty_prompt); that choice is per pipeline call, so it splits groups too.
        key = (self.steps, self.guidance, self.width, self.height, self.scheduler, self.generator_device,
               self.negative_prompt is None, self.prompt_syntax, self.emphasis, self.watermark)
        if self.mode == "txt2img":
            return key
        # One input image per call: the images of a call are the seeds of one edit.
        return key + (self.image and self.image.sha256, self.mask and self.mask.sha256, self.strength,
                      self.mask_blur, self.mask_crop, self.hires)

    def spec_hash(self, model: dict | None = None) -> str:
        """A stable id of the settings (and model identity) that produce this image."""
        image = asdict(self)
        # Fields added after 0.1 enter the hash only when set, so that resuming a folder made
        # before them finds its images finished.
        for key, default in (("prompt_syntax", "auto"), ("emphasis", "original"), ("watermark", False),
                             ("image", None), ("mask", None), ("strength", None), ("mask_blur", 0),
                             ("mask_crop", None), ("hires", None)):
            if image[key] == default:
                del image[key]
        # An input is what its bytes are: the same file moved elsewhere is the same spec.
        for key in ("image", "mask"):
            if key in image:
                image[key] = image[key]["sha256"]
        payload = {"image": image, "model": model or {}}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Generated:
    """One image of a pipeline call, as the engine (or a `--server` it stands for) gives it back."""

    image: object  # PIL.Image.Image
    request: ImageRequest
    nan: bool  # the decoded image held NaN: a failed image, not a black one


@dataclass(frozen=True)
class ImageTask:
    """One image to make and how to file it: the unit every command hands to the render loop."""

    request: ImageRequest
    stem: str | None = None  # the file name without extension; None: a fresh default name, claimed when written
    spec_hash: str | None = None  # recorded in the sidecar, so a resume knows a finished image
    overwrite: bool = False  # replace an image of the same stem (resumable runs own their names)
    extra: dict = field(default_factory=dict)  # more sidecar fields: where a batch line or compare cell came from


def random_seed() -> int:
    return validate.random_seed()


def expand(base: ImageRequest, num_images: int) -> list[ImageRequest]:
    """`num_images` requests with seeds seed, seed+1, …: one generator per image, so an image's
    pixels do not depend on how many others share its pipeline call."""
    validate.num_images(num_images)
    validate.seed_range(base.seed, num_images)
    return [replace(base, seed=base.seed + i) for i in range(num_images)]


def calls(items: list, batch_size: int, request=lambda item: item, key=ImageRequest.group_key) -> list[list]:
    """Group items whose requests are compatible, keeping order within a group, into pipeline calls
    of at most `batch_size`; `request(item)` gives an item's ImageRequest, `key(request)` what must
    be equal within a call (the engine's `call_key` adds the shape of the prompt embeddings)."""
    groups: dict[tuple, list] = {}
    for item in items:
        groups.setdefault(key(request(item)), []).append(item)
    out = []
    for group in groups.values():
        out.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    return out

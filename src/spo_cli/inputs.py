"""Input images (img2img's image, inpainting's mask): checked before anything loads, read the same
way by every command and the server.

PIL only, no torch. A file is read once, whole, within a byte limit; its header is read before its
pixels, so a decompression bomb is refused from its declared size; it is then decoded completely,
so a truncated file fails here and not in the middle of a run. What the pipeline gets is what an
image viewer shows: EXIF rotation applied, transparency laid on white (A1111's img2img background),
palette and greyscale images made RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path

from spo_cli import validate
from spo_cli.errors import UsageError
from spo_cli.request import InputImage
from spo_cli.validate import ARGV, Where

INPUT_BYTES_MAX = 256 * 1024**2  # a 8192² PNG of noise is about 200 MB
INPUT_SIDE_MAX = 16384
INPUT_PIXELS_MAX = 8192 * 8192  # 67 MP: an 8K photo fits; a 20000² "bomb" does not
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
MASK_THRESHOLD = 128  # A1111's: a mask pixel over half-white is repainted


def _refuse(where: Where, key: str, problem: str, hint: str) -> UsageError:
    return where.error(key, problem, hint)


def read_bytes(path: str | Path, key: str = "image", where: Where = ARGV, *, within: Path | None = None) -> tuple[Path, bytes]:
    """The file's bytes, refusing what is not a regular readable file of reasonable size. With
    `within`, the file (after symlinks) must lie inside that folder: paths a prompt file or a
    sidecar names must not reach out of the folder they came with."""
    name = validate.text(str(path), key, where, limit=validate.PATH_MAX_CHARS)
    p = Path(name).expanduser()
    if within is not None and not p.is_absolute():
        p = within / p
    try:
        real = p.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise _refuse(where, key, f"{validate.shown(name)} does not exist", "Check the path.") from None
    except (OSError, RuntimeError) as e:  # a symlink loop, a permission error on a parent
        raise _refuse(where, key, f"{validate.shown(name)} cannot be opened ({getattr(e, 'strerror', None) or e})",
                      "Check the path and its permissions.") from None
    if within is not None and not real.is_relative_to(within.resolve()):
        raise _refuse(where, key, f"{validate.shown(name)} leads out of {within} (to {validate.shown(str(real))})",
                      "Copy the image into that folder, or give it on the command line.")
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise _refuse(where, key, f"{validate.shown(name)} cannot be opened ({e.strerror or e})",
                      "Check the path and its permissions.") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise _refuse(where, key, f"{validate.shown(name)} is a folder, not an image file",
                          "Give one image file (PNG, JPEG, WebP, …).")
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(where, key, f"{validate.shown(name)} is not a regular file (a pipe or a device)",
                          "Give an image file saved on disk.")
        if info.st_size > INPUT_BYTES_MAX:
            raise _refuse(where, key, f"{validate.shown(name)} is {info.st_size / 1024**2:,.0f} MB; the limit is "
                                      f"{INPUT_BYTES_MAX // 1024**2} MB", "Use a smaller image (SDXL works at about 1 MP).")
        data = f.read(INPUT_BYTES_MAX + 1)
    if len(data) > INPUT_BYTES_MAX:  # grew while read
        raise _refuse(where, key, f"{validate.shown(name)} is over {INPUT_BYTES_MAX // 1024**2} MB",
                      "Use a smaller image.")
    return real, data


def decode(data: bytes, key: str = "image", where: Where = ARGV, *, name: str = "the image"):
    """The PIL image (fully decoded, EXIF rotation applied) of `data`, after its declared size is checked."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise _refuse(where, key, f"{name} is not an image spo can read",
                      f"Give a {', '.join(f.lower() for f in INPUT_FORMATS[:3])} or other common image file.") from None
    if fmt not in INPUT_FORMATS:
        raise _refuse(where, key, f"{name} is a {fmt} image, which spo does not read",
                      f"Convert it to PNG; spo reads {', '.join(INPUT_FORMATS)}.")
    if w > INPUT_SIDE_MAX or h > INPUT_SIDE_MAX or w * h > INPUT_PIXELS_MAX:
        raise _refuse(where, key, f"{name} declares {w:,}×{h:,} pixels; the limit is "
                                  f"{INPUT_PIXELS_MAX / 1e6:.0f} megapixels",
                      "Resize it first (SDXL works at about one megapixel); a file this large can also be a "
                      "decompression bomb.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # every pixel now: a truncated file fails here
            return ImageOps.exif_transpose(img)  # a copy, rotated as a viewer shows it
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _refuse(where, key, f"{name} could not be decoded ({validate.shown(str(e), 100)}); it may be "
                                  "truncated or damaged", "Save it again from an image editor.") from None


def check(path: str | Path, key: str = "image", where: Where = ARGV, *, within: Path | None = None) -> InputImage:
    """An input image file, checked whole, as the request records it."""
    real, data = read_bytes(path, key, where, within=within)
    img = decode(data, key, where, name=validate.shown(str(path)))
    return InputImage(str(real), hashlib.sha256(data).hexdigest(), img.width, img.height, len(data))


def load(image: InputImage, key: str = "image"):
    """The pixels of a checked input, re-read; refused if the file changed since it was checked."""
    from spo_cli.errors import GenerationError

    try:
        real, data = read_bytes(image.path, key)
    except UsageError as e:
        raise GenerationError(f"The input {image.path} could not be read again: {e.message}") from None
    if hashlib.sha256(data).hexdigest() != image.sha256:
        raise GenerationError(f"The input {image.path} changed while spo was running.",
                              "Leave input files alone while a run reads them, then run again.")
    return decode(data, key, name=image.path)


def as_rgb(img, background=(255, 255, 255)):
    """What a viewer shows: transparency laid on white (A1111's img2img background), palette and
    greyscale made RGB."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        flat.alpha_composite(rgba)
        return flat.convert("RGB")
    return img.convert("RGB")


def as_mask(img, size: tuple[int, int], blur: int = 0):
    """A mask as A1111 reads it, white = repaint: its alpha channel when it has real transparency
    (transparent = keep), else its grey level; made black or white at half grey, resized to the
    image's size, then its edge blurred by `blur` pixels."""
    from PIL import ImageFilter

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
        grey = alpha if alpha.getextrema()[0] < 255 else img.convert("L")
    else:
        grey = img.convert("L")
    mask = grey.point(lambda v: 255 if v > MASK_THRESHOLD else 0)
    if mask.size != tuple(size):
        from PIL import Image

        mask = mask.resize(size, Image.Resampling.NEAREST)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def output_size(image: InputImage, width: int | None, height: int | None) -> tuple[int, int, list[str]]:
    """The size an edit is made at: the given one, else the input's, rounded down to a multiple of 8
    (SDXL's latents are 8×8 pixels), with a note when the input is resized."""
    w = width or image.width // 8 * 8
    h = height or image.height // 8 * 8
    if min(w, h) < 8:
        raise UsageError(f"The input {image.path} is {image.width}×{image.height}; an edit needs at least 8×8 pixels.",
                         "Use a larger image, or give --width and --height.")
    notes = []
    if (w, h) != (image.width, image.height):
        notes.append(f"The input is {image.width}×{image.height}; it is resized to {w}×{h}"
                     + (" (sides are multiples of 8)." if (width, height) == (None, None) else "."))
    return w, h, notes


# ---------------------------------------------------------------------------------------------
# Image to image and hires settings, from any source (options, a prompt-file line, a sidecar, a request)

DEFAULT_STRENGTH = 0.75  # A1111's img2img denoising strength
DEFAULT_MASK_BLUR = 4  # A1111's
MASK_BLUR_MAX = 64  # A1111's slider
MASK_CROP_MAX = 256  # A1111's "Only masked padding" slider
EDIT_KEYS = ("image", "mask", "strength", "mask_blur", "mask_crop", "hires", "hires_upscaler", "hires_steps",
             "hires_strength")


def edit_request(base, values, where: Where = ARGV, *, within: Path | None = None, size_limit: bool = True):
    """`base` (an ImageRequest) with the image-to-image or hires settings in `values` (EDIT_KEYS; an
    absent or None value is unset), every file and value checked: (request, warnings).

    `within`: the folder relative paths are read from and must stay in (a prompt file's)."""
    from dataclasses import replace

    from spo_cli.request import HIRES_UPSCALERS, Hires

    v = {k: values.get(k) for k in EDIT_KEYS}
    unknown = set(values) - set(EDIT_KEYS)
    if unknown:
        raise ValueError(f"not edit settings: {sorted(unknown)}")
    warnings: list[str] = []

    def needs(key, other, what):
        if v[key] is not None and v[other] is None:
            raise where.error(key, f"has nothing to act on without {where.name(other)}", f"Add {where.name(other)} {what}.")

    needs("mask", "image", "(the image the mask belongs to)")
    needs("strength", "image", "(the image to re-draw), or use --hires-strength for the hires pass")
    for key in ("mask_blur", "mask_crop"):
        needs(key, "mask", "(white = repaint)")
    for key in ("hires_upscaler", "hires_steps", "hires_strength"):
        needs(key, "hires", "(the upscale factor, e.g. 1.5)")
    if v["hires"] is not None and v["image"] is not None:
        raise where.error("hires", "cannot be used with an input image: the hires fix is text to image's second pass",
                          f"To re-draw an image larger, give {where.name('width')} and {where.name('height')} with "
                          f"{where.name('image')}.")
    if v["image"] is None and v["hires"] is None:
        return base, warnings

    if v["hires"] is not None:
        scale = validate.number(v["hires"], "hires", where, low=1.0, high=validate.HIRES_SCALE_MAX)
        if scale == 1.0:
            raise where.error("hires", "must be over 1 (1 would re-draw the image at its own size)", "Use e.g. 1.5.")
        upscaler = validate.choice(v["hires_upscaler"] or "latent", "hires_upscaler", HIRES_UPSCALERS, where)
        hr_steps = None if v["hires_steps"] in (None, 0) else validate.integer(
            v["hires_steps"], "hires_steps", where, low=0, high=validate.STEPS_MAX)
        hr_strength = 0.7 if v["hires_strength"] is None else validate.strength(v["hires_strength"], "hires_strength", where)
        validate.steps_run(hr_steps or base.steps, hr_strength, "hires_strength", where,
                           steps_key="hires_steps" if hr_steps else "steps")
        from spo_cli import presets

        w, h = validate.hires_size(base.width or presets.DEFAULT_SIZE, base.height or presets.DEFAULT_SIZE, scale)
        _size_ok(w, h, where, "hires", size_limit)
        return replace(base, hires=Hires(scale, upscaler, hr_steps, hr_strength)), warnings

    image = check(v["image"], "image", where, within=within)
    strength_ = DEFAULT_STRENGTH if v["strength"] is None else validate.strength(v["strength"], "strength", where)
    validate.steps_run(base.steps, strength_, "strength", where)
    w, h, notes = output_size(image, base.width, base.height)
    warnings += notes
    _size_ok(w, h, where, "image", size_limit, image=image)
    changes = {"image": image, "strength": strength_}
    if v["mask"] is not None:
        mask = check(v["mask"], "mask", where, within=within)
        if (mask.width, mask.height) != (image.width, image.height):
            warnings.append(f"The mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}: "
                            "the mask is resized to the image.")
        changes |= {"mask": mask,
                    "mask_blur": DEFAULT_MASK_BLUR if v["mask_blur"] is None else validate.integer(
                        v["mask_blur"], "mask_blur", where, low=0, high=MASK_BLUR_MAX),
                    "mask_crop": None if v["mask_crop"] is None else validate.integer(
                        v["mask_crop"], "mask_crop", where, low=0, high=MASK_CROP_MAX)}
    return replace(base, **changes), warnings


def _size_ok(w: int, h: int, where: Where, key: str, size_limit: bool, image: InputImage | None = None) -> None:
    if not size_limit or (w <= validate.SIDE_MAX and h <= validate.SIDE_MAX and w * h <= validate.PIXELS_MAX):
        return
    if image is not None:
        import math

        k = math.sqrt(1024 * 1024 / (w * h))
        raise where.error(key, f"would make a {w}×{h} image ({w * h / 1e6:.1f} MP, the input's size); the limit is "
                               f"{validate.PIXELS_MAX / 1e6:.1f} MP",
                          f"Give the size to make, e.g. {where.name('width')} {int(w * k) // 8 * 8} "
                          f"{where.name('height')} {int(h * k) // 8 * 8} (about 1 MP, the same shape), or "
                          "--no-size-limit.")
    raise where.error(key, f"would make a {w}×{h} image ({w * h / 1e6:.1f} MP); the limit is "
                           f"{validate.PIXELS_MAX / 1e6:.1f} MP", "Use a smaller factor or size, or --no-size-limit.")

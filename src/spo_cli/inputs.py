"""Input images (img2img's image, inpainting's mask): checked before anything loads, read the same
way by every command and the server.

PIL only, no torch. A file is read once, whole, within a byte limit; its header is read before its
pixels, so a decompression bomb is refused from its declared size; it is then decoded completely,
so a truncated file fails here and not in the middle of a run. What the pipeline gets is what an
image viewer shows: EXIF rotation applied, transparency laid on white (A1111's img2img background),
palette, greyscale, CMYK and 16-bit images made 8-bit RGB.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
from pathlib import Path

from spo_cli import validate
from spo_cli.errors import UsageError
from spo_cli.request import InputImage
from spo_cli.validate import ARGV, Where

INPUT_BYTES_MAX = 256 * 1024**2  # a 8192² PNG of noise is about 200 MB
INPUT_SIDE_MAX = 16384
INPUT_PIXELS_MAX = 8192 * 8192  # 67 MP: an 8K photo fits; a 20000² "bomb" does not (nor --no-size-limit lifts it)
# What a browser shows and image editors save, decoded by Pillow's own codecs: PNG (and APNG), JPEG,
# WebP, GIF, BMP, and TIFF (photo editors and scanners). Only these parsers ever see a file: the
# others Pillow has (EPS calls Ghostscript; PSD, TGA, PCX, ICO, … are legacy parsers) are attack
# surface no SD user needs. (A camera's JPEG with a second, preview picture opens as MPO: JPEG's parser.)
INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
MASK_THRESHOLD = 128  # A1111's: a mask pixel over half-white is repainted
# The modes `_viewable` makes everything into: grey or colour, each with or without transparency.
_VIEWABLE = ("L", "LA", "RGB", "RGBA")


def _path(name: str) -> str:
    """A path for a message: whole as far as real paths go (the file's name is at its end), cut only
    when a value is no plausible path."""
    return validate.shown(name, 300)


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "not a regular file")


def read_bytes(path: str | Path, key: str = "image", where: Where = ARGV, *, within: Path | None = None) -> tuple[Path, bytes]:
    """The file's bytes and real path, refusing what is not a regular readable file of reasonable size.

    With `within` (a prompt file's folder), a relative path is read from that folder, and the file
    (after every symlink) must lie inside it, absolute paths too: a prompt file from elsewhere must
    not make spo read, and copy into its outputs, images from anywhere on the disk. On the command
    line (no `within`) any readable file is fine."""
    # A prompt file's value is any JSON: 5 or ["a.png"] is refused as no text, not looked up as "5".
    name = validate.text(os.fspath(path) if isinstance(path, os.PathLike) else path, key, where,
                         limit=validate.PATH_MAX_CHARS)
    shown = _path(name)
    p = Path(name).expanduser()
    if within is not None and not p.is_absolute():
        p = within / p
    real = Path(os.path.realpath(p))  # non-strict: a dangling link out of the folder is still refused as out
    if within is not None:
        root = Path(os.path.realpath(within))
        if not real.is_relative_to(root):
            raise where.error(key, f"{shown} leads out of the prompt file's folder {root} (to {_path(str(real))})",
                              "Put the image in that folder or one below it, and name it by its path from there.")
        # The folder's own links are resolved: open the resolved path, and refuse a link put there since.
        target, flags = real, getattr(os, "O_NOFOLLOW", 0)
    else:
        # The path as given: /dev/stdin and other /proc links resolve to no real path, only open() follows them.
        target, flags = p, 0
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. The kind of
        # file is then known from the open descriptor (fstat), so nothing can swap it in between.
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | flags)
    except (FileNotFoundError, NotADirectoryError):
        raise where.error(key, f"{shown} does not exist", "Check the path.") from None
    except OSError as e:  # permission denied, a symlink loop, a name too long
        raise where.error(key, f"{shown} cannot be opened ({e.strerror or e})",
                          "Check the path and its permissions.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise where.error(key, f"{shown} is {_kind(info.st_mode)}, not an image file",
                              "Give one image file saved on disk (PNG, JPEG, WebP, …).")
        if info.st_size > INPUT_BYTES_MAX:
            raise where.error(key, f"{shown} is {info.st_size / 1024**2:,.0f} MB; the limit is "
                                   f"{INPUT_BYTES_MAX // 1024**2} MB", "Use a smaller image (SDXL works at about 1 MP).")
        chunks, total = [], 0
        while total <= INPUT_BYTES_MAX:  # bounded even if the file grows while read (or lies, as /proc does)
            chunk = os.read(fd, min(1024**2, INPUT_BYTES_MAX + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:  # an I/O error mid-read
        raise where.error(key, f"{shown} could not be read ({e.strerror or e})", "Check the file.") from None
    finally:
        os.close(fd)
    if total > INPUT_BYTES_MAX:
        raise where.error(key, f"{shown} grew past {INPUT_BYTES_MAX // 1024**2} MB while it was read",
                          "Give a finished image file of reasonable size.")
    return real, b"".join(chunks)


def _viewable(img, key: str, where: Where, name: str):
    """`img` as 8-bit grey or colour (L, LA, RGB or RGBA), with transparency where it has some, as a
    viewer shows it."""
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16-bit grey (PNG, TIFF): Pillow's own convert() clips at 255, which is white for nearly every
        # pixel; a viewer scales 0…65535 to 0…255. (A transparent grey level in its tRNS is not kept.)
        wide = img.convert("I")
        low, high = wide.getextrema()
        if low < 0 or high > 65535:
            raise where.error(key, f"{name} is a 32-bit integer image, which has no one way to be shown",
                              "Save it as an 8- or 16-bit PNG.")
        return wide.point(lambda v: v * (1 / 257) + 0.5).convert("L")
    if "transparency" in img.info or img.mode in ("PA", "La", "RGBa"):
        return img.convert("RGBA")  # a palette's or tRNS chunk's transparent colour, or premultiplied alpha
    if img.mode in _VIEWABLE:
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode in ("P", "CMYK", "YCbCr", "RGBX", "HSV"):
        return img.convert("RGB")  # CMYK: Pillow's plain conversion; an embedded ICC profile is not applied
    raise where.error(key, f"{name} is a {img.mode} image (floating-point or Lab), which has no one way to be shown",
                      "Save it as an 8- or 16-bit PNG or a JPEG.")


def _decode(data: bytes, key: str, where: Where, name: str):
    """(the viewable image, notes): the declared size checked before any pixel is decoded."""
    import warnings

    from PIL import Image, ImageOps

    if not data:
        raise where.error(key, f"{name} is empty (0 bytes)", "Give an image file.")
    names = [f if f != "WEBP" else "WebP" for f in INPUT_FORMATS]
    readable = ", ".join(names[:-1]) + " or " + names[-1]
    # PIL warns about odd EXIF, palettes and sizes on stderr; whatever is wrong is refused here, in one
    # paragraph, or does not matter. PIL's own bomb limit (DecompressionBombError at twice
    # Image.MAX_IMAGE_PIXELS, 179 MP by default) sits above spo's and is reported the same way. (The
    # filter is process-wide while it lasts; a server thread racing it can at worst lose a warning.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data), formats=INPUT_FORMATS)
        except Image.DecompressionBombError as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = int(found.group(1)) if found else None
            if pixels is not None and pixels <= INPUT_PIXELS_MAX:  # whoever imported PIL lowered its limit
                raise where.error(key, f"{name} declares {pixels:,} pixels, more than PIL is set to open in this "
                                       "process (Image.MAX_IMAGE_PIXELS)", "Resize it first.") from None
            raise _too_large(key, where, name, f"{pixels:,} pixels" if pixels else "more pixels than PIL opens") from None
        except Exception:  # noqa: BLE001 - a hostile header can raise anything from a parser
            raise where.error(key, f"{name} is not an image spo can read{_what_it_is(data)}",
                              f"Give a {readable} file.") from None
        with img:
            w, h = img.size
            if w > INPUT_SIDE_MAX or h > INPUT_SIDE_MAX or w * h > INPUT_PIXELS_MAX:
                raise _too_large(key, where, name, f"{w:,}×{h:,} pixels")
            notes = []
            try:
                if getattr(img, "is_animated", False):  # before load(): it seeks to frame 1 and back
                    notes.append(f"{name} is animated: its first frame is used.")
                img.load()  # every pixel now: a truncated file fails here
                shown = ImageOps.exif_transpose(img)  # a copy, rotated as a viewer shows it
                return _viewable(shown, key, where, name), notes
            except UsageError:
                raise
            except Exception as e:  # noqa: BLE001 - truncated, corrupt, or a decoder's own refusal
                raise where.error(key, f"{name} could not be decoded ({validate.shown(str(e), 100)}); it may be "
                                       "truncated or damaged", "Save it again from an image editor.") from None


def _what_it_is(data: bytes) -> str:
    """A word on what a file that is no image holds, when it is plainly text (a web page or an error
    message saved under an image's name is the usual case)."""
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut by the 512-byte slice
            return ""
        text = head[:e.start].decode("utf-8")
    return " (it holds text)" if text and all(c.isprintable() or c in "\t\r\n" for c in text) else ""


def _too_large(key: str, where: Where, name: str, declared: str) -> UsageError:
    return where.error(key, f"{name} declares {declared}; the limit is {INPUT_SIDE_MAX:,} pixels a side and "
                            f"{INPUT_PIXELS_MAX / 1e6:.0f} megapixels in all",
                       "Resize it first (SDXL works at about one megapixel); a file this large can also be a "
                       "decompression bomb.")


def decode(data: bytes, key: str = "image", where: Where = ARGV, *, name: str = "the image"):
    """The PIL image of `data` as a viewer shows it (L, LA, RGB or RGBA; EXIF rotation applied;
    an animation's first frame), fully decoded, after its declared size is checked."""
    return _decode(data, key, where, name)[0]


def _checked(path, key: str, where: Where, within: Path | None):
    real, data = read_bytes(path, key, where, within=within)
    img, notes = _decode(data, key, where, _path(str(path)))
    image = InputImage(str(real), hashlib.sha256(data).hexdigest(), img.width, img.height, len(data))
    return image, img, notes


def check(path: str | Path, key: str = "image", where: Where = ARGV, *, within: Path | None = None) -> InputImage:
    """An input image file, checked whole, as the request records it (its size as a viewer shows it)."""
    return _checked(path, key, where, within)[0]


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


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def as_rgb(img, size: tuple[int, int] | None = None, background=(255, 255, 255)):
    """What a viewer shows: transparency laid on white (A1111's img2img background), palette and
    greyscale made RGB; at `size` (`output_size`'s) when given, resized as A1111's "Just resize" does
    (Lanczos). diffusers' img2img pipeline takes no width or height: it makes the image's own size."""
    from PIL import Image

    if _has_alpha(img):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, background + (255,))
        flat.alpha_composite(rgba)
        rgb = flat.convert("RGB")
    else:
        rgb = img.convert("RGB")
    if size is not None and rgb.size != tuple(size):
        rgb = rgb.resize(tuple(size), Image.Resampling.LANCZOS)
    return rgb


def _binary_mask(img):
    """A1111's reading of a mask, white = repaint: its alpha channel when it has real transparency
    (transparent = keep), else its grey level; made black or white at half grey."""
    if _has_alpha(img):
        alpha = img.convert("RGBA").getchannel("A")
        grey = alpha if alpha.getextrema()[0] < 255 else img.convert("L")
    else:
        grey = img.convert("L")
    return grey.point(lambda v: 255 if v > MASK_THRESHOLD else 0)


def _colourful(img) -> bool:
    """Whether an image has a pixel that is not grey."""
    from PIL import ImageChops

    if img.mode not in ("RGB", "RGBA"):
        return False
    rgb = img.convert("RGB")
    return ImageChops.difference(rgb, rgb.convert("L").convert("RGB")).getbbox() is not None


def as_mask(img, size: tuple[int, int], blur: int = 0):
    """The mask the pipeline gets: `_binary_mask`, resized to the image's size (nearest: no new grey),
    then its edge blurred by `blur` pixels."""
    from PIL import Image, ImageFilter

    mask = _binary_mask(img)
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), Image.Resampling.NEAREST)
    if blur:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def output_size(image: InputImage, width: int | None, height: int | None, where: Where = ARGV,
                key: str = "image") -> tuple[int, int, list[str]]:
    """The size an edit is made at: the given one; with one side given, the other keeps the input's
    shape; with none, the input's size. Sides are rounded to multiples of 8 (SDXL's latents are 8×8
    pixels), with a note when the input is resized."""
    def side(n: float) -> int:
        return max(8, round(n / 8) * 8)

    if width and height:
        w, h = width, height
    elif width:
        w, h = width, side(image.height * width / image.width)
    elif height:
        w, h = side(image.width * height / image.height), height
    else:
        w, h = image.width // 8 * 8, image.height // 8 * 8
        if min(w, h) < 8:
            raise where.error(key, f"is {image.width}×{image.height} pixels; an edit needs at least 8×8",
                              f"Use a larger image, or give {where.name('width')} and {where.name('height')}.")
    notes = []
    if (w, h) != (image.width, image.height):
        why = (" (sides are multiples of 8)" if not (width or height) else
               " (the same shape)" if not (width and height) else "")
        notes.append(f"The input is {image.width}×{image.height}; it is resized to {w}×{h}{why}.")
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

    `within`: the folder relative paths are read from and every path must stay in (a prompt file's)."""
    from dataclasses import replace

    from spo_cli.request import HIRES_UPSCALERS, Hires

    v = {k: values.get(k) for k in EDIT_KEYS}
    unknown = set(values) - set(EDIT_KEYS)
    if unknown:
        raise ValueError(f"not edit settings: {sorted(unknown)}")
    at = where.at()
    warnings: list[str] = []

    def needs(key, other, what):
        if v[key] is not None and v[other] is None:
            raise where.error(key, f"has nothing to act on without {where.name(other)}", f"Add {where.name(other)} {what}.")

    needs("mask", "image", "(the image the mask belongs to)")
    needs("strength", "image", f"(the image to re-draw), or use {where.name('hires_strength')} for the hires pass")
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
        scale = validate.hires_scale(v["hires"], "hires", where)
        defaults = Hires(scale)  # A1111's upscaler and second-pass strength, defined there
        upscaler = defaults.upscaler if v["hires_upscaler"] is None else validate.choice(
            v["hires_upscaler"], "hires_upscaler", HIRES_UPSCALERS, where)
        # 0 is A1111's "the first pass's steps", as None is here
        hr_steps = None if v["hires_steps"] is None else validate.integer(
            v["hires_steps"], "hires_steps", where, low=0, high=validate.STEPS_MAX) or None
        hr_strength = defaults.strength if v["hires_strength"] is None else validate.strength(
            v["hires_strength"], "hires_strength", where)
        validate.hires_steps_run(hr_steps or base.steps, hr_strength, "hires_strength", where,
                                 steps_key="hires_steps" if hr_steps else "steps")
        from spo_cli import presets

        w, h = validate.hires_grows(base.width or presets.DEFAULT_SIZE, base.height or presets.DEFAULT_SIZE, scale,
                                    "hires", where)
        _size_ok(w, h, where, "hires", size_limit)
        return replace(base, hires=Hires(scale, upscaler, hr_steps, hr_strength)), warnings

    # The numbers first: a wrong one is refused before a large file is read.
    strength_ = DEFAULT_STRENGTH if v["strength"] is None else validate.strength(v["strength"], "strength", where)
    validate.steps_run(base.steps, strength_, "strength", where)
    changes = {"strength": strength_}
    if v["mask"] is not None:
        changes |= {"mask_blur": DEFAULT_MASK_BLUR if v["mask_blur"] is None else validate.integer(
                        v["mask_blur"], "mask_blur", where, low=0, high=MASK_BLUR_MAX),
                    "mask_crop": None if v["mask_crop"] is None else validate.integer(
                        v["mask_crop"], "mask_crop", where, low=0, high=MASK_CROP_MAX)}

    image, _, notes = _checked(v["image"], "image", where, within)
    warnings += [at + n for n in notes]
    w, h, notes = output_size(image, base.width, base.height, where)
    warnings += [at + n for n in notes]
    _size_ok(w, h, where, "image", size_limit, image=image, given=(base.width, base.height))
    if base.watermark:  # the size comes from the input: the check on the request's own size passed 1024²
        validate.watermark_size(w, h, where)
    if not (base.width and base.height):  # a size the user did not choose: say when SDXL will struggle with it
        warnings += validate.size(w, h, where, size_limit=False)
    changes["image"] = image
    if v["mask"] is not None:
        mask, mask_img, notes = _checked(v["mask"], "mask", where, within)
        warnings += [at + n for n in notes]
        low, high = _binary_mask(mask_img).getextrema()
        if high == 0:
            # A colour mask is read by its brightness, as A1111 reads it: a bright red (76 of 255) is dark.
            colour = ("; a colour is read by its brightness (pure red is 76 of 255), so paint the area white"
                      if _colourful(mask_img) else "")
            raise where.error("mask", f"{_path(str(v['mask']))} marks nothing to repaint: no pixel is lighter than "
                                      f"half grey (or all are transparent){colour}",
                              "White marks what to repaint (A1111's convention); invert the mask if it is the other "
                              f"way round, or drop {where.name('mask')} to re-draw the whole image.")
        if low == 255:
            warnings.append(f"{at}The mask is all white: the whole image is repainted, as without {where.name('mask')}.")
        if (mask.width, mask.height) != (image.width, image.height):
            warnings.append(f"{at}The mask is {mask.width}×{mask.height} and the image {image.width}×{image.height}: "
                            "the mask is resized to the image.")
        changes["mask"] = mask
    return replace(base, **changes), warnings


def _size_ok(w: int, h: int, where: Where, key: str, size_limit: bool, image: InputImage | None = None,
             given: tuple[int | None, int | None] = (None, None)) -> None:
    if not size_limit or (w <= validate.SIDE_MAX and h <= validate.SIDE_MAX and w * h <= validate.PIXELS_MAX):
        return
    limit = f"the limit is {validate.SIDE_MAX} a side and {validate.PIXELS_MAX / 1e6:.1f} MP"
    if image is not None:
        import math

        # The same shape at about one megapixel, each side within the limit and at least 8.
        k = min(math.sqrt(1024 * 1024 / (w * h)), validate.SIDE_MAX / w, validate.SIDE_MAX / h)
        whose = "the input's size" if given == (None, None) else "the input's shape"
        sw, sh = max(8, int(w * k) // 8 * 8), max(8, int(h * k) // 8 * 8)
        # A shape too long for one megapixel within the side limit gets less: say what it gets.
        about = "about 1 MP" if sw * sh >= 0.8 * 1024 * 1024 else f"{sw * sh / 1e6:.2g} MP, as long as a side may be"
        raise where.error(key, f"would make a {w}×{h} image ({w * h / 1e6:.1f} MP, {whose}); {limit}",
                          f"Give the size to make, e.g. {where.name('width')} {sw} {where.name('height')} {sh} "
                          f"({about}, the same shape), or {_no_size_limit(where)}.")
    raise where.error(key, f"would make a {w}×{h} image ({w * h / 1e6:.1f} MP); {limit}",
                      f"Use a smaller factor or size, or {_no_size_limit(where)}.")


def _no_size_limit(where: Where) -> str:
    return "--no-size-limit" if where.source is None else "--no-size-limit on the command line"

"""Input images and the image-to-image settings: every hostile file and value refused in one
paragraph, and every ordinary file read as a viewer shows it.

Pure: PIL-made (or byte-crafted) files in tmp_path, no model, no subprocess (the real command line
is tests/test_img2img_inputs_cli.py).
"""

from __future__ import annotations

import math
import os
import signal
import struct
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from spo_cli import inputs, validate
from spo_cli.errors import GenerationError, UsageError
from spo_cli.request import Hires, ImageRequest
from spo_cli.validate import Where

BASE = ImageRequest(prompt="a fox", seed=1, steps=10)
FILE = Where("edits.jsonl:3")


def save(path: Path, img, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def png_bytes(width: int, height: int, depth: int = 8, colour: int = 2, rows: bytes | None = None) -> bytes:
    """A PNG written byte by byte: its IHDR may declare any size, whatever its pixels hold."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows or b"\0" * 64))
            + chunk(b"IEND", b""))


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(UsageError) as e:
        fn(*args, **kwargs)
    text = e.value.paragraph()
    assert "\n" not in text and "Traceback" not in text
    return text


@contextmanager
def deadline(seconds: int):
    """A hang guard (a FIFO opened without O_NONBLOCK waits for a writer forever), never a timing check."""
    def stop(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def fox(tmp_path) -> Path:
    return save(tmp_path / "fox.png", Image.new("RGB", (64, 48), (200, 80, 20)))


# ---------------------------------------------------------------------------------------------
# Files: only a regular file, whole, within the limits


def _fifo(p):
    os.mkfifo(p)


def _dangling(p):
    p.symlink_to(p.parent / "nowhere.png")


def _loop(p):
    p.symlink_to(p)


@pytest.mark.parametrize("make, words", [
    (lambda p: p.mkdir(), "is a folder, not an image file"),
    (_fifo, "is a pipe (FIFO), not an image file"),
    (lambda p: None, "does not exist"),
    (_dangling, "does not exist"),
    (_loop, "cannot be opened (Too many levels of symbolic links)"),
    (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
    (lambda p: p.write_text("<html><body>Not Found</body></html>\n"), "is not an image spo can read (it holds text)"),
    (lambda p: p.write_bytes(bytes(range(256))), "is not an image spo can read. Give a PNG, JPEG, WebP, GIF, BMP or TIFF"),
], ids=["folder", "fifo", "missing", "dangling-link", "link-loop", "empty", "text", "noise"])
def test_what_is_not_an_image_file_is_refused_naming_the_option(tmp_path, make, words):
    path = tmp_path / "in.png"
    make(path)
    with deadline(30):
        text = refused(inputs.check, str(path), "mask")
    assert text.startswith(f"--mask '{path}' ") and words in text


@pytest.mark.parametrize("value, words", [(5, "must be a string, not int 5"), (["a.png"], "not list"),
                                           ("", "is empty"), ("a\0.png", "contains a NUL character")])
def test_a_path_from_json_must_be_a_path(value, words):
    assert words in refused(inputs.check, value, "image", FILE)


def test_devices_and_stdin_are_refused_without_reading(monkeypatch):
    assert "is a device, not an image file" in refused(inputs.check, "/dev/zero")
    read, write = os.pipe()
    saved = os.dup(0)
    try:
        os.dup2(read, 0)  # stdin a pipe, as in `cat fox.png | spo generate … --image /dev/stdin`
        with deadline(30):
            assert "'/dev/stdin' is a pipe (FIFO)" in refused(inputs.check, "/dev/stdin")
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read, write):
            os.close(fd)


def test_stdin_redirected_from_a_file_is_that_file(fox):
    saved = os.dup(0)
    fd = os.open(fox, os.O_RDONLY)
    try:
        os.dup2(fd, 0)
        image = inputs.check("/dev/stdin")
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(fd)
    assert image.path == str(fox) and (image.width, image.height) == (64, 48)


def test_permission_denied_is_one_paragraph(fox, monkeypatch):
    # The suite may run as root, whom chmod 000 does not stop: the OS's refusal is made here.
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inputs.os, "open", denied)
    assert "cannot be opened (Permission denied). Check the path and its permissions." in refused(inputs.check, fox)


def test_size_limits_on_disk_and_while_read(fox, monkeypatch):
    monkeypatch.setattr(inputs, "INPUT_BYTES_MAX", 100)
    assert "the limit is 0 MB" in refused(inputs.check, fox)  # 137 bytes on disk
    # /proc files say 0 bytes and hold more: as a file that grows while it is read
    assert "grew past 0 MB while it was read" in refused(inputs.check, "/proc/self/status")


# ---------------------------------------------------------------------------------------------
# A prompt file's folder: relative paths read from it, and nothing read from outside it


@pytest.fixture
def folder(tmp_path, fox) -> Path:
    inside = tmp_path / "edits"
    (inside / "in").mkdir(parents=True)
    save(inside / "in" / "cat.png", Image.new("RGB", (16, 16), (255, 255, 255)))
    (inside / "link-in.png").symlink_to(inside / "in" / "cat.png")
    (inside / "link-out.png").symlink_to(fox)
    (inside / "dir-out").symlink_to(tmp_path)
    return inside


@pytest.mark.parametrize("name", ["in/cat.png", "./in/../in/cat.png", "link-in.png", "{folder}/in/cat.png"])
def test_paths_inside_the_folder_are_read(folder, name):
    image = inputs.check(name.format(folder=folder), "image", FILE, within=folder)
    assert image.path == str(folder / "in" / "cat.png")


@pytest.mark.parametrize("name", ["../fox.png", "link-out.png", "dir-out/fox.png", "{folder}/../fox.png",
                                  "~/fox.png"])
def test_paths_out_of_the_folder_are_refused_links_included(folder, name, monkeypatch):
    monkeypatch.setenv("HOME", str(folder.parent))
    text = refused(inputs.check, name.format(folder=folder), "image", FILE, within=folder)
    assert text.startswith(f"edits.jsonl:3: 'image' '{name.format(folder=folder)}' leads out of the prompt file's "
                           f"folder {folder} (to '{folder.parent / 'fox.png'}')")


def test_a_link_swapped_in_after_the_check_is_not_followed(folder, fox, monkeypatch):
    # The race, made deterministic: the file is replaced by a link out of the folder just after its
    # path was resolved and found inside.
    resolve = os.path.realpath
    image = folder / "in" / "cat.png"

    def then_swapped(path, *args, **kwargs):
        out = resolve(path, *args, **kwargs)
        if out == str(image):
            image.unlink()
            image.symlink_to(fox)
        return out

    monkeypatch.setattr(inputs.os.path, "realpath", then_swapped)
    text = refused(inputs.check, "in/cat.png", "image", FILE, within=folder)
    assert "cannot be opened (Too many levels of symbolic links)" in text


def test_a_dangling_link_out_is_refused_as_out(folder):
    (folder / "later.png").symlink_to("/nonexistent/x.png")
    assert "leads out of" in refused(inputs.check, "later.png", "image", FILE, within=folder)


def test_the_command_line_reads_any_file_links_included(folder, fox):
    assert inputs.check(str(folder / "link-out.png")).path == str(fox)
    assert inputs.check(os.path.relpath(fox)).path == str(fox)


# ---------------------------------------------------------------------------------------------
# Decoding: the declared size before any pixel, then every pixel


@pytest.mark.parametrize("width, height, declared", [
    (20000, 20000, "declares 400,000,000 pixels"),  # PIL's own DecompressionBombError
    (10000, 10000, "declares 10,000×10,000 pixels"),  # PIL only warns: spo's limit
    (16385, 8, "declares 16,385×8 pixels"),  # few pixels, but one side too long
])
def test_decompression_bombs_are_refused_from_their_header(tmp_path, width, height, declared):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(width, height))  # 80 bytes
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        text = refused(inputs.check, bomb)
    assert declared in text and "decompression bomb" in text and not seen


def test_spo_limit_holds_whatever_pil_is_told(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(20000, 20000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # another library may turn PIL's check off
    assert "declares 20,000×20,000 pixels" in refused(inputs.check, bomb)


def test_a_lowered_pil_limit_is_said_as_pils(fox, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64×48 is over twice that: PIL refuses to open it
    assert "declares 3,072 pixels, more than PIL is set to open in this process" in refused(inputs.check, fox)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_fail_before_the_run(tmp_path, fmt):
    whole = save(tmp_path / f"x.{fmt.lower()}", Image.effect_noise((64, 64), 60).convert("RGB"), fmt).read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    text = refused(inputs.check, cut)
    assert "could not be decoded" in text and "truncated" in text


READ = [("PNG", {}), ("JPEG", {}), ("WEBP", {"lossless": True}), ("GIF", {}), ("BMP", {}), ("TIFF", {})]


@pytest.mark.parametrize("fmt, kw", READ, ids=[f for f, _ in READ])
def test_the_six_formats_are_read(tmp_path, fmt, kw):
    path = save(tmp_path / "x", Image.new("RGB", (24, 16), (255, 0, 0)), fmt, **kw)
    img = inputs.decode(path.read_bytes())
    assert img.size == (24, 16) and inputs.as_rgb(img).getpixel((3, 3))[0] > 240


@pytest.mark.parametrize("fmt", ["PPM", "TGA", "ICO", "PCX", "SGI"])
def test_other_formats_are_not_parsed(tmp_path, fmt):
    path = save(tmp_path / "x", Image.new("RGB", (16, 16)), fmt)
    assert "is not an image spo can read" in refused(inputs.check, path)


def _png16(value: int) -> bytes:
    return png_bytes(2, 1, depth=16, colour=2, rows=b"\0" + struct.pack(">HHH", value, 0, 65535) * 2)


def _transparent_palette(path: Path) -> None:
    img = Image.new("RGB", (4, 4), (255, 0, 0)).convert("P")
    save(path, img, "PNG", transparency=img.getpixel((0, 0)))


# What a viewer shows: (the file, the RGB of its pixel (0, 0) that as_rgb must give)
VIEWS = {
    "16-bit grey": (lambda p: save(p, Image.new("I;16", (4, 4), 30000), "PNG"), (117, 117, 117)),
    "16-bit grey tRNS": (lambda p: save(p, Image.new("I;16", (4, 4), 30000), "PNG", transparency=30000),
                         (117, 117, 117)),
    "16-bit RGB": (lambda p: p.write_bytes(_png16(0x8080)), (128, 0, 255)),
    "CMYK JPEG": (lambda p: save(p, Image.new("RGB", (8, 8), (200, 30, 60)).convert("CMYK"), "JPEG", quality=100),
                  (200, 30, 60)),
    "LA half": (lambda p: save(p, Image.new("LA", (4, 4), (0, 128)), "PNG"), (127, 127, 127)),
    "RGBA clear": (lambda p: save(p, Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG"), (255, 255, 255)),
    "P transparent": (lambda p: _transparent_palette(p), (255, 255, 255)),
    "L tRNS": (lambda p: save(p, Image.new("L", (4, 4), 10), "PNG", transparency=10), (255, 255, 255)),
    "P opaque": (lambda p: save(p, Image.new("RGB", (4, 4), (0, 0, 255)).convert("P"), "GIF"), (0, 0, 255)),
    "1-bit": (lambda p: save(p, Image.new("1", (4, 4), 1), "PNG"), (255, 255, 255)),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_every_mode_becomes_the_rgb_a_viewer_shows(tmp_path, name):
    make, rgb = VIEWS[name]
    path = tmp_path / "x"
    make(path)
    img = inputs.decode(path.read_bytes())
    assert img.mode in ("L", "LA", "RGB", "RGBA")
    assert all(abs(a - b) <= 1 for a, b in zip(inputs.as_rgb(img).getpixel((0, 0)), rgb)), \
        inputs.as_rgb(img).getpixel((0, 0))


def test_as_rgb_makes_the_output_size_as_a1111_just_resize():
    img = Image.new("RGBA", (40, 24), (255, 0, 0, 255))
    img.paste((0, 0, 255, 255), (20, 0, 40, 24))
    made = inputs.as_rgb(img, (32, 16))
    assert made.size == (32, 16) and made.mode == "RGB"
    assert made.getpixel((2, 8)) == (255, 0, 0) and made.getpixel((29, 8)) == (0, 0, 255)
    assert made.tobytes() == img.convert("RGB").resize((32, 16), Image.Resampling.LANCZOS).tobytes()
    assert inputs.as_rgb(img, (40, 24)).tobytes() == img.convert("RGB").tobytes()


def test_modes_with_no_one_view_are_refused(tmp_path):
    floats = save(tmp_path / "f.tiff", Image.new("F", (4, 4), 0.5), "TIFF")
    assert "is a F image (floating-point or Lab)" in refused(inputs.check, floats)
    wide = save(tmp_path / "i.tiff", Image.new("I", (4, 4), 70000), "TIFF")
    assert "is a 32-bit integer image" in refused(inputs.check, wide)


# EXIF orientation, from the standard's own words ("the 0th row is the visual right-hand side, the
# 0th column the visual top", …): where the stored pixels (0, 0) and (1, 0) of a 3×2 image are seen.
ORIENTATIONS = {1: ((0, 0), (1, 0)), 2: ((2, 0), (1, 0)), 3: ((2, 1), (1, 1)), 4: ((0, 1), (1, 1)),
                5: ((0, 0), (0, 1)), 6: ((1, 0), (1, 1)), 7: ((1, 2), (1, 1)), 8: ((0, 2), (0, 1))}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # JPEG: what phones write, with the rotation in EXIF
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_exif_orientation_is_applied_as_a_viewer_shows_it(tmp_path, orientation, fmt):
    stored = Image.new("RGB", (3, 2), (0, 0, 0))
    stored.putpixel((0, 0), (255, 0, 0))
    stored.putpixel((1, 0), (0, 255, 0))
    stored = stored.resize((24, 16), Image.Resampling.NEAREST)  # 8×8 blocks: JPEG keeps their colour
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path / "x", stored, fmt, exif=exif, quality=100, subsampling=0)
    image = inputs.check(path)
    img = inputs.decode(path.read_bytes())
    size = (24, 16) if orientation < 5 else (16, 24)
    assert (image.width, image.height) == img.size == size  # the recorded size is the rotated one
    for (x, y), colour in zip(ORIENTATIONS[orientation], ((255, 0, 0), (0, 255, 0))):
        seen = img.getpixel((x * 8 + 4, y * 8 + 4))
        assert all(abs(a - b) <= 8 for a, b in zip(seen, colour)), (x, y, seen)


@pytest.mark.parametrize("fmt, kw", [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})])
def test_animations_give_their_first_frame_said_once(tmp_path, fmt, kw):
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = save(tmp_path / "a", frames[0], fmt, save_all=True, append_images=frames[1:], **kw)
    assert inputs.as_rgb(inputs.decode(path.read_bytes())).getpixel((8, 8)) == (255, 0, 0)
    _, warned = inputs.edit_request(replace(BASE, width=16, height=16), {"image": str(path)})
    assert [w for w in warned if "animated" in w] == [f"'{path}' is animated: its first frame is used."]
    still = save(tmp_path / "still.png", frames[0])
    assert not any("animated" in w for w in inputs.edit_request(BASE, {"image": str(still)})[1])


def test_load_rereads_and_refuses_a_changed_file(fox):
    image = inputs.check(fox)
    assert inputs.as_rgb(inputs.load(image)).getpixel((0, 0)) == (200, 80, 20)
    save(fox, Image.new("RGB", (64, 48), (0, 0, 0)))
    with pytest.raises(GenerationError, match="changed while spo was running"):
        inputs.load(image)


# ---------------------------------------------------------------------------------------------
# Masks, as A1111 reads them: white (or opaque, when the mask has transparency) = repaint


def test_mask_grey_is_cut_at_half_and_alpha_wins_when_transparent():
    grey = Image.new("L", (4, 1))
    for x, v in enumerate((0, 128, 129, 255)):
        grey.putpixel((x, 0), v)
    assert list(inputs.as_mask(grey, (4, 1)).tobytes()) == [0, 0, 255, 255]
    rgba = Image.new("RGBA", (2, 1), (255, 255, 255, 0))  # white but transparent: keep
    rgba.putpixel((1, 0), (0, 0, 0, 255))  # black but opaque: repaint
    assert list(inputs.as_mask(rgba, (2, 1)).tobytes()) == [0, 255]
    opaque = Image.new("RGBA", (2, 1), (255, 255, 255, 255))  # no transparency: its grey
    assert list(inputs.as_mask(opaque, (2, 1)).tobytes()) == [255, 255]


def test_mask_is_resized_nearest_then_blurred():
    half = Image.new("L", (2, 1))
    half.putpixel((1, 0), 255)
    assert sorted(set(inputs.as_mask(half, (8, 4)).tobytes())) == [0, 255]  # no grey from the resize
    assert len(set(inputs.as_mask(half, (32, 4), blur=4).tobytes())) > 2


# ---------------------------------------------------------------------------------------------
# The output size


@pytest.mark.parametrize("size, given, made, note", [
    ((64, 48), (None, None), (64, 48), None),
    ((70, 51), (None, None), (64, 48), "The input is 70×51; it is resized to 64×48 (sides are multiples of 8)."),
    ((64, 48), (32, None), (32, 24), "The input is 64×48; it is resized to 32×24 (the same shape)."),
    ((64, 48), (None, 96), (128, 96), "The input is 64×48; it is resized to 128×96 (the same shape)."),
    ((300, 10), (None, 16), (480, 16), "The input is 300×10; it is resized to 480×16 (the same shape)."),
    ((64, 48), (16, 16), (16, 16), "The input is 64×48; it is resized to 16×16."),
])
def test_output_size_follows_the_input(size, given, made, note):
    image = inputs.InputImage("/x.png", "0" * 64, *size, 100)
    w, h, notes = inputs.output_size(image, *given)
    assert (w, h) == made and notes == ([note] if note else [])


def test_an_input_under_8_pixels_needs_a_size():
    image = inputs.InputImage("/x.png", "0" * 64, 7, 100, 100)
    text = refused(inputs.output_size, image, None, None, FILE)
    assert text == ("edits.jsonl:3: 'image' is 7×100 pixels; an edit needs at least 8×8. Use a larger image, or give "
                    "'width' and 'height'.")
    assert inputs.output_size(image, 64, None)[:2] == (64, 912)


# ---------------------------------------------------------------------------------------------
# The settings: edit_request from any source


def test_no_edit_settings_leave_the_request_alone():
    assert inputs.edit_request(BASE, {}) == (BASE, [])


def test_an_edit_is_checked_with_its_defaults(fox):
    request, warned = inputs.edit_request(BASE, {"image": str(fox)})
    assert request.image == inputs.check(fox) and request.strength == 0.75 and request.mask is None
    assert request.mode == "img2img" and request.denoising_steps == 7
    assert warned == ["64×48 is far from SDXL's training size of about 1024×1024 (e.g. 1024×1024, 1152×896, "
                      "1216×832); expect weaker images."]  # a size the user did not choose: said


def test_an_inpaint_is_checked_with_its_defaults(tmp_path, fox):
    mask = Image.new("L", (64, 48))
    mask.paste(255, (10, 10, 30, 30))
    request, _ = inputs.edit_request(BASE, {"image": str(fox), "mask": str(save(tmp_path / "m.png", mask)),
                                            "strength": 1})
    assert request.mode == "inpaint" and request.mask_blur == 4 and request.mask_crop is None
    assert request.strength == 1.0 and isinstance(request.strength, float)


def _mask(tmp_path, value, size=(64, 48), mode="L"):
    return str(save(tmp_path / f"mask-{value}.png", Image.new(mode, size, value)))


def test_a_mask_of_another_size_is_resized_said_once(tmp_path, fox):
    half = Image.new("L", (32, 24))
    half.paste(255, (0, 0, 16, 24))
    _, warned = inputs.edit_request(BASE, {"image": str(fox), "mask": str(save(tmp_path / "m.png", half))}, FILE)
    assert [w for w in warned if "mask" in w] == [
        "edits.jsonl:3: The mask is 32×24 and the image 64×48: the mask is resized to the image."]


def test_an_all_black_mask_is_refused_and_an_all_white_one_said(tmp_path, fox):
    for black in (_mask(tmp_path, 0), _mask(tmp_path, (255, 255, 255, 0), mode="RGBA")):
        text = refused(inputs.edit_request, BASE, {"image": str(fox), "mask": black})
        assert "marks nothing to repaint: no pixel is lighter than half grey (or all are transparent)" in text and "invert" in text
    _, warned = inputs.edit_request(BASE, {"image": str(fox), "mask": _mask(tmp_path, 255)})
    assert any("The mask is all white: the whole image is repainted" in w for w in warned)


# Each wrong setting: (values, words of the one paragraph). IMAGE/MASK stand for real files.
WRONG = [
    ({"mask": "MASK"}, "--mask has nothing to act on without --image. Add --image"),
    ({"strength": 0.5}, "--strength has nothing to act on without --image. Add --image (the image to re-draw), or use "
                        "--hires-strength"),
    ({"mask_blur": 4}, "--mask-blur has nothing to act on without --mask"),
    ({"image": "IMAGE", "mask_crop": 32}, "--mask-crop has nothing to act on without --mask"),
    ({"hires_steps": 10}, "--hires-steps has nothing to act on without --hires"),
    ({"hires_strength": 0.5}, "--hires-strength has nothing to act on without --hires"),
    ({"hires_upscaler": "latent"}, "--hires-upscaler has nothing to act on without --hires"),
    ({"hires": 1.5, "image": "IMAGE"}, "--hires cannot be used with an input image"),
    ({"image": "IMAGE", "strength": 0}, "--strength must be over 0 (0 would give back the input unchanged) and at "
                                        "most 1, not 0. Use e.g. 0.3"),
    ({"image": "IMAGE", "strength": -0.5}, "--strength must be over 0"),
    ({"image": "IMAGE", "strength": 1.01}, "at most 1, not 1.01"),
    ({"image": "IMAGE", "strength": 10**400}, "at most 1, not a 401-digit number"),
    ({"image": "IMAGE", "strength": math.nan}, "--strength must be a finite number, not nan"),
    ({"image": "IMAGE", "strength": "0.5"}, "--strength must be a number, not '0.5'"),
    ({"image": "IMAGE", "strength": True}, "--strength must be a number, not True"),
    ({"image": "IMAGE", "strength": 0.05}, "--strength 0.05 with 10 --steps runs 0.50 denoising steps, which is none "
                                           "(image to image runs int(steps × strength)). Raise --steps to at least 20"),
    ({"image": "IMAGE", "mask": "MASK", "mask_blur": -1}, "--mask-blur must be from 0 to 64, not -1"),
    ({"image": "IMAGE", "mask": "MASK", "mask_blur": 4.0}, "--mask-blur must be a whole number"),
    ({"image": "IMAGE", "mask": "MASK", "mask_crop": 257}, "--mask-crop must be from 0 to 256"),
    ({"hires": 1}, "--hires must be over 1 (1 would re-draw the image at its own size) and at most 4, not 1"),
    ({"hires": 0.5}, "--hires must be over 1"),
    ({"hires": 4.5}, "and at most 4, not 4.5"),
    ({"hires": math.inf}, "--hires must be a finite number, not inf"),
    ({"hires": math.nan}, "--hires must be a finite number, not nan"),
    ({"hires": "2"}, "--hires must be a number, not '2'"),
    ({"hires": 2, "hires_upscaler": ""}, "--hires-upscaler cannot be ''"),
    ({"hires": 2, "hires_upscaler": "nearest"}, "Choose one of: latent, lanczos."),
    ({"hires": 2, "hires_steps": False}, "--hires-steps must be a whole number, not False"),
    ({"hires": 2, "hires_steps": -1}, "--hires-steps must be from 0 to 1,000"),
    ({"hires": 2, "hires_strength": 0}, "--hires-strength must be over 0"),
    ({"hires": 2, "hires_strength": 0.005}, "--hires-strength 0.005 with 10 --steps stretches the hires pass's "
                                            "schedule to 2000 steps (A1111's: steps / strength), over the 1000"),
    ({"hires": 2, "hires_steps": 4, "hires_strength": 0.002}, "Raise the strength above 0.004, or lower --hires-steps."),
    ({"hires": 2.5}, "--hires would make a 2560×2560 image (6.6 MP); the limit is 4096 a side and 4.2 MP. Use a "
                     "smaller factor or size, or --no-size-limit."),
]


@pytest.mark.parametrize("values, words", WRONG, ids=[str(i) for i in range(len(WRONG))])
def test_each_wrong_setting_is_one_paragraph_naming_its_option(tmp_path, fox, values, words):
    files = {"IMAGE": str(fox), "MASK": _mask(tmp_path, 255)}
    values = {k: files.get(v, v) if isinstance(v, str) else v for k, v in values.items()}
    text = refused(inputs.edit_request, BASE, values)
    assert words in text, text


def test_a_prompt_file_line_names_its_keys(folder):
    text = refused(inputs.edit_request, BASE, {"image": "in/cat.png", "strength": "0.5"}, FILE, within=folder)
    assert text == "edits.jsonl:3: 'strength' must be a number, not '0.5'."
    text = refused(inputs.edit_request, BASE, {"strength": 0.5}, FILE, within=folder)
    assert "'strength' has nothing to act on without 'image'" in text and "or use 'hires_strength'" in text
    request, _ = inputs.edit_request(BASE, {"image": "in/cat.png", "mask": "link-in.png"}, FILE, within=folder)
    assert request.image.path == request.mask.path == str(folder / "in" / "cat.png")
    assert "leads out of" in refused(inputs.edit_request, BASE, {"image": "in/cat.png", "mask": "link-out.png"}, FILE,
                                     within=folder)


def test_numbers_are_checked_before_any_file_is_read(tmp_path):
    text = refused(inputs.edit_request, BASE, {"image": str(tmp_path / "missing.png"), "strength": 2})
    assert "--strength" in text


def test_an_input_over_the_size_limit_is_told_a_same_shape_size(tmp_path):
    big = save(tmp_path / "big.png", Image.new("RGB", (3000, 2000)))
    text = refused(inputs.edit_request, BASE, {"image": str(big)})
    assert text == ("--image would make a 3000×2000 image (6.0 MP, the input's size); the limit is 4096 a side and "
                    "4.2 MP. Give the size to make, e.g. --width 1248 --height 832 (about 1 MP, the same shape), or "
                    "--no-size-limit.")
    request, _ = inputs.edit_request(replace(BASE, width=1248), {"image": str(big)})  # one side: the same shape
    assert inputs.output_size(request.image, request.width, request.height)[:2] == (1248, 832)
    request, _ = inputs.edit_request(BASE, {"image": str(big)}, size_limit=False)
    assert request.image.width == 3000
    long = save(tmp_path / "long.png", Image.new("L", (4200, 16)))
    assert "e.g. --width 4096 --height 8 " in refused(inputs.edit_request, BASE, {"image": str(long)}, FILE) \
        .replace("'width'", "--width").replace("'height'", "--height")


def test_hires_is_checked_with_its_defaults():
    request, warned = inputs.edit_request(replace(BASE, width=512, height=512), {"hires": 1.5})
    assert request.hires == Hires(1.5, "latent", None, 0.7) and request.mode == "hires" and warned == []
    request, _ = inputs.edit_request(BASE, {"hires": 2, "hires_steps": 0, "hires_upscaler": "lanczos",
                                            "hires_strength": 0.5})
    assert request.hires == Hires(2.0, "lanczos", None, 0.5)
    assert refused(inputs.edit_request, BASE, {"hires": 2.5}, size_limit=True)
    assert inputs.edit_request(BASE, {"hires": 2.5}, size_limit=False)[0].hires.scale == 2.5


# ---------------------------------------------------------------------------------------------
# validate's part


@pytest.mark.parametrize("side, scale, size", [(1024, 1.5, 1536), (1024, 1.33, 1360), (1000, 1.5, 1496), (832, 2, 1664)])
def test_hires_size_is_a1111s_int_then_down_to_8(side, scale, size):
    assert validate.hires_size(side, 1024, scale) == (size, int(1024 * scale) // 8 * 8)


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 20, 30, 150])
@pytest.mark.parametrize("strength", [0.01, 0.05, 0.1, 0.3, 0.33, 0.5, 0.55, 0.7, 0.75, 0.9, 0.999, 1.0])
def test_hires_schedule_is_a1111s_steps_as_diffusers_runs_them(steps, strength):
    """A1111 (sd_samplers_common.setup_img2img_steps, steps given, as its hires pass always does): a
    schedule of n = int(steps / min(strength, 0.999)), t_enc = steps - 1, sampled from sigmas[n - t_enc - 1:].
    diffusers' img2img (get_timesteps): int(n × strength') steps, from index n - int(n × strength')."""
    n, diffusers_strength = validate.hires_schedule(steps, strength)
    assert n == int(steps / min(strength, 0.999))
    runs = min(int(n * diffusers_strength), n)
    assert runs == steps  # all the hires steps, as A1111 runs them
    assert n - runs == n - (steps - 1) - 1  # from the same step of the same schedule
    assert 0 < diffusers_strength <= 1


def test_steps_run_tells_a_count_that_really_runs_a_step():
    validate.steps_run(4, 0.25)
    assert refused(validate.steps_run, 3, 0.2) == (
        "--strength 0.2 with 3 --steps runs 0.60 denoising steps, which is none (image to image runs int(steps × "
        "strength)). Raise --steps to at least 5, or the strength.")
    strength = math.nextafter(0.2, 0)  # 1/s rounds to 5.0 exactly, and 5 × s is still under 1
    text = refused(validate.steps_run, 4, strength)
    need = int(text.split("at least ")[1].split(",")[0])
    assert int(need * strength) >= 1 and int((need - 1) * strength) < 1


def test_mask_blur_only_rounds_the_corners_of_what_diffusers_repaints():
    """What the README and --mask-blur say: the inpaint pipeline's mask_processor makes the blurred mask
    black and white again at half grey, so on the whole picture the blur only rounds the mask's corners
    (the soft edge exists only where the result is pasted back through it, with --mask-crop)."""
    import numpy as np
    from diffusers.image_processor import VaeImageProcessor

    # StableDiffusionXLInpaintPipeline's mask_processor.
    processor = VaeImageProcessor(vae_scale_factor=8, do_normalize=False, do_binarize=True, do_convert_grayscale=True)
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (32, 40, 96, 104))
    sharp = processor.preprocess(inputs.as_mask(mask, (128, 128), 0), 128, 128)[0, 0].numpy()
    soft = processor.preprocess(inputs.as_mask(mask, (128, 128), 4), 128, 128)[0, 0].numpy()
    assert set(np.unique(soft)) == {0.0, 1.0}  # no grey reaches the pipeline
    ys, xs = np.nonzero(sharp != soft)
    assert len(ys) > 0  # the corners are rounded ...
    corners = np.array([(32, 40), (95, 40), (32, 103), (95, 103)])
    nearest = np.abs(np.stack([xs, ys], 1)[:, None, :] - corners[None]).max(2).min(1)
    assert nearest.max() <= 3 * 4  # ... and nothing else changes: the edges stay where they were

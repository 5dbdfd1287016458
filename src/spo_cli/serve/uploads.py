"""Images sent to the server (A1111's base64 `init_images` and `mask`, OpenAI's multipart files, the
CLI client's inputs): checked, then kept as files, since a request starts from a file.

An upload is hostile until checked: its size is bounded (by the body limit, and here once decoded),
base64 is decoded strictly, and the bytes are decoded by `spo_cli.inputs` exactly as `--image` reads a
file (format, declared size before pixels: bombs; full decode: truncation). Only then are they
written, once per content, as `<inputs folder>/<sha256>.<format>` (atomic, a name of hex digits: it
cannot leave the folder). The image's sidecar then records that real path and checksum, so `spo
replay` of a served image finds its input, and the same file given to `spo generate --image` is
the same spec.

The two conventions for masks meet here and nowhere else: spo's (A1111's: white = repaint, or the
alpha channel when the mask has transparency) is kept as sent; OpenAI's (fully transparent = repaint)
is converted once into a white-on-black mask file by `openai_mask`.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextvars
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from spo_cli import inputs, validate
from spo_cli.errors import UsageError

UPLOAD_BYTES_MAX = 16 << 20  # one image, decoded: a 4 MP photo as PNG is ~12 MB; SDXL works at ~1 MP
# A body may hold an image and its mask in base64 (4/3 of their bytes: 2 × 21.3 MiB) and the rest of the
# request. Read whole into memory before anything is checked, so it is also what a slow or hostile
# client can make the server hold per connection.
EDIT_BODY_BYTES = 44 << 20
assert EDIT_BODY_BYTES >= 2 * (UPLOAD_BYTES_MAX + 2) // 3 * 4 + (1 << 20)
INPUTS_FOLDER = "inputs"  # under the server's --out
FORMAT_SUFFIXES = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "BMP": "bmp", "TIFF": "tiff", "GIF": "gif"}
_WHITESPACE = {ord(c): None for c in " \t\r\n"}
# A1111 strips "data:image/png;base64," before decoding: clients send it. Any media type is read: a
# browser's FileReader names a file's type from its extension ("data:application/octet-stream;…" for
# a PNG without one), and the bytes are checked as an image whatever the URL claims.
DATA_URL = "data:"


class BadUpload(Exception):
    """An upload refused: `field` names the client's field; 400 (not an image) or 413 (too large)."""

    def __init__(self, message: str, field: str, status: int = 400):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


def from_base64(text, field: str) -> bytes:
    """A base64 image field's bytes (a data: URL prefix allowed, as A1111 allows it)."""
    if not isinstance(text, str) or not text:
        raise BadUpload(f"request: '{field}' must be a base64-encoded image (PNG, JPEG, WebP…).", field)
    if text.startswith(DATA_URL):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise BadUpload(f"request: '{field}' is a data: URL that is not base64.", field)
    if len(text) > (UPLOAD_BYTES_MAX + 2) // 3 * 4 + 4:  # before decoding: the bound in base64 characters
        raise BadUpload(f"request: '{field}' holds over {UPLOAD_BYTES_MAX >> 20} MB of image; resize it first "
                        "(SDXL works at about one megapixel).", field, 413)
    # Line breaks are allowed (`base64` wraps at 76 columns); any other character outside the alphabet
    # is refused, where a lax decoder would skip it and decode something other than what was sent.
    text = text.translate(_WHITESPACE)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadUpload(f"request: '{field}' is not valid base64 (only A-Z, a-z, 0-9, +, / and = padding).",
                        field) from None
    return checked_size(data, field)


def checked_size(data: bytes, field: str) -> bytes:
    if not data:
        raise BadUpload(f"request: '{field}' is empty; send an image file.", field)
    if len(data) > UPLOAD_BYTES_MAX:
        raise BadUpload(f"request: '{field}' is {len(data) / 1024**2:,.1f} MB; the limit is "
                        f"{UPLOAD_BYTES_MAX >> 20} MB (resize it first: SDXL works at about one megapixel).",
                        field, 413)
    return data


def decoded(data: bytes, field: str):
    """The PIL image of `data`, checked as `--image` checks a file; refused as the client's `field`."""
    try:
        return inputs.decode(data, field, _FieldWhere(), name=f"request: '{field}'")
    except UsageError as e:
        raise BadUpload(e.paragraph(), field) from None


class _FieldWhere(validate.Where):
    """inputs' messages, which name the value itself (`name=`), need no prefix of their own."""

    def __init__(self):
        super().__init__("request")

    def error(self, key: str, problem: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{problem}.", hint)


def store(data: bytes, folder: Path, field: str, image=None) -> Path:
    """Check `data` (unless its decoded `image` is given), then keep it as `folder/<sha256>.<format>`,
    written once and atomically; the path."""
    if image is None:
        decoded(data, field)
    return _keep(data, folder, f"{hashlib.sha256(data).hexdigest()}.{FORMAT_SUFFIXES[_format(data)]}")


def _format(data: bytes) -> str:
    """The format of bytes `decoded` accepted (its image, a transposed copy, has lost it)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as probe:
        return probe.format


def store_png(image, folder: Path) -> Path:
    """A mask made here (converted or inverted) as a PNG file of its own."""
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    data = buf.getvalue()
    return _keep(data, folder, f"{hashlib.sha256(data).hexdigest()}.png")


def _keep(data: bytes, folder: Path, name: str) -> Path:
    from spo_cli.outputs import files

    folder.mkdir(parents=True, exist_ok=True)
    if folder.is_symlink() or folder.resolve().parent != folder.parent.resolve():
        # The server writes only inside its own folder: a link put there would send uploads elsewhere.
        raise BadUpload(f"The server's inputs folder {folder} is a link; uploads are not written through it. "
                        "Its operator should remove the link.", "image", 500)
    path = folder / name
    with _LOCK:  # one writer per name, and `provisional` sees who else keeps it
        try:
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size == len(data) and path.read_bytes() == data:
                _PENDING.pop(path, None)  # another request keeps it too: no refusal may remove it now
                return path  # sent before: the same bytes, kept once
        except FileNotFoundError:
            pass
        # Anything else under that name (a link, a damaged file) is replaced, never followed.
        files.atomic_write(path, data, overwrite=True)
        written = _WRITTEN.get()
        if written is not None:
            written.append(path)
            _PENDING[path] = written
    return path


# Files written for a request not yet accepted, by the list of its `provisional` block. A refused
# request (a bad field after its image, a full queue) would otherwise leave its upload behind: any
# client could fill the disk at the speed of its uploads, with no work ever queued to slow it.
_LOCK = threading.Lock()
_PENDING: dict[Path, list] = {}
_WRITTEN: contextvars.ContextVar[list | None] = contextvars.ContextVar("spo_uploads_written", default=None)


@contextmanager
def provisional():
    """Uploads kept inside the block are removed again if it raises (the request was refused), unless
    another request has kept the same file meanwhile. asyncio.to_thread carries the block's context
    into the thread that decodes and stores."""
    written: list[Path] = []
    token = _WRITTEN.set(written)
    try:
        yield
    except BaseException:
        with _LOCK:
            for path in written:
                if _PENDING.get(path) is written:
                    del _PENDING[path]
                    path.unlink(missing_ok=True)
        raise
    else:
        with _LOCK:
            for path in written:
                if _PENDING.get(path) is written:
                    del _PENDING[path]
    finally:
        _WRITTEN.reset(token)


_TEMP: list[Path] = []
_TEMP_LOCK = threading.Lock()


def folder(out: Path, save: bool) -> Path:
    """Where uploads are kept: `out/inputs` when the server saves its images; else a private folder
    removed when the server exits (--no-save writes nothing under --out)."""
    if save:
        return out / INPUTS_FOLDER
    with _TEMP_LOCK:
        if not _TEMP:
            _TEMP.append(Path(tempfile.mkdtemp(prefix="spo-serve-inputs-")))
            atexit.register(shutil.rmtree, _TEMP[0], True)
        return _TEMP[0]


def remove_temporary() -> None:
    """The --no-save folder of uploads, removed now: for an exit that skips atexit (os._exit after a
    second Ctrl-C), which would leave the clients' images behind in the system's temporary folder."""
    with _TEMP_LOCK:
        if _TEMP:
            shutil.rmtree(_TEMP[0], ignore_errors=True)


def openai_mask(image):
    """OpenAI's mask convention → spo's: fully transparent pixels (alpha 0) are repainted. The mask
    (or, without one, the image's own alpha) becomes a white = repaint, black = keep L image; None
    when it has no fully transparent pixel."""
    if not (image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)):
        return None
    alpha = image.convert("RGBA").getchannel("A")
    mask = alpha.point(lambda a: 255 if a == 0 else 0)
    return mask if mask.getextrema()[1] == 255 else None


def inverted_mask(image, size: tuple[int, int]):
    """A1111's inpainting_mask_invert: its binary mask (inputs.as_mask's rule, before any blur), inverted."""
    from PIL import ImageOps

    return ImageOps.invert(inputs.as_mask(image, size))

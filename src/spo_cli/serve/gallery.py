"""The page's gallery: the newest images spo wrote under `--out`, read from their sidecars.

`--out` may hold anything another program (or person) put there, and the gallery is read on every
page load, so nothing here may block, grow without bound or leave the folder: a sidecar is read only
if it is a regular file (opened without following a link, without waiting on a FIFO, checked on the
open descriptor) of at most SIDECAR_MAX_BYTES; the image it names must be a regular file inside `--out`.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from spo_cli.errors import UsageError
from spo_cli.outputs import naming

SERVED_SUFFIXES = {".png", ".jpg", ".webp", ".json"}
IMAGE_SUFFIXES = SERVED_SUFFIXES - {".json"}
# A sidecar spo writes holds at most two 10,000-character prompts (6 bytes each as JSON escapes), the
# A1111 text repeating them, and some hundred short fields: well under 300 KB. 1 MiB leaves room for
# any sidecar spo writes and stops a file that is not one (a 1 GB sparse file) being read on every load.
SIDECAR_MAX_BYTES = 1 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def read_sidecar(path: Path) -> dict | None:
    """The JSON object in `path`, or None when it is not a small regular file holding one."""
    try:
        fd = os.open(path, _OPEN_FLAGS)  # O_NONBLOCK: a FIFO opens at once; O_NOFOLLOW: a link fails
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        # The file opened, not the name (which may have changed since it was listed): a device may
        # ignore O_NONBLOCK, so only a regular file is read, and never past the cap (it may be growing).
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(SIDECAR_MAX_BYTES + 1)
    if len(data) > SIDECAR_MAX_BYTES:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def regular_inside(out: Path, name) -> Path | None:
    """`out/name` when it is a regular file inside `out` (links followed only within it)."""
    try:
        path = naming.inside(out, name)
        return path if stat.S_ISREG(path.stat().st_mode) else None
    except (OSError, TypeError, ValueError, UsageError):
        return None


def list_outputs(out: Path, limit: int) -> list[dict]:
    """The newest images under `out` that spo wrote (those with a sidecar), with their settings. A
    file that is not such a pair (a broken link, another program's JSON, a FIFO, a name pointing out
    of `out`) is passed over."""
    try:
        entries = list(os.scandir(out))
    except OSError:
        return []
    dated = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):  # not a link, a FIFO or a device: spo writes none of those
            dated.append((info.st_mtime, entry.name))
    items = []
    for _, name in sorted(dated, reverse=True):
        meta = read_sidecar(out / name)
        if meta is None:
            continue
        file = meta.get("file")
        image = regular_inside(out, file) if isinstance(file, str) else None
        if image is None or image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        scheduler, model = meta.get("scheduler"), meta.get("model")
        items.append({"url": f"/outputs/{file}", "file": file, "prompt": _text(meta.get("prompt")),
                      "negative_prompt": _text(meta.get("negative_prompt")), "seed": _number(meta.get("seed")),
                      "steps": _number(meta.get("steps")), "guidance": _number(meta.get("guidance")),
                      "width": _number(meta.get("width")), "height": _number(meta.get("height")),
                      "scheduler": _text(scheduler.get("name")) if isinstance(scheduler, dict) else None,
                      "model": _text(model.get("id")) if isinstance(model, dict) else None,
                      "strength": _number(meta.get("strength")),  # image to image: the card says so
                      "created": _text(meta.get("created"))})
        if len(items) >= limit:
            break
    return items


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _number(value) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

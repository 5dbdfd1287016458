"""Which images to score with which prompt, and the `<stem>.scores.json` files beside them.

Pure (no torch). A scores file never touches the image's sidecar, whose recipe and spec hash
stay as they were; it records, per metric, the value and the exact model commits it came from,
so a rerun skips what is already scored with the same models and an unchanged image.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from spo_cli import syntax
from spo_cli.errors import OutputError, UsageError
from spo_cli.outputs import files, metadata

SCHEMA = "spo-cli/scores-1"
SUFFIX = ".scores.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# The scorers see 224–448 px; past 64 Mpx (8000²) a full decode costs gigabytes and a minute for
# nothing (a 12000² PNG of 450 kB took 87 s and 4.9 GB). Such an image is refused from its header.
MAX_PIXELS = 64_000_000


class Unsaved(OutputError):
    """One image's scores file cannot be written (its name is taken by a folder): that image
    fails, the others are scored."""


@dataclass(frozen=True)
class Item:
    image: Path
    prompt: str  # the text the scorers read (A1111 weights and BREAK removed)
    source: str  # where the prompt came from: "sidecar", "parameters" (A1111 text), "--prompt"


def scorer_text(prompt: str, prompt_syntax: str | None) -> str:
    """What a preference model should read for a prompt: A1111 emphasis is a generator feature, so
    `(red fox:1.3)` is scored as `red fox`."""
    if prompt_syntax != "a1111":
        return prompt
    try:
        parts = syntax.parse(prompt)
    except syntax.PromptSyntaxError:
        return prompt
    return " ".join("".join(" " if (t, w) == syntax.BREAK else t for t, w in parts).split())


def scores_path(image: Path) -> Path:
    return image.with_name(image.stem + SUFFIX)


def _is_candidate(path: Path) -> bool:
    name = path.name
    return path.suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")  # spo's temporary files start with "."


@contextmanager
def quiet_bombs():
    """PIL warns on stderr, in its own words, about any image past 89 Mpx; spo checks sizes itself
    (`too_large`), so that warning must not reach the user raw."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def too_large(image: Path) -> str | None:
    """Why an image is too large to score, read from its header alone (PIL decodes lazily); None
    when it is not (an unreadable file is left to the decode, which says why)."""
    from PIL import Image

    with quiet_bombs():
        try:
            with Image.open(image) as im:
                w, h = im.size
        except Image.DecompressionBombError:
            w = h = None
        except Exception:
            return None
    if w is not None and w * h <= MAX_PIXELS:
        return None
    size = "past what PIL will decode" if w is None else f"{w}×{h} ({w * h / 1e6:.0f} Mpx)"
    return (f"too large to score: {size}, and spo scores images up to {MAX_PIXELS // 10**6} Mpx (the scorers "
            "see 224–448 px); downscale it first")


def prompt_of(image: Path) -> tuple[str, str] | None:
    """(prompt, source) recorded for an image: its spo sidecar or PNG metadata, or A1111 text."""
    try:
        with quiet_bombs():
            meta, params = metadata.load(image)  # one read: spo's metadata, else A1111's text
    except UsageError:
        params = None
        sidecar = image.with_suffix(".json")  # a PNG too large to open still has its sidecar
        try:
            meta = metadata.read(sidecar) if image.suffix.lower() != ".json" and sidecar.is_file() else None
        except UsageError:
            meta = None
    if meta is not None and isinstance(meta.get("prompt"), str):
        return scorer_text(meta["prompt"], meta.get("prompt_syntax", "plain")), "sidecar"
    if params:
        from spo_cli import infotext

        try:
            info = infotext.parse(params)
        except infotext.InfotextError:
            return None
        return scorer_text(info.prompt, "a1111"), "parameters"
    return None


def collect(paths: list[str], prompt: str | None) -> tuple[list[Item], list[str]]:
    """Images named, or found in folders (at any depth), each with the prompt to score it against.

    A file named on the command line must have a prompt (recorded, or --prompt); in a folder,
    images with none (grids, foreign pictures) are passed over and listed as such."""
    items, passed = [], []
    seen = set()
    for p in paths:
        path = Path(p).expanduser()
        if not path.exists():
            raise UsageError(f"{p} does not exist.", "Give images, or folders that hold images spo made.")
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and _is_candidate(f))
            explicit = False
        else:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"{p} is not an image (.png, .jpg, .webp).",
                                 "Give images, or folders that hold images spo made.")
            found, explicit = [path], True
        for f in found:
            key = f.resolve()
            if key in seen:
                continue
            seen.add(key)
            recorded = (prompt, "--prompt") if prompt is not None else prompt_of(f)
            if recorded is None:
                if explicit:
                    raise UsageError(f"{f} records no prompt (no spo sidecar or metadata, no A1111 parameters).",
                                     "Say what it shows with --prompt \"…\".")
                passed.append(str(f))
                continue
            items.append(Item(f, recorded[0], recorded[1]))
    return items, passed


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# A scores file holds a prompt (at most 10,000 characters) and a few numbers: one far larger is not ours.
_READ_MAX_BYTES = 1 << 20


def read(image: Path) -> dict:
    """The image's scores file, or {} when there is none usable (missing, damaged, hostile: its scores
    are computed again and the file rewritten). Not a regular file (a FIFO would wait forever), over
    the size limit, or nested too deep for the parser counts as damaged."""
    path = scores_path(image)
    try:
        if not path.is_file():
            return {}
        with open(path, "rb") as f:
            raw = f.read(_READ_MAX_BYTES + 1)
        if len(raw) > _READ_MAX_BYTES:
            return {}
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else {}


def current(record: dict, metric: str, models: dict, digest: str, prompt: str) -> float | None:
    """The recorded value of `metric` when it was computed from the same models, image and prompt."""
    if record.get("image_sha256") != digest or record.get("prompt") != prompt:
        return None
    entry = (record.get("scores") or {}).get(metric)
    value = entry.get("value") if isinstance(entry, dict) and entry.get("models") == models else None
    # A hand-edited file may hold true, NaN, Infinity or a 400-digit integer (float() overflows): not a score.
    if type(value) in (int, float) and abs(value) < 1e300:  # False for NaN and the infinities too
        return float(value)
    return None


def write(item: Item, digest: str, values: dict[str, tuple[float, dict]], previous: dict) -> dict:
    """Merge `values` ({metric: (value, models)}) into the image's scores file, atomically; return
    the record written (the next merge's `previous`)."""
    same = previous.get("image_sha256") == digest and previous.get("prompt") == item.prompt
    entries = dict(previous.get("scores") or {}) if same else {}
    for metric, (value, models) in values.items():
        entries[metric] = {"value": value, "models": models}
    record = {"schema": SCHEMA, "image": item.image.name, "image_sha256": digest, "prompt": item.prompt,
              "prompt_source": item.source, "scores": dict(sorted(entries.items()))}
    path = scores_path(item.image)
    try:
        files.atomic_write(path, (metadata.dumps(record) + "\n").encode(), overwrite=True)
    except OSError as e:
        if path.is_dir():
            raise Unsaved(f"scored, but not saved: {path.name} beside it is a folder, where spo keeps the image's "
                          "scores; move that folder away and score again") from None
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise OutputError(f"The scores of {item.image} cannot be saved: {path.parent} is not writable "
                              f"({os.strerror(e.errno)}).",
                              "spo keeps scores beside each image (<stem>.scores.json). Make the folder writable, "
                              "or copy the images to a writable folder and score them there.") from None
        raise
    return record


def update_manifest(folder: Path, values: dict[Path, dict[str, float]]) -> Path | None:
    """Add each scored image's values to its line of a batch folder's manifest.jsonl."""
    path = folder / files.MANIFEST
    if not path.is_file():
        return None
    rows, changed = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            return None  # not ours to rewrite
        image = folder / row["file"] if isinstance(row, dict) and isinstance(row.get("file"), str) else None
        key = image.resolve() if image else None
        if key in values:
            old = row.get("scores") if isinstance(row.get("scores"), dict) else {}
            merged = {**old, **values[key]}
            changed |= merged != row.get("scores")  # scores reused as they were: the manifest is left alone
            row["scores"] = merged
        rows.append(row)
    if changed:
        files.write_manifest(folder, rows)
    return path if changed else None

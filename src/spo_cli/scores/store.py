"""Which images to score with which prompt, and the `<stem>.scores.json` files beside them.

Pure (no torch). A scores file never touches the image's sidecar, whose recipe and spec hash
stay as they were; it records, per metric, the value and the exact model commits it came from,
so a rerun skips what is already scored with the same models and an unchanged image.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from spo_cli import syntax
from spo_cli.errors import UsageError
from spo_cli.outputs import files, metadata

SCHEMA = "spo-cli/scores-1"
SUFFIX = ".scores.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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


def prompt_of(image: Path) -> tuple[str, str] | None:
    """(prompt, source) recorded for an image: its spo sidecar or PNG metadata, or A1111 text."""
    try:
        meta = metadata.read(image)
    except UsageError:
        meta = None
    if meta is not None and isinstance(meta.get("prompt"), str):
        return scorer_text(meta["prompt"], meta.get("prompt_syntax", "plain")), "sidecar"
    params = metadata.foreign_parameters(image)
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


def read(image: Path) -> dict:
    path = scores_path(image)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else {}


def current(record: dict, metric: str, models: dict, digest: str, prompt: str) -> float | None:
    """The recorded value of `metric` when it was computed from the same models, image and prompt."""
    if record.get("image_sha256") != digest or record.get("prompt") != prompt:
        return None
    entry = (record.get("scores") or {}).get(metric)
    if isinstance(entry, dict) and entry.get("models") == models and isinstance(entry.get("value"), (int, float)):
        return float(entry["value"])
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
    files.atomic_write(scores_path(item.image), (metadata.dumps(record) + "\n").encode(), overwrite=True)
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
            row["scores"] = {**(row.get("scores") or {}), **values[key]}
            changed = True
        rows.append(row)
    if changed:
        files.write_manifest(folder, rows)
    return path if changed else None

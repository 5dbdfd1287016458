"""File names: slugs of prompts, stems, free names, and names that cannot leave the output folder."""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from pathlib import Path

from spo_cli.errors import UsageError

SLUG_MAX = 40
STEM_MAX_BYTES = 200  # leaves room for "-N", the extension and spo's temporary-file prefix under 255


def slugify(text: str, max_len: int = SLUG_MAX) -> str:
    """A lowercase ASCII file-name fragment: letters, digits and single dashes, cut at a word."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        slug = cut[: cut.rfind("-")] if "-" in cut else slug[:max_len]
        slug = slug[:max_len].strip("-")
    return slug or "image"


def now() -> datetime:
    return datetime.now().astimezone()


def default_stem(prompt: str, seed: int, when: datetime) -> str:
    """generate/replay: `YYYYmmdd-HHMMSS-<slug>-s<seed>`."""
    return f"{when:%Y%m%d-%H%M%S}-{slugify(prompt)}-s{seed}"


def batch_stem(line: int, prompt: str, seed: int) -> str:
    """batch: the same name on every run of the same file, so a rerun finds what is done."""
    return f"{line:05d}-{slugify(prompt)}-s{seed}"


def cell_stem(prompt: str, seed: int, spec_hash: str) -> str:
    """compare: one name per row, the same in every column's folder."""
    return f"{slugify(prompt)}-s{seed}-{spec_hash[:8]}"


def grid_stem(prompt: str | None, prompts_file: str | None) -> str:
    if prompt:
        return slugify(prompt)
    return slugify(Path(prompts_file).stem if prompts_file and prompts_file != "-" else "stdin")


def check_stem(stem: str) -> str:
    """A stem must name a file inside the output folder, never a path out of it."""
    if (
        not stem
        or stem in (".", "..")
        or stem.startswith(".")
        or any(c in stem for c in "/\\\0:")
        or stem != stem.strip()
        or len(stem.encode("utf-8", "surrogatepass")) > STEM_MAX_BYTES
    ):
        raise UsageError(f"'{stem}' is not a usable file name.", "Use letters, digits, '-', '_' and '.'.")
    return stem


def inside(out_dir: Path, name: str) -> Path:
    """`out_dir/name`, refusing anything that would resolve outside `out_dir`."""
    check_stem(name)
    root = out_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise UsageError(f"'{name}' would be written outside {out_dir}.")
    return path


def free_stem(out_dir: Path, stem: str, ext: str) -> str:
    """The first of stem, stem-1, stem-2 … whose image and sidecar are both free."""
    n = 0
    while True:
        candidate = stem if n == 0 else f"{stem}-{n}"
        if not (out_dir / f"{candidate}.{ext}").exists() and not (out_dir / f"{candidate}.json").exists():
            return candidate
        n += 1

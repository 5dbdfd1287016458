from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from spo_cli.cli import app
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape, printable

EXAMPLES = """[bold]Examples[/]

  spo inspect outputs/20261126-101500-a-red-fox-s42.png

  spo inspect shots/*.jpg --json | jq '.[] | {file, source: .xmp.digital_source_type}'

  spo inspect photo.webp        # any image: says what it carries, or that it carries nothing

[bold]Sections[/]: recipe (the settings spo recorded: the PNG chunk, the sidecar beside the image, or A1111's
parameters text); xmp (IPTC's DigitalSourceType, which says a model made the image, and the tool that
wrote it); c2pa (a Content Credentials manifest and whether it validates: who signed, and that the bytes are
unchanged since; needs spo-cli\\[c2pa]); watermark (SDXL's invisible watermark in the pixels; needs
spo-cli\\[watermark]). Metadata can be removed or forged by anyone who edits the file: a section that is absent
proves nothing about where an image came from.
"""
JSON_HELP = "Print a JSON array, one object per file (file, format, and one object per section), nothing else."

# The probes, in the order they are shown: (section, "module:function"). Each is
# `probe(path: Path) -> dict` returning {"present": bool, "summary": one line for people, ...data}
# (spo_cli.outputs.probes says the contract). Named, not imported: `spo --help` must not load
# what a probe needs (PIL, an SDK).
PROBES: tuple[tuple[str, str], ...] = (
    ("recipe", "spo_cli.outputs.probes:recipe"),
    ("xmp", "spo_cli.outputs.probes:xmp"),
    ("c2pa", "spo_cli.outputs.credentials:probe"),
    ("watermark", "spo_cli.watermark:probe"),
)


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def inspect(
    ui: UI,
    files: Annotated[list[str], typer.Argument(help="Image files (PNG, JPEG or WebP).", show_default=False,
                                               metavar="FILE...")],
) -> None:
    """Show what image files say about how they were made: the recorded recipe and the provenance marks."""
    from spo_cli.outputs import probes

    # Every file is checked before any is reported: a bad one fails the command with nothing printed.
    paths = [Path(f) for f in files]
    kinds = [probes.image(path)[0] for path in paths]
    probe_fns = [(name, _load(target)) for name, target in PROBES]
    reports = [{"file": str(path), "format": kind, **{name: fn(path) for name, fn in probe_fns}}
               for path, kind in zip(paths, kinds)]
    if ui.json_mode:
        ui.emit_json(reports)
        return
    width = max(len(name) for name, _ in PROBES)
    for report in reports:
        ui.paths([(report["file"], probes.FORMATS[report["format"]])])
        for name, _ in PROBES:
            section = report[name]
            said = section.get("summary") or ("present" if section.get("present") else "absent")
            ui.out.print(f"  [bold]{name:<{width}}[/]  {escape(_one_line(said))}", soft_wrap=True)


def _load(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _one_line(text: str, limit: int = 300) -> str:
    text = printable(" ".join(str(text).split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"

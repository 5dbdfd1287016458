from __future__ import annotations

import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Annotated, Optional

import typer

from spo_cli import jobs, outputs, presets, prompts
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI
from spo_cli.errors import EXIT_FAILURE, UsageError

EXAMPLES = """[bold]Examples[/]

  spo compare "a child and a penguin sitting on the moon" --base --spo

  spo compare --prompts examples/prompts.txt --base --spo --seeds 1,2 --out cmp/

  spo compare "a lighthouse in a storm, oil painting" --lora-scales 0,0.25,0.5,0.75,1.0

  spo compare "…" --base --spo --model ./my-sdxl-finetune --label "mine"
"""


@dataclass(frozen=True)
class Column:
    label: str
    request: jobs.ModelRequest
    folder: str  # under OUT/cells/


@dataclass(frozen=True)
class Row:
    request: jobs.ImageRequest
    stem: str


def parse_scales(text: str | None) -> list[float]:
    if not text:
        return []
    scales = []
    for part in text.split(","):
        try:
            scales.append(float(part))
        except ValueError:
            raise UsageError(f"--lora-scales: '{part.strip()}' is not a number.",
                             "Give numbers separated by commas, e.g. --lora-scales 0,0.5,1.") from None
    return scales


def parse_seeds(text: str | None, seed: int, num_images: int) -> list[int]:
    if text:
        try:
            seeds = [int(s) for s in text.split(",")]
        except ValueError:
            raise UsageError(f"--seeds '{text}' is not a list of whole numbers.", "E.g. --seeds 1,2,3.") from None
    else:
        if num_images < 1:
            raise UsageError(f"--num-images must be at least 1, not {num_images}.")
        seeds = [seed + i for i in range(num_images)]
    return [jobs.check_seed(s) for s in seeds]


def build_columns(base: bool | None, spo: bool | None, spo_lora: bool | None, models: list[str], labels: list[str],
                  scales: list[float], lora_scale: float, common: dict) -> list[Column]:
    if base is None and spo is None and spo_lora is None and not models and not scales:
        base = spo = True  # the comparison people come for
    if len(labels) > len(models):
        raise UsageError("There are more --label than --model options.", "Each --label names the --model before it.")
    cols: list[tuple[str, jobs.ModelRequest]] = []
    if base:
        cols.append(("SDXL base", jobs.ModelRequest(model="base", **common)))
    if spo:
        cols.append(("SPO-SDXL", jobs.ModelRequest(model="spo", **common)))
    if spo_lora:
        cols.append((f"SPO LoRA x{lora_scale:g}", jobs.ModelRequest(model="spo-lora", lora_scale=lora_scale,
                                                                   **common)))
    for s in scales:
        cols.append((f"SPO LoRA x{s:g}", jobs.ModelRequest(model="spo-lora", lora_scale=s, **common)))
    for i, m in enumerate(models):
        label = labels[i] if i < len(labels) else m.rstrip("/").split("/")[-1]
        cols.append((label, jobs.ModelRequest(model=m, **common)))
    if not cols:
        raise UsageError("No model chosen to compare.", "Use --base, --spo, --spo-lora, --lora-scales or --model.")
    columns, seen = [], {}
    for label, req in cols:
        folder = outputs.slugify(label)
        if folder in seen:
            raise UsageError(f"Two columns would be labelled alike: '{seen[folder]}' and '{label}'.",
                             "Give each --model its own --label, and list each LoRA scale once.")
        seen[folder] = label
        columns.append(Column(label, req, folder))
    return columns


def build_rows(prompt: str | None, prompts_file: str | None, input_format: str | None, defaults: jobs.ImageRequest,
               seeds: list[int], ui: UI) -> list[Row]:
    lines: list[prompts.PromptLine] = []
    if prompt is not None:
        lines.append(prompts.PromptLine(0, prompt))
    if prompts_file:
        parsed = prompts.read(prompts_file, input_format)
        if parsed.problems:
            for p in parsed.problems:
                ui.error(p)
            raise UsageError(f"{len(parsed.problems)} bad line(s) in {parsed.source}; nothing was run.")
        lines += parsed.lines
    if not lines:
        raise UsageError("Nothing to compare: give a PROMPT, or --prompts FILE.")
    rows, stems = [], set()
    for pl in lines:
        base = replace(defaults, prompt=pl.prompt, **pl.settings)
        line_seeds = ([pl.settings["seed"] + i for i in range(pl.num_images or len(seeds))]
                      if "seed" in pl.settings else seeds)
        for s in line_seeds:
            r = replace(base, seed=jobs.check_seed(s))
            stem = f"{outputs.slugify(r.prompt)}-s{s}-{r.spec_hash()[:8]}"  # same for every column
            if stem not in stems:
                stems.add(stem)
                rows.append(Row(r, stem))
    return rows


@app.command(epilog=EXAMPLES)
def compare(
    prompt: Annotated[Optional[str], typer.Argument(help="A prompt (or use --prompts).", show_default=False)] = None,
    prompts_file: Annotated[Optional[str], typer.Option(
        "--prompts", help="A prompt file in the formats `spo batch` reads (.txt, .jsonl, - for stdin).")] = None,
    input_format: Annotated[Optional[str], typer.Option("--format", help="txt or jsonl, for --prompts.")] = None,
    base: Annotated[Optional[bool], typer.Option("--base/--no-base", help="A column for SDXL base.",
                                                 rich_help_panel="Columns")] = None,
    spo: Annotated[Optional[bool], typer.Option("--spo/--no-spo", help="A column for SPO-SDXL (merged).",
                                                rich_help_panel="Columns")] = None,
    spo_lora: Annotated[Optional[bool], typer.Option("--spo-lora/--no-spo-lora", help="A column for SDXL base + "
                                                     "the SPO LoRA at --lora-scale.",
                                                     rich_help_panel="Columns")] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="A column for any preset, Hub repo or local folder (repeatable).",
        rich_help_panel="Columns")] = None,
    label: Annotated[Optional[list[str]], typer.Option(
        help="Label of the --model column before it (repeatable).", rich_help_panel="Columns")] = None,
    lora_scales: Annotated[Optional[str], typer.Option(
        help="One column per SPO LoRA strength on SDXL base, e.g. 0,0.5,1 (0 = SDXL, 1 = SPO).",
        rich_help_panel="Columns")] = None,
    lora_scale: o.LoraScale = 1.0,
    seeds: Annotated[Optional[str], typer.Option(help="Seeds, one row each per prompt, e.g. 1,2,3.",
                                                 rich_help_panel="Sampling")] = None,
    seed: Annotated[int, typer.Option(help="First seed when --seeds is not given.", rich_help_panel="Sampling")] = 0,
    num_images: o.NumImages = 1,
    negative: o.Negative = None,
    steps: o.Steps = presets.DEFAULT_STEPS,
    guidance: o.Guidance = presets.DEFAULT_GUIDANCE,
    width: o.Width = None,
    height: o.Height = None,
    scheduler: o.Scheduler = "default",
    generator_device: o.GeneratorDevice = "cpu",
    batch_size: o.BatchSize = 1,
    revision: o.Revision = None,
    vae: o.Vae = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    cell_size: Annotated[int, typer.Option(help="Longest side of a cell in the grid, in pixels (cells are "
                                           "only shrunk; full-size images stay in OUT/cells).",
                                           rich_help_panel="Output")] = 512,
    rows_per_page: Annotated[int, typer.Option(help="Rows per grid page; larger comparisons get several pages.",
                                               rich_help_panel="Output")] = 8,
    keep_loaded: Annotated[bool, typer.Option(help="Keep every model's UNet in memory instead of one at a "
                                              "time.", rich_help_panel="Model")] = False,
    out: o.Out = Path("outputs"),
    json_: o.Json = False,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Render the same prompts and seeds through several models or SPO strengths, side by side."""
    ui = UI(quiet=quiet, json_mode=json_, debug=debug)
    code = 0
    with session.handled(ui):
        t0 = perf_counter()
        if cell_size < 16 or rows_per_page < 1:
            raise UsageError("--cell-size must be at least 16 and --rows-per-page at least 1.")
        if revision and not model:
            raise UsageError("--revision applies to --model columns; presets use their published main branch.")
        common = dict(vae=vae, dtype=dtype, device=device)
        columns = build_columns(base, spo, spo_lora, model or [], label or [], parse_scales(lora_scales), lora_scale,
                                common)
        if revision:
            columns = [replace(c, request=replace(c.request, revision=revision)) if c.request.model in (model or [])
                       else c for c in columns]
        defaults = jobs.ImageRequest(prompt="", seed=0, negative_prompt=negative or None, steps=steps,
                                     guidance=guidance, width=width, height=height, scheduler=scheduler,
                                     generator_device=generator_device)
        rows = build_rows(prompt, prompts_file, input_format, defaults, parse_seeds(seeds, seed, num_images), ui)
        session.validate_images(ui, [r.request for r in rows])
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")

        # 1. Resolve every column first: a missing model fails now, not after an hour of rendering.
        engine_mod, dev, dt = session.boot(ui, columns[0].request)
        resolved = [session.resolve_model(ui, c.request, dt) for c in columns]

        # 2. What is already on disk with the same settings is reused.
        cells_dir = out / "cells"
        hashes = [[r.request.spec_hash(res.identity()) for r in rows] for res in resolved]
        todo = [[i for i, r in enumerate(rows) if outputs.recorded_hash(cells_dir / c.folder, r.stem, "png")
                 != hashes[ci][i]] for ci, c in enumerate(columns)]
        reused = sum(len(rows) - len(t) for t in todo)
        if reused:
            ui.info(f"{reused} cell(s) already rendered with the same settings; reusing them.")

        # 3. Render column by column, columns sharing a UNet back to back, each model set up once.
        log: list[str] = []
        bank = engine_mod.Bank(dev, dt, keep_loaded=keep_loaded, log=lambda m: (log.append(m), ui.info(f"  {m}")))
        parts = [bank.parts(res) for res in resolved]
        order = sorted(range(len(columns)), key=lambda ci: next(
            j for j in range(len(columns)) if parts[j]["unet"][2] == parts[ci]["unet"][2]))
        failed: dict[tuple[int, int], str] = {}
        total = sum(len(t) for t in todo)
        if total:
            with ui.images_progress(total, rows[0].request.steps) as bars:
                for pos, ci in enumerate(order):
                    if not todo[ci]:
                        continue
                    later = {(p, fp) for cj in order[pos + 1:] if todo[cj] for p, (_, _, fp) in parts[cj].items()}
                    ui.info(f"Setting up [bold]{columns[ci].label}[/]")
                    log.append(f"column {columns[ci].label}")
                    eng = bank.engine(resolved[ci], needed_later=later)
                    works = [session.Work(rows[i].request, rows[i].stem, spec_hash=hashes[ci][i], overwrite=True,
                                          extra={"compare": {"column": columns[ci].label}}) for i in todo[ci]]
                    outcomes = session.render(ui, eng, resolved[ci], works, batch_size=batch_size,
                                              out=cells_dir / columns[ci].folder, fmt="png", keep_going=True,
                                              bars=bars)
                    for i, oc in zip(todo[ci], outcomes):
                        if oc.error:
                            failed[(ci, i)] = oc.error
            bank.release(set())

        # 4. The grid pages and their index.
        stem = grid_stem(prompt, prompts_file)
        pages = write_grids(out, stem, columns, rows, cells_dir, cell_size, rows_per_page,
                            failed=set(failed))
        index = {
            "schema": outputs.SCHEMA,
            "columns": [{"label": c.label, "folder": f"cells/{c.folder}", **res.describe()}
                        for c, res in zip(columns, resolved)],
            "rows": [{"prompt": r.request.prompt, "seed": r.request.seed, "stem": r.stem} for r in rows],
            "cells": [[cell_entry(out, cells_dir / c.folder, r.stem, failed.get((ci, ri)))
                       for ci, c in enumerate(columns)] for ri, r in enumerate(rows)],
            "pages": [str(p.relative_to(out)) for p in pages],
            "rendered": total - len(failed), "reused": reused, "failed": len(failed),
            "setup": log, "bytes_loaded": bank.bytes_loaded, "elapsed_s": round(perf_counter() - t0, 2),
        }
        index_path = out / (stem + "-grid.json")
        outputs.atomic_write(index_path, (json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode(),
                             overwrite=True)
        for (ci, ri), err in failed.items():
            ui.error(f"{columns[ci].label}, '{rows[ri].request.prompt}' seed {rows[ri].request.seed}: {err}")
        if json_:
            ui.emit_json({"grid": [str(p) for p in pages], "index": str(index_path),
                          **{k: index[k] for k in ("rendered", "reused", "failed", "bytes_loaded", "elapsed_s")}})
        elif not quiet:
            ui.table(f"Comparison: {len(rows)} row(s) × {len(columns)} column(s)", ["file", "what"],
                     [[str(p), f"grid page {i + 1} of {len(pages)}"] for i, p in enumerate(pages)]
                     + [[str(index_path), "cells, sidecars, set-up log"],
                        [str(cells_dir), f"{total - len(failed)} rendered, {reused} reused, {len(failed)} failed"]])
        if failed:
            code = EXIT_FAILURE
    if code:
        raise typer.Exit(code)


def grid_stem(prompt: str | None, prompts_file: str | None) -> str:
    if prompt:
        return outputs.slugify(prompt)
    return outputs.slugify(Path(prompts_file).stem if prompts_file and prompts_file != "-" else "stdin")


def cell_entry(out: Path, folder: Path, stem: str, error: str | None) -> dict:
    image = folder / f"{stem}.png"
    ok = error is None and image.exists()
    return {"image": str(image.relative_to(out)) if ok else None,
            "sidecar": str((folder / f"{stem}.json").relative_to(out)) if ok else None,
            "status": "ok" if ok else "failed", "error": error}


def write_grids(out: Path, stem: str, columns: list[Column], rows: list[Row], cells_dir: Path, cell_size: int,
                rows_per_page: int, failed: set[tuple[int, int]] = frozenset()) -> list[Path]:
    """Grid pages from the cells on disk; a cell that failed in this run shows as failed, never as
    the image an earlier run left under its name."""
    from PIL import Image

    from spo_cli import grid

    paths = []
    pages = [rows[i:i + rows_per_page] for i in range(0, len(rows), rows_per_page)]
    for n, page in enumerate(pages):
        cells, size = [], None
        for k, r in enumerate(page):
            line = []
            for ci, c in enumerate(columns):
                path = cells_dir / c.folder / f"{r.stem}.png"
                if (ci, n * rows_per_page + k) not in failed and path.exists():
                    with Image.open(path) as im:
                        im.load()
                        line.append(im)
                        size = size or grid.fit(im.size, cell_size)
                else:
                    line.append(None)
            cells.append(line)
        size = size or grid.fit((r.request.width or 1024, r.request.height or 1024), cell_size)
        labels = [(r.request.prompt, f"seed {r.request.seed}") for r in page]
        image = grid.render(cells, [c.label for c in columns], labels, size)
        name = f"{stem}-grid.png" if len(pages) == 1 else f"{stem}-grid-{n + 1}.png"
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        outputs.atomic_write(out / name, buf.getvalue(), overwrite=True)
        paths.append(out / name)
    for old in [*out.glob(f"{stem}-grid-*.png"), out / f"{stem}-grid.png"]:
        if old not in paths and old.exists():  # pages of an earlier, longer comparison
            old.unlink()
    return paths

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from time import perf_counter
from typing import Annotated, Optional

import typer

from spo_cli import presets, prompts, validate
from spo_cli.cli import app, loading, options as o, scoring
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape, short
from spo_cli.errors import EXIT_FAILURE, UsageError
from spo_cli.outputs import files, metadata, naming
from spo_cli.request import ImageRequest, ImageTask, ModelRequest

EXAMPLES = """[bold]Examples[/]

  spo compare "a child and a penguin sitting on the moon" --base --spo

  spo compare --prompts examples/prompts.txt --base --spo --seeds 1,2 --out cmp/

  spo compare "a lighthouse in a storm, oil painting" --lora-scales 0,0.25,0.5,0.75,1.0

  spo compare "…" --base --spo --model ./my-sdxl-finetune --label "mine"

  spo compare --prompts prompts.txt --base --spo --seeds 1,2 --score   # scores under each cell, win rates
"""


JSON_HELP = ("Print a JSON object on stdout (grid pages, index file, counts of rendered, reused and failed cells, "
             "bytes of weights loaded), nothing else.")


@dataclass(frozen=True)
class Column:
    label: str
    request: ModelRequest
    folder: str  # under OUT/cells/


def parse_scales(text: str | None) -> list[float]:
    if not text:
        return []
    scales = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--lora-scales: '{part.strip()}' is not a number.",
                             "Give numbers separated by commas, e.g. --lora-scales 0,0.5,1.") from None
        scales.append(validate.lora_scale(value)[0])
    return scales


def parse_seeds(text: str | None, seed: int, num_images: int) -> list[int]:
    if text:
        return validate.seeds(text)  # eval's grammar too: 0-3, 1,2,5
    validate.num_images(num_images)
    validate.seed_range(seed, num_images)
    return [seed + i for i in range(num_images)]


def build_columns(base: bool | None, spo: bool | None, spo_lora: bool | None, models: list[str], labels: list[str],
                  scales: list[float], lora_scale: float | None, revision: str | None, common: dict) -> list[Column]:
    if base is None and spo is None and spo_lora is None and not models and not scales:
        base = spo = True  # the comparison people come for
    if len(labels) > len(models):
        raise UsageError("There are more --label than --model options.", "Each --label names the --model before it.")
    if lora_scale is not None and not spo_lora:
        raise UsageError(f"--lora-scale {lora_scale:g} sets the strength of the --spo-lora column, and there is none.",
                         "Add --spo-lora, or use --lora-scales for one column per strength.")
    if revision and not models:
        raise UsageError("--revision applies to --model columns; presets use their published main branch.")
    cols: list[tuple[str, dict]] = []
    if base:
        cols.append(("SDXL base", dict(model="base")))
    if spo:
        cols.append(("SPO-SDXL", dict(model="spo")))
    if spo_lora:
        scale = 1.0 if lora_scale is None else lora_scale
        cols.append((f"SPO LoRA x{scale:g}", dict(model="spo-lora", lora_scale=lora_scale)))
    for s in scales:
        cols.append((f"SPO LoRA x{s:g}", dict(model="spo-lora", lora_scale=s)))
    for i, m in enumerate(models):
        label = labels[i] if i < len(labels) else m.rstrip("/").split("/")[-1]
        cols.append((label, dict(model=m, revision=revision)))
    if not cols:
        raise UsageError("No model chosen to compare.", "Use --base, --spo, --spo-lora, --lora-scales or --model.")
    columns, seen = [], {}
    for label, fields in cols:
        validate.text(label, "label", limit=200)
        folder = naming.slugify(label)
        if folder in seen:
            raise UsageError(f"Two columns would be labelled alike: '{seen[folder]}' and '{label}'.",
                             "Give each --model its own --label, and list each LoRA scale once.")
        seen[folder] = label
        request, _ = o.model_request(**{**common, **fields})
        columns.append(Column(label, request, folder))
    return columns


def build_rows(prompt: str | None, prompts_file: str | None, fmt: str | None, defaults: ImageRequest,
               seeds: list[int], ui: UI, size_limit: bool, lines: list[prompts.PromptLine] | None = None,
               source: str | None = None) -> tuple[list[ImageTask], list[str]]:
    """One task per prompt × seed: the same name in every column's folder. `lines` are prompts read
    elsewhere (a dataset named `source`)."""
    lines = list(lines or [])
    if prompt is not None:
        prompt = validate.text(prompt, "prompt", validate.PROMPT_ARGUMENT)
        validate.readable_prompts(prompt, None, defaults.prompt_syntax, validate.PROMPT_ARGUMENT)
        lines.append(prompts.PromptLine(0, prompt))
    if prompts_file:
        parsed = prompts.read(prompts_file, fmt, prompt_syntax=defaults.prompt_syntax)
        if parsed.problems:
            for p in parsed.problems:
                ui.error(p)
            raise UsageError(f"{len(parsed.problems)} bad line(s) in {parsed.source}; nothing was run.")
        lines += parsed.lines
    if not lines:
        raise UsageError("Nothing to compare: give a PROMPT, or --prompts FILE.")
    rows, stems, warnings = [], set(), []
    for pl in lines:
        where = validate.Where(f"{source or prompts_file}:{pl.line}") if pl.line else validate.PROMPT_ARGUMENT
        base, more = prompts.line_request(pl, defaults, where, size_limit=size_limit)
        warnings += more
        if "seed" in pl.settings:
            validate.seed_range(pl.settings["seed"], pl.num_images or len(seeds), where)
            line_seeds = [pl.settings["seed"] + i for i in range(pl.num_images or len(seeds))]
        else:
            line_seeds = seeds
        for s in line_seeds:
            r = replace(base, seed=s)
            stem = naming.cell_stem(r.prompt, s, r.spec_hash())
            if stem not in stems:
                stems.add(stem)
                rows.append(ImageTask(r, stem))
    return rows, sorted(set(warnings))


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def compare(
    ui: UI,
    prompt: Annotated[Optional[str], typer.Argument(help="A prompt (or use --prompts).", show_default=False)] = None,
    prompts_file: Annotated[Optional[str], typer.Option(
        "--prompts", help="A prompt file in the formats `spo batch` reads (.txt, .jsonl, - for stdin).")] = None,
    prompt_format: o.PromptFormat = None,
    old_format: o.OldPromptFormat = None,
    base: Annotated[Optional[bool], typer.Option("--base/--no-base", help="A column for SDXL base.",
                                                 rich_help_panel="Columns", show_default=False)] = None,
    spo: Annotated[Optional[bool], typer.Option("--spo/--no-spo", help="A column for SPO-SDXL (merged).",
                                                rich_help_panel="Columns", show_default=False)] = None,
    spo_lora: Annotated[Optional[bool], typer.Option("--spo-lora/--no-spo-lora", help="A column for SDXL base + "
                                                     "the SPO LoRA at --lora-scale.",
                                                     rich_help_panel="Columns", show_default=False)] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="A column for any preset, Hub repo or local folder (repeatable).",
        rich_help_panel="Columns")] = None,
    label: Annotated[Optional[list[str]], typer.Option(
        help="Label of the --model column before it (repeatable).", rich_help_panel="Columns")] = None,
    lora_scales: Annotated[Optional[str], typer.Option(
        help="One column per SPO LoRA strength on SDXL base, e.g. 0,0.5,1 (0 = SDXL, 1 = SPO).",
        rich_help_panel="Columns")] = None,
    lora_scale: Annotated[Optional[float], typer.Option(
        help="Strength of the --spo-lora column (default 1).", rich_help_panel="Columns", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Seeds, one row each per prompt: a range 0-3 or a list 1,2,5.",
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
    prompt_syntax: o.PromptSyntax = "auto",
    emphasis: o.Emphasis = "original",
    no_size_limit: o.NoSizeLimit = False,
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
    keep_loaded: Annotated[bool, typer.Option("--keep-loaded", help="Keep every model's UNet in memory instead of one at a "
                                              "time.", rich_help_panel="Model")] = False,
    out: o.Out = "outputs",
    score: Annotated[bool, typer.Option("--score", help="Score every cell with preference models (see `spo score`): "
                                        "scores under the cells, and paired win rates between the columns.",
                                        rich_help_panel="Scoring")] = False,
    metric: scoring.Metric = None,
    hps_version: scoring.HpsVersion = "v2.1",
    score_batch_size: scoring.ScoreBatch = 16,
) -> None:
    """Render the same prompts and seeds through several models or SPO strengths, side by side."""
    t0 = perf_counter()
    metrics = scoring.metrics(metric, hps_version, score_batch_size) if score else []
    if not score and (metric is not None or hps_version != "v2.1"):
        raise UsageError("--metric and --hps-version choose how --score scores, and --score is not given.",
                         "Add --score.")
    validate.integer(cell_size, "cell_size", low=validate.CELL_SIZE_MIN, high=validate.SIDE_MAX)
    validate.integer(rows_per_page, "rows_per_page", low=1, high=validate.ROWS_PER_PAGE_MAX)
    fmt = o.prompt_format(prompt_format, old_format, ui.warn)
    common = dict(vae=vae, dtype=dtype, device=device)
    columns = build_columns(base, spo, spo_lora, model or [], label or [], parse_scales(lora_scales), lora_scale,
                            revision, common)
    defaults, warnings = o.image_request(
        seed=0, negative=negative, steps=steps, guidance=guidance, width=width, height=height, scheduler=scheduler,
        generator_device=generator_device, prompt_syntax=prompt_syntax, emphasis=emphasis,
        size_limit=not no_size_limit, check_prompt=False)
    rows, more = build_rows(prompt, prompts_file, fmt, defaults, parse_seeds(seeds, seed, num_images), ui,
                            not no_size_limit)
    options = o.run_options(fast=False, offload=None, vae_tiling=False, vae_slicing=False, batch_size=batch_size)
    for c in columns:
        loading.precheck(c.request, options, [r.request for r in rows])
    out = validate.output_folder(out)
    for w in warnings + more:
        ui.warn(w)
    with files.FolderLock(out, "spo compare"):
        code = _compare(ui, columns, rows, options, out, keep_loaded, naming.grid_stem(prompt, prompts_file),
                        cell_size, rows_per_page, t0, Scoring(metrics, hps_version, score_batch_size, device))
    if code:
        raise typer.Exit(code)


@dataclass(frozen=True)
class Scoring:
    metrics: list[str]  # empty: no scoring
    hps_version: str = "v2.1"
    batch_size: int = 16
    device: str = "auto"


@dataclass
class Rendered:
    """What `render_columns` leaves: the columns resolved, and which cells failed."""

    resolved: list
    failed: dict[tuple[int, int], str]
    rendered: int
    reused: int
    log: list[str]
    bytes_loaded: int


def _compare(ui: UI, columns: list[Column], rows: list[ImageTask], options, out: Path, keep_loaded: bool, stem: str,
             cell_size: int, rows_per_page: int, t0: float, scoring_: Scoring = Scoring([])) -> int:
    # The scorers' files first too: a missing one fails now, not after the rendering.
    scorers = scoring.resolve(ui, scoring_.metrics, scoring_.hps_version) if scoring_.metrics else None
    run = render_columns(ui, columns, rows, options, out, keep_loaded)
    cells_dir = out / "cells"
    failed = run.failed
    scored = score_cells(ui, columns, rows, cells_dir, failed, scoring_, scorers) if scoring_.metrics else None

    # 4. The grid pages and their index.
    index_name = stem + "-grid.json"
    captions = None
    if scored:
        from spo_cli.scores.summary import caption

        captions = [[caption(v, scored["metrics"]) for v in row] for row in scored["cells"]]
    pages = write_grids(out, stem, columns, rows, cells_dir, cell_size, rows_per_page, failed=set(failed),
                        index_name=index_name, captions=captions)
    index = {
        "schema": metadata.GRID_SCHEMA,
        "columns": [{"label": c.label, "folder": f"cells/{c.folder}", **res.describe()}
                    for c, res in zip(columns, run.resolved)],
        "rows": [{"prompt": r.request.prompt, "seed": r.request.seed, "stem": r.stem} for r in rows],
        "cells": [[cell_entry(out, cells_dir / c.folder, r.stem, failed.get((ci, ri)),
                              scored["cells"][ri][ci] if scored else None)
                   for ci, c in enumerate(columns)] for ri, r in enumerate(rows)],
        "pages": [str(p.relative_to(out)) for p in pages],
        "rendered": run.rendered, "reused": run.reused, "failed": len(failed),
        "setup": run.log, "bytes_loaded": run.bytes_loaded, "elapsed_s": round(perf_counter() - t0, 2),
    }
    if scored:
        index["scores"] = scored["summary"]
    index_path = out / index_name
    files.atomic_write(index_path, (metadata.dumps(index) + "\n").encode(), overwrite=True)
    for (ci, ri), err in failed.items():
        ui.error(f"{columns[ci].label}, '{short(rows[ri].request.prompt)}' seed {rows[ri].request.seed}: {err}")
    if ui.json_mode:
        ui.emit_json({"grid": [str(p) for p in pages], "index": str(index_path),
                      **{k: index[k] for k in ("rendered", "reused", "failed", "bytes_loaded", "elapsed_s")},
                      **({"scores": index["scores"]} if scored else {})})
    else:
        if not ui.quiet:
            ui.info(f"Comparison of {len(rows)} row(s) × {len(columns)} column(s): {run.rendered} cell(s) "
                    f"rendered, {run.reused} reused, {len(failed)} failed.")
        if scored:
            print_summary(ui, scored["summary"])
        ui.paths([(str(p), f"grid page {i + 1} of {len(pages)}") for i, p in enumerate(pages)]
                 + [(str(index_path), "cells, sidecars, set-up log" + (", scores" if scored else "")),
                    (str(cells_dir), "full-size cells")])
    return EXIT_FAILURE if failed or (scored and scored["errors"]) else 0


def print_summary(ui: UI, summary: dict) -> None:
    from spo_cli.scores.summary import means_rows, pair_rows

    ui.table("Mean score [95 % CI]", ["column", *summary["metrics"]], means_rows(summary))
    if summary["pairs"]:
        ui.table("Paired comparison (same prompt and seed)", ["pair", "metric", "win rate [95 % CI]",
                                                              "mean difference", "pairs"], pair_rows(summary))


def score_cells(ui: UI, columns: list[Column], rows: list[ImageTask], cells_dir: Path,
                failed: dict[tuple[int, int], str], how: Scoring, resolved: dict | None = None) -> dict:
    """Score every cell that exists: {cells: [[{metric: value} | None]], summary, errors}."""
    from spo_cli.scores import store
    from spo_cli.scores.summary import summarise

    where, items = {}, []
    for ri, r in enumerate(rows):
        for ci, c in enumerate(columns):
            image = cells_dir / c.folder / f"{r.stem}.png"
            recorded = store.prompt_of(image) if (ci, ri) not in failed and image.exists() else None
            if recorded:
                where[(ri, ci)] = len(items)
                items.append(store.Item(image, *recorded))
    ui.info(f"Scoring {len(items)} cell(s) with {', '.join(how.metrics)}")
    results = scoring.score_items(ui, items, how.metrics, how.hps_version, device=how.device,
                                  batch_size=how.batch_size, resolved=resolved)
    cells = [[results[where[(ri, ci)]].values or None if (ri, ci) in where else None
              for ci in range(len(columns))] for ri in range(len(rows))]
    errors = [f"{r.item.image}: {m}: {e}" for r in results for m, e in r.errors.items()]
    for e in errors:
        ui.error(e)
    return {"metrics": how.metrics, "cells": cells, "errors": errors,
            "summary": summarise([c.label for c in columns], cells, how.metrics)}


def render_columns(ui: UI, columns: list[Column], rows: list[ImageTask], options, out: Path,
                   keep_loaded: bool) -> Rendered:
    """Steps 1–3 of a comparison: resolve every column, reuse finished cells, render the rest
    column by column (columns sharing a UNet back to back), then free the models."""
    from spo_cli.render import render

    for c in columns:
        if (out / "cells" / c.folder).is_dir():
            files.remove_leftovers(out / "cells" / c.folder)

    # 1. Resolve every column first: a missing model fails now, not after an hour of rendering.
    rt = loading.start_torch(ui, columns[0].request, options, [r.request for r in rows])
    resolved = [loading.resolve(ui, c.request, rt.dtype) for c in columns]

    # 2. What is already on disk with the same settings is reused.
    cells_dir = out / "cells"
    hashes = [[r.request.spec_hash(res.identity()) for r in rows] for res in resolved]
    todo = [[i for i, r in enumerate(rows) if files.finished_hash(cells_dir / c.folder, r.stem, "png")
             != hashes[ci][i]] for ci, c in enumerate(columns)]
    reused = sum(len(rows) - len(t) for t in todo)
    if reused:
        ui.info(f"{reused} cell(s) already rendered with the same settings; reusing them.")

    # 3. Render column by column, columns sharing a UNet back to back, each model set up once.
    from spo_cli.bank import Bank

    loading.libraries(ui, rt)
    log: list[str] = []
    bank = Bank(rt.device, rt.dtype, keep_loaded=keep_loaded, log=lambda m: (log.append(m), ui.info(f"  {escape(m)}")))
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
                ui.info(f"Setting up [bold]{escape(columns[ci].label)}[/]")
                log.append(f"column {columns[ci].label}")
                engine = bank.engine(resolved[ci], needed_later=later)
                tasks = [replace(rows[i], spec_hash=hashes[ci][i], overwrite=True,
                                 extra={"compare": {"column": columns[ci].label}}) for i in todo[ci]]
                outcomes = render(engine, resolved[ci], tasks, out=cells_dir / columns[ci].folder, image_format="png",
                                  batch_size=options.batch_size, keep_going=True, progress=bars, debug=ui.debug)
                for i, oc in zip(todo[ci], outcomes):
                    if oc.error:
                        failed[(ci, i)] = oc.error
        bank.release(set())
    return Rendered(resolved, failed, total - len(failed), reused, log, bank.bytes_loaded)


def cell_entry(out: Path, folder: Path, stem: str, error: str | None, scores: dict | None = None) -> dict:
    image = folder / f"{stem}.png"
    ok = error is None and image.exists()
    entry = {"image": str(image.relative_to(out)) if ok else None,
             "sidecar": str((folder / f"{stem}.json").relative_to(out)) if ok else None,
             "status": "ok" if ok else "failed", "error": error}
    if scores is not None:
        entry["scores"] = scores
    return entry


def write_grids(out: Path, stem: str, columns: list[Column], rows: list[ImageTask], cells_dir: Path, cell_size: int,
                rows_per_page: int, failed: set[tuple[int, int]] = frozenset(), index_name: str = "",
                captions: list[list[list[str]]] | None = None) -> list[Path]:
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
        page_captions = captions[n * rows_per_page:n * rows_per_page + len(page)] if captions else None
        image = grid.render(cells, [c.label for c in columns], labels, size, page_captions)
        name = f"{stem}-grid.png" if len(pages) == 1 else f"{stem}-grid-{n + 1}.png"
        shown = [f"cells/{c.folder}/{r.stem}.png" for r in page for c in columns]
        files.atomic_write(out / name, metadata.encode_grid(image, index_name, shown), overwrite=True)
        paths.append(out / name)
    for old in [*out.glob(f"{stem}-grid-*.png"), out / f"{stem}-grid.png"]:
        if old not in paths and old.exists():  # pages of an earlier, longer comparison
            old.unlink()
    return paths

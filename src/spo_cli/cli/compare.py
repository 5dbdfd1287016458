from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from time import perf_counter
from typing import Annotated, Optional

import typer

from spo_cli import distributed, presets, validate
from spo_cli.cli import app, loading, options as opts, scoring
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, short
from spo_cli.comparison import Column, Scoring, build_columns, build_rows, cell_entry, render_columns, score_cells, \
    write_grids
from spo_cli.errors import EXIT_FAILURE, UsageError
from spo_cli.outputs import files, metadata, naming
from spo_cli.request import ImageTask
from spo_cli.sweep import axes as sweep_axes

EXAMPLES = """[bold]Examples[/]

  spo compare "a child and a penguin sitting on the moon" --base --spo

  spo compare --prompts examples/prompts.txt --base --spo --seeds 1,2 --out cmp/

  spo compare "a lighthouse in a storm, oil painting" --lora-scales 0,0.25,0.5,0.75,1.0

  spo compare "…" --base --spo --model ./my-sdxl-finetune --label "mine"

  spo compare --prompts prompts.txt --base --spo --seeds 1,2 --score   # scores under each cell, win rates

  spo compare "the same fox, in winter" --image fox.png --base --spo --seeds 1,2   # SDXL vs SPO on one input

  spo compare "a fox in snow" --base --spo --x steps=20,30,50 --y guidance=3,5,7 --seeds 1-4

  spo compare "a red fox" --spo --x "prompt-sr=red fox,arctic fox" --y lora-scale=0.5,0.75,1

  spo compare "a fox" --x model=base,spo --y steps=10-50[5] --z guidance=3,7   # one grid per Z value

[bold]Columns[/] come in the order their options first appear (the --model
columns together, at the first --model). With --score each later column is
compared against each earlier one: `--base --spo` reports SPO against SDXL,
`--spo --base` the reverse.

[bold]Sweeps[/] (A1111's X/Y/Z plot): --x/--y/--z NAME=VALUES put any of
model, lora-scale, steps, guidance, scheduler, seed, size, negative, prompt-sr,
prompt-syntax, emphasis, strength on an axis. Values as A1111 writes them:
1,2,3 · 1-5 · 1-5 (+2) · 10-50 [5] · "quoted, with commas". One grid per Z
value (and a contact sheet); every cell equals `spo generate` with its
settings. --versus NAME: the axis --score compares (default: model).
Each slot takes one axis; --z needs --y, --y needs --x.
"""


JSON_HELP = ("Print a JSON object on stdout (grid pages, index file, counts of rendered, reused and failed cells, "
             "bytes of weights loaded; with --score the scores, and a scored sweep's report and charts), nothing else.")


def parse_scales(text: str | None) -> list[float]:
    if not text:
        return []
    scales = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise UsageError(f"--lora-scales: {validate.shown(part.strip())} is not a number.",
                             "Give numbers separated by commas, e.g. --lora-scales 0,0.5,1.") from None
        if not math.isfinite(value):  # named here: lora_scale() names --lora-scale, which was not given
            raise UsageError(f"--lora-scales: {validate.shown(part.strip())} is not a finite number.",
                             "Give numbers separated by commas, e.g. --lora-scales 0,0.5,1.")
        if value in scales:  # 0.5 and .5 would be two columns labelled alike
            raise UsageError(f"--lora-scales lists {value:g} twice.", "List each strength once.")
        scales.append(validate.lora_scale(value)[0])
    return scales


def parse_seeds(text: str | None, seed: int, num_images: int) -> list[int]:
    if text:
        return validate.seeds(text)  # eval's grammar too: 0-3, 1,2,5
    validate.num_images(num_images)
    seed = validate.seed_or_random(seed)
    validate.seed_range(seed, num_images)
    return [seed + i for i in range(num_images)]


_ORDER = "spo_column_order"


def _named(ctx: typer.Context, param: typer.CallbackParam, value):
    """Click calls this for each column option in the order the options first appear on the command line
    (the options not given after them): the order the columns are built in, so that the "later against
    earlier" comparisons of --score keep the direction the user chose."""
    if value:  # given, and not --no-base / an empty list
        ctx.meta.setdefault(_ORDER, []).append(param.name)
    return value


def column_order(names: list[str], n_models: int, n_scales: int) -> list[str]:
    """Column option names in command-line order → `build_columns`'s order keys (the --model columns in
    their own order, at the place of the first --model)."""
    keys = {"base": ["base"], "spo": ["spo"], "spo_lora": ["spo-lora"],
            "lora_scales": [f"scale:{i}" for i in range(n_scales)], "model": [f"model:{i}" for i in range(n_models)]}
    return [k for name in names for k in keys.get(name, [])]


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def compare(
    ui: UI,
    ctx: typer.Context,
    prompt: Annotated[Optional[str], typer.Argument(help="A prompt (or use --prompts).", show_default=False)] = None,
    prompts_file: Annotated[Optional[str], typer.Option(
        "--prompts", help="A prompt file in the formats `spo batch` reads (.txt, .jsonl, - for stdin).")] = None,
    prompt_format: opts.PromptFormat = None,
    old_format: opts.OldPromptFormat = None,
    base: Annotated[Optional[bool], typer.Option("--base/--no-base", callback=_named, help="A column for SDXL base.",
                                                 rich_help_panel="Columns", show_default=False)] = None,
    spo: Annotated[Optional[bool], typer.Option("--spo/--no-spo", callback=_named,
                                                help="A column for SPO-SDXL (merged).",
                                                rich_help_panel="Columns", show_default=False)] = None,
    spo_lora: Annotated[Optional[bool], typer.Option("--spo-lora/--no-spo-lora", callback=_named,
                                                     help="A column for SDXL base + "
                                                     "the SPO LoRA at --lora-scale.",
                                                     rich_help_panel="Columns", show_default=False)] = None,
    model: Annotated[Optional[list[str]], typer.Option(
        "--model", "-m", help="A column for any preset, Hub repo or local folder (repeatable).", callback=_named,
        rich_help_panel="Columns")] = None,
    label: Annotated[Optional[list[str]], typer.Option(
        help="Label of the --model column before it (repeatable).", rich_help_panel="Columns")] = None,
    lora_scales: Annotated[Optional[str], typer.Option(
        help="One column per SPO LoRA strength on SDXL base, e.g. 0,0.5,1 (0 = SDXL, 1 = SPO).", callback=_named,
        rich_help_panel="Columns")] = None,
    lora_scale: Annotated[Optional[float], typer.Option(
        help="Strength of the --spo-lora column (default 1).", rich_help_panel="Columns", show_default=False)] = None,
    seeds: Annotated[Optional[str], typer.Option(help="Seeds, one row each per prompt: a range 0-3 or a list 1,2,5 (-1: a random one).",
                                                 rich_help_panel="Sampling")] = None,
    seed: Annotated[int, typer.Option(help="First seed when --seeds is not given (-1: a random one, recorded).", rich_help_panel="Sampling")] = 0,
    num_images: opts.NumImages = 1,
    negative: opts.Negative = None,
    steps: opts.Steps = presets.DEFAULT_STEPS,
    guidance: opts.Guidance = presets.DEFAULT_GUIDANCE,
    width: opts.Width = None,
    height: opts.Height = None,
    scheduler: opts.Scheduler = "default",
    generator_device: opts.GeneratorDevice = "cpu",
    prompt_syntax: opts.PromptSyntax = "auto",
    emphasis: opts.Emphasis = "original",
    watermark: opts.Watermark = None,
    no_size_limit: opts.NoSizeLimit = False,
    image: opts.Image = None,
    mask: opts.Mask = None,
    strength: opts.Strength = None,
    mask_blur: opts.MaskBlur = None,
    mask_crop: opts.MaskCrop = None,
    hires: opts.Hires = None,
    hires_upscaler: opts.HiresUpscaler = None,
    hires_steps: opts.HiresSteps = None,
    hires_strength: opts.HiresStrength = None,
    keep_inputs: opts.KeepInputs = False,
    batch_size: opts.BatchSize = 1,
    revision: opts.Revision = None,
    vae: opts.Vae = None,
    device: opts.Device = "auto",
    dtype: opts.Dtype = "auto",
    quantize: opts.Quantize = None,
    cell_size: Annotated[int, typer.Option(help="Longest side of a cell in the grid, in pixels (cells are "
                                           "only shrunk; full-size images stay in OUT/cells).",
                                           rich_help_panel="Output")] = 512,
    rows_per_page: Annotated[int, typer.Option(help="Rows per grid page; larger comparisons get several pages.",
                                               rich_help_panel="Output")] = 8,
    keep_loaded: Annotated[bool, typer.Option("--keep-loaded", help="Keep every model's UNet in memory instead of one at a "
                                              "time.", rich_help_panel="Model")] = False,
    out: opts.Out = "outputs",
    no_provenance: opts.NoProvenance = False,
    score: Annotated[bool, typer.Option("--score", help="Score every cell with preference models (see `spo score`): "
                                        "scores under the cells, and paired win rates between the columns.",
                                        rich_help_panel="Scoring")] = False,
    metric: scoring.Metric = None,
    hps_version: scoring.HpsVersion = "v2.1",
    score_batch_size: scoring.ScoreBatch = 16,
    sign: opts.Sign = False,
    sign_key: opts.SignKey = None,
    sign_cert: opts.SignCert = None,
    # Lists, though each takes one axis: a click option given twice keeps the last silently, and
    # `--x steps=… --x model=…` would drop the steps axis without a word (axes.one_axis refuses it).
    x: Annotated[Optional[list[str]], typer.Option("--x", help="A sweep axis, NAME=VALUES: e.g. steps=20,30,50, "
                                                   "guidance=3-9 (+2), \"prompt-sr=red fox,arctic fox\".",
                                                   rich_help_panel="Sweep", show_default=False,
                                                   metavar="NAME=VALUES")] = None,
    y: Annotated[Optional[list[str]], typer.Option("--y", help="A second axis (the grid's rows).",
                                                   rich_help_panel="Sweep", show_default=False,
                                                   metavar="NAME=VALUES")] = None,
    z: Annotated[Optional[list[str]], typer.Option("--z", help="A third axis: one grid per value.",
                                                   rich_help_panel="Sweep", show_default=False,
                                                   metavar="NAME=VALUES")] = None,
    versus: Annotated[Optional[str], typer.Option(help="The axis --score compares across (default: model, when it "
                                                  "has two values or more; else the first axis that has, seed last).",
                                                  metavar="NAME", rich_help_panel="Sweep", show_default=False)] = None,
    yes: Annotated[bool, typer.Option("--yes", help=f"Render a sweep of more than {sweep_axes.CELLS_MAX:,} images "
                                      f"(up to {sweep_axes.CELLS_HARD_MAX:,}).",
                                      rich_help_panel="Sweep")] = False,
) -> None:
    """Render the same prompts and seeds through several models or SPO strengths, side by side."""
    t0 = perf_counter()
    rank = distributed.rank_info()
    first = rank.first  # under torchrun: the others print errors only, and take no lock
    validate.shared_by(rank.world)  # every rank must build the same cells: no -1 seeds, no stdin
    if not first:
        ui.silence()
    metrics = scoring.metrics(metric, hps_version, score_batch_size) if score else []
    if not score and (metric is not None or hps_version != "v2.1"):
        raise UsageError("--metric and --hps-version choose how --score scores, and --score is not given.",
                         "Add --score.")
    validate.integer(cell_size, "cell_size", low=validate.CELL_SIZE_MIN, high=validate.SIDE_MAX)
    validate.integer(rows_per_page, "rows_per_page", low=1, high=validate.ROWS_PER_PAGE_MAX)
    fmt = opts.prompt_format(prompt_format, old_format, ui.warn)
    # A sweep's axes first: an unknown axis or bad value is refused before anything is read.
    axes = _axes(ctx, x, y, z, versus, not no_size_limit)
    named_model = next((a for a in axes if a.name == "model"), None)
    common = dict(vae=vae, dtype=dtype, device=device, quantize=quantize)
    scales = parse_scales(lora_scales)
    order = column_order(ctx.meta.get(_ORDER, []), len(model or []), len(scales))
    if named_model is None:
        columns = build_columns(base, spo, spo_lora, model or [], label or [], scales, lora_scale,
                                revision, common, opts.model_request, order)
    else:
        from spo_cli.sweep import plan as sweep_plan

        columns = sweep_plan.build_models(named_model, common, opts.model_request, revision)
    defaults, warnings = opts.image_request(
        seed=0, negative=negative, steps=steps, guidance=guidance, width=width, height=height, scheduler=scheduler,
        generator_device=generator_device, prompt_syntax=prompt_syntax, emphasis=emphasis, watermark=watermark,
        size_limit=not no_size_limit, check_prompt=False)
    edits = dict(image=image, mask=mask, strength=strength, mask_blur=mask_blur, mask_crop=mask_crop, hires=hires,
                 hires_upscaler=hires_upscaler, hires_steps=hires_steps, hires_strength=hires_strength)
    rows, more = build_rows(prompt, prompts_file, fmt, defaults, parse_seeds(seeds, seed, num_images), ui.error,
                            not no_size_limit, edits=edits)
    sweep = None
    if axes:  # the sweep laid out as columns × rows, every cell checked, still before torch
        from spo_cli.sweep import plan as sweep_plan

        sweep, more_warnings = sweep_plan.build(axes, columns, named_model is None, rows, common=common,
                                                model_request=opts.model_request, versus=versus, yes=yes,
                                                size_limit=not no_size_limit)
        sweep_plan.check_pages(sweep, cell_size, rows_per_page)
        if score:  # nothing to pair (every axis of one value): refused now, not after the render
            sweep_plan.check_scored(sweep, versus is not None)
        columns, rows = sweep_plan.labelled(sweep)
        more = sorted(set(more) | set(more_warnings))
    options = opts.run_options(fast=False, offload=None, vae_tiling=False, vae_slicing=False, batch_size=batch_size)
    signer = opts.signer(sign, sign_key, sign_cert)
    for c in columns:
        loading.precheck(c.request, options, [r.request for r in rows])
    out = validate.output_folder(out)
    for w in warnings + more:
        ui.warn(w)
    distributed.join(device)  # under torchrun: before the lock, which only the first rank takes
    with files.FolderLock(out, "spo compare") if first else nullcontext():
        kept = files.keep_inputs(out, [r.request for r in rows]) if keep_inputs else None
        code = _compare(ui, columns, rows, options, out, keep_loaded, naming.grid_stem(prompt, prompts_file),
                        cell_size, rows_per_page, t0, Scoring(metrics, hps_version, score_batch_size, device), kept,
                        provenance=not no_provenance, signer=signer, sweep=sweep)
    if code:
        raise typer.Exit(code)


def _axes(ctx: typer.Context, x: list[str] | None, y: list[str] | None, z: list[str] | None, versus: str | None,
          size_limit: bool) -> list:
    """--x/--y/--z read and checked; `given`: the options the user gave (not their defaults), which
    an axis must not also set."""
    x, y, z = (sweep_axes.one_axis(slot, texts) for slot, texts in zip(sweep_axes.SLOTS, (x, y, z)))
    if x is None and y is None and z is None:
        if versus is not None:
            raise UsageError("--versus names the sweep axis --score compares across, and no --x is given.",
                             "Add --x NAME=VALUES, or drop --versus.")
        return []
    return sweep_axes.parse_axes(x, y, z, given=sweep_axes.given_options(ctx), size_limit=size_limit)


def _compare(ui: UI, columns: list[Column], rows: list[ImageTask], options, out: Path, keep_loaded: bool, stem: str,
             cell_size: int, rows_per_page: int, t0: float, scoring_: Scoring = Scoring([]),
             kept: dict | None = None, *, provenance: bool = True, signer=None, sweep=None) -> int:
    # The scorers' files first too: a missing one fails now, not after the rendering.
    scorers = scoring.find_scorers(ui, scoring_.metrics, scoring_.hps_version) if scoring_.metrics else None
    steps = scoring.steps(ui)
    run = render_columns(steps, columns, rows, options, out, keep_loaded, kept, provenance=provenance, signer=signer)
    cells_dir = out / "cells"
    failed = run.failed
    scored = (score_cells(steps, columns, rows, cells_dir, failed, scoring_, scorers, run.team)
              if scoring_.metrics else None)
    if not distributed.rank_info().first:  # the cells are shared out; the first rank alone writes grids and index
        return 0

    # 4. The grid pages and their index.
    index_name = stem + "-grid.json"
    captions = None
    if scored:
        from spo_cli.scores.summary import caption

        captions = [[caption(v, scored["metrics"]) for v in row] for row in scored["cells"]]
    if sweep is None:
        pages = write_grids(out, stem, columns, rows, cells_dir, cell_size, rows_per_page, failed=set(failed),
                            index_name=index_name, captions=captions, provenance=provenance, signer=signer)
    else:
        pages, grids = _sweep_grids(sweep, out, stem, columns, rows, cells_dir, cell_size, rows_per_page, set(failed),
                                    index_name, captions, provenance, signer)
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
    reports: list[tuple[Path, str]] = []  # a scored sweep's report and charts: (path, what it holds)
    if sweep is not None:  # 4b. The sweep: its axes, every cell with its settings, the scores per axis value
        index["sweep"] = _sweep_index(sweep, out, columns, rows, cells_dir, failed, scored, grids, stem)
        if scored:
            index["scores"]["sweep"], reports = _sweep_scores(sweep, scored, out, stem)
    index_path = out / index_name
    files.atomic_write(index_path, (metadata.dumps(index) + "\n").encode(), overwrite=True)
    for (ci, ri), err in failed.items():
        ui.error(f"{failed_cell(columns[ci], rows[ri])}: {err}")
    if ui.json_mode:
        ui.emit_json({"grid": [str(p) for p in pages], "index": str(index_path),
                      **{k: index[k] for k in ("rendered", "reused", "failed", "bytes_loaded", "elapsed_s")},
                      **({"scores": index["scores"]} if scored else {}),
                      **({"reports": [str(p) for p, _ in reports]} if reports else {})})
    else:
        if not ui.quiet:
            ui.info(f"Comparison of {len(rows)} row(s) × {len(columns)} column(s): {run.rendered} cell(s) "
                    f"rendered, {run.reused} reused, {len(failed)} failed.")
        if scored and sweep is not None:  # what --versus compares (the columns may be lora strengths, or one model)
            scoring.print_summary(ui, index["scores"]["sweep"]["overall"], what=sweep.versus)
        elif scored:
            scoring.print_summary(ui, scored["summary"])
        ui.paths([(str(p), f"grid page {i + 1} of {len(pages)}") for i, p in enumerate(pages)]
                 + [(str(index_path), "cells, sidecars, set-up log" + (", scores" if scored else "")),
                    (str(cells_dir), "full-size cells")]
                 + [(str(p), what) for p, what in reports])
    return EXIT_FAILURE if failed or (scored and scored["errors"]) else 0


def failed_cell(column: Column, row: ImageTask) -> str:
    """A failed cell as its error line names it: the column, the prompt, the seed, and in a sweep the
    image axes' values (cells that differ only in steps or guidance would otherwise read alike);
    seed and prompt-sr are already in the prompt and seed shown."""
    axes = [label for name, label in row.extra.get("axes", {}).items() if name not in ("seed", "prompt-sr")]
    return f"{column.label}, '{short(row.request.prompt)}' seed {row.request.seed}" + "".join(f", {a}" for a in axes)


def _sweep_grids(sweep, out: Path, stem: str, columns: list[Column], rows: list[ImageTask], cells_dir: Path,
                 cell_size: int, rows_per_page: int, failed: set, index_name: str, captions, provenance: bool,
                 signer) -> tuple[list[Path], list[dict]]:
    """One grid per Z value (its pages), and with a Z axis the contact sheet of their first pages."""
    from spo_cli.comparison import remove_old_pages, write_contact, write_page
    from spo_cli.sweep import plan as sweep_plan

    z = sweep.axis("z")
    paths: list[Path] = []
    grids: dict = {}
    for page in sweep_plan.pages(sweep, stem, rows_per_page):
        at = [[(sweep.cells[k].column, sweep.cells[k].row) for k in line] for line in page.cells]
        caps = [[captions[ri][ci] for ci, ri in line] for line in at] if captions else None
        path = write_page(out, page.name, columns, rows, at, page.column_labels, page.row_labels, cells_dir, cell_size,
                          failed, index_name, caps, z.labels[page.z] if z else None,
                          provenance=provenance, signer=signer)
        paths.append(path)
        grids.setdefault(page.z, []).append(path)
    # Every entry one shape ({z, pages}): the contact sheet is the index's own key, not a stray entry.
    listed = [{"z": z.labels[k] if z else None, "pages": [str(p.relative_to(out)) for p in ps]}
              for k, ps in grids.items()]
    if z is not None:
        contact = write_contact(out, f"{stem}-contact.png", [ps[0] for ps in grids.values()], list(z.labels),
                                cell_size, index_name, provenance=provenance, signer=signer)
        paths.append(contact)
    remove_old_pages(out, stem, paths)
    return paths, listed


def _sweep_index(sweep, out: Path, columns: list[Column], rows: list[ImageTask], cells_dir: Path, failed: dict,
                 scored: dict | None, grids: list[dict], stem: str) -> dict:
    from spo_cli.sweep import plan as sweep_plan

    cells = []
    for c in sweep.cells:
        entry = cell_entry(out, cells_dir / columns[c.column].folder, rows[c.row].stem, failed.get((c.column, c.row)),
                           scored["cells"][c.row][c.column] if scored else None)
        cells.append({"coords": list(c.coords), "column": c.column, "row": c.row, "axes": sweep.cell_axes(c),
                      "settings": sweep_plan.settings(columns[c.column], rows[c.row]), **entry})
    return {"axes": [{"slot": a.slot, "name": a.name, "values": list(a.values), "labels": list(a.labels)}
                     for a in sweep.axes],
            "dims": [{"name": d.name, "labels": list(d.labels)} for d in sweep.dims],
            "versus": sweep.versus, "grids": grids,
            "contact": f"{stem}-contact.png" if sweep.axis("z") is not None else None, "cells": cells}


def _sweep_scores(sweep, scored: dict, out: Path, stem: str) -> tuple[dict, list[tuple[Path, str]]]:
    """The scored summary per axis value (scores.sweep), its markdown report and one chart per axis:
    (summary, [(path written, what it holds)])."""
    from spo_cli.scores import sweep as sweep_scores
    from spo_cli.sweep import plan as sweep_plan

    summary = sweep_scores.summarise(list(sweep.dims), sweep_plan.scored_cells(sweep, scored["cells"]),
                                     scored["metrics"], sweep.versus)
    written = [(out / f"{stem}-report.md", "scores per axis value")]
    files.atomic_write(written[0][0], sweep_scores.markdown(summary).encode(), overwrite=True)
    for d in sweep.dims:
        if d.name != sweep.versus and len(d.labels) >= 2:
            written.append((out / f"{stem}-{d.name}.png", f"{sweep.versus} compared at each {d.name} value"))
            files.atomic_write(written[-1][0], _png(sweep_scores.chart(summary, d.name)), overwrite=True)
    return summary, written


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()

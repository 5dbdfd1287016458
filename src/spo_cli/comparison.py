"""A comparison: columns (models) × rows (prompt and seed), every cell an image rendered once and
reused while its settings hold, optionally scored. The machinery `spo compare` and `spo eval`
share: building the columns and rows, rendering the cells column by column, scoring them, the
grid pages and the cells' index entries.

No torch at import, and nothing from `cli/`: the two steps that talk to the user while they work
(`render_columns`, `score_cells`) are handed the command line's UI and its loading and scoring steps
as `Steps`, as `render.render` is handed its progress bars.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from pathlib import Path

from spo_cli import presets, prompts, quantize, validate
from spo_cli.errors import UsageError
from spo_cli.outputs import files, metadata, naming
from spo_cli.request import ImageRequest, ImageTask, ModelRequest


@dataclass(frozen=True)
class Steps:
    """The command line's side of a comparison (built by `cli.scoring.steps`): its UI, the loading
    steps of `cli.loading`, the scoring steps of `cli.scoring`, and how user text is shown inert in
    a message with markup."""

    ui: object
    start_torch: Callable
    find_model: Callable
    libraries: Callable
    score_items: Callable
    escape: Callable[[str], str]


# The labels of the preset columns (--base, --spo, --spo-lora), for a preset named as a quantized --model column.
PRESET_LABELS = {**presets.COLUMN_LABELS, "spo-lora": "SPO LoRA x1"}


@dataclass(frozen=True)
class Column:
    label: str
    request: ModelRequest
    folder: str  # under OUT/cells/
    axes: tuple[tuple[str, str], ...] = ()  # in a sweep: its model and lora-scale values, (axis, label)


def cell_extra(column: Column, task: ImageTask) -> dict:
    """A cell sidecar's extra["compare"]: its column, and in a sweep its axis values (the column's
    and the row's, which `sweep.plan.labelled` put there)."""
    axes = {**dict(column.axes), **task.extra.get("axes", {})}
    return {"column": column.label, **({"axes": axes} if axes else {})}


def build_columns(base: bool | None, spo: bool | None, spo_lora: bool | None, models: list[str], labels: list[str],
                  scales: list[float], lora_scale: float | None, revision: str | None, common: dict,
                  model_request: Callable[..., tuple[ModelRequest, list[str]]],
                  order: list[str] | None = None, quantized: Collection[str] = ()) -> list[Column]:
    """The columns the options ask for, each with its checked request (`model_request`: the
    command line's builder) and a folder under OUT/cells/ no other column shares.

    A column is quantized (--quantize fp8 for it alone) when its key is in `quantized`, or when its
    --model name ends in @fp8 (`spo@fp8`); its label then says so ("SPO-SDXL fp8").

    `order` is the order the user named them in, as column keys ("base", "spo", "spo-lora",
    "scale:<i>" for scales[i], "model:<i>" for models[i]); a key it lacks goes after the named
    ones, in the order above. The order matters beyond the grid: every later column is compared
    against every earlier one, so reordering would flip the sign of a comparison."""
    if base is None and spo is None and spo_lora is None and not models and not scales:
        base = spo = True  # the comparison people come for
    if len(labels) > len(models):
        raise UsageError("There are more --label than --model options.", "Each --label names the --model before it.")
    if lora_scale is not None and not spo_lora:
        raise UsageError(f"--lora-scale {lora_scale:g} sets the strength of the --spo-lora column, and there is none.",
                         "Add --spo-lora, or use --lora-scales for one column per strength.")
    if revision and not models:
        raise UsageError("--revision applies to --model columns; presets use their published main branch.")
    keyed: list[tuple[str, str, dict]] = []
    if base:
        keyed.append(("base", PRESET_LABELS["base"], dict(model="base")))
    if spo:
        keyed.append(("spo", PRESET_LABELS["spo"], dict(model="spo")))
    if spo_lora:
        scale = 1.0 if lora_scale is None else lora_scale
        keyed.append(("spo-lora", f"SPO LoRA x{scale:g}", dict(model="spo-lora", lora_scale=lora_scale)))
    for i, s in enumerate(scales):
        keyed.append((f"scale:{i}", f"SPO LoRA x{s:g}", dict(model="spo-lora", lora_scale=s)))
    for i, m in enumerate(models):
        m, q = quantize.split_suffix(m)
        label = labels[i] if i < len(labels) else PRESET_LABELS.get(m) if q else None
        label = label or m.rstrip("/").split("/")[-1]
        keyed.append((f"model:{i}", label, dict(model=m, revision=revision, **({"quantize": q} if q else {}))))
    own = [label for key, label, fields in keyed if fields.get("quantize") or key in quantized]  # @fp8 columns
    if own and common.get("quantize"):
        # Every column is fp8 already: `--quantize fp8 --columns spo,spo@fp8` made two fp8 columns of one
        # model, one labelled as if it were not, and a comparison of a model with itself.
        raise UsageError(f"--quantize fp8 quantizes every column, so {quantize.SUFFIX} on the {own[0]} "
                         "column adds nothing (and a column without it is fp8 too).",
                         f"To compare a model with its fp8 form, drop --quantize and write the column twice: "
                         f"e.g. spo,spo{quantize.SUFFIX}.")
    if own:
        from spo_cli import extras

        if extras.missing("torchao"):  # said of the column: "--quantize fp8 needs torchao" named no option typed
            raise UsageError(f"The {own[0]} column's {quantize.SUFFIX} needs torchao, which is not installed.",
                             'Install the extra: pip install "spo-cli[fp8]".')
    for n, (key, label, fields) in enumerate(keyed):
        if key in quantized:
            keyed[n] = (key, label, dict(fields, quantize=quantize.FP8))
        if keyed[n][2].get("quantize") and not (key.startswith("model:") and int(key[6:]) < len(labels)):
            keyed[n] = (key, f"{label} {quantize.LABEL}", keyed[n][2])  # a --label is the user's own
    rank = {key: i for i, key in enumerate(order or [])}
    keyed.sort(key=lambda k: rank.get(k[0], len(rank)))  # stable: unnamed keys keep their places
    cols = [(label, fields) for _, label, fields in keyed]
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
        request, _ = model_request(**{**common, **fields})
        columns.append(Column(label, request, folder))
    return columns


def build_rows(prompt: str | None, prompts_file: str | None, fmt: str | None, defaults: ImageRequest,
               seeds: list[int], on_problem: Callable[[str], None], size_limit: bool,
               lines: list[prompts.PromptLine] | None = None, source: str | None = None,
               edits: dict | None = None) -> tuple[list[ImageTask], list[str]]:
    """One task per prompt × seed: the same name in every column's folder. `lines` are prompts read
    elsewhere (a dataset named `source`); each bad line of a prompt file goes to `on_problem`
    before the run is refused. `edits`: the command line's image-to-image options (EDIT_KEYS), for
    the prompt and every line of the prompt file that does not set its own (as `spo batch` does)."""
    lines = list(lines or [])
    edits = {k: v for k, v in (edits or {}).items() if v is not None}
    if prompt is not None:
        prompt = validate.text(prompt, "prompt", validate.PROMPT_ARGUMENT)
        validate.readable_prompts(prompt, None, defaults.prompt_syntax, validate.PROMPT_ARGUMENT)
        line = prompts.PromptLine(0, prompt)
        if edits:
            from spo_cli import inputs

            edited, notes = inputs.edit_request(replace(defaults, prompt=prompt), edits, validate.ARGV,
                                                size_limit=size_limit)
            line = replace(line, settings={k: getattr(edited, k) for k in prompts.EDIT_FIELDS}, notes=tuple(notes))
        lines.append(line)
    if prompts_file:
        parsed = prompts.read(prompts_file, fmt, prompt_syntax=defaults.prompt_syntax)
        folder = Path.cwd() if prompts_file == "-" else Path(prompts_file).parent
        parsed = prompts.apply_edits(parsed, defaults, edits, folder, size_limit=size_limit)
        if parsed.problems:
            for p in parsed.problems:
                on_problem(p)
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
    team: object = None  # distributed.Team: the ranks, carried on to score_cells


def score_cells(steps: Steps, columns: list[Column], rows: list[ImageTask], cells_dir: Path,
                failed: dict[tuple[int, int], str], how: Scoring, resolved: dict | None = None,
                team=None) -> dict | None:
    """Score every cell that exists: {cells: [[{metric: value} | None]], summary, errors}.

    Under several ranks (`team`: the one `render_columns` made) each rank scores its share, whole
    scorer calls dealt round-robin, into the cells' scores files; after they meet, the first rank
    reads every score back from those files (nothing is scored twice) and returns the result, the
    others None."""
    from spo_cli import distributed
    from spo_cli.scores import run, store
    from spo_cli.scores.summary import summarise

    where, items = {}, []
    for ri, r in enumerate(rows):
        for ci, c in enumerate(columns):
            image = cells_dir / c.folder / f"{r.stem}.png"
            recorded = store.prompt_of(image) if (ci, ri) not in failed and image.exists() else None
            if recorded:
                where[(ri, ci)] = len(items)
                items.append(store.Item(image, *recorded))
    ui = steps.ui
    if team is not None and team.rank.several:
        chunks = [items[i:i + how.batch_size] for i in range(0, len(items), how.batch_size)]
        mine = [it for chunk in distributed.deal(chunks, team.rank) for it in chunk]
        team.step(lambda: steps.score_items(ui, mine, how.metrics, how.hps_version, device=how.device,
                                            batch_size=how.batch_size, resolved=resolved))
        team.check(ui, team.meet("score", {"scored": len(mine)}))
        if not team.rank.first:
            return None
    ui.info(f"Scoring {len(items)} cell(s) with {', '.join(how.metrics)}")
    results = steps.score_items(ui, items, how.metrics, how.hps_version, device=how.device,
                                  batch_size=how.batch_size, resolved=resolved)
    cells = [[results[where[(ri, ci)]].values or None if (ri, ci) in where else None
              for ci in range(len(columns))] for ri in range(len(rows))]
    errors = run.error_lines(results)
    for e in errors:
        ui.error(e)
    return {"metrics": how.metrics, "cells": cells, "errors": errors,
            "summary": summarise([c.label for c in columns], cells, how.metrics,
                                 groups=[r.request.prompt for r in rows])}


def render_columns(steps: Steps, columns: list[Column], rows: list[ImageTask], options, out: Path,
                   keep_loaded: bool, kept: dict | None = None, provenance: bool = True, signer=None) -> Rendered:
    """Steps 1–3 of a comparison: resolve every column, reuse finished cells, render the rest
    column by column (columns sharing a UNet back to back), then free the models. `kept`: the
    inputs --keep-inputs copied (files.keep_inputs), recorded in each cell's sidecar. `provenance`:
    render's (XMP in the cells; a reused cell keeps what it was written with); with `signer` the
    cells are signed.

    Under torchrun or accelerate launch every rank builds the same list of (column, pipeline call)
    from what is on disk, and renders its round-robin share of it, loading only the models its
    share needs; the ranks then meet, and each returns the whole run's outcome (`Rendered.team`
    carries the ranks on to `score_cells`). A rank that fails stops every rank, named."""
    from spo_cli import distributed
    from spo_cli.render import render
    from spo_cli.request import calls

    ui, escape = steps.ui, steps.escape
    rank = distributed.rank_info()
    team = distributed.Team(rank, out, debug=ui.debug)

    if rank.first:  # the others wait for it below, so no temporary file of theirs is in flight yet
        team.clear()
        for c in columns:
            if (out / "cells" / c.folder).is_dir():
                files.remove_leftovers(out / "cells" / c.folder)

    # 1. Resolve every column first: a missing model fails now, not after an hour of rendering.
    # Several ranks: the first resolves (and downloads) alone, then the others find the files it fetched.
    rt = steps.start_torch(ui, columns[0].request, options, [r.request for r in rows], local_rank=rank.local_rank)
    for c in columns[1:]:  # start_torch checked the first column's; --quantize fp8 may be any column's
        quantize.check_machine(c.request.quantize, rt.device, rt.dtype)
    if rank.several:
        distributed.init(rt.device)
    if not rank.first:
        team.wait()
    resolved = team.step(lambda: [steps.find_model(ui, c.request, rt.dtype) for c in columns])
    if rank.first:
        team.wait()

    # 2. What is already on disk with the same settings is reused. Every rank reads the disk before
    # any writes to it, so that all build the same list of what is left.
    cells_dir = out / "cells"

    def left():
        hashes = [[r.request.spec_hash(res.identity()) for r in rows] for res in resolved]
        return hashes, [[i for i, r in enumerate(rows) if files.finished_hash(cells_dir / c.folder, r.stem, "png")
                         != hashes[ci][i]] for ci, c in enumerate(columns)]

    hashes, todo = team.step(left) or (None, [list(range(len(rows))) for _ in columns])  # failed: nothing to say
    if rank.several:  # each rank deals out its own list: every rank's must be the first's, or cells go unmade
        team.agree(ui, team.meet("plan", {"plan": plan_digest(columns, rows, hashes, todo)}), "plan", PLAN_DIFFERS)
    reused = sum(len(rows) - len(t) for t in todo)
    if reused:
        ui.info(f"{reused} cell(s) already rendered with the same settings; reusing them.")

    # 3. Render column by column, columns sharing a UNet back to back, each model set up once; under
    # several ranks, this rank's share: whole pipeline calls, dealt round-robin in that order.
    from spo_cli.bank import Bank

    log: list[str] = []
    failed: dict[tuple[int, int], str] = {}
    made: list[str] = []
    bank = None

    def work():
        nonlocal bank
        steps.libraries(ui, rt)
        bank = Bank(rt.device, rt.dtype, keep_loaded=keep_loaded,
                    log=lambda m: (log.append(m), ui.info(f"  {escape(m)}")))
        parts = [bank.parts(res) for res in resolved]
        order = sorted(range(len(columns)), key=lambda ci: next(
            j for j in range(len(columns)) if parts[j]["unet"][2] == parts[ci]["unet"][2]))
        dealt = distributed.deal([(ci, call) for ci in order
                                  for call in calls(todo[ci], options.batch_size, request=lambda i: rows[i].request)],
                                 rank)
        mine = {ci: [i for cj, call in dealt if cj == ci for i in call] for ci in order}
        total = sum(len(m) for m in mine.values())
        if not total:
            return
        with ui.images_progress(total, rows[0].request.denoising_steps) as bars:
            for pos, ci in enumerate(order):
                if not mine[ci]:
                    continue
                later = {(p, fp) for cj in order[pos + 1:] if mine[cj] for p, (_, _, fp) in parts[cj].items()}
                ui.info(f"Setting up [bold]{escape(columns[ci].label)}[/]")
                log.append(f"column {columns[ci].label}")
                engine = bank.engine(resolved[ci], needed_later=later)
                folder = cells_dir / columns[ci].folder
                tasks = [replace(rows[i], spec_hash=hashes[ci][i], overwrite=True,
                                 extra={"compare": cell_extra(columns[ci], rows[i]),
                                        **metadata.kept_fields(rows[i].request, kept or {}, folder)})
                         for i in mine[ci]]
                outcomes = render(engine, resolved[ci], tasks, out=folder, image_format="png",
                                  batch_size=options.batch_size, keep_going=True, progress=bars, debug=ui.debug,
                                  provenance=provenance, signer=signer)
                for i, oc in zip(mine[ci], outcomes):
                    if oc.error:
                        failed[(ci, i)] = oc.error
                    else:
                        made.append(f"{columns[ci].folder}/{rows[i].stem}")
        bank.release(set())

    team.step(work)
    records = team.meet("render", {"made": made, "failed": [[ci, ri, e] for (ci, ri), e in failed.items()],
                                   "log": log, "bytes_loaded": bank.bytes_loaded if bank else 0})
    team.check(ui, records)
    if rank.several:  # the whole run's outcome, from every rank's record
        failed, log, loaded, count = _merge(records, len(columns), len(rows))
    else:
        loaded, count = bank.bytes_loaded, len(made)
    return Rendered(resolved, failed, count, reused, log, loaded, team)


PLAN_DIFFERS = ("it lists other work than rank 0 (other models, settings, prompts or finished cells): its "
                "command line, prompt file or model files differ from rank 0's. Give every rank the same "
                "command, the same files and the same model revisions, then run it again.")


def plan_digest(columns: list[Column], rows: list[ImageTask], hashes: list[list[str]] | None,
                todo: list[list[int]]) -> str:
    """What a rank will deal out, in 64 hex digits: every cell's place, name and settings (its spec
    hash: model revision, prompt, seed, …) and which cells are left to render."""
    from spo_cli import distributed

    return distributed.digest([[c.folder for c in columns], [r.stem for r in rows], hashes, todo])


def _merge(records: list[dict], n_columns: int, n_rows: int):
    """(failed cells, set-up log, bytes loaded, cells made) of every rank, from their checked records."""
    failed, log, loaded, count = {}, [], 0, 0
    for rec in records:
        k = rec["rank"]
        made, fails, lines, nbytes = rec.get("made"), rec.get("failed"), rec.get("log"), rec.get("bytes_loaded")
        if not (isinstance(made, list) and isinstance(fails, list) and isinstance(lines, list)
                and type(nbytes) is int):
            raise _damaged(k)
        for f in fails:
            if not (isinstance(f, list) and len(f) == 3 and type(f[0]) is int and type(f[1]) is int
                    and 0 <= f[0] < n_columns and 0 <= f[1] < n_rows and isinstance(f[2], str)):
                raise _damaged(k)
            failed[(f[0], f[1])] = f[2]
        log += [f"rank {k}: {line}" for line in lines if isinstance(line, str)]
        loaded += nbytes
        count += len(made)
    return failed, log, loaded, count


def _damaged(k: int):
    from spo_cli.errors import OutputError

    return OutputError(f"The record rank {k} wrote of its work is damaged (something else wrote to the output "
                       "folder during the run).", "Run the same command again: finished cells are reused.")


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
                captions: list[list[list[str]]] | None = None, provenance: bool = True, signer=None) -> list[Path]:
    """Grid pages from the cells on disk; a cell that failed in this run shows as failed, never as
    the image an earlier run left under its name. `provenance`: XMP on each page (encode_grid); with
    `signer`, each page is signed before it is written (a composite of generated images)."""
    paths = []
    pages = [list(range(i, min(i + rows_per_page, len(rows)))) for i in range(0, len(rows), rows_per_page)]
    for n, page in enumerate(pages):
        name = f"{stem}-grid.png" if len(pages) == 1 else f"{stem}-grid-{n + 1}.png"
        paths.append(write_page(out, name, columns, rows, [[(ci, ri) for ci in range(len(columns))] for ri in page],
                                [c.label for c in columns],
                                [(rows[ri].request.prompt, f"seed {rows[ri].request.seed}") for ri in page], cells_dir,
                                cell_size, failed, index_name, captions and [captions[ri] for ri in page],
                                provenance=provenance, signer=signer))
    remove_old_pages(out, stem, paths)
    return paths


def remove_old_pages(out: Path, stem: str, kept: list[Path]) -> None:
    """Pages of an earlier, longer comparison (or sweep) under the same stem, and its scored sweep's
    report and per-axis charts: a re-run without --score, or without that axis, writes none of them,
    and one left behind would describe cells this run's grid and JSON no longer hold. (A scored sweep
    writes its report and charts after this.)"""
    from spo_cli.sweep.axes import AXES

    scored = [out / f"{stem}-report.md", *(out / f"{stem}-{name}.png" for name in AXES)]
    for old in [*out.glob(f"{stem}-grid-*.png"), out / f"{stem}-grid.png", out / f"{stem}-contact.png", *scored]:
        if old not in kept and old.exists():
            old.unlink()


def write_page(out: Path, name: str, columns: list[Column], rows: list[ImageTask], cells: list[list[tuple[int, int]]],
               column_labels: list[str], row_labels: list[tuple[str, str]], cells_dir: Path, cell_size: int,
               failed, index_name: str, captions: list[list[list[str]]] | None = None, corner: str | None = None,
               *, provenance: bool = True, signer=None) -> Path:
    """One grid page: `cells[r][c]` is the (column, row) whose image goes there. Sized by its first
    image on disk (or the first row's request when none is)."""
    from PIL import Image

    from spo_cli import grid

    images, size, shown = [], None, []
    for line in cells:
        row = []
        for ci, ri in line:
            path = cells_dir / columns[ci].folder / f"{rows[ri].stem}.png"
            shown.append(f"cells/{columns[ci].folder}/{rows[ri].stem}.png")
            if (ci, ri) not in failed and path.exists():
                with Image.open(path) as im:
                    im.load()
                    row.append(im)
                    size = size or grid.fit(im.size, cell_size)
            else:
                row.append(None)
        images.append(row)
    last = rows[cells[-1][0][1]].request
    size = size or grid.fit((last.width or 1024, last.height or 1024), cell_size)
    image = grid.render(images, column_labels, row_labels, size, captions, corner=corner)
    return _save_grid(out, name, image, index_name, shown, provenance, signer)


def write_contact(out: Path, name: str, pages: list[Path], labels: list[str], cell_size: int, index_name: str, *,
                  provenance: bool = True, signer=None) -> Path:
    """A sweep's contact sheet: the first page of every Z grid side by side, each under its Z value."""
    from PIL import Image

    from spo_cli import grid

    images = []
    for p in pages:
        with Image.open(p) as im:
            im.load()
            images.append(im)
    size = grid.fit(images[0].size, 2 * cell_size)
    image = grid.render([images], labels, [("", "")], size)
    return _save_grid(out, name, image, index_name, [p.name for p in pages], provenance, signer)


def _save_grid(out: Path, name: str, image, index_name: str, shown: list[str], provenance: bool, signer) -> Path:
    """A grid page or contact sheet, with its XMP (and, with `signer`, signed: a composite of generated
    images), written whole."""
    data = metadata.encode_grid(image, index_name, shown, provenance=provenance)
    if signer is not None:
        data = signer.sign_grid(data, name, metadata.grid_record(index_name, shown))
    files.atomic_write(out / name, data, overwrite=True)
    return out / name

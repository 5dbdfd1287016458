"""A sweep laid out as a comparison: compare's columns (distinct model requests) and rows (distinct
image requests), and every grid cell mapped back to its column, its row and its axis values.

The rendering is compare's, unchanged: a sweep is columns × rows, so the bank shares what columns
share, the render batches rows that share a call key, and a re-run reuses every cell whose
settings hold. Here only the layout is decided, purely (no torch, numpy or PIL):

- dims: the named axes in slot order (x, y, z), then the implicit `model` dim (today's --base/--spo/
  --model/--lora-scales columns) when no axis is named `model`;
- columns: model values × lora-scale values, deduplicated. On the lora-scale axis a column with the
  SPO LoRA takes each strength, `spo` (merged) becomes its LoRA form (SDXL base + the SPO LoRA at that
  strength), and a column with no LoRA is the same at every strength: one column, in every lora cell;
- rows: each base row (prompt × seed, build_rows) with the image axes applied in x, y, z order, each
  request checked again as a whole, deduplicated by stem;
- cells: the full product of base rows and dims, each (coords, base_row, column, row).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from spo_cli import presets, quantize, validate
from spo_cli.comparison import Column, build_columns
from spo_cli.errors import UsageError
from spo_cli.outputs import naming
from spo_cli.request import ImageTask
from spo_cli.scores.sweep import Dim, ScoredCell  # the shapes the scored summary takes
from spo_cli.sweep import axes as ax


class Cell(NamedTuple):
    coords: tuple[int, ...]  # the value index per dim, in dims order
    base_row: int  # the prompt × seed row it came from: the pairs of a comparison share it
    column: int  # compare's column (model request) ...
    row: int  # ... and row (image request): its image is cells/<column folder>/<row stem>.png


@dataclass(frozen=True)
class Page:
    """One grid page: `cells[r][c]` indexes Plan.cells."""

    name: str  # file name, e.g. fox-grid-z2-1.png
    z: int | None  # the Z value's index, None without a Z axis
    column_labels: list[str]
    row_labels: list[tuple[str, str]]  # (prompt, detail)
    cells: list[list[int]]


@dataclass(frozen=True)
class Plan:
    axes: tuple[ax.Axis, ...]
    dims: tuple[Dim, ...]
    columns: list[Column]
    rows: list[ImageTask]
    base_rows: list[ImageTask]
    cells: list[Cell]
    versus: str
    row_axes: list[dict] = field(default_factory=list)  # per row: {axis: label} of the image axes

    def dim(self, name: str) -> int:
        return [d.name for d in self.dims].index(name)

    def axis(self, slot: str) -> ax.Axis | None:
        return next((a for a in self.axes if a.slot == slot), None)

    def cell_axes(self, cell: Cell) -> dict[str, str]:
        return {d.name: d.labels[i] for d, i in zip(self.dims, cell.coords)}


def has_lora(request) -> bool:
    preset = presets.PRESETS.get(request.model)
    return bool(request.lora or (preset and preset.lora_repo))


def model_kw(value: str, where: str) -> dict:
    """One value of a `model` axis, in `spo eval --columns` grammar (base, spo, spo-lora,
    spo-lora:0.5, a repo or a folder; any of them with @fp8 after it) → build_columns' arguments for
    that one column."""
    name, q = quantize.split_suffix(value)
    if q:
        kw = model_kw(name, where)
        if kw["scales"]:
            return dict(kw, quantized=["scale:0"])
        return dict(kw, base=None, spo=None, models=[value])  # build_columns reads @fp8 on a model's name
    kw = {"base": None, "spo": None, "spo_lora": None, "models": [], "labels": [], "scales": [], "lora_scale": None}
    if value == "base":
        kw["base"] = True
    elif value == "spo":
        kw["spo"] = True
    elif value == "spo-lora" or value.startswith("spo-lora:"):
        text = value.split(":", 1)[1] if ":" in value else "1"
        try:
            scale = float(text)
        except ValueError:
            raise UsageError(f"{where}: {validate.shown(value)} has no number after 'spo-lora:'.",
                             "E.g. spo-lora:0.5.") from None
        kw["scales"] = [validate.lora_scale(scale)[0]]
    else:
        kw["models"] = [value]
    return kw


def build_models(axis: ax.Axis, common: dict, model_request: Callable, revision: str | None = None) -> list[Column]:
    """The named `model` axis' columns, one per value, in its order (`revision`: of its repo values)."""
    cols = []
    for value in axis.values:
        kw = model_kw(value, f"{axis.option} model")
        cols += build_columns(**kw, revision=revision if kw["models"] else None, common=common,
                              model_request=model_request)
    if revision and not any(model_kw(v, "")["models"] for v in axis.values):
        raise UsageError(f"--revision applies to a repo or folder on {axis.option} model, and it names none.")
    folders: dict[str, str] = {}
    for c in cols:
        if c.folder in folders:
            raise UsageError(f"Two columns would be labelled alike: '{folders[c.folder]}' and '{c.label}'.",
                             f"Name each model once on {axis.option} model.")
        folders[c.folder] = c.label
    return cols


def lora_column(column: Column, scale: float, common: dict, model_request: Callable) -> Column:
    """`column` at SPO LoRA strength `scale`: the same column when it has no LoRA."""
    if column.request.model != "spo" and not has_lora(column.request):
        return column
    [col] = build_columns(None, None, True, [], [], [], scale, None, common, model_request,
                          # a column of its own @fp8 stays so; under --quantize fp8 every column is already
                          quantized=["spo-lora"] if column.request.quantize and not common.get("quantize") else ())
    return col


def layout_columns(models: list[Column], lora: ax.Axis | None, common: dict,
                   model_request: Callable) -> tuple[list[Column], dict[tuple[int, int], int]]:
    """Columns = model values × lora-scale values, each distinct request once: (columns, {(m, l): index})."""
    columns: list[Column] = []
    where: dict[tuple[int, int], int] = {}
    by_request: dict = {}
    folders: dict[str, str] = {}
    for m, col in enumerate(models):
        for li in range(len(lora.values) if lora else 1):
            c = lora_column(col, lora.values[li], common, model_request) if lora else col
            if c.request not in by_request:
                if c.folder in folders:  # two requests, one folder: one would overwrite the other's cells
                    raise UsageError(f"Two columns would be labelled alike: '{folders[c.folder]}' and '{c.label}'.",
                                     "Give each model its own name on the model axis.")
                folders[c.folder] = c.label
                by_request[c.request] = len(columns)
                columns.append(c)
            where[(m, li)] = by_request[c.request]
    return columns, where


def bound(axes: list[ax.Axis], n_base_rows: int, n_implicit_models: int) -> int:
    """The most images a sweep can render (before equal requests merge): refused past CELLS_MAX first,
    so that no huge product is ever laid out."""
    n = n_base_rows * (n_implicit_models if not any(a.name == "model" for a in axes) else 1)
    for a in axes:
        n *= len(a.values)
    return n


def default_versus(dims: tuple[Dim, ...], axes: tuple[ax.Axis, ...], versus: str | None) -> str:
    """The dim --score compares across: the one named (it must have two values or more: the scores
    pair its values), else `model` when it has two or more, else the first axis that has (a seed
    axis last), else the X axis (which --score then refuses: scores.sweep.check_versus)."""
    names = [d.name for d in dims]
    if versus is not None:
        name = ax.canonical(versus) or versus
        if name not in names or len(dims[names.index(name)].labels) < 2:
            swept = [d.name for d in dims if len(d.labels) >= 2]
            raise UsageError(f"--versus {validate.shown(versus)} is not an axis of this sweep with two values or more.",
                             f"Name one of: {', '.join(swept)}." if swept else
                             "No axis of this sweep has two values: give one two or more, or drop --versus.")
        return name
    # Else the first axis (x, y, z) with two values or more: an X of one value has nothing to pair,
    # and --score failed on it after the whole render. A seed axis comes last: its values are
    # replicates of one setting, not settings to compare.
    swept = [d.name for d in dims if len(d.labels) >= 2]
    ranked = sorted(swept, key=lambda n: (n != "model", n == "seed"))  # stable: then slot order
    return ranked[0] if ranked else axes[0].name


def check_scored(plan: Plan, versus_given: bool) -> None:
    """--score pairs the values of one dim: with every dim of one value there is nothing to pair, and
    the scores would fail after the whole render. Said without --versus when the user gave none."""
    if not versus_given and all(len(d.labels) < 2 for d in plan.dims):
        shown = "; ".join(f"{d.name}: {', '.join(d.labels)}" for d in plan.dims)
        raise UsageError(f"--score compares the values of an axis, and no axis of this sweep has two ({shown}).",
                         "Give an axis two values or more (e.g. --x model=base,spo), or drop --score.")
    from spo_cli.scores import sweep as sweep_scores

    sweep_scores.check_versus(plan.dims, plan.versus)


def build(axes: list[ax.Axis], models: list[Column], implicit: bool, base_rows: list[ImageTask], *, common: dict,
          model_request: Callable, versus: str | None = None, yes: bool = False,
          size_limit: bool = True) -> tuple[Plan, list[str]]:
    """The sweep's plan, every check made: (plan, warnings). `models`: the model columns (the named
    axis' values, or today's columns when `implicit`); `base_rows`: build_rows' rows."""
    axes = tuple(axes)
    named = {a.name: a for a in axes}
    ax.check_count(bound(list(axes), len(base_rows), len(models) if implicit else 1), yes)
    if "prompt-sr" in named:
        ax.check_prompt_sr(named["prompt-sr"], [(f"row {i + 1}", r.request.prompt, r.request.negative_prompt)
                                                for i, r in enumerate(base_rows)])
    # What only a combination shows (a strength with no image, steps × strength that run no step, a
    # size the watermark cannot take, a prompt S/R that breaks the syntax): axes' checks, every row.
    ax.check_requests(axes, [(f"row {i + 1}", r.request) for i, r in enumerate(base_rows)], size_limit=size_limit)
    lora = named.get("lora-scale")
    if lora is not None and not any(m.request.model == "spo" or has_lora(m.request) for m in models):
        # every strength would render the same image: a grid of identical cells that reads as "no effect"
        raise UsageError(f"{lora.title} sets the SPO LoRA's strength, and no model of this sweep has one "
                         f"({', '.join(m.label for m in models)}).",
                         "Add --spo or --spo-lora (on a model axis: spo or spo-lora), or drop the lora-scale axis.")
    columns, col_of = layout_columns(models, lora, common, model_request)

    dims = [Dim(a.name, tuple(models[i].label for i in range(len(models))) if a.name == "model" else a.labels)
            for a in axes]
    if implicit:
        dims.append(Dim("model", tuple(c.label for c in models)))
    dims = tuple(dims)
    image_axes = [(k, a) for k, a in enumerate(axes) if a.name not in ax.MODEL_AXES]

    rows: list[ImageTask] = []
    row_axes: list[dict] = []
    row_of: dict[tuple[int, tuple[int, ...]], int] = {}
    stems: dict[str, int] = {}
    warnings: set[str] = {w for a in axes for w in a.warnings}
    for b, base in enumerate(base_rows):
        for combo in itertools.product(*(range(len(a.values)) for _, a in image_axes)):
            request = base.request
            for (_, a), i in zip(image_axes, combo):
                request = ax.apply(request, a, i)
            labels = {a.name: a.labels[i] for (_, a), i in zip(image_axes, combo)}
            warnings.update(validate.unsupported_syntax(request))
            stem = naming.cell_stem(request.prompt, request.seed, request.spec_hash())
            if stem not in stems:
                stems[stem] = len(rows)
                rows.append(ImageTask(request, stem))
                row_axes.append(labels)
            row_of[(b, combo)] = stems[stem]

    model_dim = [d.name for d in dims].index("model")
    lora_dim = [d.name for d in dims].index("lora-scale") if lora else None
    image_dims = [k for k, _ in image_axes]
    cells = []
    for b in range(len(base_rows)):
        for coords in itertools.product(*(range(len(d.labels)) for d in dims)):
            col = col_of[(coords[model_dim], coords[lora_dim] if lora_dim is not None else 0)]
            row = row_of[(b, tuple(coords[k] for k in image_dims))]
            cells.append(Cell(coords, b, col, row))
    plan = Plan(axes, dims, columns, rows, list(base_rows), cells, default_versus(dims, axes, versus), row_axes)
    if plan.versus == "lora-scale":  # a scored comparison of strengths, diluted by columns that have none
        same = [m.label for m in models if m.request.model != "spo" and not has_lora(m.request)]
        if same:
            warnings.add(f"--versus lora-scale: {', '.join(same)} has no LoRA, so its cells are one image at every "
                         "strength and pair as ties (win rate 0.5), pulling the overall numbers toward no "
                         "difference; read the strengths per model in the report (by model).")
    ax.check_count(len(columns) * len(rows), yes)
    return plan, sorted(warnings)


def column_axes(plan: Plan) -> list[dict[str, str]]:
    """Per column, the model and lora-scale labels of the first cell it renders; no lora-scale for a
    column without a LoRA (it is the same column at every strength)."""
    out: list[dict | None] = [None] * len(plan.columns)
    names = [d.name for d in plan.dims]
    for cell in plan.cells:
        if out[cell.column] is None:
            lora = has_lora(plan.columns[cell.column].request)
            out[cell.column] = {n: plan.dims[k].labels[cell.coords[k]] for k, n in enumerate(names)
                                if n == "model" or (n == "lora-scale" and lora)}
    return [o or {} for o in out]


def pages(plan: Plan, stem: str, rows_per_page: int) -> list[Page]:
    """The grid pages: one grid per Z value (its pages when rows_per_page splits it). Columns: the X
    values (× the implicit model columns inside each, when there are two or more); rows: the Y values
    × the base rows, Y outer."""
    names = [d.name for d in plan.dims]
    x, y, z = (plan.axis(s) for s in ("x", "y", "z"))
    xd, yd, zd = (names.index(a.name) if a else None for a in (x, y, z))
    md = names.index("model")
    inner = md if (md not in (xd, yd, zd) and len(plan.dims[md].labels) >= 2) else None
    seed_swept = any(a.name == "seed" for a in plan.axes)

    col_keys = [(i, m) for i in range(len(plan.dims[xd].labels))
                for m in (range(len(plan.dims[inner].labels)) if inner is not None else [None])]
    col_labels = [" · ".join(t for t in (plan.dims[xd].labels[i],
                                         plan.dims[inner].labels[m] if m is not None else None) if t)
                  for i, m in col_keys]
    row_keys = [(j, b) for j in (range(len(plan.dims[yd].labels)) if yd is not None else [None])
                for b in range(len(plan.base_rows))]
    index = {(c.base_row, c.coords): k for k, c in enumerate(plan.cells)}

    def coords(i, m, j, k) -> tuple[int, ...]:
        fixed = {xd: i, yd: j, zd: k, inner: m}
        return tuple(fixed.get(d, 0) for d in range(len(plan.dims)))

    out: list[Page] = []
    zs = range(len(plan.dims[zd].labels)) if zd is not None else [None]
    for k in zs:
        rows, labels = [], []
        for j, b in row_keys:
            r = plan.base_rows[b].request
            detail = [plan.dims[yd].labels[j]] if j is not None else []
            if not seed_swept:
                detail.append(f"seed {r.seed}")
            labels.append((r.prompt, " · ".join(detail)))
            rows.append([index[(b, coords(i, m, j, k))] for i, m in col_keys])
        chunks = [(rows[p:p + rows_per_page], labels[p:p + rows_per_page]) for p in range(0, len(rows), rows_per_page)]
        for n, (chunk, chunk_labels) in enumerate(chunks):
            name = f"{stem}-grid" + (f"-z{k + 1}" if k is not None else "") + (f"-{n + 1}" if len(chunks) > 1 else "")
            out.append(Page(name + ".png", k, col_labels, chunk_labels, chunk))
    return out


def _cell(request, cell_size: int) -> tuple[int, int]:
    """A row's cell in the grid (grid.fit, without PIL): its image's size shrunk to cell_size."""
    if request.width:
        w, h = request.width, request.height
    elif request.image is not None:
        w, h = request.image.width, request.image.height
    else:
        w = h = presets.DEFAULT_SIZE
    if request.hires is not None:
        w, h = round(w * request.hires.scale), round(h * request.hires.scale)
    scale = min(1.0, cell_size / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def check_pages(plan: Plan, cell_size: int, rows_per_page: int) -> None:
    """A grid page past validate.GRID_PAGE_PIXELS_MAX is refused before anything loads: the contact
    sheet could not read it back after hours of rendering, and no viewer shows it. The page is
    counted as pages() lays it out (X values × implicit models across, rows_per_page down, one
    more of each for the labels), every cell as large as the largest."""
    names = [d.name for d in plan.dims]
    x, y, z = (plan.axis(s) for s in ("x", "y", "z"))
    md = names.index("model")
    inner = len(plan.dims[md].labels) if md not in [names.index(a.name) for a in (x, y, z) if a] else 1
    across = len(x.labels) * (inner if inner >= 2 else 1)
    down = min(rows_per_page, (len(y.labels) if y else 1) * len(plan.base_rows))
    cells = [_cell(r.request, cell_size) for r in plan.rows]
    w, h = max(c[0] for c in cells), max(c[1] for c in cells)
    pixels = (across + 1) * w * (down + 1) * h
    if pixels > validate.GRID_PAGE_PIXELS_MAX:
        raise UsageError(f"A grid page of this sweep would be about {(across + 1) * w:,}×{(down + 1) * h:,} pixels "
                         f"({pixels / 1e6:,.0f} MP: {across} column(s) × {down} row(s) of {w}×{h} cells), more than "
                         f"{validate.GRID_PAGE_PIXELS_MAX / 1e6:,.0f} MP.",
                         "Lower --cell-size or --rows-per-page, narrow the X axis, or put it on Y or Z.")


def settings(column: Column, task: ImageTask) -> dict:
    """What a cell was rendered with, as the grid JSON lists it."""
    r = task.request
    scale = column.request.lora_scale
    return {"model": column.label, "lora_scale": (1.0 if scale is None else scale) if has_lora(column.request) else None,
            "prompt": r.prompt, "negative": r.negative_prompt, "seed": r.seed, "steps": r.steps,
            "guidance": r.guidance, "scheduler": r.scheduler, "width": r.width, "height": r.height,
            "prompt_syntax": r.prompt_syntax, "emphasis": r.emphasis, "strength": r.strength}


def scored_cells(plan: Plan, scores: list[list[dict | None]]) -> list[ScoredCell]:
    """The cells as scores.sweep.summarise takes them, `scores` being score_cells' [row][column] matrix."""
    return [ScoredCell(c.coords, c.base_row, plan.base_rows[c.base_row].request.prompt, scores[c.row][c.column])
            for c in plan.cells]


def labelled(plan: Plan) -> tuple[list[Column], list[ImageTask]]:
    """The columns and rows carrying their axis labels, for the cells' sidecars (extra["compare"]["axes"]:
    comparison.cell_extra): the model and lora-scale labels on a column, the image axes' on a row."""
    cols = [replace(c, axes=tuple(a.items())) for c, a in zip(plan.columns, column_axes(plan))]
    rows = [replace(r, extra={**r.extra, "axes": a}) if a else r for r, a in zip(plan.rows, plan.row_axes)]
    return cols, rows

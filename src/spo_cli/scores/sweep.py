"""The scored summary of an X/Y/Z sweep: where does one value of the compared axis (`--versus`,
e.g. the model) beat another, overall and at each value of every other axis?

A sweep's cells form a grid over its dimensions (the named axes, plus the implicit `model` one)
times its base rows (prompt × seed). Two cells form a pair when they differ only in the versus
dimension: the same base row and the same value on every other axis. Seen that way, a sweep is a
comparison whose columns are the versus values and whose rows are (other coordinates, base row),
and `scores.summary.summarise` does the rest (paired win rates and mean differences, bootstrap
intervals resampling prompts, the sign and signed-rank tests, the verdict):

- "overall": every row of the sweep;
- "by_axis": for each other dimension with two or more values, and each of its values, only the
  rows at that value (SPO against SDXL at 20 steps, at 30, ...). A dimension of one value is the
  same for every cell, so "overall" already is its only entry: it gets none.

Failed cells (scores None, or a cell not listed at all) are left out of their pairs, which the
pairs count as `dropped`; each section counts its failed cells. A versus dimension with one value
has nothing to compare: refused, naming --versus (`check_versus`, callable before anything loads).

Pure: the standard library at import; numpy (through scores.summary) when summarising, PIL when
drawing.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import NamedTuple

from spo_cli import validate
from spo_cli.errors import UsageError

__all__ = ["NOTE", "Dim", "ScoredCell", "chart", "check_versus", "markdown", "summarise"]

NOTE = ("A pair is two cells that differ only in the compared (versus) axis: the same prompt, seed and value of "
        "every other axis. 'overall' takes every such pair; 'by_axis' lists, for each other axis with two or more "
        "values, the pairs at each of its values (an axis of one value is 'overall'). Failed cells are left out "
        "of their pairs (each pair's 'dropped' counts them; 'failed' counts a section's failed cells). Bootstrap "
        "intervals resample prompts, every seed and axis value of a prompt together.")


class Dim(NamedTuple):
    """One dimension of the sweep: its name (an axis name, or "model" for the implicit model
    axis) and the label of each value, in order."""

    name: str
    labels: Sequence[str]


class ScoredCell(NamedTuple):
    """One cell: `coords[i]` indexes the value of dims[i]; `base_row` is its prompt × seed row;
    `group` its prompt (the bootstrap's cluster: give the base row's prompt, before any Prompt
    S/R, so that the cells of a pair share it); `scores` {metric: value}, None when it failed."""

    coords: tuple[int, ...]
    base_row: int
    group: Hashable
    scores: dict[str, float] | None


def check_versus(dims: Iterable[Dim], versus: str) -> int:
    """The index of the versus dimension; refused when it is no dimension of the sweep or has one
    value (nothing to compare it with). Needs only the labels: runs before anything is loaded."""
    dims = [Dim(*d) for d in dims]
    names = [d.name for d in dims]
    choices = [f"{d.name} ({len(d.labels)} values)" for d in dims if len(d.labels) >= 2]
    hint = (f"Name an axis with two or more values: {', '.join(choices)}." if choices
            else "Sweep two or more values of the axis to compare, e.g. --x model=base,spo.")
    if versus not in names:
        raise UsageError(f"--versus {validate.shown(versus)} is not an axis of this sweep (it has "
                         f"{', '.join(names) or 'none'}).", hint)
    index = names.index(versus)
    if len(dims[index].labels) < 2:
        raise UsageError(f"--versus {versus}: the {versus} axis has one value "
                         f"({validate.shown(dims[index].labels[0] if dims[index].labels else '')}), so there is "
                         "nothing to compare it with.", hint)
    return index


def _rows(dims: list[Dim], cells: Iterable[ScoredCell], v: int):
    """The sweep as a comparison: {row key: [scores per versus value]} and {row key: group}. A row
    key is (coordinates without the versus one, base row); a cell not listed stays None (failed)."""
    rows: dict[tuple, list] = {}
    groups: dict[tuple, Hashable] = {}
    seen: set[tuple] = set()
    for cell in cells:
        coords, base_row, group, values = ScoredCell(*cell)
        coords = tuple(coords)
        if len(coords) != len(dims) or not all(
                isinstance(c, int) and 0 <= c < len(d.labels) for c, d in zip(coords, dims)):
            raise ValueError(f"cell coordinates {coords!r} do not fit the dimensions "
                             f"{[(d.name, len(d.labels)) for d in dims]}")
        if (coords, base_row) in seen:
            raise ValueError(f"cell {coords!r} of base row {base_row!r} is listed twice")
        seen.add((coords, base_row))
        key = (coords[:v] + coords[v + 1:], base_row)
        if groups.setdefault(key, group) != group:
            raise ValueError(f"the cells of one pair must share their group (prompt), got {groups[key]!r} and "
                             f"{group!r}: give the base row's prompt")
        rows.setdefault(key, [None] * len(dims[v].labels))[coords[v]] = values
    return rows, groups


def summarise(dims: Sequence[Dim], cells: Iterable[ScoredCell], metrics: list[str], versus: str,
              seed: int = 0) -> dict:
    """The sweep's scored summary (see the module's docstring): JSON-ready, the same for the same
    cells in any order and the same seed."""
    from spo_cli.scores import summary

    dims = [Dim(d[0], list(d[1])) for d in dims]
    v = check_versus(dims, versus)
    columns = dims[v].labels
    if len(set(columns)) != len(columns):
        raise ValueError(f"the labels of {versus} must differ, got {columns!r}")
    rows, groups = _rows(dims, cells, v)
    # Sorted keys: the same rows in the same order whatever order the cells came in (the bootstrap
    # numbers clusters in order of first appearance, so order would otherwise move the intervals).
    keys = sorted(rows)

    def section(selected: list[tuple]) -> dict:
        chosen = [rows[k] for k in selected]
        return {**summary.summarise(columns, chosen, metrics, groups=[groups[k] for k in selected], seed=seed),
                "failed": sum(c is None for row in chosen for c in row)}

    overall = section(keys)
    by_axis: dict[str, list[dict]] = {}
    for d, dim in enumerate(dims):
        if d == v or len(dim.labels) < 2:
            continue
        at = d - (d > v)  # its place in a row key's coordinates, the versus one taken out
        entries = []
        for value, label in enumerate(dim.labels):
            part = section([k for k in keys if k[0][at] == value])
            del part["note"]  # said once, in "overall"
            entries.append({"value": label, "summary": part})
        by_axis[dim.name] = entries
    return {"versus": versus, "values": list(columns), "metrics": list(metrics),
            "dims": [{"name": d.name, "labels": d.labels} for d in dims],
            "cells": {"scored": sum(c is not None for row in rows.values() for c in row),
                      "failed": overall["failed"]},
            "overall": overall, "by_axis": by_axis, "note": NOTE}


def _md(text) -> str:
    """A table cell: labels are the user's text (a prompt, a folder), and a '|' or a line break in
    one would end the cell or the table."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").split())


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(map(_md, headers)) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(map(_md, r)) + " |" for r in rows])


def markdown(summary: dict) -> str:
    """The sweep's section of the markdown report: the overall comparison (means, pairs, the
    sentences), then one table per other axis, each value's pairs with their verdicts."""
    from spo_cli.scores import summary as words

    versus, overall = summary["versus"], summary["overall"]
    lines = [f"## Scores across the sweep: {_md(versus)} compared", "",
             (f"Compared values: {', '.join(_md(v) for v in summary['values'])}; {summary['cells']['scored']} "
              f"cell(s) scored, {summary['cells']['failed']} failed (left out of their pairs). {NOTE}"), "",
             "### All cells", ""]
    lines += _table(["value", *summary["metrics"]], words.means_rows(overall)) + [""]
    lines += _table(words.PAIR_HEADERS, words.pair_rows(overall))
    if overall["pairs"]:
        lines += ["", ("Each later value (a) against each earlier one (b), over the same prompts, seeds and "
                       "other axis values:"), ""]
        lines += [f"- {_md(c)}" for c in words.conclusions(overall)]
    for name, entries in summary["by_axis"].items():
        lines += ["", f"### By {_md(name)}", ""]
        table = [[e["value"], *row] for e in entries for row in words.pair_rows(e["summary"])]
        lines += _table([name, *words.PAIR_HEADERS], table)
        failed = [f"{_md(e['value'])}: {e['summary']['failed']}" for e in entries if e["summary"]["failed"]]
        if failed:
            lines += ["", "Failed cells (left out of their pairs): " + "; ".join(failed) + "."]
    return "\n".join(lines) + "\n"


def chart(summary: dict, dim: str):
    """A small PNG-ready chart for one axis: its values along x, each pair's win rate per metric
    with its 95 % interval, the 0.5 line (no preference). Wider with more values."""
    from spo_cli.scores import plot

    if dim not in summary["by_axis"]:
        raise ValueError(f"{dim!r} has no per-value summary (axes with one: {', '.join(summary['by_axis'])})")
    entries = summary["by_axis"][dim]
    labels = [e["value"] for e in entries]
    prefix = f"{dim}: "
    if all(label.startswith(prefix) for label in labels):  # A1111 labels: the title names the axis already
        labels = [label[len(prefix):] for label in labels]
    series = []
    first = entries[0]["summary"]["pairs"]
    for p, pair in enumerate(first):
        for metric in summary["metrics"]:
            points = []
            for e in entries:
                r = e["summary"]["pairs"][p]["metrics"][metric]
                w = r["win_rate"]
                shown = not r["too_few"] and w["low"] is not None
                points.append(None if w["value"] is None else
                              (w["value"], w["low"] if shown else None, w["high"] if shown else None))
            series.append(plot.Series(f"{pair['a']} vs {pair['b']} · {metric}", points))
    return plot.win_rates(f"{summary['versus']} compared, by {dim}", labels, series, dim)

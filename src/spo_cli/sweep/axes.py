"""Sweep axes: `--x steps=20,30,50`, `--y "prompt-sr=red fox,arctic fox"`, `--z guidance=3-7 (+2)`.

Value lists are written as in A1111's X/Y/Z plot (scripts/xyz_grid.py): comma-separated with CSV
quoting ("a, b",c), whole-number ranges `1-5` (inclusive) and `1-5 (+2)` (a signed step), and counted
ranges `10-50 [5]` (that many evenly spaced values, ends included); decimal axes take the same forms.
Each value is checked by `validate`, as the option of the same name would be, and a refusal names the
axis and the value. Pure: no torch, no numpy.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, replace

from spo_cli import validate
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest

SLOTS = ("x", "y", "z")
CELLS_MAX = 10_000  # rendered images in one sweep, unless --yes
VALUES_MAX = 1_000  # values on one axis (after ranges are laid out)
TEXT_MAX_CHARS = 100_000  # one axis as written

# Axis name → what it sets. "model" and "lora-scale" choose the column's model (compare's columns);
# the others change the image request of a row.
MODEL_AXES = ("model", "lora-scale")
IMAGE_AXES = ("steps", "guidance", "scheduler", "seed", "size", "negative", "prompt-sr", "prompt-syntax",
              "emphasis", "strength")
AXES = MODEL_AXES + IMAGE_AXES
ALIASES = {"sampler": "scheduler", "cfg": "guidance", "cfg-scale": "guidance", "denoising": "strength",
           "denoising-strength": "strength", "checkpoint": "model", "negative-prompt": "negative",
           "prompt-s/r": "prompt-sr"}
KINDS = {"steps": int, "seed": int, "guidance": float, "lora-scale": float, "strength": float}  # others: text

# The options of `spo compare` (typer parameter names) that set what an axis sweeps: an axis and the
# option together are refused, as two answers to one question.
CONFLICTS = {
    "model": ("base", "spo", "spo_lora", "model", "lora_scales", "label"),
    "lora-scale": ("lora_scale", "lora_scales"),
    "steps": ("steps",), "guidance": ("guidance",), "scheduler": ("scheduler",),
    "seed": ("seeds", "seed", "num_images"), "size": ("width", "height"), "negative": ("negative",),
    "prompt-syntax": ("prompt_syntax",), "emphasis": ("emphasis",), "strength": ("strength",), "prompt-sr": (),
}
NO_NEGATIVE = "none"  # on the negative axis: no negative prompt at all (SDXL's zeroed unconditional branch)


@dataclass(frozen=True)
class Axis:
    """One axis of a sweep, its values checked and typed: int (steps, seed), float (guidance,
    lora-scale, strength), (width, height) (size), None or text (negative), text (the others)."""

    slot: str  # "x", "y" or "z"
    name: str  # one of AXES
    values: tuple
    labels: tuple[str, ...]  # each value as the grid shows it, A1111 style: "steps: 20"

    @property
    def option(self) -> str:
        return f"--{self.slot}"


class _AxisWhere(validate.Where):
    """Messages from `validate` about one value of an axis name the axis, as the user wrote it."""

    def __init__(self, axis: Axis | None, slot: str, name: str):
        super().__init__()
        object.__setattr__(self, "_label", f"--{slot} {name}")

    def name(self, key: str) -> str:
        return f"{self._label} value"


def split_values(text: str) -> list[str]:
    """A1111's value list: CSV with quotes, each value stripped, empty values dropped."""
    rows = csv.reader(io.StringIO(text), skipinitialspace=True)
    return [v.strip() for row in rows for v in row if v.strip()]


_NUM = r"([+-]?\s*\d+(?:\.\d*)?)"
_RANGE_STEP = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}(?:\s*\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\))?\s*")
_RANGE_COUNT = re.compile(rf"\s*{_NUM}\s*-\s*{_NUM}\s*\[\s*(\d+)\s*\]\s*")


def _number(text: str, kind: type) -> int | float:
    text = text.replace(" ", "")
    return int(text) if kind is int else float(text)


def expand(values: list[str], kind: type, label: str) -> list:
    """Ranges laid out (A1111's int and float rules); other values left as text for the axis to read.
    The count is checked before a range is laid out, so no text expands into millions of values."""
    out: list = []
    for value in values:
        count = _RANGE_COUNT.fullmatch(value)
        step = None if count else _RANGE_STEP.fullmatch(value)
        if count is None and step is None:
            out.append(value)
            continue
        m = count or step
        if kind is int and any("." in (g or "") for g in m.groups()):
            raise UsageError(f"{label}: {validate.shown(value)} has a decimal point, and this axis takes whole "
                             "numbers.", "E.g. 10-50 [5], 1-5 or 1-5 (+2).")
        start, end = _number(m.group(1), kind), _number(m.group(2), kind)
        if count:
            n = int(m.group(3))
            if n < 1 or len(out) + n > VALUES_MAX:
                raise UsageError(f"{label}: {validate.shown(value)} asks for {n:,} values; an axis takes 1 to "
                                 f"{VALUES_MAX:,}.")
            # numpy.linspace's values, as A1111 computes them (ints truncated, as it does)
            spaced = [start + (end - start) * i / (n - 1) for i in range(n)] if n > 1 else [start]
            if n > 1:
                spaced[-1] = end
            out += [int(v) for v in spaced] if kind is int else [float(v) for v in spaced]
            continue
        stride = _number(m.group(3), kind) if m.group(3) else 1
        if stride == 0:
            raise UsageError(f"{label}: {validate.shown(value)} has a step of 0.", "E.g. 1-5 (+2).")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise UsageError(f"{label}: {validate.shown(value)} is not a range of finite numbers.")
        # A1111: range(start, end + 1, step) for ints, numpy.arange(start, end + step, step) for floats
        stop = end + 1 if kind is int else end + stride
        n = max(0, math.ceil((stop - start) / stride))
        if n == 0:
            raise UsageError(f"{label}: {validate.shown(value)} holds no value (a step of "
                             f"{validate.shown(stride)} never reaches {validate.shown(end)}).",
                             "Write the range from its first value to its last, e.g. 50-10 (-10).")
        if len(out) + n > VALUES_MAX:
            raise UsageError(f"{label}: {validate.shown(value)} lays out {n:,} values; an axis takes at most "
                             f"{VALUES_MAX:,}.")
        out += [start + i * stride for i in range(n)]
    return out


def canonical(name: str) -> str | None:
    name = name.strip().lower().replace("_", "-").replace(" ", "-")
    name = ALIASES.get(name, name)
    return name if name in AXES else None


def _read(name: str, raw, where: validate.Where, label: str, size_limit: bool):
    """One value of an axis, checked as its option would be: (typed value, grid label)."""
    kind = KINDS.get(name)
    if kind is not None and isinstance(raw, str):
        try:
            raw = _number(raw, kind)
        except ValueError:
            raise UsageError(f"{label}: {validate.shown(raw)} is not a {'whole number' if kind is int else 'number'}.",
                             "Give values separated by commas, or a range such as 1-5, 1-5 (+2) or 10-50 [5].") from None
    if name == "steps":
        v = validate.steps(raw, where)
    elif name == "seed":
        v = validate.seed_or_random(raw, "seed", where)
    elif name == "guidance":
        v = validate.guidance(raw, where)
    elif name == "lora-scale":
        v = validate.lora_scale(raw, where)[0]
    elif name == "strength":
        v = validate.strength(raw, "strength", where)
    elif name == "scheduler":
        v = validate.scheduler(raw, where)
    elif name == "size":
        w, h = validate.dimensions(raw, "size", where)
        validate.side(w, "width", where, size_limit=size_limit)
        validate.side(h, "height", where, size_limit=size_limit)
        v = (w, h)
        return v, f"size: {w}x{h}"
    elif name == "negative":
        v = None if raw == NO_NEGATIVE else validate.text(raw, "negative_prompt", where)
        return v, "negative: none" if v is None else f"negative: {v}"
    elif name == "prompt-sr":
        v = validate.text(raw, "prompt", where)
        return v, v
    elif name == "prompt-syntax":
        v = validate.choice(raw, "prompt_syntax", validate.PROMPT_SYNTAXES, where)
    elif name == "emphasis":
        v = validate.choice(raw, "emphasis", validate.EMPHASES, where)
    elif name == "model":
        v = validate.text(raw, "model", where, limit=validate.PATH_MAX_CHARS)
        return v, v
    else:  # pragma: no cover - AXES is the list above
        raise AssertionError(name)
    return v, f"{name}: {v:g}" if isinstance(v, float) else f"{name}: {v}"


def parse_axis(slot: str, text: str, *, size_limit: bool = True) -> Axis:
    """`--x steps=20,30,50` → Axis('x', 'steps', (20, 30, 50), ...), every value checked."""
    option = f"--{slot}"
    text = validate.text(text, slot, limit=TEXT_MAX_CHARS)
    if "=" not in text:
        raise UsageError(f"{option} {validate.shown(text)} names no axis.",
                         f"Write NAME=VALUES, e.g. {option} steps=20,30,50. Axes: {', '.join(AXES)}.")
    raw_name, values_text = text.split("=", 1)
    name = canonical(raw_name)
    if name is None:
        raise UsageError(f"{option}: {validate.shown(raw_name.strip())} is not an axis spo can sweep.",
                         f"Axes: {', '.join(AXES)}.")
    label = f"{option} {name}"
    listed = split_values(values_text)
    if not listed:
        raise UsageError(f"{label} has no values.", f"E.g. {option} {name}=…,…")
    kind = KINDS.get(name)
    listed = expand(listed, kind, label) if kind is not None else listed
    if len(listed) > VALUES_MAX:
        raise UsageError(f"{label} lists {len(listed):,} values; an axis takes at most {VALUES_MAX:,}.")
    where = _AxisWhere(None, slot, name)
    values, labels = [], []
    for raw in listed:
        v, shown = _read(name, raw, where, label, size_limit)
        if v in values and not (name == "seed" and raw in (-1, "-1")):
            raise UsageError(f"{label} lists {validate.shown(shown)} twice.", "List each value once.")
        values.append(v)
        labels.append(shown)
    return Axis(slot, name, tuple(values), tuple(labels))


def parse_axes(x: str | None, y: str | None, z: str | None, *, given: set[str] = frozenset(),
               size_limit: bool = True) -> list[Axis]:
    """The axes given, in slot order, each checked; then: one setting on two axes, an axis and an
    option that set the same thing (`given`: the compare options the user gave, typer's names),
    a Z without a Y or a Y without an X."""
    axes = [parse_axis(slot, text, size_limit=size_limit) for slot, text in zip(SLOTS, (x, y, z)) if text is not None]
    seen: dict[str, Axis] = {}
    for a in axes:
        if a.name in seen:
            raise UsageError(f"{seen[a.name].option} and {a.option} both sweep {a.name}.",
                             "Put each setting on one axis.")
        seen[a.name] = a
        clash = [o for o in CONFLICTS[a.name] if o in given]
        if clash:
            shown = ", ".join("--" + o.replace("_", "-") for o in clash)
            raise UsageError(f"{a.option} {a.name} sweeps what {shown} sets.",
                             f"Drop {shown}, or the {a.option} axis.")
    slots = [a.slot for a in axes]
    for need, slot in (("x", "y"), ("y", "z")):
        if slot in slots and need not in slots:
            raise UsageError(f"--{slot} is given without --{need}.", f"Fill --{need} first: --x, then --y, then --z.")
    return axes


def apply(request: ImageRequest, axis: Axis, i: int) -> ImageRequest:
    """`request` with value `i` of an image axis (not model or lora-scale: those choose the column).
    Prompt S/R replaces the axis' first value wherever it occurs in the prompt and the negative
    prompt, as A1111 does; its first value leaves the prompt as written."""
    v = axis.values[i]
    if axis.name == "prompt-sr":
        first = axis.values[0]
        neg = request.negative_prompt
        return replace(request, prompt=request.prompt.replace(first, v),
                       negative_prompt=neg.replace(first, v) if neg is not None else None)
    if axis.name == "size":
        return replace(request, width=v[0], height=v[1])
    field = {"negative": "negative_prompt", "prompt-syntax": "prompt_syntax"}.get(axis.name, axis.name)
    return replace(request, **{field: v})


def check_prompt_sr(axis: Axis, prompts: list[tuple[str, str, str | None]]) -> None:
    """A Prompt S/R's first value must be in every prompt it applies to (or its negative prompt), as
    A1111 requires: else every value would render the same image. `prompts`: (where, prompt, negative)."""
    first = axis.values[0]
    for where, prompt, negative in prompts:
        if first not in prompt and first not in (negative or ""):
            raise UsageError(f"{axis.option} prompt-sr: {validate.shown(first)} is not in the prompt of {where} "
                             f"({validate.shown(prompt)}).",
                             "The first value is the text to replace: it must appear in every prompt.")


def check_count(cells: int, yes: bool) -> None:
    if cells > CELLS_MAX and not yes:
        raise UsageError(f"This sweep renders {cells:,} images, more than {CELLS_MAX:,}.",
                         "Narrow an axis, or pass --yes to render them all.")

"""Sweep axes: `--x steps=20,30,50`, `--y "prompt-sr=red fox,arctic fox"`, `--z guidance=3-7 (+2)`.

Value lists are read as A1111's X/Y/Z plot reads them (scripts/xyz_grid.py, its recent versions):
CSV with quotes and `skipinitialspace` ("a, b" is one value), each value stripped, empty values
kept (Prompt S/R uses one to remove a word). Whole-number axes take `1-5` (range(1, 5 + 1)), `1-5 (+2)`
(a signed step) and `10-50 [5]` (numpy.linspace, truncated to whole numbers); decimal axes
take `1-2 (+0.25)` (numpy.arange(start, end + step, step): ends past `end` when the step does not
land on it, as A1111's does) and `3-7 [5]` (numpy.linspace), each value rounded to 8 decimals, as
A1111 shows it in the grid's labels (it renders the unrounded one: 0-1 (+0.1)'s 0.30000000000000004,
and 0.2-1 (+0.1)'s last value 1.0000000000000002, over --strength's limit). Where A1111 fails (an empty value on
a numeric axis, `1.5` on a whole-number one, a step of 0), spo refuses in one paragraph.

One reading differs: A1111 lays out a whole-number range with a negative step as
range(start, end + 1, step), which stops short of `end` (`50-10 (-10)` is 50, 40, 30, 20, while its
decimal axes give 50 … 10). spo refuses such a range rather than guess which of the two was meant,
and says how to write either.

Every value is checked by `validate`, as the option of the same name would be, and a refusal names
the axis (its slot and name) and the value. The parsers are linear in the text: a numeric value
longer than NUMBER_MAX_CHARS is refused before any pattern runs, and counts are checked before a
range is laid out. Pure: no torch, no numpy.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from spo_cli import presets, quantize, validate
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest

SLOTS = ("x", "y", "z")
CELLS_MAX = validate.SWEEP_CELLS_MAX  # rendered images in one sweep, unless --yes
CELLS_HARD_MAX = validate.SWEEP_CELLS_HARD_MAX  # rendered images in one sweep, even with --yes
VALUES_MAX = validate.AXIS_VALUES_MAX  # values on one axis (after ranges are laid out)
TEXT_MAX_CHARS = 100_000  # one axis as written (under csv's field limit, 131,072)
NUMBER_MAX_CHARS = 100  # one value of a numeric axis, a range included: longer is no number anyone types

# Axis name → what it sets. "model" and "lora-scale" choose the column's model (compare's columns);
# the others change the image request of a row.
MODEL_AXES = ("model", "lora-scale")
IMAGE_AXES = ("steps", "guidance", "scheduler", "seed", "size", "negative", "prompt-sr", "prompt-syntax",
              "emphasis", "strength")
AXES = MODEL_AXES + IMAGE_AXES
# A1111's axis labels (any case, spaces or dashes) and a few common names, for what spo calls them.
ALIASES = {"sampler": "scheduler", "cfg": "guidance", "cfg-scale": "guidance", "denoising": "strength",
           "denoising-strength": "strength", "checkpoint": "model", "checkpoint-name": "model",
           "negative-prompt": "negative", "prompt-s/r": "prompt-sr", "lora-strength": "lora-scale"}
KINDS = {"steps": int, "seed": int, "guidance": float, "lora-scale": float, "strength": float}  # others: text
# The ImageRequest field each image axis sets (size: width and height; prompt-sr: prompt and negative).
FIELDS = {"steps": ("steps",), "guidance": ("guidance",), "scheduler": ("scheduler",), "seed": ("seed",),
          "size": ("width", "height"), "negative": ("negative_prompt",), "prompt-sr": ("prompt", "negative_prompt"),
          "prompt-syntax": ("prompt_syntax",), "emphasis": ("emphasis",), "strength": ("strength",)}

# The options of `spo compare` (typer parameter names) that set what an axis sweeps: an axis and the
# option together are refused, as two answers to one question. --lora-scale with a model axis: the
# strength is written in the value (spo-lora:0.5).
CONFLICTS = {
    "model": ("base", "spo", "spo_lora", "model", "lora_scales", "label", "lora_scale"),
    "lora-scale": ("lora_scale", "lora_scales"),
    "steps": ("steps",), "guidance": ("guidance",), "scheduler": ("scheduler",),
    "seed": ("seeds", "seed", "num_images"), "size": ("width", "height"), "negative": ("negative",),
    "prompt-syntax": ("prompt_syntax",), "emphasis": ("emphasis",), "strength": ("strength",), "prompt-sr": (),
}
NO_NEGATIVE = "none"  # on the negative axis (any case): no negative prompt (SDXL's zeroed unconditional branch)
# Model values, in `spo eval --columns` grammar, and their column labels (comparison.build_columns').
MODEL_PRESETS = presets.COLUMN_LABELS
SPO_LORA = "spo-lora"


@dataclass(frozen=True)
class Axis:
    """One axis of a sweep, its values checked and typed: int (steps, seed), float (guidance,
    lora-scale, strength), (width, height) (size), None or text (negative), text (the others;
    a model value in `spo eval --columns` grammar, spo-lora's strength written as spo-lora:0.5)."""

    slot: str  # "x", "y" or "z"
    name: str  # one of AXES
    values: tuple
    labels: tuple[str, ...]  # each value as the grid shows it, A1111 style: "steps: 20"
    warnings: tuple[str, ...] = ()  # what the option would warn about (a size far from SDXL's, a LoRA past ±2)

    @property
    def option(self) -> str:
        return f"--{self.slot}"

    @property
    def title(self) -> str:
        """How messages name the axis: `--x steps`."""
        return f"--{self.slot} {self.name}"


class _AxisWhere(validate.Where):
    """Messages from `validate` about one value of an axis name the axis as the user wrote it."""

    def __init__(self, title: str):
        super().__init__()
        object.__setattr__(self, "_title", title)

    def name(self, key: str) -> str:
        if key in ("width", "height"):
            return f"{self._title} value's {key}"
        return f"{self._title} value"


# ---------------------------------------------------------------------------------------------
# A1111's value lists


def split_values(text: str) -> list[str]:
    """A1111's value list: CSV (quotes, doubled quotes, skipinitialspace), lines flattened, each value
    stripped, empty values kept ('a,,b' is three values: A1111 passes the empty one on)."""
    if not text.strip():
        return []
    return [v.strip() for row in csv.reader(io.StringIO(text), skipinitialspace=True) for v in row]


# A number as A1111's range patterns take it: a sign, spaces, digits, a decimal part. Written with the
# sign's spaces inside an optional group, so that no two `\s*` meet: the patterns never backtrack over
# a run of spaces (and never see more than NUMBER_MAX_CHARS).
_NUM = r"((?:[+-]\s*)?\d+(?:\.\d*)?)"
_STEP = r"([+-]\s*\d+(?:\.\d*)?)"  # A1111 wants the step's sign: (2) is no step
# ASCII: \d would take '١' and \s a no-break space, which the single values below do not.
_RANGE_STEP = re.compile(rf"{_NUM}\s*-\s*{_NUM}(?:\s*\(\s*{_STEP}\s*\))?", re.ASCII)
_RANGE_COUNT = re.compile(rf"{_NUM}\s*-\s*{_NUM}\s*\[\s*(\d+)\s*\]", re.ASCII)
# Single values: ASCII digits only (int() also reads '٣' and '1_000', which nobody means).
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
RANGE_HINT = "Give values separated by commas, or a range: 1-5, 1-5 (+2), 10-50 [5]."


def _number(text: str, kind: type) -> int | float:
    text = "".join(text.split())  # "- 5" in a range: A1111's pattern allows the space
    return int(text) if kind is int else float(text)


def _linspace(start, end, n: int) -> list[float]:
    """numpy.linspace(start, end, n).tolist(), operation for operation: i × step + start, the last
    value set to `end` (numpy's order of rounding, so that truncation to ints lands where A1111's does)."""
    if n == 1:
        return [float(start)]
    delta = float(end) - float(start)
    step = delta / (n - 1)
    out = [(i / (n - 1)) * delta + start if step == 0 else i * step + start for i in range(n)]
    out[-1] = float(end)
    return [float(v) for v in out]


def _arange(start: float, stop: float, step: float, n: int) -> list[float]:
    """numpy.arange(start, stop, step).tolist() (n values, counted by the caller): numpy stores start
    and start + step, then fills start + i × (second − first)."""
    if n <= 0:
        return []
    second = start + step
    delta = second - start
    return [start, second][:n] + [start + i * delta for i in range(2, n)]


def _shown(value: float) -> float:
    """A decimal range's value as the grid shows it, round(x, 8), as A1111 labels it: the cell then
    renders the value its label and sidecar say (`spo generate --strength 0.3` is that cell), and a
    range's written end is its end: A1111's 0.2-1 (+0.1) ends at 1.0000000000000002, past what
    --strength takes."""
    return round(value, 8) + 0.0  # + 0.0: -0.0 is 0


def _listing(values: range, limit: int = 6) -> str:
    shown = [str(v) for v in itertools.islice(values, limit)]
    return ",".join(shown) + (",…" if len(values) > limit else "")


def _descending(value: str, start: int, end: int, stride: int, label: str) -> None:
    """A1111's whole-number range with a negative step, range(start, end + 1, step), stops short of
    `end` (its decimal ranges do not): refused where that reading and one down to `end` differ."""
    a1111, down = range(start, end + 1, stride), range(start, end - 1, stride)
    if len(a1111) != len(down):
        raise UsageError(f"{label}: {validate.shown(value)} is {_listing(a1111)} in A1111 (range(start, end + 1, "
                         f"step) stops before {end}), and {_listing(down)} read as a range down to {end}; spo does "
                         "not guess which is meant.", f"List the values: {_listing(down)} or {_listing(a1111)}.")


def expand(values: list[str], kind: type, label: str) -> list:
    """Ranges laid out by A1111's rules for `kind` (int or float); other values left as text for the
    axis to read. Each count is checked before its range is laid out, so that no text expands into
    millions of values, and no value longer than NUMBER_MAX_CHARS reaches a pattern."""
    if len(values) > VALUES_MAX:  # before anything is read: "1,"×50,000 is refused at once
        raise UsageError(f"{label} lists {len(values):,} values; an axis takes at most {VALUES_MAX:,}.",
                         "Narrow the axis, or sweep it in parts.")
    out: list = []
    for value in values:
        if len(value) > NUMBER_MAX_CHARS:
            raise UsageError(f"{label}: {validate.shown(value)} is not a number or a range.", RANGE_HINT)
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
        if not (math.isfinite(start) and math.isfinite(end)):  # 310 digits and more: if NUMBER_MAX_CHARS grows
            raise UsageError(f"{label}: {validate.shown(value)} is not a range of finite numbers.", RANGE_HINT)
        if count:
            n = int(m.group(3))
            if n < 1 or len(out) + n > VALUES_MAX:
                raise UsageError(f"{label}: {validate.shown(value)} asks for {n:,} values; an axis takes 1 to "
                                 f"{VALUES_MAX:,} in all.", "E.g. 10-50 [5]: five values from 10 to 50.")
            spaced = _linspace(start, end, n)
            out += [int(v) for v in spaced] if kind is int else [_shown(v) for v in spaced]  # A1111: int() truncates
            continue
        stride = _number(m.group(3), kind) if m.group(3) else 1
        if stride == 0 or not math.isfinite(stride):
            raise UsageError(f"{label}: {validate.shown(value)} has a step of {stride:g}.", "E.g. 1-5 (+2).")
        if kind is int:  # A1111: range(start, end + 1, step)
            n = max(0, -((start - (end + 1)) // stride))  # len(range(...)), without laying it out
            if stride < 0 and n:
                _descending(value, start, end, stride, label)
            laid = range(start, end + 1, stride)  # lazy: laid out below, once counted
        else:  # A1111: numpy.arange(start, end + step, step), which may end past `end` (its count is a ceil)
            stop = end + stride
            ratio = (stop - start) / stride
            if not math.isfinite(ratio):  # as above: then math.ceil would raise OverflowError
                raise UsageError(f"{label}: {validate.shown(value)} lays out too many values.", RANGE_HINT)
            n = max(0, math.ceil(ratio))
            laid = None
        if n == 0:
            raise UsageError(f"{label}: {validate.shown(value)} holds no value (a step of "
                             f"{stride:g} never reaches {end:g}).",
                             "Write a range from its first value to its last, with a step of that sign: "
                             "1-5 (+2), or 5-1 (-1) on a decimal axis.")
        if len(out) + n > VALUES_MAX:
            raise UsageError(f"{label}: {validate.shown(value)} lays out {n:,} values; an axis takes at most "
                             f"{VALUES_MAX:,} in all.", "Use a larger step, or a count: 10-50 [5].")
        out += list(laid) if laid is not None else [_shown(v) for v in _arange(start, stop, stride, n)]
    return out


def canonical(name: str) -> str | None:
    """An axis name as written (`Steps`, `CFG Scale`, `prompt_sr`) → spo's name, or None."""
    name = "-".join(name.strip().lower().replace("_", " ").replace("-", " ").split())
    name = ALIASES.get(name, name)
    return name if name in AXES else None


# ---------------------------------------------------------------------------------------------
# One value, checked as its option would be


def _label_number(value: float) -> str:
    """A1111 shows round(x, 8): 0-1 (+0.1)'s 0.30000000000000004 as 0.3."""
    r = round(value, 8)
    short = f"{r:g}"
    return short if float(short) == r else repr(r)


def _typed(raw: str, kind: type, label: str):
    """A value of a numeric axis: a whole number or a decimal, ASCII, as A1111's int()/float() take it."""
    if raw == "":
        raise UsageError(f"{label} has an empty value (two commas in a row, or one at the end?).",
                         "Remove it, or put the value between the commas.")
    if len(raw) > NUMBER_MAX_CHARS or not (_INT if kind is int else _FLOAT).fullmatch(raw):
        what = "whole number" if kind is int else "number"
        hint = (f"{RANGE_HINT} A step needs its sign: 1-5 (+2)." if re.search(r"\(\s*\d", raw[:NUMBER_MAX_CHARS])
                else RANGE_HINT)
        raise UsageError(f"{label}: {validate.shown(raw)} is not a {what} or a range.", hint)
    return int(raw) if kind is int else float(raw)


def _model(raw: str, where: validate.Where, label: str) -> tuple[str, str, float | None, list[str]]:
    """A model value in `spo eval --columns` grammar: (value, column label, LoRA strength, warnings)."""
    value = validate.text(raw, "model", where, limit=validate.PATH_MAX_CHARS)
    name, q = quantize.split_suffix(value)
    if q and name:  # spo@fp8: that model under --quantize fp8, labelled as its column ("SPO-SDXL fp8")
        name, shown, scale, warnings = _model(name, where, label)
        return name + quantize.SUFFIX, f"{shown} {quantize.LABEL}", scale, warnings
    if value in MODEL_PRESETS:
        return value, MODEL_PRESETS[value], None, []
    if value == SPO_LORA or value.startswith(SPO_LORA + ":"):
        written = value.split(":", 1)[1].strip() if ":" in value else "1"
        if len(written) > NUMBER_MAX_CHARS or not _FLOAT.fullmatch(written):
            raise UsageError(f"{label}: {validate.shown(value)} needs a number after '{SPO_LORA}:'.",
                             f"E.g. {SPO_LORA}:0.5 (the SPO LoRA at half strength on SDXL base).")
        scale, warnings = validate.lora_scale(float(written), where)
        return (SPO_LORA if ":" not in value else f"{SPO_LORA}:{scale:g}" if float(f"{scale:g}") == scale
                else f"{SPO_LORA}:{scale!r}"), f"SPO LoRA x{_label_number(scale)}", scale, warnings
    shown = value.rstrip("/").split("/")[-1].strip()
    if not shown:
        raise UsageError(f"{label}: {validate.shown(value)} names no model.", "Give a preset, a Hub repo or a folder.")
    return value, shown, None, []


def _read(name: str, raw: str, where: validate.Where, label: str, size_limit: bool, first: bool):
    """One value of an axis, checked as its option would be: (typed value, grid label, warnings)."""
    kind = KINDS.get(name)
    if kind is not None and isinstance(raw, str):
        raw = _typed(raw, kind, label)
    if name == "steps":
        v = validate.steps(raw, where)
    elif name == "seed":
        v = validate.seed_or_random(raw, "seed", where)
    elif name == "guidance":
        v = validate.guidance(raw, where)
    elif name == "lora-scale":
        v, warnings = validate.lora_scale(raw, where)
        return v, f"lora-scale: {_label_number(v)}", warnings
    elif name == "strength":
        v = validate.strength(raw, "strength", where)
    elif name == "scheduler":
        v = validate.scheduler(raw, where)
    elif name == "size":
        w, h = validate.dimensions(raw, "size", where)
        warnings = validate.size(w, h, where, size_limit=size_limit)
        return (w, h), f"size: {w}x{h}", [f"{label}: {m}" for m in warnings]
    elif name == "negative":
        if raw.lower() == NO_NEGATIVE or raw == "":  # --negative "" is no negative prompt too
            return None, "negative: none", []
        v = validate.text(raw, "negative_prompt", where)
        return v, f"negative: {v}", []
    elif name == "prompt-sr":
        # The first value is what is searched for: it must be text. A later one may be empty (A1111
        # then removes the first value from the prompt).
        v = validate.text(raw, "prompt", where, empty_ok=not first)
        return v, v if v else '""', []
    elif name == "prompt-syntax":
        v = validate.choice(raw, "prompt_syntax", validate.PROMPT_SYNTAXES, where)
    elif name == "emphasis":
        v = validate.choice(raw, "emphasis", validate.EMPHASES, where)
    elif name == "model":
        v, shown, _, warnings = _model(raw, where, label)
        return v, shown, [f"{label}: {m}" for m in warnings]
    else:  # pragma: no cover - AXES is the list above
        raise AssertionError(name)
    return v, f"{name}: {_label_number(v)}" if isinstance(v, float) else f"{name}: {v}", []


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
    if not listed or not any(listed):
        raise UsageError(f"{label} has no values.", f"E.g. {option} {name}=…,… (comma-separated).")
    if len(listed) > VALUES_MAX:
        raise UsageError(f"{label} lists {len(listed):,} values; an axis takes at most {VALUES_MAX:,}.",
                         "Narrow the axis, or sweep it in parts.")
    kind = KINDS.get(name)
    listed = expand(listed, kind, label) if kind is not None else listed
    where = _AxisWhere(label)
    values, labels, warnings, scales, raws = [], [], [], [], []
    for i, raw in enumerate(listed):
        try:
            v, shown, more = _read(name, raw, where, label, size_limit, first=i == 0)
        except UsageError as e:
            if label not in e.message:  # validate.size names no option
                e.message = f"{label}: {e.message}"
            if e.hint is None:
                e.hint = f"Each value of {label} is checked as the option would check it; fix or drop this one."
            raise
        if name == "seed" and raw in (validate.SEED_RANDOM, str(validate.SEED_RANDOM)):
            for _ in range(VALUES_MAX):  # -1,-1 is two random seeds: two draws alike would be one cell twice
                if v not in values:
                    break
                v = validate.random_seed()
            shown = f"seed: {v}"
        if name == "model":  # spo-lora and spo-lora:1 are one column
            bare, q = quantize.split_suffix(v)
            lora = bare == SPO_LORA or bare.startswith(SPO_LORA + ":")  # not a repo named spo-lora-mine
            key = (SPO_LORA, float(bare.split(":", 1)[1]) if ":" in bare else 1.0, q) if lora else v
            if key in scales:
                raise UsageError(f"{label} lists {validate.shown(raw)}, the same model as an earlier value.",
                                 "List each model once.")
            scales.append(key)
        if v in values or shown in labels:
            same = v in values
            earlier = raws[values.index(v)] if same else None
            if same and str(earlier) != str(raw):  # none and "", 3 and 3.0, euler and Euler: "'' twice" misled
                raise UsageError(f"{label} lists {validate.shown(earlier)} and {validate.shown(raw)}, which are the "
                                 "same value.", "List each value once.")
            raise UsageError(f"{label} lists {validate.shown(raw)} " + (
                "twice" if same else f"and another value that the grid would label alike ({validate.shown(shown)})")
                + ".", "List each value once." if same else "Give the values apart.")
        raws.append(raw)
        values.append(v)
        labels.append(shown)
        warnings += more
    return Axis(slot, name, tuple(values), tuple(labels), tuple(dict.fromkeys(warnings)))


def one_axis(slot: str, texts: Sequence[str] | None) -> str | None:
    """The one axis given as --x (or --y, --z): given twice, the first would be dropped without a word
    (a click option keeps its last value), so that a sweep the user asked for never renders."""
    if not texts:
        return None
    if len(texts) > 1:
        raise UsageError(f"--{slot} is given {len(texts)} times ({', '.join(validate.shown(t, 40) for t in texts)}); "
                         "each slot holds one axis.",
                         "Put the other setting on the next slot: --x, then --y, then --z (one grid per Z value).")
    return texts[0]


def given_options(ctx) -> set[str]:
    """The parameters of a typer/click context that the user gave (command line or environment), as
    `parse_axes` wants them. By the source's name: typer vendors its own click, whose ParameterSource
    is not click.core's, so comparing with click's enum would call every option given."""
    return {n for n in ctx.params
            if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")}


def parse_axes(x: str | None, y: str | None, z: str | None, *, given: Iterable[str] = frozenset(),
               size_limit: bool = True) -> list[Axis]:
    """The axes given, in slot order, each checked; then: a Z without a Y or a Y without an X, one
    setting on two axes, an axis and an option that set the same thing (`given`: the compare
    options the user gave, as typer names them), a LoRA strength written in a model value beside
    a lora-scale axis."""
    texts = dict(zip(SLOTS, (x, y, z)))
    for need, slot in (("x", "y"), ("y", "z")):
        if texts[slot] is not None and texts[need] is None:
            raise UsageError(f"--{slot} is given without --{need}.", f"Fill --{need} first: --x, then --y, then --z.")
    axes = [parse_axis(slot, text, size_limit=size_limit) for slot, text in texts.items() if text is not None]
    given = set(given)
    seen: dict[str, Axis] = {}
    for a in axes:
        if a.name in seen:
            raise UsageError(f"{seen[a.name].option} and {a.option} both sweep {a.name}.",
                             "Put each setting on one axis, and list all its values there.")
        seen[a.name] = a
        clash = [o for o in CONFLICTS[a.name] if o in given]
        if clash:
            shown = ", ".join("--" + o.replace("_", "-") for o in clash)
            raise UsageError(f"{a.title} sweeps what {shown} sets: one setting cannot come from both.",
                             f"Drop {shown}, or the {a.option} axis." + (
                                 " With a model axis, write a LoRA strength as spo-lora:0.5." if a.name == "model"
                                 else ""))
    if "model" in seen and "lora-scale" in seen:
        fixed = [v for v in seen["model"].values if v.startswith(SPO_LORA + ":")]
        if fixed:
            raise UsageError(f"{seen['model'].title} value {validate.shown(fixed[0])} sets the LoRA strength that "
                             f"{seen['lora-scale'].title} sweeps.",
                             f"Write it as {SPO_LORA} (the lora-scale axis sets its strength), or drop the lora-scale "
                             "axis.")
    return axes


# ---------------------------------------------------------------------------------------------
# Image requests


def _replaced_length(text: str, old: str, new: str) -> int:
    return len(text) + text.count(old) * (len(new) - len(old))


def apply(request: ImageRequest, axis: Axis, i: int) -> ImageRequest:
    """`request` with value `i` of an image axis (not model or lora-scale: those choose the column).
    Prompt S/R replaces the axis' first value wherever it occurs in the prompt and the negative
    prompt, as A1111 does; its first value leaves the prompt as written. A replacement that would
    make a prompt longer than validate.PROMPT_MAX_CHARS is refused before it is made (one short
    word in a long prompt, replaced by a long text, would be megabytes)."""
    if axis.name not in IMAGE_AXES:
        raise ValueError(f"{axis.name} chooses the column, not the image request")
    v = axis.values[i]
    if axis.name == "prompt-sr":
        first = axis.values[0]
        neg = request.negative_prompt
        for key, text in (("prompt", request.prompt), ("negative_prompt", neg)):
            if text is not None and _replaced_length(text, first, v) > validate.PROMPT_MAX_CHARS:
                raise UsageError(
                    f"{axis.title}: {validate.shown(v)} in place of {validate.shown(first)} makes the "
                    f"{'prompt' if key == 'prompt' else 'negative prompt'} {validate.shown(text, 40)} "
                    f"{_replaced_length(text, first, v):,} characters long; the limit is "
                    f"{validate.PROMPT_MAX_CHARS:,}.", "Use shorter values, or a first value that occurs less often.")
        return replace(request, prompt=request.prompt.replace(first, v),
                       negative_prompt=neg.replace(first, v) if neg is not None else None)
    if axis.name == "size":
        return replace(request, width=v[0], height=v[1])
    return replace(request, **{FIELDS[axis.name][0]: v})


def apply_all(request: ImageRequest, axes: Sequence[Axis], coords: Sequence[int]) -> ImageRequest:
    """`request` with the image axes' values (coords[k]: the index of the value of axes[k]) applied in
    slot order; model axes are skipped (they choose the column)."""
    for axis, i in zip(axes, coords):
        if axis.name in IMAGE_AXES:
            request = apply(request, axis, i)
    return request


def check_prompt_sr(axis: Axis, prompts: list[tuple[str, str, str | None]]) -> None:
    """A Prompt S/R's first value must be in every prompt it applies to (or its negative prompt), as
    A1111 requires: else every value would render the same image. `prompts`: (where, prompt, negative)."""
    first = axis.values[0]
    for where, prompt, negative in prompts:
        if first not in prompt and first not in (negative or ""):
            raise UsageError(f"{axis.title}: {validate.shown(first)} is not in the prompt of {where} "
                             f"({validate.shown(prompt)}) nor in its negative prompt.",
                             "The first value is the text to replace: it must appear in every prompt.")


def check_count(cells: int, yes: bool) -> None:
    """A sweep of more than CELLS_MAX rendered images is refused unless --yes; one of more than
    CELLS_HARD_MAX is refused even then."""
    if cells > CELLS_HARD_MAX:
        raise UsageError(f"This sweep renders {cells:,} images, more than {CELLS_HARD_MAX:,}, which even --yes "
                         "does not allow.", "Split it into several sweeps (each re-run reuses what is rendered).")
    if cells > CELLS_MAX and not yes:
        raise UsageError(f"This sweep renders {cells:,} images, more than {CELLS_MAX:,}.",
                         "Narrow an axis, or pass --yes to render them all.")


# The image axes whose values a cell check reads (check_requests).
CHECKED_AXES = ("steps", "size", "negative", "prompt-sr", "prompt-syntax", "strength")


class _CellWhere(validate.Where):
    """Messages about a request the axes made name the swept settings by their axis (`--x steps`)
    and the others by their option, after naming the cell."""

    def __init__(self, cell: str, names: dict[str, str]):
        super().__init__()
        object.__setattr__(self, "_cell", cell)
        object.__setattr__(self, "_names", names)

    def name(self, key: str) -> str:
        return self._names.get(key) or validate.ARGV.name(key)

    def at(self) -> str:
        return f"In the cell {self._cell}: "


def check_requests(axes: Sequence[Axis], rows: Sequence[tuple[str, ImageRequest]], *,
                   size_limit: bool = True) -> None:
    """What only the combination shows, for every row (`rows`: (where, request) for each base row:
    prompt × seed, its image-to-image settings included, as build_rows makes them) under every
    combination of the image axes' values (applied in slot order, as `apply_all`):

    - a strength axis needs an input image (--image): without one there is nothing to re-draw;
    - image to image must run a step: int(steps × strength) ≥ 1 (validate.steps_run);
    - the hires fix's stretched schedule must fit (validate.hires_steps_run), and its output must grow
      and fit the size limit (validate.hires_grows, validate.size);
    - --watermark needs images of at least 256×256 (validate.watermark_size);
    - the prompts a Prompt S/R, negative or prompt-syntax value makes must be readable and within
      the limits, as --negative and the prompt are (validate.image_values).

    Each distinct request is checked once. The first problem is raised, naming the cell by its axis
    values and its row."""
    image_axes = [a for a in axes if a.name in IMAGE_AXES]
    names = {f: a.title for a in image_axes for f in FIELDS[a.name]}
    sr = next((a for a in image_axes if a.name == "prompt-sr"), None)
    if sr is not None:  # what it makes is a prompt: "the prompt --x prompt-sr makes is empty"
        names["prompt"] = f"the prompt {sr.title} makes"
        if names.get("negative_prompt") == sr.title:
            names["negative_prompt"] = f"the negative prompt {sr.title} makes"
    strength = next((a for a in image_axes if a.name == "strength"), None)
    if strength is not None:
        missing = next((w for w, r in rows if r.image is None), None)
        if missing is not None:
            raise UsageError(f"{strength.title} sets how much of an input image is re-drawn, and {missing} has no "
                             "input image.", "Add --image (a prompt file's line can give its own image).")
    # Guidance, scheduler, seed and emphasis enter no check: their values are not combined (a
    # 1000-value guidance axis multiplies no work here), and the cell is named by the values that matter.
    checked = [a for a in image_axes if a.name in CHECKED_AXES]
    seen: set = set()
    for where, base in rows:
        for coords in itertools.product(*(range(len(a.values)) for a in checked)):
            cell = " · ".join(a.labels[i] for a, i in zip(checked, coords)) + f" of {where}"
            at = _CellWhere(cell, names)
            try:
                r = apply_all(base, checked, coords)
                key = (r.prompt, r.negative_prompt, r.prompt_syntax, r.steps, r.strength, r.width, r.height,
                       r.watermark, r.hires, r.image is None)
                if key not in seen:
                    seen.add(key)
                    _check_cell(base, r, at, size_limit)
            except UsageError as e:
                if not e.message.startswith(at.at()):  # validate.size and apply name no cell
                    e.message = at.at() + e.message
                raise


def _check_cell(base: ImageRequest, r: ImageRequest, at: validate.Where, size_limit: bool) -> None:
    if (r.prompt, r.negative_prompt, r.prompt_syntax) != (base.prompt, base.negative_prompt, base.prompt_syntax):
        validate.image_values({"prompt": r.prompt, "negative_prompt": r.negative_prompt,
                               "prompt_syntax": r.prompt_syntax}, at)
    if r.image is not None:
        validate.steps_run(r.steps, r.strength, "strength", at)
    if r.hires is not None:
        from spo_cli import presets

        validate.hires_steps_run(r.hires.steps or r.steps, r.hires.strength, "hires_strength", at,
                                 steps_key="hires_steps" if r.hires.steps else "steps")
        w, h = validate.hires_grows(r.width or presets.DEFAULT_SIZE, r.height or presets.DEFAULT_SIZE,
                                    r.hires.scale, "hires", at)
        validate.size(w, h, at, size_limit=size_limit)
    if r.watermark and (r.width or r.image is None):
        # an input image's own size (no size given) was checked when the image was read
        validate.watermark_size(r.width, r.height, at)

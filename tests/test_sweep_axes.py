"""The axes of a sweep (`spo compare --x steps=20,30,50`), pure: no pipeline, no subprocess.

Value lists are A1111's (scripts/xyz_grid.py, 1.7 and later). The reference below restates its rules
with numpy, as A1111 runs them: CSV with skipinitialspace, values stripped and kept when empty;
whole-number axes: `a-b` and `a-b (+s)` are range(a, b + 1, s), `a-b [n]` is numpy.linspace
truncated by int(); decimal axes: `a-b (+s)` is numpy.arange(a, b + s, s), `a-b [n]` numpy.linspace;
anything else is int(value) or float(value). spo must give the same values wherever A1111 gives
values, and refuse (UsageError, one paragraph) where A1111 fails, plus two documented cases: a
whole-number range with a negative step whose A1111 reading stops short of its end, and a decimal
range's values rounded to 8 decimals, as A1111's labels show them (`shown`).
"""

from __future__ import annotations

import ast
import csv
import io
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import typer

from spo_cli import validate
from spo_cli.errors import UsageError
from spo_cli.request import Hires, ImageRequest, InputImage
from spo_cli.sweep import axes as A

# ---------------------------------------------------------------------------------------------
# A1111's rules, restated (the reference)

_N = r"\s*([+-]?\s*\d+)"
_F = r"\s*([+-]?\s*\d+(?:\.\d*)?)"
REF_INT_STEP = re.compile(rf"{_N}\s*-{_N}(?:\s*\(([+-]\d+)\s*\))?\s*")
REF_INT_COUNT = re.compile(rf"{_N}\s*-{_N}(?:\s*\[(\d+)\s*])?\s*")
REF_FLOAT_STEP = re.compile(rf"{_F}\s*-{_F}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
REF_FLOAT_COUNT = re.compile(rf"{_F}\s*-{_F}(?:\s*\[(\d+(?:\.\d*)?)\s*])?\s*")


def a1111(text: str, kind: type) -> list:
    """What A1111's X/Y/Z plot makes of `text` on an axis of type `kind` (raises where it fails)."""
    values = [v.strip() for v in itertools.chain.from_iterable(csv.reader(io.StringIO(text), skipinitialspace=True))]
    out = []
    for v in values:
        if kind is int:
            m, mc = REF_INT_STEP.fullmatch(v), REF_INT_COUNT.fullmatch(v)
            if m:
                out += list(range(int(m.group(1)), int(m.group(2)) + 1, int(m.group(3)) if m.group(3) else 1))
            elif mc:
                out += [int(x) for x in np.linspace(int(mc.group(1)), int(mc.group(2)),
                                                    int(mc.group(3)) if mc.group(3) else 1).tolist()]
            else:
                out.append(int(v))
        else:
            m, mc = REF_FLOAT_STEP.fullmatch(v), REF_FLOAT_COUNT.fullmatch(v)
            if m:
                start, end = float(m.group(1)), float(m.group(2))
                step = float(m.group(3)) if m.group(3) else 1
                out += np.arange(start, end + step, step).tolist()
            elif mc:
                out += np.linspace(float(mc.group(1)), float(mc.group(2)),
                                   int(mc.group(3)) if mc.group(3) else 1).tolist()
            else:
                out.append(float(v))
    return out


def shown(values: list) -> list:
    """A1111's decimal values as its grid labels show them, round(x, 8): the values spo renders."""
    return [round(v, 8) + 0.0 for v in values]


def ours(text: str, kind: type) -> list:
    """spo's values for the same text: expand's ranges, and its single values read as the axis reads them."""
    return [A._typed(v, kind, "--x test") if isinstance(v, str) else v
            for v in A.expand(A.split_values(text), kind, "--x test")]


INT_CASES = [
    "20,30,50", "1-5", "1-5 (+2)", "1-6 (+2)", "1 - 5", "1-5(+2)", "1-5  (+2)  ", " 1-5", "10-50 [5]", "10-50[5]",
    "1-10 [4]", "0-10 [4]", "-10-0 [4]", "-7-7 [4]", "5-1 [3]", "1-1 [3]", "1-3 [1]", "-5--1", "-5--1 (+2)",
    "-5-5 (+5)", "+3-+5", "5-5", "50-11 (-10)", "9-1 (-3)", "7,1-3,9", '"1-3",4', "1-3, 10-30 [3]",
    "0-1000 [7]", "3-99 [10]", "1-2 [9]",
]
FLOAT_CASES = [
    "3,5.5,7", "1-2 (+0.25)", "1-2 (+0.3)", "0-1 (+0.1)", "1-2 (+0.1)", "0.1-0.7 (+0.2)", "1-5", "3-7 [5]",
    "0-1 [7]", "0-1 [3]", "5-1 (-1)", "5-1 (-0.3)", "-1-1 (+0.5)", "-1--0.5 (+0.25)", "2.5-2.5", "2-2 [3]",
    "1.-2. (+0.5)", "0.05-0.95 (+0.15)", "7.5", "1e1", "3-7 [1]", "0-100 [11]", "1-2 (+0.7)", ".5",
]


@pytest.mark.parametrize("text", INT_CASES)
def test_whole_number_lists_and_ranges_are_a1111s(text):
    expected = a1111(text, int)
    got = ours(text, int)
    assert got == expected and all(type(v) is int for v in got), (got, expected)


@pytest.mark.parametrize("text", FLOAT_CASES)
def test_decimal_lists_and_ranges_are_a1111s_as_its_labels_show_them(text):
    expected = shown(a1111(text, float))
    got = ours(text, float)
    assert got == expected and all(type(v) is float for v in got), (got, expected)


def test_an_arange_that_does_not_land_on_the_end_overshoots_as_a1111s_does():
    assert ours("1-2 (+0.3)", float) == [1.0, 1.3, 1.6, 1.9, 2.2]  # 2.2 > 2, as in A1111
    # numpy fills start + i × (second − first): 1.9000000000000001, which A1111 renders and labels 1.9
    assert np.arange(1, 2.3, 0.3).tolist()[3] == 1.9000000000000001


def test_a_decimal_range_renders_what_its_labels_show_and_ends_where_written():
    # A1111's 0.2-1 (+0.1) ends at 1.0000000000000002: refused as a strength past 1, and its
    # 0.30000000000000004 made a cell whose sidecar said one thing and its label another.
    assert np.arange(0.2, 1.1, 0.1).tolist()[-1] == 1.0000000000000002
    strength = A.parse_axis("x", "strength=0.2-1 (+0.1)")
    assert strength.values == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert [f"strength: {v:g}" for v in strength.values] == list(strength.labels)
    assert A.parse_axis("x", "guidance=0-1 [7]").values[1] == 0.16666667  # linspace too
    assert A.parse_axis("x", "lora-scale=-0.3-0 (+0.1)").values == (-0.3, -0.2, -0.1, 0.0)


def test_a_linspace_is_truncated_toward_zero_on_whole_number_axes():
    assert ours("-7-7 [4]", int) == [-7, -2, 2, 7]  # -2.33 → -2, 2.33 → 2: int(), not floor
    assert ours("1-2 [3]", int) == [1, 1, 2]  # A1111 gives the repeat; the axis then refuses it as a duplicate


def test_every_small_range_agrees_with_a1111():
    """Every whole-number range over -6…6 with steps ±1…±3 and counts 1…7, and decimal ranges over a grid
    of awkward decimals: the same values, or (where A1111 fails or its reading stops short) a refusal."""
    checked = 0
    for a, b in itertools.product(range(-6, 7), repeat=2):
        texts = [f"{a}-{b}"] + [f"{a}-{b} ({s:+d})" for s in (1, 2, 3, -1, -2, -3)] + [f"{a}-{b} [{n}]" for n in
                                                                                     range(1, 8)]
        for text in texts:
            expected = a1111(text, int)
            down = None
            m = re.fullmatch(r"(-?\d+)-(-?\d+) \((-\d)\)", text)
            if m:  # the one divergence: refused where A1111's reading stops short of the end
                down = list(range(int(m.group(1)), int(m.group(2)) - 1, int(m.group(3))))
            if not expected or (down is not None and down != expected):
                with pytest.raises(UsageError):
                    ours(text, int)
            else:
                assert ours(text, int) == expected, text
            checked += 1
    decimals = (-2, -0.5, 0, 0.1, 0.3, 1, 1.7, 2.5)
    for a, b in itertools.product(decimals, repeat=2):
        for s in (0.1, 0.25, 0.3, 0.7, 1, -0.1, -0.3, -1):
            text = f"{a}-{b} ({s:+g})"
            expected = shown(a1111(text, float))
            if expected:
                assert ours(text, float) == expected, text
            else:
                with pytest.raises(UsageError, match="holds no value"):
                    ours(text, float)
            checked += 1
        for n in (1, 2, 3, 7):
            text = f"{a}-{b} [{n}]"
            assert ours(text, float) == shown(a1111(text, float)), text
    assert checked > 1500


def test_a_whole_number_range_down_whose_a1111_reading_stops_short_is_refused_with_both_readings():
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", "steps=50-10 (-10)")
    said = e.value.paragraph()
    assert "--x steps: '50-10 (-10)' is 50,40,30,20 in A1111" in said and "50,40,30,20,10" in said, said
    assert A.parse_axis("x", "steps=50-11 (-10)").values == (50, 40, 30, 20)  # both readings agree
    assert A.parse_axis("x", "guidance=5-1 (-1)").values == (5.0, 4.0, 3.0, 2.0, 1.0)  # decimals go down to the end


@pytest.mark.parametrize("text, says", [
    ("", "has no values"), (",", "has no values"), ("20,,30", "empty value"), ("20,30,", "empty value"),
    ("1.5", "not a whole number"), ("1-5 (2)", "A step needs its sign"), ("1-5 (+0)", "step of 0"),
    ("1.5-3", "decimal point"), ("10-50 [0]", "asks for 0 values"), ("5-1", "holds no value"),
    ("1-5 (-1)", "holds no value"), ("1_000", "not a whole number"), ("٣", "not a whole number"),
    ("20.0", "not a whole number"), ("1-1000000", "lays out 1,000,000 values"), ("1-2 [1001]", "asks for 1,001"),
    ("1-5 [2.5]", "not a whole number"), ("x", "not a whole number"), ("١-٥", "not a whole number"),
    ("1-\u00a05", "not a whole number"), ("1-5 (+\u0662)", "not a whole number"), ("1.-2. (+.5)", "not a whole number"),
])
def test_what_a1111_fails_on_is_refused_on_a_whole_number_axis(text, says):
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", f"seed={text}")
    assert says in e.value.paragraph(), e.value.paragraph()


@pytest.mark.parametrize("text, says", [
    ("nan", "not a number"), ("inf", "not a number"), ("1e999", "finite"), ("0-1 (+0.0)", "step of 0"),
    ("1,,2", "empty value"), ("1-2 (+.5)", "not a number"), ("0-1 (+0.000001)", "lays out 1,000,001"), ("1-2 (-0.5)", "holds no value"),
])
def test_what_a1111_fails_on_is_refused_on_a_decimal_axis(text, says):
    with pytest.raises(UsageError, match=re.escape(says)):
        A.parse_axis("x", f"lora-scale={text}")


def test_values_are_csv_as_a1111_reads_them():
    assert A.split_values('a, "b, c",d') == ["a", "b, c", "d"]  # skipinitialspace: the quote opens a field
    assert A.split_values('"say ""hi""", x') == ['say "hi"', "x"]
    assert A.split_values("a,,b") == ["a", "", "b"]  # kept: Prompt S/R removes a word with one
    assert A.split_values("a\nb") == ["a", "b"]  # lines are flattened
    assert A.split_values("   ") == [] and A.split_values('"unterminated') == ["unterminated"]
    axis = A.parse_axis("y", 'prompt-sr=red fox,"fox, arctic",')
    assert axis.values == ("red fox", "fox, arctic", "") and axis.labels == ("red fox", "fox, arctic", '""')


# ---------------------------------------------------------------------------------------------
# Hostile text: bounded work, bounded output


class _Counting:
    """A compiled pattern that adds up the characters it is given: the parsers' work."""

    def __init__(self, pattern, seen: list):
        self.pattern, self.seen = pattern, seen

    def fullmatch(self, text, *args):
        self.seen.append(len(text))
        return self.pattern.fullmatch(text, *args)

    def search(self, text, *args):
        self.seen.append(len(text))
        return self.pattern.search(text, *args)


HOSTILE = {  # each exactly as long as an axis may be, after "NAME="
    "ranges run together": lambda room: "1-" * (room // 2),
    "quotes": lambda room: '"' * room,
    "a run of spaces in a range": lambda room: "1 -" + " " * (room - 4) + "x",
    "a run of spaces after a sign": lambda room: "1-+" + " " * (room - 4) + "5",
    "a count of 99,990 digits": lambda room: "1-5 [" + "9" * (room - 6) + "]",
    "a step of 99,990 digits": lambda room: "1-5 (+" + "9" * (room - 7) + ")",
    "a number of 99,990 digits": lambda room: "9" * room,
    "commas": lambda room: "," * room,
    "values": lambda room: "1," * (room // 2),
    "brackets": lambda room: "(" * room,
}


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize("axis", ["steps", "guidance", "seed", "scheduler", "size", "model", "negative", "prompt-sr",
                                  "emphasis"])
def test_a_hostile_axis_of_100000_characters_is_refused_after_linear_work(monkeypatch, name, axis):
    text = HOSTILE[name](A.TEXT_MAX_CHARS - len(axis) - 1)
    assert A.TEXT_MAX_CHARS - 1 <= len(f"{axis}={text}") <= A.TEXT_MAX_CHARS
    seen: list[int] = []
    for attr in ("_RANGE_STEP", "_RANGE_COUNT", "_INT", "_FLOAT"):
        monkeypatch.setattr(A, attr, _Counting(getattr(A, attr), seen))
    laid: list[int] = []
    real = (A._arange, A._linspace)
    monkeypatch.setattr(A, "_arange", lambda s, stop, step, n: laid.append(n) or real[0](s, stop, step, n))
    monkeypatch.setattr(A, "_linspace", lambda s, e, n: laid.append(n) or real[1](s, e, n))
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", f"{axis}={text}")
    assert len(e.value.paragraph()) < 1200 and "\n" not in e.value.paragraph()  # the value quoted, cut short
    # No pattern saw more than NUMBER_MAX_CHARS of a value, nor more than the text in all; nothing
    # was laid out past VALUES_MAX.
    assert all(n <= A.NUMBER_MAX_CHARS for n in seen) and sum(seen) <= len(text) + 200, (max(seen, default=0),
                                                                                          sum(seen))
    assert sum(laid) <= A.VALUES_MAX


def test_expand_counts_the_values_before_it_reads_one(monkeypatch):
    seen: list[int] = []
    monkeypatch.setattr(A, "_RANGE_COUNT", _Counting(A._RANGE_COUNT, seen))
    with pytest.raises(UsageError, match="--x steps lists 1,001 values"):
        A.expand(["1-2"] * 1001, int, "--x steps")
    assert seen == []


def test_ranges_past_a_float_are_refused_should_numbers_grow_longer(monkeypatch):
    monkeypatch.setattr(A, "NUMBER_MAX_CHARS", 1000)
    with pytest.raises(UsageError, match="not a range of finite numbers"):
        A.expand(["1-" + "9" * 400], float, "--x guidance")
    with pytest.raises(UsageError, match="lays out too many values"):
        A.expand([f"-{'9' * 300}-{'9' * 300} (+0.{'0' * 300}1)"], float, "--x guidance")


def test_an_axis_longer_than_its_limit_is_refused_before_it_is_read():
    with pytest.raises(UsageError, match="100,001 characters long; the limit is 100,000"):
        A.parse_axis("x", "steps=" + "1" * (A.TEXT_MAX_CHARS - 5))


def test_values_are_counted_before_they_are_read_or_laid_out(monkeypatch):
    calls = []
    with monkeypatch.context() as m:
        m.setattr(A, "_read", lambda *a, **k: calls.append(a))
        with pytest.raises(UsageError, match="lists 1,001 values; an axis takes at most 1,000"):
            A.parse_axis("x", "prompt-sr=" + ",".join(f"v{i}" for i in range(1001)))
        with pytest.raises(UsageError, match="lays out 1,000 values; an axis takes at most 1,000 in all"):
            A.parse_axis("x", "steps=1,1-1000")  # the count, the values before it included
    assert calls == []
    assert len(A.parse_axis("x", "steps=1-1000").values) == A.VALUES_MAX


def test_text_values_are_held_to_their_options_limits():
    with pytest.raises(UsageError, match="--x negative value is 10,001 characters long; the limit is 10,000"):
        A.parse_axis("x", "negative=" + "a" * 10_001)
    with pytest.raises(UsageError, match="--x model value is 4,097 characters long"):
        A.parse_axis("x", "model=base," + "a" * 4097)
    with pytest.raises(UsageError, match="NUL"):
        A.parse_axis("x", "prompt-sr=fox,c\0t")


def test_axes_is_pure():
    """No numpy, torch or PIL: the CLI reads the axes before anything heavy is imported."""
    tree = ast.parse(Path(A.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"numpy", "torch", "PIL", "diffusers"}, imported


# ---------------------------------------------------------------------------------------------
# Each value checked as its option


@pytest.mark.parametrize("text, values, labels", [
    ("steps=20,30,50", (20, 30, 50), ("steps: 20", "steps: 30", "steps: 50")),
    ("Steps=10-50 [5]", (10, 20, 30, 40, 50), None),
    ("guidance=0-1 (+0.5)", (0.0, 0.5, 1.0), ("guidance: 0", "guidance: 0.5", "guidance: 1")),
    ("CFG Scale=0-0.3 (+0.1)", (0.0, 0.1, 0.2, 0.3), (
        "guidance: 0", "guidance: 0.1", "guidance: 0.2", "guidance: 0.3")),  # A1111's 0.30000000000000004, as shown
    ("lora-scale=-1-1 [3]", (-1.0, 0.0, 1.0), ("lora-scale: -1", "lora-scale: 0", "lora-scale: 1")),
    ("denoising=0.25,1", (0.25, 1.0), ("strength: 0.25", "strength: 1")),
    ("sampler=DPM++ 2M Karras, euler", ("dpm++2m-karras", "euler"), ("scheduler: dpm++2m-karras", "scheduler: euler")),
    ("seed=0-2,4294967295", (0, 1, 2, 4294967295), None),
    ("size=512x512,1024x768", ((512, 512), (1024, 768)), ("size: 512x512", "size: 1024x768")),
    ("negative=none, ugly, blurry", (None, "ugly", "blurry"), ("negative: none", "negative: ugly", "negative: blurry")),
    ("negative=,ugly", (None, "ugly"), None),
    ("Prompt S/R=red,blue,", ("red", "blue", ""), ("red", "blue", '""')),
    ("prompt_syntax=plain,a1111", ("plain", "a1111"), ("prompt-syntax: plain", "prompt-syntax: a1111")),
    ("emphasis=original,none-norm", ("original", "none-norm"), None),
    ("model=spo-lora,spo-lora-mine,spo-lora:2", ("spo-lora", "spo-lora-mine", "spo-lora:2"), (
        "SPO LoRA x1", "spo-lora-mine", "SPO LoRA x2")),
    ("checkpoint=base,spo,spo-lora:.5,spo-lora,org/my-sdxl/,./mine",
     ("base", "spo", "spo-lora:0.5", "spo-lora", "org/my-sdxl/", "./mine"),
     ("SDXL base", "SPO-SDXL", "SPO LoRA x0.5", "SPO LoRA x1", "my-sdxl", "mine")),
])
def test_each_axis_reads_its_values_as_its_option(text, values, labels):
    axis = A.parse_axis("x", text)
    assert axis.values == values
    assert labels is None or axis.labels == labels
    assert len(set(axis.labels)) == len(axis.labels)


def test_a_random_seed_is_drawn_and_recorded_each_time_it_is_listed():
    axis = A.parse_axis("x", "seed=-1,-1,7")
    assert len(axis.values) == 3 and axis.values[2] == 7 and axis.values[0] != axis.values[1]
    assert all(0 <= s <= validate.SEED_MAX for s in axis.values) and axis.labels[0] == f"seed: {axis.values[0]}"


def test_random_seeds_drawn_alike_are_drawn_again(monkeypatch):
    draws = iter([5, 5, 7, 5, 7, 7, 9])
    monkeypatch.setattr(validate, "random_seed", lambda: next(draws))
    axis = A.parse_axis("x", "seed=-1,-1,-1")
    assert axis.values == (5, 7, 9) and axis.labels == ("seed: 5", "seed: 7", "seed: 9")
    with pytest.raises(UsageError, match="--x seed lists '5' twice"):  # a seed written twice is not drawn
        A.parse_axis("x", "seed=5,5")


@pytest.mark.parametrize("text, says", [
    ("steps=20,0", "--x steps value must be from 1 to 1,000, not 0"),
    ("steps=1001", "--x steps value must be from 1 to 1,000, not 1,001"),
    ("seed=4294967296", "--x seed value must be from 0 to 4,294,967,295, not 4,294,967,296"),
    ("seed=-2", "--x seed value must be from 0"),
    ("guidance=101", "--x guidance value must be from 0 to 100, not 101"),
    ("guidance=-0.5", "--x guidance value must be from 0 to 100, not -0.5"),
    ("strength=0", "--x strength value must be over 0"),
    ("strength=1.5", "--x strength value must be over 0 (0 would give back the input unchanged) and at most 1"),
    ("lora-scale=1e999", "--x lora-scale value must be a finite number"),
    ("scheduler=euler,warp-drive", "--x scheduler value cannot be 'warp-drive'"),
    ("size=512", "--x size value must be WIDTHxHEIGHT such as 1024x1024, not '512'"),
    ("size=513x512", "--x size value's width must be a positive multiple of 8, not 513"),
    ("size=512x8192", "--x size value's height is 8192 pixels; the limit is 4096"),
    ("size=4096x4096", "--x size: 4096×4096 is 16.8 megapixels; the limit is 4.2"),
    ("size=١٠٢٤x1024", "--x size value must be WIDTHxHEIGHT"),
    # '' is no negative prompt, as none is
    ("negative=none,  ,ugly", "--x negative lists 'none' and '', which are the same value"),
    ("prompt-sr=,fox", "--x prompt-sr value is empty"),  # the first value is what is searched for
    ("prompt-syntax=auto,A1111", "--x prompt-syntax value cannot be 'A1111'"),
    ("emphasis=strong", "--x emphasis value cannot be 'strong'"),
    ("model=spo-lora:half", "--x model: 'spo-lora:half' needs a number after 'spo-lora:'"),
    ("model=spo-lora:inf", "--x model: 'spo-lora:inf' needs a number"),
    ("model=/", "--x model: '/' names no model"),
])
def test_a_bad_value_is_refused_naming_the_slot_the_axis_and_the_value_with_a_hint(text, says):
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", text)
    said = e.value.paragraph()
    assert said.startswith(says) and e.value.hint and "\n" not in said, said


@pytest.mark.parametrize("text, says", [
    ("steps=20,30,20", "--x steps lists '20' twice"),
    ("guidance=0.5,.5", "--x guidance lists '0.5' and '.5', which are the same value"),
    ("guidance=1-2 (+0.5),1.5", "--x guidance lists '1.5' twice"),
    # A1111's name of the same scheduler
    ("scheduler=euler,Euler", "--x scheduler lists 'euler' and 'Euler', which are the same value"),
    ("negative=none,NONE", "--x negative lists 'none' and 'NONE', which are the same value"),
    ("steps=2,2", "--x steps lists '2' twice"),
    ("prompt-sr=fox,fox", "--x prompt-sr lists 'fox' twice"),
    ("model=spo-lora,spo-lora:1", "--x model lists 'spo-lora:1', the same model as an earlier value"),
    ("model=a/x,b/x", "--x model lists 'b/x' and another value that the grid would label alike ('x')"),
    ("guidance=0.3,0-0.3 (+0.1)", "--x guidance lists 0.3 twice"),
    ("guidance=0.3,0.300000001", ("--x guidance lists '0.300000001' and another value that the grid would label "
                                  "alike ('guidance: 0.3')")),
    ("size=512x512, 512x512", "--x size lists '512x512' twice"),
    ("steps=1-2 [3]", "--x steps lists 1 twice"),
])
def test_a_value_listed_twice_is_refused(text, says):
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", text)
    assert e.value.paragraph().startswith(says), e.value.paragraph()


def test_what_the_option_warns_about_the_axis_warns_about():
    assert A.parse_axis("x", "lora-scale=0,3").warnings == (
        "--x lora-scale value 3 is outside ±2, where LoRAs usually break the image.",)
    assert "--x size: 512×512 is far from SDXL's training size" in A.parse_axis("x", "size=512x512").warnings[0]
    assert A.parse_axis("x", "size=1024x1024").warnings == ()
    assert A.parse_axis("x", "size=8192x8192", size_limit=False).values == ((8192, 8192),)  # --no-size-limit


@pytest.mark.parametrize("text, says", [
    ("steps", "--x 'steps' names no axis. Write NAME=VALUES"),
    ("colour=red", "--x: 'colour' is not an axis spo can sweep. Axes: model, lora-scale, steps"),
    ("=1,2", "--x: '' is not an axis"),
])
def test_an_axis_that_is_no_axis_is_refused(text, says):
    with pytest.raises(UsageError) as e:
        A.parse_axis("x", text)
    assert e.value.paragraph().startswith(says), e.value.paragraph()


@pytest.mark.parametrize("written, name", [
    ("Steps", "steps"), ("CFG Scale", "guidance"), ("Sampler", "scheduler"), ("Prompt S/R", "prompt-sr"),
    ("Checkpoint name", "model"), ("Denoising", "strength"), ("prompt_syntax", "prompt-syntax"),
    (" Lora-Scale ", "lora-scale"), ("negative prompt", "negative"), ("Seed", "seed"),
])
def test_a1111s_axis_names_are_spos(written, name):
    assert A.canonical(written) == name


# ---------------------------------------------------------------------------------------------
# Axes together, and with the options


def test_the_axes_come_in_slot_order_and_each_fills_the_one_before():
    got = A.parse_axes("steps=1,2", "guidance=3,4", "seed=1,2")
    assert [(a.slot, a.name) for a in got] == [("x", "steps"), ("y", "guidance"), ("z", "seed")]
    assert A.parse_axes(None, None, None) == []
    for x, y, z, says in [(None, "steps=1", None, "--y is given without --x"),
                          ("steps=1", None, "seed=1", "--z is given without --y")]:
        with pytest.raises(UsageError, match=says):
            A.parse_axes(x, y, z)


def test_one_setting_on_two_axes_is_refused_whatever_it_is_called():
    with pytest.raises(UsageError) as e:
        A.parse_axes("sampler=euler", "steps=1,2", "scheduler=ddim")
    assert e.value.paragraph() == ("--x and --z both sweep scheduler. Put each setting on one axis, and list all its "
                                   "values there.")


def test_compare_has_every_option_an_axis_conflicts_with():
    from spo_cli.cli import app

    params = {p.name for p in typer.main.get_command(app).commands["compare"].params}
    named = {o for options in A.CONFLICTS.values() for o in options}
    assert named <= params, named - params
    assert set(A.CONFLICTS) == set(A.AXES)


@pytest.mark.parametrize("axis, option", [(a, o) for a, options in A.CONFLICTS.items() for o in options])
def test_an_axis_and_an_option_that_set_the_same_thing_are_refused(axis, option):
    value = {"model": "base,spo", "size": "512x512", "negative": "ugly", "prompt-syntax": "plain",
             "emphasis": "none-norm", "scheduler": "euler"}.get(axis, "0.5" if axis in ("strength", "lora-scale")
                                                                 else "3")
    with pytest.raises(UsageError) as e:
        A.parse_axes(f"{axis}={value}", None, None, given={option, "out", "prompt"})
    flag = "--" + option.replace("_", "-")
    assert e.value.paragraph().startswith(f"--x {axis} sweeps what {flag} sets"), e.value.paragraph()
    A.parse_axes(f"{axis}={value}", None, None, given={"out", "prompt"})  # alone: fine


def test_the_options_given_are_those_typed_not_their_defaults():
    from typer.testing import CliRunner

    seen = []
    demo = typer.Typer()

    @demo.command()
    def run(ctx: typer.Context, steps: int = 30, seed: int = 0, negative: str = "",
            x: str = typer.Option(None, "--x")):
        seen.append(A.given_options(ctx))

    @demo.command()
    def other():  # two commands: typer then parses a subcommand, as spo's app does
        pass

    assert CliRunner().invoke(demo, ["run", "--x", "steps=1,2", "--seed", "0"]).exit_code == 0
    assert seen == [{"x", "seed"}]  # --seed 0 is given, though 0 is its default


def test_a_strength_written_in_a_model_value_beside_a_lora_scale_axis_is_refused():
    with pytest.raises(UsageError, match="--x model value 'spo-lora:0.5' sets the LoRA strength that --y lora-scale "
                                         "sweeps"):
        A.parse_axes("model=base,spo-lora:0.5", "lora-scale=0.5,1", None)
    assert len(A.parse_axes("model=base,spo-lora", "lora-scale=0.5,1", None)) == 2


def test_a_sweep_over_cells_max_needs_yes():
    A.check_count(A.CELLS_MAX, yes=False)
    A.check_count(A.CELLS_MAX + 1, yes=True)
    A.check_count(A.CELLS_HARD_MAX, yes=True)
    with pytest.raises(UsageError, match="which even --yes does not allow"):  # laid out in memory before any render
        A.check_count(A.CELLS_HARD_MAX + 1, yes=True)
    with pytest.raises(UsageError) as e:
        A.check_count(A.CELLS_MAX + 1, yes=False)
    assert e.value.paragraph() == ("This sweep renders 10,001 images, more than 10,000. Narrow an axis, or pass --yes "
                                   "to render them all.")


# ---------------------------------------------------------------------------------------------
# Applying image axes


FOX = ImageRequest(prompt="a red fox, red fur", seed=1, negative_prompt="red eyes", steps=4, width=64, height=64)


def test_each_image_axis_sets_its_field():
    cases = {"steps=2,3": ("steps", 3), "guidance=3,7": ("guidance", 7.0), "scheduler=euler,ddim": ("scheduler", "ddim"),
             "seed=5,6": ("seed", 6), "negative=ugly,none": ("negative_prompt", None),
             "prompt-syntax=a1111,plain": ("prompt_syntax", "plain"), "emphasis=original,none-norm": ("emphasis",
                                                                                                      "none-norm"),
             "strength=0.5,0.75": ("strength", 0.75)}
    for text, (field, value) in cases.items():
        got = A.apply(FOX, A.parse_axis("x", text), 1)
        assert getattr(got, field) == value and got.prompt == FOX.prompt, text
    sized = A.apply(FOX, A.parse_axis("x", "size=64x64,128x96"), 1)
    assert (sized.width, sized.height) == (128, 96)
    assert set(A.FIELDS) == set(A.IMAGE_AXES)


def test_prompt_sr_replaces_every_occurrence_in_the_prompt_and_the_negative_as_a1111():
    axis = A.parse_axis("x", "prompt-sr=red,blue,")
    assert A.apply(FOX, axis, 0) == FOX  # the first value leaves the prompt as written
    blue = A.apply(FOX, axis, 1)
    assert (blue.prompt, blue.negative_prompt) == ("a blue fox, blue fur", "blue eyes")
    gone = A.apply(FOX, axis, 2)
    assert (gone.prompt, gone.negative_prompt) == ("a  fox,  fur", " eyes")
    no_negative = A.apply(ImageRequest(prompt="red", seed=0), axis, 1)
    assert no_negative.negative_prompt is None


def test_a_model_axis_is_not_applied_to_an_image_request():
    with pytest.raises(ValueError):
        A.apply(FOX, A.parse_axis("x", "model=base,spo"), 1)
    axes = A.parse_axes("model=base,spo", "steps=2,3", "prompt-sr=red,green")
    assert A.apply_all(FOX, axes, (1, 1, 1)) == A.apply(A.apply(FOX, axes[1], 1), axes[2], 1)


def test_a_prompt_sr_that_would_blow_a_prompt_up_is_refused_before_it_is_made():
    long = ImageRequest(prompt="a " * 4_000, seed=0)  # 4,000 'a's
    axis = A.parse_axis("x", f"prompt-sr=a,{'b' * 9_000}")  # 36 MB if made
    with pytest.raises(UsageError, match="makes the prompt .* 36,004,000 characters long; the limit is 10,000"):
        A.apply(long, axis, 1)


def test_prompt_sr_must_find_its_first_value_in_every_prompt():
    axis = A.parse_axis("x", "prompt-sr=fox,cat")
    A.check_prompt_sr(axis, [("the prompt", "a fox", None), ("p.txt:2", "a dog", "no fox")])
    with pytest.raises(UsageError) as e:
        A.check_prompt_sr(axis, [("the prompt", "a fox", None), ("p.txt:3", "a dog", "ugly")])
    assert e.value.paragraph() == ("--x prompt-sr: 'fox' is not in the prompt of p.txt:3 ('a dog') nor in its "
                                   "negative prompt. The first value is the text to replace: it must appear in every "
                                   "prompt.")


# ---------------------------------------------------------------------------------------------
# What only a cell shows


PIC = InputImage(path="/tmp/fox.png", sha256="0" * 64, width=64, height=64, bytes=100)
EDIT = ImageRequest(prompt="a fox", seed=1, steps=4, width=64, height=64, image=PIC, strength=0.5)


def _refusal(axes, rows, **kw) -> str:
    with pytest.raises(UsageError) as e:
        A.check_requests(axes, rows, **kw)
    return e.value.paragraph()


def test_a_strength_axis_needs_an_input_image():
    axes = A.parse_axes("strength=0.5,1", None, None)
    A.check_requests(axes, [("'a fox' seed 1", EDIT)])
    assert _refusal(axes, [("'a fox' seed 1", EDIT), ("p.txt:2 seed 1", FOX)]) == (
        "--x strength sets how much of an input image is re-drawn, and p.txt:2 seed 1 has no input image. Add "
        "--image (a prompt file's line can give its own image).")


def test_steps_times_strength_must_run_a_step_in_every_cell():
    axes = A.parse_axes("steps=4,1", "strength=0.5,1", None)
    said = _refusal(axes, [("'a fox' seed 1", EDIT)])
    assert said.startswith("In the cell steps: 1 · strength: 0.5 of 'a fox' seed 1: --y strength 0.5 with 1 --x steps "
                           "runs 0.50 denoising steps, which is none"), said
    assert "Raise --x steps to at least 2" in said
    A.check_requests(A.parse_axes("steps=4,2", "strength=0.5,1", None), [("'a fox' seed 1", EDIT)])
    # the option's strength, the axis' steps
    said = _refusal(A.parse_axes("steps=4,1", None, None), [("'a fox' seed 1", EDIT)])
    assert said.startswith("In the cell steps: 1 of 'a fox' seed 1: --strength 0.5 with 1 --x steps runs 0.50"), said


def test_a_size_axis_too_small_for_the_watermark_is_refused():
    axes = A.parse_axes("size=256x256,128x128", None, None)
    marked = ImageRequest(prompt="a fox", seed=1, watermark=True)
    said = _refusal(axes, [("'a fox' seed 1", marked)])
    assert said.startswith("In the cell size: 128x128 of 'a fox' seed 1: 128×128 is too small for --watermark"), said
    A.check_requests(axes, [("'a fox' seed 1", ImageRequest(prompt="a fox", seed=1))])


def test_the_prompts_an_axis_makes_are_checked_as_the_options_are():
    fox = ImageRequest(prompt="a fox", seed=1)
    said = _refusal(A.parse_axes("prompt-sr=a fox,", None, None), [("'a fox' seed 1", fox)])
    assert said.startswith('In the cell "" of \'a fox\' seed 1: the prompt --x prompt-sr makes is empty'), said
    said = _refusal(A.parse_axes("negative=none,(ugly:1.2.3)", None, None), [("'a fox' seed 1", fox)])
    assert said.startswith("In the cell negative: (ugly:1.2.3) of 'a fox' seed 1: --x negative cannot be read as "
                           "A1111 prompt syntax"), said
    # plain text reads anything; the same prompt under a1111 does not
    odd = ImageRequest(prompt="a (fox:1.2.3)", seed=1, prompt_syntax="plain")
    A.check_requests(A.parse_axes("steps=1,2", None, None), [("p", odd)])
    said = _refusal(A.parse_axes("prompt-syntax=plain,a1111", None, None), [("p", odd)])
    assert said.startswith("In the cell prompt-syntax: a1111 of p: --prompt cannot be read as A1111"), said


def test_a_size_axis_under_the_hires_fix_must_grow_and_fit():
    hires = ImageRequest(prompt="a fox", seed=1, steps=4, hires=Hires(1.01))
    said = _refusal(A.parse_axes("size=1024x1024,64x64", None, None), [("p", hires)])
    assert said.startswith("In the cell size: 64x64 of p: --hires 1.01 makes no larger image from 64×64"), said
    big = ImageRequest(prompt="a fox", seed=1, steps=4, hires=Hires(2.0))
    said = _refusal(A.parse_axes("size=1024x1024,2048x2048", None, None), [("p", big)])
    assert said.startswith("In the cell size: 2048x2048 of p: 4096×4096 is 16.8 megapixels"), said
    A.check_requests(A.parse_axes("size=1024x1024,2048x2048", None, None), [("p", big)], size_limit=False)
    said = _refusal(A.parse_axes("steps=4,900", None, None), [("p", ImageRequest(prompt="a fox", seed=1, hires=Hires(
        2.0, strength=0.5)))])
    assert "In the cell steps: 900 of p: --hires-strength 0.5 with 900 --x steps stretches" in said, said


def test_each_distinct_request_is_checked_once_and_axes_no_check_reads_multiply_no_work(monkeypatch):
    calls, applied = [], []
    real = validate.steps_run, A.apply
    monkeypatch.setattr(validate, "steps_run", lambda *a, **k: calls.append(a) or real[0](*a, **k))
    monkeypatch.setattr(A, "apply", lambda *a, **k: applied.append(a) or real[1](*a, **k))
    axes = A.parse_axes("guidance=1-100 [100]", "steps=4,8", "seed=1-10")  # guidance and seed enter no check
    A.check_requests(axes, [("p", EDIT), ("q", EDIT)])
    assert len(calls) == 2 and len(applied) == 4


def test_an_axis_slot_given_twice_is_refused_not_overwritten():
    # click keeps an option's last value: `--x steps=… --x model=…` dropped the steps axis silently.
    assert A.one_axis("x", None) is None and A.one_axis("x", []) is None
    assert A.one_axis("y", ["steps=1,2"]) == "steps=1,2"
    with pytest.raises(UsageError, match=r"--z is given 2 times \('steps=1,2', 'model=base,spo'\)"):
        A.one_axis("z", ["steps=1,2", "model=base,spo"])

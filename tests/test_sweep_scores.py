"""The scored summary of a sweep (spo_cli.scores.sweep): pairs by coordinates and base row, overall
and per value of every other axis, with known answers; its markdown section and its chart.

Pure (numpy, PIL) but for the last test, which scores real images with the tiny scorers.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from spo_cli.errors import UsageError
from spo_cli.scores import sweep
from spo_cli.scores.sweep import Dim, ScoredCell

PROMPTS = 8  # enough untied prompts (stats.MIN_PROMPTS = 6) for a verdict
SEEDS = 2
MODEL = Dim("model", ["SDXL base", "SPO-SDXL"])
STEPS = Dim("steps", ["steps: 10", "steps: 20", "steps: 30"])
GUIDANCE = Dim("guidance", ["guidance: 3", "guidance: 7"])


def grid(dims: list[Dim], score, skip=()) -> list[ScoredCell]:
    """Every cell of `dims` × PROMPTS × SEEDS; `score(named coords, prompt, seed)` gives its
    {metric: value} (its coordinates by dimension name); cells in `skip` are failed (None)."""
    cells = []
    for coords in itertools.product(*(range(len(d.labels)) for d in dims)):
        named = {d.name: c for d, c in zip(dims, coords)}
        for p in range(PROMPTS):
            for s in range(SEEDS):
                row = p * SEEDS + s
                value = None if (coords, row) in skip else score(named, p, s)
                cells.append(ScoredCell(coords, row, f"prompt {p}", value))
    return cells


def noise(named: dict, p: int, s: int) -> float:
    """A score that differs by prompt, seed, steps and guidance, never by model."""
    return float(np.random.default_rng([p, s, named.get("steps", 0), named.get("guidance", 0)]).normal())


def sections(summary: dict):
    yield "overall", summary["overall"]
    for entries in summary["by_axis"].values():
        for e in entries:
            yield e["value"], e["summary"]


def the_pair(section: dict, metric: str = "pick") -> dict:
    (pair,) = section["pairs"]
    return pair["metrics"][metric]


# The versus dimension first, in the middle and last: the other axes' places in a row key shift.
ORDERS = [[MODEL, STEPS, GUIDANCE], [STEPS, MODEL, GUIDANCE], [STEPS, GUIDANCE, MODEL]]


@pytest.mark.parametrize("dims", ORDERS, ids=["first", "middle", "last"])
def test_a_model_against_itself_wins_half_and_differs_by_nothing_at_every_value(dims):
    s = sweep.summarise(dims, grid(dims, lambda n, p, s: {"pick": noise(n, p, s)}), ["pick"], "model", seed=3)
    assert s["versus"] == "model" and s["values"] == MODEL.labels
    assert list(s["by_axis"]) == [d.name for d in dims if d.name != "model"]
    assert [e["value"] for e in s["by_axis"]["steps"]] == STEPS.labels
    for where, section in sections(s):
        r = the_pair(section)
        assert (r["win_rate"]["value"], r["mean_diff"]["value"]) == (0.5, 0.0), where
        assert r["dropped"] == 0 and r["sign"]["ties"] == PROMPTS, where


@pytest.mark.parametrize("dims", ORDERS, ids=["first", "middle", "last"])
def test_spo_ahead_at_one_step_count_shows_there_and_nowhere_else(dims):
    def score(n, p, s):  # SPO one point ahead at 20 steps, level with base at 10 and 30
        return {"pick": noise(n, p, s) + (1.0 if n["model"] == 1 and n["steps"] == 1 else 0.0)}

    s = sweep.summarise(dims, grid(dims, score), ["pick"], "model")
    pairs_per_value = PROMPTS * SEEDS * len(GUIDANCE.labels)
    for label, e in zip(STEPS.labels, s["by_axis"]["steps"]):
        (pair,) = e["summary"]["pairs"]
        assert (pair["a"], pair["b"]) == ("SPO-SDXL", "SDXL base")  # a: the later value; a - b
        r = pair["metrics"]["pick"]
        assert (r["n"], r["prompts"]) == (pairs_per_value, PROMPTS), label  # seeds of a prompt: one cluster
        if label == "steps: 20":
            assert r["win_rate"]["value"] == 1.0 and r["mean_diff"]["value"] == pytest.approx(1.0)
            assert r["win_rate"]["low"] == 1.0 and r["mean_diff"]["low"] == pytest.approx(1.0)
            assert "a higher" in sweep.markdown(s).split(label)[1].split("\n")[0]
        else:
            assert (r["win_rate"]["value"], r["mean_diff"]["value"]) == (0.5, 0.0), label
    # Each guidance value holds a third of the steps: SPO ahead in a third of its pairs.
    for e in s["by_axis"]["guidance"]:
        r = the_pair(e["summary"])
        assert r["n"] == PROMPTS * SEEDS * len(STEPS.labels)
        assert r["win_rate"]["value"] == pytest.approx(2 / 3) and r["mean_diff"]["value"] == pytest.approx(1 / 3)
    overall = the_pair(s["overall"])
    assert overall["n"] == PROMPTS * SEEDS * len(STEPS.labels) * len(GUIDANCE.labels)
    assert overall["mean_diff"]["value"] == pytest.approx(1 / 3)


def test_pairs_are_found_by_coordinates_and_base_row_in_any_order():
    dims = [STEPS, MODEL, GUIDANCE]
    cells = grid(dims, lambda n, p, s: {"pick": noise(n, p, s) + 0.3 * n["model"] * (p % 3 - 1) + 0.1 * s})
    first = sweep.summarise(dims, cells, ["pick"], "model")
    shuffled = cells[:]
    random.Random(5).shuffle(shuffled)
    assert sweep.summarise(dims, shuffled, ["pick"], "model") == first
    # Each pair is one base row at one steps and guidance value: differences computed by hand.
    by = {(c.coords, c.base_row): c.scores["pick"] for c in cells}
    for k, e in enumerate(first["by_axis"]["steps"]):
        diffs = [by[((k, 1, g), row)] - by[((k, 0, g), row)] for g in range(2) for row in range(PROMPTS * SEEDS)]
        assert the_pair(e["summary"])["mean_diff"]["value"] == pytest.approx(np.mean(diffs))
        means = e["summary"]["means"]["SPO-SDXL"]["pick"]["value"]
        assert means == pytest.approx(np.mean([by[((k, 1, g), row)] for g in range(2) for row in range(16)]))


def test_a_failed_cell_drops_only_its_pairs():
    dims = [Dim("model", ["A", "B", "C"]), STEPS]
    lost = ((2, 0), 3)  # model C at 10 steps, base row 3
    s = sweep.summarise(dims, grid(dims, lambda n, p, s: {"pick": noise(n, p, s)}, skip={lost}), ["pick"], "model")
    full = PROMPTS * SEEDS
    assert s["cells"] == {"scored": 3 * 3 * full - 1, "failed": 1}

    def counts(section):
        return {(p["a"], p["b"]): (p["metrics"]["pick"]["n"], p["metrics"]["pick"]["dropped"])
                for p in section["pairs"]}

    assert counts(s["overall"]) == {("B", "A"): (3 * full, 0), ("C", "A"): (3 * full - 1, 1),
                                    ("C", "B"): (3 * full - 1, 1)}
    at10, at20, at30 = (e["summary"] for e in s["by_axis"]["steps"])
    assert counts(at10) == {("B", "A"): (full, 0), ("C", "A"): (full - 1, 1), ("C", "B"): (full - 1, 1)}
    assert counts(at20) == counts(at30) == {pair: (full, 0) for pair in counts(at10)}
    assert (at10["failed"], at20["failed"], s["overall"]["failed"]) == (1, 0, 1)
    assert at10["means"]["C"]["pick"]["n"] == full - 1 and at10["means"]["A"]["pick"]["n"] == full
    # A cell not listed at all is missing the same way.
    cells = [c for c in grid(dims, lambda n, p, s: {"pick": noise(n, p, s)}) if (c.coords, c.base_row) != lost]
    assert sweep.summarise(dims, cells, ["pick"], "model") == s
    # One metric failing leaves the cell's other metric in its pairs.
    cells = grid(dims, lambda n, p, s: {"pick": noise(n, p, s), "aes": 1.0})
    cells[0] = cells[0]._replace(scores={"aes": 2.0})
    r = sweep.summarise(dims, cells, ["pick", "aes"], "model")["overall"]["pairs"][0]["metrics"]
    assert (r["pick"]["dropped"], r["aes"]["dropped"]) == (1, 0)


def test_the_bootstrap_resamples_prompts_with_the_given_seed():
    dims = [MODEL, STEPS]
    cells = grid(dims, lambda n, p, s: {"pick": noise(n, p, s) + n["model"] * noise({"steps": 9}, p, s)})
    a = sweep.summarise(dims, cells, ["pick"], "model", seed=1)
    assert sweep.summarise(dims, cells, ["pick"], "model", seed=1) == a
    b = sweep.summarise(dims, cells, ["pick"], "model", seed=2)
    assert b != a and the_pair(b["overall"])["mean_diff"]["low"] != the_pair(a["overall"])["mean_diff"]["low"]
    assert [the_pair(e["summary"])["mean_diff"]["low"] for e in b["by_axis"]["steps"]] != \
        [the_pair(e["summary"])["mean_diff"]["low"] for e in a["by_axis"]["steps"]]
    # Every seed and step count of a prompt is one cluster: as many prompts as there are groups.
    assert the_pair(a["overall"])["prompts"] == PROMPTS and the_pair(a["overall"])["n"] == PROMPTS * SEEDS * 3
    # With a prompt to each pair instead, the intervals narrow (more clusters, less spread).
    each = [c._replace(group=(c.coords[1], c.base_row)) for c in cells]
    alone = sweep.summarise(dims, each, ["pick"], "model", seed=1)
    assert the_pair(alone["overall"])["prompts"] == PROMPTS * SEEDS * 3
    # The cells of a pair must share their group.
    with pytest.raises(ValueError, match="share their group"):
        sweep.summarise(dims, [c._replace(group=c.coords) for c in cells], ["pick"], "model")


def test_versus_of_one_value_or_no_axis_is_refused_and_one_value_axes_get_no_entry():
    dims = [Dim("model", ["SPO-SDXL"]), STEPS, Dim("scheduler", ["scheduler: euler"])]
    cells = grid(dims, lambda n, p, s: {"pick": 1.0})
    with pytest.raises(UsageError) as e:
        sweep.summarise(dims, cells, ["pick"], "model")
    assert "--versus model" in e.value.message and "one value" in e.value.message
    assert "steps (3 values)" in e.value.hint and "scheduler" not in e.value.hint
    with pytest.raises(UsageError, match="--versus 'guidance' is not an axis"):
        sweep.check_versus(dims, "guidance")
    s = sweep.summarise(dims, cells, ["pick"], "steps")
    assert s["values"] == STEPS.labels and s["by_axis"] == {}  # model and scheduler: one value each
    assert [(p["a"], p["b"]) for p in s["overall"]["pairs"]] == [
        ("steps: 20", "steps: 10"), ("steps: 30", "steps: 10"), ("steps: 30", "steps: 20")]


def test_bad_cells_are_refused():
    dims = [MODEL, STEPS]
    cells = grid(dims, lambda n, p, s: {"pick": 1.0})
    for bad in ([cells[0]._replace(coords=(0, 3))], [cells[0]._replace(coords=(0,))], [cells[0], cells[0]]):
        with pytest.raises(ValueError):
            sweep.summarise(dims, bad, ["pick"], "model")


def test_the_summary_is_json_without_nan():
    dims = [MODEL, STEPS, Dim("seed", ["seed: 1"])]
    cells = grid(dims, lambda n, p, s: {"pick": noise(n, p, s)}, skip={((1, 2, 0), 0)})
    cells[1] = cells[1]._replace(scores={"pick": float("nan")})
    cells[2] = cells[2]._replace(scores={"pick": float("inf")})
    only = [c for c in cells if c.coords[1] == 2 and c.base_row == 0]  # one prompt: no intervals anywhere
    for s in (sweep.summarise(dims, cells, ["pick"], "model"), sweep.summarise(dims, only, ["pick"], "model")):
        assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_markdown_names_every_axis_value_with_its_verdict():
    dims = [MODEL, STEPS, GUIDANCE, Dim("prompt-sr", ["a | b", "c\nd"])]
    s = sweep.summarise(dims, grid(dims, lambda n, p, s: {"pick": noise(n, p, s) + (
        1.0 if n["model"] == 1 and n["steps"] == 1 else 0.0)}), ["pick"], "model")
    text = sweep.markdown(s)
    lines = {label: [x for x in text.splitlines() if x.startswith(f"| {label} | SPO-SDXL vs SDXL base | pick |")]
             for label in STEPS.labels + GUIDANCE.labels}
    assert all(len(found) == 1 for found in lines.values()), lines
    (ahead,) = lines["steps: 20"]
    assert "| 1.00 [1.00, 1.00] | 1.0000 [1.0000, 1.0000] | 8 (64) |" in ahead and ahead.endswith("| a higher |")
    for label in ("steps: 10", "steps: 30"):  # every prompt tied: nothing to conclude
        (level,) = lines[label]
        assert "| 0.50 (too few prompts) | 0.0000 (too few prompts) |" in level
        assert level.endswith("| too few prompts |")
    assert "### By steps" in text and "### By guidance" in text and "### By model" not in text
    assert "| a \\| b | SPO-SDXL vs SDXL base |" in text  # a '|' in a value stays in its cell
    assert "| c d | SPO-SDXL vs SDXL base |" in text  # and a line break does not end the table
    assert "0 failed" in text


def test_the_chart_grows_with_the_values_and_shows_the_win_rates():
    def summary(steps: int, ahead_at: int = 1):
        dims = [MODEL, Dim("steps", [f"steps: {10 * (i + 1)}" for i in range(steps)])]
        return sweep.summarise(dims, grid(dims, lambda n, p, s: {"pick": noise(n, p, s) + (
            1.0 if n["model"] == 1 and n["steps"] == ahead_at else 0.0), "aes": noise(n, p, s)}),
            ["pick", "aes"], "model")

    three, six = sweep.chart(summary(3), "steps"), sweep.chart(summary(6), "steps")
    assert three.mode == "RGB" and six.width > three.width and six.height == three.height
    assert np.asarray(sweep.chart(summary(6), "steps")).tobytes() == np.asarray(six).tobytes()
    assert np.asarray(sweep.chart(summary(6, ahead_at=2), "steps")).tobytes() != np.asarray(six).tobytes()
    # The win rate's dot: in the value's slot, at height 1.0 where SPO is ahead, 0.5 where it is not.
    from spo_cli.scores import plot

    px = np.asarray(six).astype(int)
    blue = (np.abs(px - np.array(plot.PALETTE[0])).sum(axis=-1) < 30)
    left = (six.width - plot.SLOT * 6) / 2 + (plot.CHART_LEFT - plot.CHART_RIGHT) / 2
    top, bottom = plot.CHART_TOP, plot.CHART_TOP + plot.CHART_HEIGHT
    for value, level in ((0, 0.5), (1, 1.0), (2, 0.5)):
        slot = blue[top - 6:bottom + 6, round(left + plot.SLOT * value):round(left + plot.SLOT * (value + 1))]
        dot = int(slot.sum(axis=1).argmax()) + top - 6  # the dot is wider than its interval bar and caps
        assert abs(dot - (bottom - level * plot.CHART_HEIGHT)) <= 4, (value, dot)  # the 0.5 line crosses it
    with pytest.raises(ValueError):
        sweep.chart(summary(3), "model")  # the compared axis has no per-value entries


@pytest.mark.slow
@pytest.mark.xdist_group("scores")
def test_tiny_scorers_give_a_model_against_itself_half_and_nothing(tmp_path):
    """Real scores through the scorer path `spo compare --score` takes (scores.run.score, which
    cli.scoring.score_items wraps): the same images under two model labels; the sweep's summary
    must find them level at every axis value."""
    import os
    from pathlib import Path

    from PIL import Image

    from spo_cli import scores, tiny
    from spo_cli.resolve import Fetch
    from spo_cli.scores import run, store
    from spo_cli.scores import tiny as score_tiny

    metrics = ["aesthetic", "pickscore"]
    cache = Path(os.environ["HF_HUB_CACHE"])
    needed = {src.repo for m in metrics for src in scores.metric_table()[m].sources}
    # test_scores.py (same xdist group, collected first) installs the same tiny repos (fixed seed) in this
    # process' cache: made again (5 s) only when this test runs without it.
    if not all((cache / ("models--" + repo.replace("/", "--")) / "refs" / "main").is_file() for repo in needed):
        for repo, src in score_tiny.save_repos(tmp_path / "score-repos").items():
            tiny.add_to_cache(cache, repo, src)
    dims = [Dim("model", ["A", "A again"]), Dim("steps", ["steps: 1", "steps: 2"])]
    prompts = ["a red fox in snow", "a cat on the moon", "a lighthouse at night"]
    rng = np.random.default_rng(0)
    items, where = [], []
    for k, p in itertools.product(range(2), range(len(prompts))):
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        for m in range(2):  # the second "model" drew the very same image
            image = tmp_path / f"m{m}" / f"s{k}-p{p}.png"
            image.parent.mkdir(exist_ok=True)
            Image.fromarray(pixels).save(image)
            items.append(store.Item(image, prompts[p], "--prompt"))
            where.append(((m, k), p))
    scored = run.score(items, metrics, run.resolve_metrics(metrics, "v2.1", Fetch()), device="cpu",
                       dtype=__import__("torch").float32, batch_size=4)
    assert all(r.values.keys() == set(metrics) and not r.errors for r in scored)
    for m in metrics:
        assert len({round(r.values[m], 5) for r in scored}) == 6  # six images told apart
    cells = [ScoredCell(coords, p, prompts[p], r.values) for (coords, p), r in zip(where, scored)]
    s = sweep.summarise(dims, cells, metrics, "model")
    json.dumps(s, allow_nan=False)
    for where_, section in sections(s):
        for m in metrics:
            r = the_pair(section, m)
            assert (r["win_rate"]["value"], r["mean_diff"]["value"], r["dropped"]) == (0.5, 0.0, 0), (where_, m)
    assert [the_pair(e["summary"], "aesthetic")["n"] for e in s["by_axis"]["steps"]] == [3, 3]


def test_the_chart_draws_no_interval_where_too_few_prompts_allow_no_conclusion():
    from spo_cli.scores import plot

    def score(n, p, s):
        return {"pick": noise(n, p, s) + n["model"] * noise({"steps": 7}, p, s)}

    dims = [MODEL, STEPS]
    # At 10 steps two prompts only: too few (stats.MIN_PROMPTS) for any interval or verdict.
    cells = [c for c in grid(dims, score) if c.coords[1] or c.base_row < 2 * SEEDS]
    s = sweep.summarise(dims, cells, ["pick"], "model")
    image = sweep.chart(s, "steps")
    px = np.asarray(image).astype(int)
    blue = np.abs(px - np.array(plot.PALETTE[0])).sum(axis=-1) < 30
    left = (image.width - plot.SLOT * 3) / 2 + (plot.CHART_LEFT - plot.CHART_RIGHT) / 2
    bottom = plot.CHART_TOP + plot.CHART_HEIGHT
    for value, e in enumerate(s["by_axis"]["steps"]):
        r = the_pair(e["summary"])
        assert r["too_few"] == (value == 0)
        x, y = round(left + plot.SLOT * (value + 0.5)), round(bottom - r["win_rate"]["value"] * plot.CHART_HEIGHT)
        column = np.nonzero(blue[:, x])[0]
        column = column[np.abs(column - y) < plot.CHART_HEIGHT // 2]  # this point's marks, not the legend's
        if value == 0:  # hollow, no bar: blue only on the ring
            assert tuple(px[y, x]) == plot.BACKGROUND and column.max() - column.min() <= 10
        else:  # filled, with its interval
            assert blue[y, x] and r["win_rate"]["high"] - r["win_rate"]["low"] > 0.1
            spans = (r["win_rate"]["high"] - r["win_rate"]["low"]) * plot.CHART_HEIGHT
            assert column.max() - column.min() >= 0.9 * spans

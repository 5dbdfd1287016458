"""Unit tests for spo_cli.scores.stats: win rates, mean differences and their bootstrap intervals.

Pure and fast (numpy only). Each table is built so its answer is known in advance.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from pytest import approx

from spo_cli.scores.stats import Comparison, Estimate, Paired, bootstrap_mean, paired, pairs_table

FAST = dict(resamples=2000)  # enough for the shapes checked here, and quick


def test_no_torch():
    code = ("import sys, spo_cli.scores.stats, spo_cli.scores.plot; "
            "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_all_wins():
    got = paired([2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0], **FAST)
    assert got.win_rate == Estimate(1.0, 1.0, 1.0, 4)
    assert got.mean_diff.value == approx(2.5)
    assert (got.n, got.dropped, got.level) == (4, 0, 0.95)


def test_all_losses():
    got = paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], **FAST)
    assert got.win_rate == Estimate(0.0, 0.0, 0.0, 3)
    assert got.mean_diff.value == approx(-2.0)


def test_all_ties():
    got = paired([0.3] * 10, [0.3] * 10, **FAST)
    assert got.win_rate == Estimate(0.5, 0.5, 0.5, 10)
    assert got.mean_diff == Estimate(0.0, 0.0, 0.0, 10)


def test_a_tie_counts_one_half():
    # two wins, a tie, a loss: (1 + 1 + 0.5 + 0) / 4
    assert paired([2, 2, 1, 0], [1, 1, 1, 1], **FAST).win_rate.value == 0.625
    # win rate is a share of pairs, not of margins: one huge loss weighs what one small loss does
    got = paired([1.01, 1.01, 1.01, -100.0], [1, 1, 1, 1], **FAST)
    assert got.win_rate.value == 0.75
    assert got.mean_diff.value < 0


def _half_wins(n: int) -> Paired:
    return paired([1.0, 0.0] * (n // 2), [0.5] * n, **FAST)


def test_half_wins_interval_contains_half_and_shrinks_with_n():
    widths = []
    for n in (20, 200, 800):
        got = _half_wins(n).win_rate
        assert got.value == 0.5
        assert got.low < 0.5 < got.high
        widths.append(got.high - got.low)
        # a win rate is a mean of 0/1 outcomes: its 95 % interval is about ±1.96 · 0.5 / √n
        assert got.high - got.low == approx(2 * 1.96 * 0.5 / math.sqrt(n), rel=0.25)
    assert widths[0] > widths[1] > widths[2]


def test_known_mean_difference():
    got = paired([3.0, 5.0, 7.0, 9.0], [1.0, 2.0, 3.0, 4.0], **FAST).mean_diff
    assert got.value == approx(3.5)  # differences 2, 3, 4, 5
    assert 2.0 <= got.low < 3.5 < got.high <= 5.0
    assert got.n == 4


def test_interval_resamples_pairs_not_columns():
    # b follows a closely: the scores spread over ±10 but the differences over ±0.1, so the
    # interval of the mean difference must be as narrow as the differences, not the scores.
    rng = np.random.default_rng(5)
    a = rng.normal(0, 10, 400)
    b = a - 1.0 + rng.normal(0, 0.1, 400)
    got = paired(a, b, **FAST).mean_diff
    assert got.low < 1.0 < got.high
    assert got.high - got.low < 0.05


def test_mean_diff_interval_is_bootstrap_mean_of_differences():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert paired(a, b, seed=3, **FAST).mean_diff == bootstrap_mean(a - b, seed=3, **FAST)


def test_length_mismatch():
    with pytest.raises(ValueError, match="equal lengths"):
        paired([1.0, 2.0], [1.0], **FAST)


def test_missing_scores_dropped_as_pairs():
    a = [1.0, math.nan, 3.0, None, 5.0, math.inf]
    b = [0.0, 1.0, math.nan, 2.0, 7.0, 1.0]
    got = paired(a, b, **FAST)
    assert (got.n, got.dropped) == (2, 4)  # pairs 0 (a wins by 1) and 4 (a loses by 2) remain
    assert got.win_rate.value == 0.5
    assert got.mean_diff.value == approx(-0.5)
    assert got.win_rate.n == got.mean_diff.n == 2


def test_all_dropped_and_empty():
    for got in (paired([math.nan], [1.0], **FAST), paired([], [], **FAST)):
        assert got.win_rate == got.mean_diff == Estimate(None, None, None, 0)
    assert paired([None, 1.0], [1.0, None], **FAST).dropped == 2


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=60), rng.normal(size=60)
    first = paired(a, b, seed=11, **FAST)
    assert paired(a, b, seed=11, **FAST) == first
    other = paired(a, b, seed=12, **FAST)
    assert other.mean_diff.value == first.mean_diff.value
    assert (other.mean_diff.low, other.win_rate.low) != (first.mean_diff.low, first.win_rate.low)
    assert bootstrap_mean(a, seed=1, **FAST) == bootstrap_mean(list(a), seed=1, **FAST)


def test_bootstrap_mean_matches_normal_interval():
    rng = np.random.default_rng(8)
    x = rng.normal(5.0, 2.0, 2000)
    got = bootstrap_mean(x, **FAST)
    half = 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert got.value == approx(x.mean())
    assert got.low == approx(x.mean() - half, abs=0.15 * half)
    assert got.high == approx(x.mean() + half, abs=0.15 * half)
    assert got.n == 2000


def test_bootstrap_mean_level():
    x = np.random.default_rng(9).normal(size=300)
    wide, narrow = bootstrap_mean(x, level=0.95, **FAST), bootstrap_mean(x, level=0.5, **FAST)
    assert wide.low < narrow.low < narrow.value < narrow.high < wide.high
    for level in (0, 1, 1.5):
        with pytest.raises(ValueError, match="level"):
            bootstrap_mean(x, level=level)
    with pytest.raises(ValueError, match="resamples"):
        paired(x, x, resamples=0)


def test_bootstrap_mean_small_samples():
    assert bootstrap_mean([]) == Estimate(None, None, None, 0)
    assert bootstrap_mean([2.5]) == Estimate(2.5, 2.5, 2.5, 1)
    assert bootstrap_mean([math.nan, 2.5, None]) == Estimate(2.5, 2.5, 2.5, 1)
    got = bootstrap_mean([1.0, 3.0], **FAST)
    assert (got.value, got.low, got.high) == (2.0, 1.0, 3.0)


def test_to_dict():
    got = paired([2.0, 1.0], [1.0, 1.0], **FAST)
    d = got.to_dict()
    assert d["win_rate"] == got.win_rate.to_dict() == {
        "value": 0.75, "low": got.win_rate.low, "high": got.win_rate.high, "n": 2}
    assert (d["n"], d["dropped"], d["level"]) == (2, 0, 0.95)
    assert d["mean_diff"]["value"] == 0.5
    for value in (*d["win_rate"].values(), *d["mean_diff"].values()):
        assert type(value) in (int, float)  # plain numbers, ready for json


def test_pairs_table_aligns_shared_keys_in_column_order():
    scores = {
        "base": {(0, 1): 1.0, (1, 1): 1.0, (2, 1): 1.0, (3, 1): 1.0},
        "spo": {(3, 1): 2.0, (1, 1): 2.0, (0, 1): 0.0, (9, 9): 50.0},  # (9, 9): base lacks it
        "other": {(0, 1): 1.0, (1, 1): 1.0},
    }
    table = pairs_table(scores, ["spo", "base", "other"], **FAST)
    assert [(c.a, c.b) for c in table] == [("spo", "base"), ("spo", "other"), ("base", "other")]
    assert all(isinstance(c, Comparison) for c in table)
    spo_base, spo_other, base_other = (c.result for c in table)
    # spo against base: keys (0,1) loses by 1, (1,1) and (3,1) win by 1; (2,1) and (9,9) unshared
    assert (spo_base.n, spo_base.win_rate.value, spo_base.mean_diff.value) == (3, approx(2 / 3), approx(1 / 3))
    assert (spo_other.n, spo_other.win_rate.value) == (2, 0.5)
    assert base_other.win_rate == Estimate(0.5, 0.5, 0.5, 2)
    assert table[0].to_dict() == {"a": "spo", "b": "base", **spo_base.to_dict()}


def test_pairs_table_does_not_depend_on_insertion_order():
    rng = np.random.default_rng(11)
    keys = [(p, s) for p in range(30) for s in range(2)]
    a = {k: float(v) for k, v in zip(keys, rng.normal(size=60))}
    b = {k: float(v) for k, v in zip(keys, rng.normal(size=60))}
    shuffled = {k: b[k] for k in reversed(keys)}
    first = pairs_table({"a": a, "b": b}, ["a", "b"], **FAST)
    assert pairs_table({"a": dict(reversed(a.items())), "b": shuffled}, ["a", "b"], **FAST) == first
    assert first[0].result == paired([a[k] for k in keys], [b[k] for k in keys], **FAST)

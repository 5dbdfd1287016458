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

from spo_cli.scores.stats import Estimate, Paired, SignTest, bootstrap_mean, paired
from spo_cli.scores import stats

FAST = dict(resamples=2000)  # enough for the shapes checked here, and quick


def test_no_torch():
    code = ("import sys, spo_cli.scores.stats, spo_cli.scores.plot; "
            "print(sorted({'torch', 'matplotlib'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "[]\n"


def test_all_wins():
    got = paired([2.0, 3.0, 4.0, 5.0], [1.0, 1.0, 1.0, 1.0], **FAST)
    assert got.win_rate == Estimate(1.0, 1.0, 1.0, 4, 4)
    assert got.mean_diff.value == approx(2.5)
    assert (got.n, got.dropped, got.level) == (4, 0, 0.95)


def test_all_losses():
    got = paired([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], **FAST)
    assert got.win_rate == Estimate(0.0, 0.0, 0.0, 3, 3)
    assert got.mean_diff.value == approx(-2.0)


def test_all_ties():
    got = paired([0.3] * 10, [0.3] * 10, **FAST)
    assert got.win_rate == Estimate(0.5, 0.5, 0.5, 10, 10)
    assert got.mean_diff == Estimate(0.0, 0.0, 0.0, 10, 10)


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
        assert got.win_rate == got.mean_diff == Estimate(None, None, None, 0, 0)
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
    assert bootstrap_mean([]) == Estimate(None, None, None, 0, 0)
    # one value is one prompt: a value, and no interval (a zero-width one would claim certainty)
    assert bootstrap_mean([2.5]) == Estimate(2.5, None, None, 1, 1)
    assert bootstrap_mean([math.nan, 2.5, None]) == Estimate(2.5, None, None, 1, 1)
    got = bootstrap_mean([1.0, 3.0], **FAST)
    assert (got.value, got.low, got.high) == (2.0, 1.0, 3.0)


def test_to_dict():
    got = paired([2.0, 1.0], [1.0, 1.0], **FAST)
    d = got.to_dict()
    assert d["win_rate"] == got.win_rate.to_dict() == {
        "value": 0.75, "low": got.win_rate.low, "high": got.win_rate.high, "n": 2, "clusters": 2}
    assert (d["n"], d["dropped"], d["level"], d["prompts"], d["too_few"]) == (2, 0, 0.95, 2, True)
    assert d["sign"] == {"wins": 1, "losses": 0, "ties": 1, "p_value": 1.0}
    assert d["wilcoxon_p"] == 1.0
    assert d["mean_diff"]["value"] == 0.5
    for value in (*d["win_rate"].values(), *d["mean_diff"].values(), *d["sign"].values(), d["wilcoxon_p"]):
        assert type(value) in (int, float)  # plain numbers, ready for json
    assert type(d["too_few"]) is bool



# --- prompts as the unit: clustered bootstrap, paired tests, too few to conclude ---------------


def test_sign_test_known_values():
    from fractions import Fraction

    from spo_cli.scores.stats import sign_test

    assert sign_test(6, 0) == sign_test(0, 6) == 0.03125  # 2 / 2^6: the smallest n that gets under 0.05
    assert sign_test(5, 0) == 0.0625  # 2 / 2^5: five prompts, a clean sweep, still not under 0.05
    assert sign_test(8, 2) == sign_test(2, 8) == 0.109375  # 2 (1 + 10 + 45) / 1024
    assert sign_test(5, 5) == sign_test(1, 0) == 1.0  # capped at 1
    assert sign_test(0, 0) is None
    assert sign_test(9, 1) == 0.021484375  # 2 (1 + 10) / 1024
    for n in range(1, 16):  # the binomial tail, in exact fractions
        for k in range(n + 1):
            tail = sum(Fraction(math.comb(n, i), 2**n) for i in range(min(k, n - k) + 1))
            assert sign_test(k, n - k) == float(min(Fraction(1), 2 * tail))
    assert sign_test(600, 400) == pytest.approx(2.7e-10, rel=0.05)  # big counts: exact integers, no overflow
    assert sign_test(20000, 20000) == 1.0  # 40,000 prompts: linear in the count (math.comb per term took minutes)
    with pytest.raises(ValueError):
        sign_test(-1, 3)


def _wilcoxon_by_enumeration(d):
    """Every one of the 2^n sign patterns, counted: the definition of the exact test."""
    import itertools

    d = [v for v in d if v != 0]
    m = np.abs(d)
    ranks = [(m < v).sum() + ((m == v).sum() + 1) / 2 for v in m]  # mean ranks for tied magnitudes
    observed = sum(r for r, v in zip(ranks, d) if v > 0)
    sums = np.array([sum(r for r, up in zip(ranks, signs) if up) for signs in itertools.product([0, 1], repeat=len(d))])
    return min(1.0, 2 * min((sums <= observed + 1e-9).mean(), (sums >= observed - 1e-9).mean()))


def test_wilcoxon_known_values():
    from spo_cli.scores.stats import WILCOXON_MAX, wilcoxon

    # Darwin's maize differences (scipy's documented example): W- = 24, exact two-sided p = 0.041259765625
    darwin = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    assert wilcoxon(darwin) == 0.041259765625
    assert wilcoxon([-v for v in darwin]) == 0.041259765625  # two-sided: a sign flip changes nothing
    assert wilcoxon([1, 2, 3, 4, 5, 6]) == 0.03125 and wilcoxon([1, 2, 3, 4, 5]) == 0.0625
    assert wilcoxon([0, 1, 2, 0, 3, 4, 5, 6]) == 0.03125  # zero differences are left out
    assert wilcoxon([]) is None and wilcoxon([0.0, 0.0]) is None
    assert wilcoxon([3.0]) == 1.0
    rng = np.random.default_rng(3)
    for _ in range(40):  # ties in magnitude (mean ranks) and zeros, against the definition
        d = rng.integers(-4, 5, size=int(rng.integers(1, 12))).astype(float)
        if (d != 0).any():
            assert wilcoxon(d) == approx(_wilcoxon_by_enumeration(d), abs=1e-12), d
    # at the bound it runs (all positive: only the first entry of the distribution is counted, quickly)
    assert wilcoxon(np.arange(1.0, WILCOXON_MAX + 1)) == 2.0 ** (1 - WILCOXON_MAX)
    assert wilcoxon(np.arange(1.0, WILCOXON_MAX + 2)) is None  # past the exact test's cost bound


def test_one_prompt_with_many_seeds_gives_no_interval():
    """Fifty seeds of one prompt are one draw of a prompt: resampled by prompt there is nothing to
    vary, and an interval would claim a certainty the sample does not have."""
    a, b = [1.0 + 0.01 * i for i in range(50)], [0.0] * 50
    got = paired(a, b, groups=["a fox"] * 50, **FAST)
    assert got.win_rate == Estimate(1.0, None, None, 50, 1)
    assert got.mean_diff.low is None and got.mean_diff.high is None
    assert (got.prompts, got.sign.wins, got.too_few) == (1, 1, True)
    assert got.sign.p_value == 1.0
    assert bootstrap_mean(a, groups=["a fox"] * 50, **FAST).low is None
    # the same numbers taken as fifty prompts: a narrow interval, as pairs would (wrongly) have given
    loose = paired(a, b, **FAST)
    assert loose.mean_diff.high - loose.mean_diff.low < 0.2 and loose.too_few is False


def test_clustered_interval_by_hand():
    """Two prompts of 50 seeds each, a winning every seed of one by 1 and losing every seed of the
    other by 1. Drawing 2 prompts with replacement gives a mean difference of +1 (1/4), 0 (1/2) or
    -1 (1/4), so the 95 % interval is exactly [-1, 1]; resampling the 100 pairs as if independent
    would give about ±0.2."""
    a = [1.0] * 50 + [-1.0] * 50
    groups = ["fox"] * 50 + ["cat"] * 50
    got = paired(a, [0.0] * 100, groups=groups, **FAST)
    assert (got.mean_diff.value, got.mean_diff.low, got.mean_diff.high) == (0.0, -1.0, 1.0)
    assert (got.win_rate.value, got.win_rate.low, got.win_rate.high) == (0.5, 0.0, 1.0)
    assert got.mean_diff.clusters == 2 and got.prompts == 2 and got.n == 100
    naive = paired(a, [0.0] * 100, **FAST).mean_diff
    assert naive.high - naive.low < 0.5
    # a prompt's rows need not be together, and unequal prompts weigh by their pairs: one prompt of
    # 3 pairs (+1 each) and one of 1 pair (+5) resample to means 1 (1/4), 2 (1/2) or 5 (1/4)
    got = paired([1.0, 5.0, 1.0, 1.0], [0.0] * 4, groups=["p", "q", "p", "p"], level=0.4, **FAST).mean_diff
    assert (got.value, got.low, got.high) == (2.0, 2.0, 2.0)
    assert bootstrap_mean([1.0, 5.0, 1.0, 1.0], groups=["p", "q", "p", "p"], level=0.4, **FAST) == got
    got = paired([1.0, 5.0, 1.0, 1.0], [0.0] * 4, groups=["p", "q", "p", "p"], **FAST).mean_diff
    assert (got.low, got.high) == (1.0, 5.0)


def test_clusters_after_missing_scores():
    # every pair of prompt "q" is missing: it is no prompt of the comparison any more
    got = paired([1.0, None, 2.0, math.nan], [0.0, 1.0, 0.0, 1.0], groups=["p", "q", "r", "q"], **FAST)
    assert (got.n, got.dropped, got.prompts, got.mean_diff.clusters) == (2, 2, 2, 2)
    assert got.mean_diff.low == 1.0 and got.mean_diff.high == 2.0
    got = bootstrap_mean([1.0, None, 3.0], groups=["p", "q", "p"], **FAST)
    assert got == Estimate(2.0, None, None, 2, 1)
    with pytest.raises(ValueError, match="one label per value"):
        paired([1.0, 2.0], [0.0, 0.0], groups=["p"])
    with pytest.raises(ValueError, match="one label per value"):
        bootstrap_mean([1.0, 2.0], groups=["p", "q", "r"])


def test_tests_are_over_prompts_mean_differences():
    """Each prompt: a wins two seeds by 0.1 and loses one by 1. Two pairs in three go to a, yet every
    prompt's mean difference is negative: the tests see six prompts a lost, p = 2 / 2^6."""
    a = [0.1, 0.1, -1.0] * 6
    groups = [p for p in "uvwxyz" for _ in range(3)]
    got = paired(a, [0.0] * 18, groups=groups, **FAST)
    assert got.win_rate.value == approx(2 / 3)
    assert got.sign == SignTest(0, 6, 0, 0.03125)
    assert got.wilcoxon_p == 0.03125
    assert (got.prompts, got.too_few) == (6, False)
    # A prompt's difference is its seeds' mean, not their sum: one prompt of a single seed lost by 3,
    # five of four seeds won by 1 each. Means -3, 1 ×5 (the loss ranks last); sums would be -3, 4 ×5.
    from spo_cli.scores.stats import wilcoxon

    a = [-3.0] + [1.0] * 20
    got = paired(a, [0.0] * 21, groups=["lost"] + [p for p in "uvwxy" for _ in range(4)], **FAST)
    assert got.wilcoxon_p == wilcoxon([-3.0, 1.0, 1.0, 1.0, 1.0, 1.0]) != wilcoxon([-3.0, 4.0, 4.0, 4.0, 4.0, 4.0])


def test_too_few_counts_untied_prompts():
    five = paired([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5, **FAST)
    assert five.too_few and five.sign == SignTest(5, 0, 0, 0.0625) and five.win_rate.low == 1.0
    six = paired([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6, **FAST)
    assert not six.too_few and six.sign.p_value == 0.03125
    # eight prompts, three of them tied: five untied, too few
    tied = paired([1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 0.0], [0.0] * 8, **FAST)
    assert tied.too_few and tied.sign == SignTest(5, 0, 3, 0.0625) and tied.prompts == 8
    assert paired([], [], **FAST).too_few and paired([], [], **FAST).sign == SignTest(0, 0, 0, None)


# --- the comparison summary and the scores files (pure as well) --------------------------------


def test_summary_names_the_better_column_the_winner():
    """Columns in order base, spo: spo scores higher in 3 rows of 4 and lower in one, so the pair is
    spo against base with win rate 0.75 and a positive mean difference, never the reverse."""
    from spo_cli.scores.summary import markdown, summarise

    base = [1.0, 1.0, 1.0, 5.0]
    spo = [2.0, 3.0, 4.0, 4.0]
    cells = [[{"pickscore": b}, {"pickscore": s}] for b, s in zip(base, spo)]
    got = summarise(["base", "spo"], cells, ["pickscore"])
    (pair,) = got["pairs"]
    assert (pair["a"], pair["b"]) == ("spo", "base")
    m = pair["metrics"]["pickscore"]
    assert m["win_rate"]["value"] == 0.75 and m["mean_diff"]["value"] == approx(1.25) and m["n"] == 4
    assert got["means"]["base"]["pickscore"]["value"] == 2.0 and got["means"]["spo"]["pickscore"]["value"] == 3.25
    # four prompts are too few to conclude: the value, said so, and no interval
    assert "| spo vs base | pickscore | 0.75 (too few prompts) | 1.2500 (too few prompts) | 4 (4) |" in markdown(got)
    assert "spo vs base, pickscore: Too few prompts to conclude anything: 4 prompt(s), 4 not tied" in markdown(got)


def test_every_comparison_keeps_the_columns_order_and_direction():
    """Columns in the order given — mid, low, high — with scores known by construction: on every one
    of 8 prompts (2 seeds each) high > mid > low. Each later column is a against each earlier b,
    and the better one wins every comparison, whichever side of it the order put it on."""
    from spo_cli.scores.summary import conclusions, markdown, pair_rows, summarise

    rows, groups = [], []
    for p in range(8):
        for seed in range(2):
            base = 10.0 * p + seed  # prompts differ a lot; the models by a steady margin
            rows.append([{"m": base + 1.0}, {"m": base + 0.5 - 0.1 * p}, {"m": base + 2.0 + 0.1 * seed}])
            groups.append(f"prompt {p}")
    got = summarise(["mid", "low", "high"], rows, ["m"], groups=groups)
    assert list(got["means"]) == ["mid", "low", "high"]
    assert [(p["a"], p["b"]) for p in got["pairs"]] == [("low", "mid"), ("high", "mid"), ("high", "low")]
    (low_mid, high_mid, high_low) = (p["metrics"]["m"] for p in got["pairs"])
    assert low_mid["win_rate"]["value"] == 0.0 and low_mid["mean_diff"]["value"] < 0
    assert low_mid["sign"] == {"wins": 0, "losses": 8, "ties": 0, "p_value": 0.0078125}
    for r in (high_mid, high_low):
        assert r["win_rate"]["value"] == 1.0 and r["mean_diff"]["value"] > 0
        assert r["sign"] == {"wins": 8, "losses": 0, "ties": 0, "p_value": 0.0078125}
        assert r["wilcoxon_p"] == 0.0078125 and r["too_few"] is False and r["prompts"] == 8 and r["n"] == 16
    assert high_mid["mean_diff"]["value"] == approx(1.05)  # 1 and 1.1 on every prompt
    assert low_mid["conclusion"] == ("low scores lower than mid on 8 of 8 untied prompts (sign test p = 0.00781, "
                                     "signed-rank p = 0.00781): a difference at the 5% level.")
    assert high_low["conclusion"].startswith("high scores higher than low on 8 of 8 untied prompts")
    assert [r[0] for r in pair_rows(got)] == ["low vs mid", "high vs mid", "high vs low"]
    assert [r[-1] for r in pair_rows(got)] == ["a lower", "a higher", "a higher"]
    assert pair_rows(got)[1][4:7] == ["8 (16)", "0.00781", "0.00781"]
    md = markdown(got)
    assert md.index("| mid |") < md.index("| low |") < md.index("| high |")
    assert md.index("| low vs mid |") < md.index("| high vs mid |") < md.index("| high vs low |")
    assert conclusions(got)[0].startswith("low vs mid, m: low scores lower than mid")
    from spo_cli.scores.summary import verdict

    assert verdict(low_mid) == "a lower (sign p = 0.00781, 8 prompts)"
    # Reversed order, reversed signs: the same data never names the worse column the winner.
    again = summarise(["high", "low", "mid"], [[r[2], r[1], r[0]] for r in rows], ["m"], groups=groups)
    assert [(p["a"], p["b"]) for p in again["pairs"]] == [("low", "high"), ("mid", "high"), ("mid", "low")]
    assert [p["metrics"]["m"]["sign"]["wins"] for p in again["pairs"]] == [0, 0, 8]
    assert again["pairs"][1]["metrics"]["m"]["mean_diff"]["value"] == approx(-1.05)


def test_summary_words_for_no_difference_and_ties():
    from spo_cli.scores.summary import conclusion, pair_rows, summarise

    # 10 prompts, a wins 6 and loses 4: a difference in neither test
    rows = [[{"m": 0.0}, {"m": 1.0 if p < 6 else -1.0}] for p in range(10)]
    got = summarise(["b", "a"], rows, ["m"])
    r = got["pairs"][0]["metrics"]["m"]
    assert r["sign"]["p_value"] == 0.75390625
    assert r["conclusion"] == ("a scores higher than b on 6 of 10 untied prompts (sign test p = 0.754, "
                               "signed-rank p = 0.754): no clear difference at the 5% level.")
    assert pair_rows(got)[0][-1] == "no clear difference"
    rows = [[{"m": 0.0}, {"m": 1.0 if p < 4 else -1.0}] for p in range(8)]
    r = summarise(["b", "a"], rows, ["m"])["pairs"][0]["metrics"]["m"]
    assert r["conclusion"].startswith("a and b each score higher on 4 of 8 untied prompts")
    # a tiny p-value is printed as a bound, never rounded to 0
    rows = [[{"m": 0.0}, {"m": 1.0}] for _ in range(20)]
    got = summarise(["b", "a"], rows, ["m"])
    assert "sign test p = < 0.001" not in got["pairs"][0]["metrics"]["m"]["conclusion"]
    assert pair_rows(got)[0][5] == "< 0.001"
    assert "p < 0.001" in conclusion("a", "b", got["pairs"][0]["metrics"]["m"])


def test_summary_says_when_the_tests_disagree():
    """A difference is claimed only when both tests find it. 8 of 10 prompts won, the two lost by the
    least: sign p = 0.109, signed-rank p = 10 / 1024. 9 of 10 won by a little, one lost by a lot:
    sign p = 0.0215, signed-rank p = 86 / 1024 (subsets of ranks 1..10 summing to at most 10: 43)."""
    from spo_cli.scores.summary import pair_rows, summarise

    def one(diffs):
        got = summarise(["b", "a"], [[{"m": 0.0}, {"m": d}] for d in diffs], ["m"])
        return got["pairs"][0]["metrics"]["m"], pair_rows(got)[0][-1]

    r, verdict = one([-1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert (r["sign"]["p_value"], r["wilcoxon_p"], verdict) == (0.109375, 10 / 1024, "tests disagree")
    got = summarise(["b", "a"], [[{"m": 0.0}, {"m": d}] for d in [-1.0, -2.0, *range(3, 11)]], ["m"])
    assert pair_rows(got)[0][5:] == ["0.109", "0.00977", "tests disagree"]
    assert pair_rows(got, terminal=True)[0][5:] == ["0.109", "0.00977"]
    assert ("only the signed-rank test (which weighs how far apart the scores are) finding a difference"
            in r["conclusion"])
    r, verdict = one([0.1 * k for k in range(1, 10)] + [-100.0])
    assert (r["sign"]["p_value"], r["wilcoxon_p"], verdict) == (0.021484375, 86 / 1024, "tests disagree")
    assert "only the sign test (which counts prompts only) finding a difference" in r["conclusion"]
    r, verdict = one([1.0] * 9 + [-0.5])
    assert verdict == "a higher" and r["conclusion"].endswith("a difference at the 5% level.")


def test_summary_one_prompt_and_means_by_prompt():
    from spo_cli.scores.summary import markdown, means_rows, pair_rows, summarise

    rows = [[{"m": 1.0}, {"m": 2.0 + s}] for s in range(4)]
    got = summarise(["b", "a"], rows, ["m"], groups=["one prompt"] * 4)
    assert got["means"]["a"]["m"] == {"value": 3.5, "low": None, "high": None, "n": 4, "clusters": 1}
    assert means_rows(got) == [["b", "1.000 (one prompt: no interval)"], ["a", "3.500 (one prompt: no interval)"]]
    md = markdown(got)
    assert "[1.00, 1.00]" not in md and "1.00 (too few prompts)" in md
    assert "Too few prompts to conclude anything: 1 prompt(s), 1 not tied" in md
    assert pair_rows(got)[0][-1] == "too few prompts"
    # the terminal's table: no verdict column (the sentences follow it), the values marked, no interval
    assert pair_rows(got, terminal=True) == [["a vs b", "m", "1.00 (too few)", "2.5000 (too few)", "1 (4)", "1",
                                              "1"]]
    # every prompt tied: no p-value to show
    tied = summarise(["b", "a"], [[{"m": 1.0}, {"m": 1.0}]] * 3, ["m"])
    assert pair_rows(tied)[0][5:] == ["—", "—", "too few prompts"]
    assert tied["pairs"][0]["metrics"]["m"]["sign"]["p_value"] is None


def test_summary_past_the_exact_signed_rank_bound():
    """Past WILCOXON_MAX prompts the signed-rank test is not run: the sign test decides alone, and
    the sentence says the other was not computed."""
    from spo_cli.scores.stats import WILCOXON_MAX
    from spo_cli.scores.summary import pair_rows, summarise

    n = WILCOXON_MAX + 1
    got = summarise(["b", "a"], [[{"m": 0.0}, {"m": 1.0 if p % 3 else -1.0}] for p in range(n)], ["m"])
    r = got["pairs"][0]["metrics"]["m"]
    assert r["wilcoxon_p"] is None and r["sign"]["p_value"] < 1e-6
    assert "signed-rank p not computed): a difference at the 5% level." in r["conclusion"]
    assert pair_rows(got)[0][5:] == ["< 0.001", "—", "a higher"]


def test_caption_under_a_cell():
    from spo_cli.scores.summary import caption

    assert caption({"pickscore": 21.304, "hpsv2": 0.27123}, ["pickscore", "hpsv2"]) == ["pick 21.3", "hps 0.271"]
    assert caption({"pickscore": 21.304, "x": 1.0}, ["pickscore", "x"], per_line=2) == ["pick 21.3 · x 1"]
    assert caption(None, ["pickscore"]) == [] and caption({}, ["pickscore"]) == []


def test_summary_leaves_out_failed_cells_as_pairs():
    from spo_cli.scores.summary import summarise

    cells = [[{"clip": 1.0}, {"clip": 2.0}], [None, {"clip": 9.0}], [{"clip": 3.0}, {}]]
    m = summarise(["a", "b"], cells, ["clip"])["pairs"][0]["metrics"]["clip"]
    assert (m["n"], m["dropped"], m["win_rate"]["value"], m["mean_diff"]["value"]) == (1, 2, 1.0, 1.0)


def test_scorer_text_reads_a1111_as_the_generator_did():
    from spo_cli.scores.store import scorer_text

    assert scorer_text("(red fox:1.3) BREAK in snow", "a1111") == "red fox in snow"
    assert scorer_text("(red fox:1.3)BREAK in snow", "a1111") == "red fox in snow"
    assert scorer_text("a  (fox:1.2)", "plain") == "a  (fox:1.2)"  # plain text is scored as written


def test_recorded_score_reused_only_for_the_same_image_prompt_and_models(tmp_path):
    from spo_cli.scores import store

    image = tmp_path / "x.png"
    image.write_bytes(b"not really a png")
    models = {"org/pick": "abc:model.safetensors"}
    item = store.Item(image, "a red fox", "sidecar")
    record = store.write(item, "d1", {"pickscore": (21.5, models)}, {})
    assert store.read(image) == record
    assert store.current(record, "pickscore", models, "d1", "a red fox") == 21.5
    assert store.current(record, "pickscore", models, "d1", "a blue fox") is None  # the prompt changed
    assert store.current(record, "pickscore", models, "d2", "a red fox") is None  # the image changed
    assert store.current(record, "pickscore", {"org/pick": "def:model.safetensors"}, "d1", "a red fox") is None
    assert store.current(record, "clip", models, "d1", "a red fox") is None
    # A new prompt starts a new record: the old prompt's other scores are not carried over.
    again = store.write(store.Item(image, "a blue fox", "--prompt"), "d1", {"clip": (30.0, models)}, record)
    assert set(again["scores"]) == {"clip"}
    same = store.write(item, "d1", {"clip": (30.0, models)}, record)
    assert set(same["scores"]) == {"clip", "pickscore"}


def test_paper_harness_description():
    """The LPO harness, as its code reads (Kwai-Kolors/LPO evaluation/general_score_pap_val.py)."""
    from spo_cli.scores import paper

    (lpo,) = [a for a in paper.ASSUMPTIONS if "LPO" in a]
    assert "pickapic-anonymous/pickapic_v1" in lpo and "scores only the first of the four" in lpo


@pytest.fixture
def read_only(tmp_path):
    """A folder the process cannot write to: a read-only bind mount where the tests run as root
    (root ignores permission bits), else mode 0555."""
    import contextlib
    import os

    folder = tmp_path / "ro"
    folder.mkdir()

    @contextlib.contextmanager
    def locked():
        if os.geteuid() != 0:
            folder.chmod(0o555)
            try:
                yield folder
            finally:
                folder.chmod(0o755)
            return
        mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
        try:
            if not mounted or subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)],
                                             capture_output=True).returncode != 0:
                pytest.skip("running as root without the right to mount: no folder is read-only here")
            yield folder
        finally:
            if mounted:
                subprocess.run(["umount", str(folder)], check=True)

    return folder, locked


def test_scores_on_a_read_only_folder_are_one_paragraph(read_only):
    from spo_cli.errors import OutputError
    from spo_cli.scores import store

    folder, locked = read_only
    image = folder / "x.png"
    image.write_bytes(b"png")
    with locked():
        with pytest.raises(OutputError) as e:
            store.write(store.Item(image, "a fox", "sidecar"), "d", {"clip": (1.0, {})}, {})
    assert not isinstance(e.value, store.Unsaved)  # the whole run stops: nothing can be saved there
    text = e.value.paragraph()
    assert f"The scores of {image} cannot be saved: {folder} is not writable" in text and "writable folder" in text
    assert not store.scores_path(image).exists()


def test_a_folder_named_like_the_scores_file_fails_that_image(tmp_path):
    from spo_cli.scores import store

    image = tmp_path / "x.png"
    image.write_bytes(b"png")
    store.scores_path(image).mkdir()
    assert store.read(image) == {}
    with pytest.raises(store.Unsaved, match=r"x\.scores\.json beside it is a folder"):
        store.write(store.Item(image, "a fox", "sidecar"), "d", {"clip": (1.0, {})}, {})
    assert store.scores_path(image).is_dir() and list(store.scores_path(image).iterdir()) == []


def test_too_large_read_from_the_header(tmp_path):
    """A 12000×12000 PNG header: refused without decoding (PIL opens lazily), and without PIL's
    DecompressionBombWarning reaching stderr; a small image passes."""
    import warnings
    import zlib

    from PIL import Image

    from spo_cli.scores import store

    def png(path, w, h):
        def chunk(kind, data):
            return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 7))
                         + chunk(b"IEND", b""))
        return path

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning PIL lets out fails the test
        assert "12000×12000 (144 Mpx)" in store.too_large(png(tmp_path / "big.png", 12000, 12000))
        assert "past what PIL will decode" in store.too_large(png(tmp_path / "bomb.png", 20000, 20000))
        assert store.too_large(png(tmp_path / "edge.png", 8000, 8000)) is None  # exactly 64 Mpx
        assert "8001×8000" in store.too_large(png(tmp_path / "over.png", 8001, 8000))
        Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
        assert store.too_large(tmp_path / "small.png") is None
        (tmp_path / "junk.png").write_bytes(b"not an image")
        assert store.too_large(tmp_path / "junk.png") is None  # left to the decode, which says why


def test_manifest_rewritten_only_when_scores_change(read_only):
    """Scores reused as they were leave a batch folder's manifest alone (a folder made read-only
    since it was scored is no error then); new values are merged into the image's line."""
    import json

    from spo_cli.outputs import files
    from spo_cli.scores import store

    folder, locked = read_only
    (folder / "a.png").write_bytes(b"png")
    files.write_manifest(folder, [{"file": "a.png", "scores": {"clip": 30.0}}, {"file": "b.png", "scores": "junk"}])
    key = (folder / "a.png").resolve()
    with locked():
        assert store.update_manifest(folder, {key: {"clip": 30.0}}) is None
    assert store.update_manifest(folder, {key: {"pickscore": 21.0}}) == folder / files.MANIFEST
    b = (folder / "b.png").resolve()
    assert store.update_manifest(folder, {b: {"clip": 1.0}}) == folder / files.MANIFEST  # a junk value replaced
    rows = [json.loads(line) for line in (folder / files.MANIFEST).read_text().splitlines()]
    assert rows == [{"file": "a.png", "scores": {"clip": 30.0, "pickscore": 21.0}}, {"file": "b.png", "scores": {"clip": 1.0}}]


def test_eval_plot_panels_follow_the_summary():
    """report-plot.png's panels: later minus earlier, in the columns' order, intervals by prompt."""
    from spo_cli.scores.report import plot_panels
    from spo_cli.scores.summary import summarise

    cells = [[{"m": 1.0}, {"m": 3.0}, {"m": 2.0}], [{"m": 1.0}, {"m": 5.0}, {"m": 2.5}]]
    prompts = ["a fox", "a fox"]  # two seeds of one prompt
    panels = plot_panels(["x", "z", "y"], prompts, {"metrics": ["m"], "cells": cells})
    assert [p.label for p in panels] == ["z - x", "y - x", "y - z"]
    assert [list(p.diffs) for p in panels] == [[2.0, 4.0], [1.0, 1.5], [-1.0, -2.5]]
    summary = summarise(["x", "z", "y"], cells, ["m"], groups=prompts)
    for panel, pair in zip(panels, summary["pairs"]):
        assert panel.mean.to_dict() == pair["metrics"]["m"]["mean_diff"]
        assert panel.mean.low is None and panel.win_rate.clusters == 1  # one prompt: no interval
    from spo_cli.scores import plot

    image = plot.paired_differences(panels, "one prompt")  # drawn without an interval, no error
    assert image.size == (plot.WIDTH, plot.TITLE_HEIGHT + 3 * plot.PANEL_HEIGHT)
    assert plot._interval(panels[0].mean) == "+3.00"


def test_both_tests_significant_for_opposite_models_claim_nothing():
    """61 prompts lost by a little, 39 won by a lot: the sign test finds b ahead, the signed-rank test a."""
    from spo_cli.scores import summary

    diffs = [-float(k) for k in range(1, 62)] + [float(k) for k in range(62, 101)]
    r = stats.paired(diffs, [0.0] * len(diffs), resamples=200).to_dict()
    assert r["sign"]["p_value"] < 0.05 and r["wilcoxon_p"] < 0.05
    assert (r["sign"]["wins"], r["sign"]["losses"], r["rank_side"]) == (39, 61, 1)
    assert summary._verdict(r) == "tests disagree"
    assert "each finding the other model ahead" in summary.conclusion("a", "b", r)
    flipped = stats.paired([-d for d in diffs], [0.0] * len(diffs), resamples=200).to_dict()
    assert flipped["rank_side"] == -1 and summary._verdict(flipped) == "tests disagree"
    agree = stats.paired([float(k) for k in range(1, 31)], [0.0] * 30, resamples=200).to_dict()
    assert agree["rank_side"] == 1 and summary._verdict(agree) == "a higher"


def test_rank_side():
    assert stats.rank_side([]) == 0 and stats.rank_side([0.0, 0.0]) == 0
    assert stats.rank_side([1.0, -2.0]) == -1 and stats.rank_side([-1.0, 2.0]) == 1
    assert stats.rank_side([1.0, -1.0]) == 0  # tied magnitudes share their rank: no side

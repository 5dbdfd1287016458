"""Statistics for comparing two image generators by preference scores (pure: numpy and math only).

The usual design: both models render the same prompts with the same seeds, a preference model
scores every image, and each (prompt, seed) gives a PAIR of scores (a_i, b_i). Two summaries:

- win rate: the share of pairs where a scores higher than b, a tie counting one half (a pair
  scores 1, 0.5 or 0). 0.5 means no preference either way.
- mean difference: the mean of a_i - b_i, in the score's own units.

The unit of evidence is the PROMPT, not the pair: the seeds of one prompt share its subject, and
a model that suits that subject wins on all of them together. So:

- the intervals are clustered percentile bootstrap intervals: prompts are resampled with
  replacement, each bringing all of its seeds, the statistic recomputed over the pairs drawn, and
  the interval is the middle `level` share of those values. Four seeds of one prompt are one
  draw, not four; one prompt alone gives no interval at all. The interval describes how much the
  estimate would move with another draw of prompts like these; it says nothing about prompts
  unlike them. Resampling pairs (not the two columns separately) keeps the pairing.
- the paired tests compare the prompts' mean differences (a - b averaged over the prompt's
  seeds): an exact two-sided sign test (prompts a wins against prompts it loses; tied prompts
  left out, as is standard) and an exact two-sided Wilcoxon signed-rank test (zero differences
  left out, tied magnitudes given their mean rank; its null distribution is counted exactly, in
  floating point, up to WILCOXON_MAX prompts).
- with fewer than MIN_PROMPTS untied prompts no two-sided test of either kind can reach
  p < 0.05 however the prompts fall (a clean sweep of n gives p = 2 / 2^n, and 2 / 2^5 = 0.0625),
  so such a comparison is flagged `too_few`: it cannot conclude anything.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Estimate", "Paired", "SignTest", "bootstrap_mean", "paired", "sign_test", "wilcoxon",
           "MIN_PROMPTS", "WILCOXON_MAX"]

# Resamples are drawn in blocks of at most this many indices (8 bytes each), to bound memory.
_BLOCK_CELLS = 1 << 21
# The fewest untied prompts with which a two-sided sign or signed-rank test can reach p < 0.05.
MIN_PROMPTS = 6
# The exact signed-rank distribution costs up to about n^3 / 12 additions: 1000 prompts take about
# a second on a laptop's core; past this many the test is not run (the sign test still is).
WILCOXON_MAX = 1000


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval [low, high] over n values from `clusters`
    prompts; value None where n is 0, low and high None where there are fewer than 2 prompts
    (one prompt, however many seeds, says nothing about how the estimate would move)."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    clusters: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SignTest:
    """Prompts whose mean difference a - b is positive (`wins`), negative (`losses`) or zero
    (`ties`, left out of the test), and the exact two-sided p-value: the chance, were a and b
    alike, of a split at least this lopsided. None when every prompt is tied."""

    wins: int
    losses: int
    ties: int
    p_value: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """Model a against model b over n pairs from `prompts` prompts (after `dropped` pairs with a
    missing score).

    `win_rate`: share of pairs with a > b, ties counting one half, with its interval.
    `mean_diff`: mean of a - b, with its interval. Both intervals come from the same resamples.
    `sign`: the sign test over the prompts; `wilcoxon_p`: the signed-rank test's two-sided p-value
    (None with no untied prompt, or past WILCOXON_MAX of them). `too_few`: fewer than MIN_PROMPTS
    untied prompts, so no test could reach p < 0.05: nothing can be concluded from this sample.
    """

    win_rate: Estimate
    mean_diff: Estimate
    n: int
    dropped: int
    level: float
    prompts: int
    sign: SignTest
    wilcoxon_p: float | None
    too_few: bool
    rank_side: int = 0  # the signed-rank test's side (see rank_side): +1 a ahead, -1 b ahead

    def to_dict(self) -> dict:
        return asdict(self)


def _check(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def _floats(values: Sequence[float | None]) -> np.ndarray:
    """A float array; None becomes NaN."""
    return np.array([math.nan if v is None else v for v in values], dtype=float)


def _clusters(groups: Sequence[Hashable] | None, n: int) -> np.ndarray:
    """Cluster ids 0..G-1 in order of first appearance; without groups every value is its own."""
    if groups is None:
        return np.arange(n)
    if len(groups) != n:
        raise ValueError(f"groups need one label per value, got {len(groups)} for {n}")
    ids: dict = {}
    return np.array([ids.setdefault(g, len(ids)) for g in groups], dtype=int)


def _bootstrap(columns: np.ndarray, cluster: np.ndarray, *, resamples: int, seed: int,
               level: float) -> list[Estimate]:
    """Estimates of the mean of each row of `columns` (k x n), whole clusters resampled together:
    a resample draws G cluster ids with replacement and takes the mean over all their values."""
    k, n = columns.shape
    if n == 0:
        return [Estimate(None, None, None, 0, 0)] * k
    values = columns.mean(axis=1)
    g = int(cluster.max()) + 1
    if g == 1:
        return [Estimate(float(v), None, None, n, 1) for v in values]
    sums = np.zeros((k, g))
    for row in range(k):
        np.add.at(sums[row], cluster, columns[row])
    counts = np.bincount(cluster, minlength=g).astype(float)
    rng = np.random.default_rng(seed)
    means = np.empty((k, resamples))
    block = max(1, _BLOCK_CELLS // g)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, g, size=(stop - start, g))
        drawn = counts[idx].sum(axis=1)
        for row in range(k):
            means[row, start:stop] = sums[row][idx].sum(axis=1) / drawn
    tail = (1 - level) / 2
    lows, highs = np.quantile(means, [tail, 1 - tail], axis=1)
    return [Estimate(float(v), float(lo), float(hi), n, g) for v, lo, hi in zip(values, lows, highs)]


def bootstrap_mean(values: Sequence[float], *, groups: Sequence[Hashable] | None = None, resamples: int = 10000,
                   seed: int = 0, level: float = 0.95) -> Estimate:
    """The mean of `values` with its clustered percentile bootstrap interval at `level`.

    `groups` labels each value's prompt (values of one prompt are resampled together); without it
    every value is its own prompt. Missing values (NaN, None, infinities) are left out; n counts
    the rest. n = 0 gives None for value and bounds; a single prompt gives None for the bounds.
    Same seed, same interval.
    """
    _check(resamples, level)
    x = _floats(values)
    cluster = _clusters(groups, len(x))
    keep = np.isfinite(x)
    return _bootstrap(x[keep][None, :], _renumber(cluster[keep]), resamples=resamples, seed=seed, level=level)[0]


def _renumber(cluster: np.ndarray) -> np.ndarray:
    """Cluster ids 0..G-1 again after some values were left out (a prompt with none left is gone)."""
    if cluster.size == 0:
        return cluster
    return np.unique(cluster, return_inverse=True)[1].reshape(-1)


def sign_test(wins: int, losses: int) -> float | None:
    """Exact two-sided binomial sign test: twice the chance of at most min(wins, losses) successes
    in wins + losses fair coin flips, capped at 1. None when there is no untied observation."""
    n = wins + losses
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must not be negative, got {wins} and {losses}")
    if n == 0:
        return None
    term = tail = 1  # C(n, 0)
    for i in range(min(wins, losses)):  # C(n, i + 1) from C(n, i): exact, and linear (math.comb each time is not)
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)  # exact integers to the last division


def _doubled_ranks(d: np.ndarray) -> np.ndarray:
    """Twice the mean rank of each |d| (ties share their mean rank): integers, so sums stay exact."""
    n = d.size
    magnitude = np.abs(d)
    order = np.argsort(magnitude, kind="stable")
    ranks2 = np.empty(n, dtype=np.int64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and magnitude[order[j + 1]] == magnitude[order[i]]:
            j += 1
        ranks2[order[i:j + 1]] = i + j + 2  # ranks i+1 .. j+1, mean (i + j + 2) / 2, doubled
        i = j + 1
    return ranks2


def rank_side(diffs: Sequence[float]) -> int:
    """Which way the signed-rank statistic leans: +1 when the positive differences' rank sum is above
    half the total (a ahead), -1 below, 0 at it or with no nonzero difference. The sign test's side
    is its wins against losses; the two can differ (many small losses, a few large wins)."""
    d = np.asarray([v for v in diffs if v != 0], dtype=float)
    if d.size == 0:
        return 0
    ranks2 = _doubled_ranks(d)
    return int(np.sign(2 * int(ranks2[d > 0].sum()) - int(ranks2.sum())))


def wilcoxon(diffs: Sequence[float]) -> float | None:
    """Exact two-sided Wilcoxon signed-rank p-value of `diffs` (zeros left out, tied magnitudes
    given their mean rank). The null distribution of the positive rank sum is counted over all
    2^n sign patterns (in halves of doubled ranks, so mean ranks stay integers). None with no
    nonzero difference or more than WILCOXON_MAX of them."""
    d = np.asarray([v for v in diffs if v != 0], dtype=float)
    n = d.size
    if n == 0 or n > WILCOXON_MAX:
        return None
    ranks2 = _doubled_ranks(d)
    observed = int(ranks2[d > 0].sum())
    # Flipping every sign maps a sum s to total - s: the null distribution is symmetric, so the
    # two-sided p is twice the lower tail up to the nearer of the two, and only that far is counted
    # (entries up to `tail` never read past it). Small ranks first keep the early arrays short.
    tail = min(observed, int(ranks2.sum()) - observed)
    dist = np.zeros(tail + 1)
    dist[0] = 1.0
    top = 0
    for r in np.sort(ranks2):  # each rank joins the positive sum or not, each with chance one half
        top = min(tail, top + int(r))
        if r <= top:
            shifted = dist[:top + 1 - r].copy()
        dist[:top + 1] *= 0.5
        if r <= top:
            dist[r:top + 1] += 0.5 * shifted
    return float(min(1.0, 2 * dist.sum()))


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    groups: Sequence[Hashable] | None = None,
    resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> Paired:
    """Compare scores a_i and b_i of the same (prompt, seed) from two models.

    `groups` labels each pair's prompt (its seeds are resampled and tested together); without it
    every pair is its own prompt. Win rate: the share of pairs where a_i > b_i, a tie counting
    one half; 1.0 means a always wins, 0.5 no preference. Mean difference: the mean of a_i - b_i.
    Each has a clustered percentile bootstrap interval at `level`; the sign and signed-rank tests
    compare the prompts' mean differences. Pairs where either score is missing (NaN, None,
    infinite) are dropped first, and counted in `dropped`. The lengths of a and b must match.
    """
    _check(resamples, level)
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    x, y = _floats(a), _floats(b)
    cluster = _clusters(groups, len(x))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, cluster = x[keep], y[keep], _renumber(cluster[keep])
    diff = x - y
    wins = np.sign(diff) * 0.5 + 0.5  # 1 for a win, 0.5 for a tie, 0 for a loss
    win_rate, mean_diff = _bootstrap(np.stack([wins, diff]), cluster, resamples=resamples, seed=seed, level=level)
    g = int(cluster.max()) + 1 if cluster.size else 0
    per_prompt = np.bincount(cluster, weights=diff, minlength=g) / np.maximum(np.bincount(cluster, minlength=g), 1)
    up, down = int((per_prompt > 0).sum()), int((per_prompt < 0).sum())
    sign = SignTest(up, down, g - up - down, sign_test(up, down))
    return Paired(win_rate, mean_diff, n=int(keep.sum()), dropped=int((~keep).sum()), level=level, prompts=g,
                  sign=sign, wilcoxon_p=wilcoxon(per_prompt), too_few=up + down < MIN_PROMPTS,
                  rank_side=rank_side(per_prompt))

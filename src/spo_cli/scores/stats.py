"""Statistics for comparing two image generators by preference scores (pure: numpy only).

The usual design: both models render the same prompts with the same seeds, a preference model
scores every image, and each (prompt, seed) gives a PAIR of scores (a_i, b_i). Two summaries:

- win rate: the share of pairs where a scores higher than b, a tie counting one half (a pair
  scores 1, 0.5 or 0). 0.5 means no preference either way.
- mean difference: the mean of a_i - b_i, in the score's own units.

Each comes with a percentile bootstrap interval: the pairs are resampled with replacement, the
statistic recomputed on every resample, and the interval is the middle `level` share of those
values. It describes how much the estimate would move with another draw of prompts and seeds
like these ones; it says nothing about prompts unlike them. Resampling pairs (not the two
columns separately) keeps the pairing, which is what makes the comparison sharp.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Estimate", "Paired", "bootstrap_mean", "paired"]

# Resamples are drawn in blocks of at most this many indices (8 bytes each), to bound memory.
_BLOCK_CELLS = 1 << 21


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval [low, high]; None where n is 0."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Paired:
    """Model a against model b over n pairs (after `dropped` pairs with a missing score).

    `win_rate`: share of pairs with a > b, ties counting one half, with its interval.
    `mean_diff`: mean of a - b, with its interval. Both intervals come from the same resamples.
    """

    win_rate: Estimate
    mean_diff: Estimate
    n: int
    dropped: int
    level: float

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


def _bootstrap(columns: np.ndarray, *, resamples: int, seed: int, level: float) -> list[Estimate]:
    """Estimates of the mean of each row of `columns` (k x n), all rows resampled together."""
    k, n = columns.shape
    if n == 0:
        return [Estimate(None, None, None, 0)] * k
    values = columns.mean(axis=1)
    if n == 1:
        return [Estimate(float(v), float(v), float(v), 1) for v in values]
    rng = np.random.default_rng(seed)
    means = np.empty((k, resamples))
    block = max(1, _BLOCK_CELLS // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        for row in range(k):
            means[row, start:stop] = columns[row][idx].mean(axis=1)
    tail = (1 - level) / 2
    lows, highs = np.quantile(means, [tail, 1 - tail], axis=1)
    return [Estimate(float(v), float(lo), float(hi), n) for v, lo, hi in zip(values, lows, highs)]


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 10000, seed: int = 0, level: float = 0.95
) -> Estimate:
    """The mean of `values` with its percentile bootstrap interval at `level`.

    Missing values (NaN, None, infinities) are left out; n counts the rest. n = 0 gives None for
    value and bounds; n = 1 gives an interval of zero width. Same seed, same interval.
    """
    _check(resamples, level)
    x = _floats(values)
    x = x[np.isfinite(x)]
    return _bootstrap(x[None, :], resamples=resamples, seed=seed, level=level)[0]


def paired(
    a: Sequence[float],
    b: Sequence[float],
    *,
    resamples: int = 10000,
    seed: int = 0,
    level: float = 0.95,
) -> Paired:
    """Compare scores a_i and b_i of the same (prompt, seed) from two models.

    Win rate: the share of pairs where a_i > b_i, a tie counting one half; 1.0 means a always
    wins, 0.5 no preference. Mean difference: the mean of a_i - b_i. Each has a percentile
    bootstrap interval at `level` (the middle share of the statistic over `resamples` resamples
    of the pairs). Pairs where either score is missing (NaN, None, infinite) are dropped first,
    and counted in `dropped`. The lengths of a and b must match.
    """
    _check(resamples, level)
    if len(a) != len(b):
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    x, y = _floats(a), _floats(b)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    wins = np.sign(x - y) * 0.5 + 0.5  # 1 for a win, 0.5 for a tie, 0 for a loss
    win_rate, mean_diff = _bootstrap(np.stack([wins, x - y]), resamples=resamples, seed=seed, level=level)
    return Paired(win_rate, mean_diff, n=int(keep.sum()), dropped=int((~keep).sum()), level=level)


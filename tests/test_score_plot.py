"""Unit tests for spo_cli.scores.plot: the paired-differences figure (PIL only, no torch).

The figure is checked by its pixels: size, ink per panel, dots on the right side of the zero
line, the mean tick and interval bar where the numbers put them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from spo_cli.scores import plot
from spo_cli.scores.plot import PANEL_HEIGHT, TITLE_HEIGHT, WIDTH, Panel, paired_differences
from spo_cli.scores.stats import Estimate

KW = dict(resamples=500)


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def _panel(image, index: int) -> np.ndarray:
    top = TITLE_HEIGHT + PANEL_HEIGHT * index
    return _pixels(image)[top : top + PANEL_HEIGHT]


def _strip(panel_pixels: np.ndarray) -> np.ndarray:
    return panel_pixels[plot.STRIP_TOP - 4 : plot.AXIS_Y]


def _blue(p: np.ndarray) -> np.ndarray:
    return (p[..., 2] - p[..., 0] > 50) & (p[..., 2] > p[..., 1])


def _red(p: np.ndarray) -> np.ndarray:
    return (p[..., 0] - p[..., 2] > 50) & (p[..., 0] > p[..., 1])


def _zero_x(strip: np.ndarray) -> int:
    """The column of the zero line: the one most made of its colour."""
    counts = (strip == plot.ZERO_LINE).all(axis=-1).sum(axis=0)
    assert counts.max() >= plot.STRIP_HEIGHT // 2
    return int(counts.argmax())


def _ink(pixels: np.ndarray) -> int:
    return int((pixels < 200).any(axis=-1).sum())


EDGE_CASES = {
    "one pair": ([3.0], [1.0]),
    "all ties": ([1.0] * 5, [1.0] * 5),
    "all equal, not zero": ([2.0] * 5, [1.5] * 5),
    "positive only": ([2.0, 3.0, 4.0], [1.0, 1.0, 1.0]),
    "negative only": ([1.0, 1.0, 1.0], [2.0, 3.0, 4.0]),
    "tiny": ([1e-7, 3e-7, 0.0], [0.0, 0.0, 1e-7]),
    "huge": ([2e6, 5e6, 1e6], [1e6, 1e6, 2e6]),
    "many": (list(np.random.default_rng(0).normal(0.2, 1, 500)), [0.0] * 500),
    "with missing": ([1.0, math.nan, 2.0], [0.0, 1.0, None]),
}


@pytest.mark.parametrize("case", EDGE_CASES)
def test_edge_cases_render(case):
    a, b = EDGE_CASES[case]
    image = paired_differences([Panel.from_scores("PickScore", "spo − base", a, b, **KW)], f"case: {case}")
    assert image.size == (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT)
    assert image.mode == "RGB"
    strip = _strip(_panel(image, 0))
    assert _ink(strip) > 100  # axis, zero line, dots, mean
    if case != "all ties":  # there the tie dots and the mean tick cover the zero line
        _zero_x(strip)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_size_per_panel_count(count):
    panels = [Panel.from_scores(f"metric {i}", "a − b", [1.0, 2.0, 0.5], [0.5, 0.5, 1.0], **KW)
              for i in range(count)]
    image = paired_differences(panels, "title")
    assert image.size == (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * count)
    assert _pixels(image)[0, 0].tolist() == [255, 255, 255]  # white background
    for i in range(count):
        assert _ink(_panel(image, i)) > 500  # every panel drawn, not only the first
    assert _ink(_pixels(image)[:TITLE_HEIGHT]) > 50  # the title


def test_no_panels():
    with pytest.raises(ValueError):
        paired_differences([], "title")


def test_dots_right_of_zero_when_a_always_wins():
    a = [1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    image = paired_differences([Panel.from_scores("PickScore", "spo − base", a, [1.0] * 6, **KW)], "t")
    strip = _strip(_panel(image, 0))
    zero = _zero_x(strip)
    xs = np.nonzero(_blue(strip))[1]
    assert xs.size > 6 * 10  # six dots drawn
    assert xs.min() > zero + 10
    assert not _red(strip).any()


def test_dots_left_of_zero_when_a_always_loses():
    panel = Panel.from_scores("PickScore", "spo − base", [0.0] * 4, [1.0, 2.0, 3.0, 4.0], **KW)
    image = paired_differences([panel], "t")
    strip = _strip(_panel(image, 0))
    zero = _zero_x(strip)
    xs = np.nonzero(_red(strip))[1]
    assert xs.size > 4 * 10
    assert xs.max() < zero - 10
    assert not _blue(strip).any()


def test_mean_tick_and_interval_bar_where_the_numbers_say():
    diffs = [1.0] * 5 + [3.0] * 5
    panel = Panel("m", "a − b", diffs, Estimate(2.0, 1.5, 2.5, 10), Estimate(1.0, 1.0, 1.0, 10))
    strip = _strip(_panel(paired_differences([panel], "t"), 0))
    blue_xs = np.nonzero(_blue(strip))[1]
    left, right = blue_xs[blue_xs < blue_xs.mean()].mean(), blue_xs[blue_xs > blue_xs.mean()].mean()
    black = (strip < 40).all(axis=-1)
    columns = black.sum(axis=0)
    tick = np.nonzero(columns >= plot.STRIP_HEIGHT - 10)[0]  # the bold tick: full strip height
    assert 3 <= tick.size <= 6
    assert abs(tick.mean() - (left + right) / 2) < 2  # at 2, halfway between the dots at 1 and 3
    between = black[:, int(left) + 5 : tick.min() - 2]  # right of the dots at 1, left of the tick
    bar_row = between.sum(axis=1).argmax()
    assert between[bar_row].sum() > (tick.min() - left) / 3  # the bar, from 1.5 to 2
    bar = np.nonzero(black[bar_row])[0]
    assert abs(bar.min() - (3 * left + right) / 4) < 3  # from 1.5
    assert abs(bar.max() - (left + 3 * right) / 4) < 3  # to 2.5


def test_jitter_spreads_equal_values_and_is_deterministic():
    panel = Panel.from_scores("m", "a − b", [2.0] * 30, [1.0] * 30, **KW)
    first, second = paired_differences([panel], "t"), paired_differences([panel], "t")
    assert first.tobytes() == second.tobytes()
    rows = np.nonzero(_blue(_strip(_panel(first, 0))))[0]
    assert rows.max() - rows.min() > plot.STRIP_HEIGHT * 0.7  # not one blob on a line


def test_win_rate_text_drawn():
    a, b = [2.0, 0.0, 3.0], [1.0, 1.0, 1.0]
    with_rate = Panel.from_scores("m", "a − b", a, b, **KW)
    without = Panel(with_rate.metric, with_rate.label, with_rate.diffs, with_rate.mean)
    header = (slice(0, plot.STRIP_TOP - 26), slice(WIDTH // 2, WIDTH))  # right half of the first line
    assert _ink(_panel(paired_differences([with_rate], "t"), 0)[header]) > 200
    assert _ink(_panel(paired_differences([without], "t"), 0)[header]) == 0


def test_empty_panel():
    panel = Panel("m", "a − b", [], Estimate(None, None, None, 0), Estimate(None, None, None, 0))
    image = paired_differences([panel, Panel.from_scores("n", "a − b", [1.0], [0.0], **KW)], "t")
    assert image.size == (WIDTH, TITLE_HEIGHT + 2 * PANEL_HEIGHT)
    empty, full = _panel(image, 0), _panel(image, 1)
    assert _ink(_strip(empty)) > 50  # "no pairs"
    assert _ink(empty[plot.AXIS_Y]) < 50 < _ink(full[plot.AXIS_Y])  # and no axis


def test_from_scores_matches_paired():
    panel = Panel.from_scores("m", "a − b", [3.0, None, 1.0], [1.0, 2.0, 2.0], seed=4, resamples=300)
    assert panel.diffs == [2.0, -1.0]
    assert panel.mean.value == 0.5 and panel.mean.n == 2
    assert panel.win_rate.value == 0.5


def test_readable_numbers():
    ticks, step = plot._ticks(-0.013, 0.021)
    assert step == 0.01
    assert [plot._tick_label(t, step) for t in ticks] == ["-0.01", "0", "0.01", "0.02"]
    ticks, step = plot._ticks(-0.0055, 0.0195)
    assert [plot._tick_label(t, step) for t in ticks] == ["-0.005", "0", "0.005", "0.010", "0.015"]
    ticks, step = plot._ticks(-1.1, 1.1)
    assert [plot._tick_label(t, step) for t in ticks] == ["-1.0", "-0.5", "0", "0.5", "1.0"]
    assert plot._interval(Estimate(0.00416, 0.00247, 0.00591, 40)) == "+0.00416 [+0.00247, +0.00591]"
    assert plot._interval(Estimate(0.2113, -0.02, 0.391, 40)) == "+0.211 [-0.020, +0.391]"


def test_missing_glyphs_replaced():
    # Pillow's bundled font has no U+2212, ×, é: they would be drawn as boxes
    assert plot._plain("spo − base × 2, café · ok") == "spo - base x 2, cafe · ok"


def test_too_few_prompts_draws_no_interval_bar():
    """With too few prompts to conclude (issue 27) the panel shows the mean tick and the dots, and no
    interval bar: the strip differs from the same panel's with enough prompts only by the bar."""
    diffs = [1.0] * 5 + [3.0] * 5
    sure = Panel("m", "a − b", diffs, Estimate(2.0, 1.5, 2.5, 10), Estimate(1.0, 1.0, 1.0, 10))
    few = Panel("m", "a − b", diffs, Estimate(2.0, 1.5, 2.5, 10), Estimate(1.0, 1.0, 1.0, 10), too_few=True)
    bare = Panel("m", "a − b", diffs, Estimate(2.0, None, None, 10), Estimate(1.0, 1.0, 1.0, 10))
    strip = {k: _strip(_panel(paired_differences([p], "t"), 0)) for k, p in
             (("sure", sure), ("few", few), ("bare", bare))}
    assert (strip["few"] == strip["bare"]).all()  # the axis spans the dots only, as with no interval
    black = {k: (v < 40).all(axis=-1).sum() for k, v in strip.items()}
    assert black["sure"] > black["few"] + 30  # the bar's ink
    assert Panel.from_scores("m", "a − b", [2.0] * 5, [1.0] * 5, **KW).too_few
    assert not Panel.from_scores("m", "a − b", [2.0] * 6, [1.0] * 6, **KW).too_few

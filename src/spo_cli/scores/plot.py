"""PNG figures of paired comparisons, drawn with PIL only (no matplotlib, no torch).

`paired_differences`: one panel per metric, stacked: the per-pair differences (a - b) as a jittered
strip of dots on a horizontal axis with its zero line, the mean difference as a bold tick and its
bootstrap interval as a bar, and the win rate as text. Dots right of the zero line are pairs a won.

`win_rates`: a sweep axis' chart: the axis' values along x, win rates (0 to 1) up y with their
intervals, one series per pair and metric, and the 0.5 line (no preference).
"""

from __future__ import annotations

import functools
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .stats import Estimate, paired

__all__ = ["Panel", "paired_differences", "Series", "win_rates", "WIDTH", "TITLE_HEIGHT", "PANEL_HEIGHT"]

WIDTH = 900
TITLE_HEIGHT = 44
PANEL_HEIGHT = 170  # the image is TITLE_HEIGHT + PANEL_HEIGHT * len(panels) tall

MARGIN = 40  # left and right of the axis
STRIP_TOP = 52  # offsets within a panel
STRIP_HEIGHT = 60
AXIS_Y = STRIP_TOP + STRIP_HEIGHT + 6
DOT_RADIUS = 3

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (110, 110, 110)
AXIS = (60, 60, 60)
ZERO_LINE = (150, 150, 150)
WIN = (31, 119, 180, 150)  # a > b
LOSS = (214, 39, 40, 150)  # a < b
TIE = (120, 120, 120, 150)
INTERVAL = (0, 0, 0)

# Stand-ins for characters Pillow's bundled font (a subset of Aileron) has no glyph for; it
# would draw a box. Accented letters lose the accent; anything else missing becomes "?".
_STAND_INS = {"\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "x", "\u2248": "~", "\u2264": "<=",
              "\u2265": ">=", "\u2192": "->", "\u00b5": "u"}


@dataclass(frozen=True)
class Panel:
    """One metric: `label` names the difference ("spo − base"), `diffs` are the per-pair
    differences a - b, `mean` their mean with its interval, `win_rate` the share of pairs a won
    (ties one half) with its interval, at confidence `level`. `too_few`: too few untied prompts
    to conclude anything (see stats.MIN_PROMPTS): the panel says so and draws no interval."""

    metric: str
    label: str
    diffs: Sequence[float]
    mean: Estimate
    win_rate: Estimate | None = None
    level: float = 0.95
    too_few: bool = False

    @classmethod
    def from_scores(cls, metric: str, label: str, a: Sequence[float], b: Sequence[float], **kwargs) -> Panel:
        """The panel for scores a and b of the same pairs; `kwargs` go to `stats.paired`."""
        result = paired(a, b, **kwargs)
        x = np.array([math.nan if v is None else v for v in a], dtype=float)
        y = np.array([math.nan if v is None else v for v in b], dtype=float)
        keep = np.isfinite(x) & np.isfinite(y)
        return cls(metric, label, (x[keep] - y[keep]).tolist(), result.mean_diff, result.win_rate, result.level,
                   result.too_few)


@functools.lru_cache(maxsize=None)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


@functools.lru_cache(maxsize=None)
def _glyph(char: str) -> bytes:
    """The pixels of `char` in the default font (the same for a missing glyph as for U+FFFF)."""
    font = _font(14)
    left, top, right, bottom = font.getbbox(char)
    image = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(image).text((-left, -top), char, font=font, fill=255)
    return image.tobytes()


@functools.lru_cache(maxsize=None)
def _drawable(char: str) -> str:
    if char.isascii() or _glyph(char) != _glyph("\uffff"):
        return char
    if char in _STAND_INS:
        return _STAND_INS[char]
    bare = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
    return bare if bare and all(c.isascii() or _glyph(c) != _glyph("\uffff") for c in bare) else "?"


def _plain(text: str) -> str:
    return "".join(_drawable(c) for c in text)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font, fill, align: str = "left") -> None:
    """Text with its top at y and its left edge, centre or right edge at x (no anchors: those
    need FreeType, and a Pillow without it falls back to a bitmap font)."""
    text = _plain(text)
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    x, y = xy
    x -= {"left": 0, "center": (right - left) / 2, "right": right - left}[align] + left
    draw.text((x, y), text, font=font, fill=fill)


def _ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi], and the step."""
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [i * step for i in range(first, last + 1)], step


def _tick_label(value: float, step: float) -> str:
    if step >= 1e5 or step < 1e-4:
        return f"{value:.3g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _numbers(*values: float) -> str:
    """Values with the same number of decimals: three significant digits of the largest."""
    largest = max(abs(v) for v in values)
    if largest == 0:
        decimals = 2
    elif largest >= 1e5 or largest < 1e-4:
        return ", ".join(f"{v:+.3g}" for v in values)
    else:
        decimals = min(6, max(0, 2 - math.floor(math.log10(largest))))
    return ", ".join(f"{v:+.{decimals}f}" for v in values)


def _interval(estimate: Estimate) -> str:
    if estimate.low is None:  # a single prompt: no interval to show
        return _numbers(estimate.value)
    value, low, high = _numbers(estimate.value, estimate.low, estimate.high).split(", ")
    return f"{value} [{low}, {high}]"


def _range(values: list[float]) -> tuple[float, float]:
    """The axis range: the values and zero, padded by 5 %; a zero range becomes [-1, 1]."""
    lo, hi = min(values + [0.0]), max(values + [0.0])
    if hi - lo == 0:
        return -1.0, 1.0
    pad = (hi - lo) * 0.05
    return lo - pad, hi + pad


def _jitter(count: int) -> np.ndarray:
    """Deterministic offsets in [0, 1), evenly spread (golden-ratio sequence)."""
    return (np.arange(count) * 0.6180339887498949 + 0.5) % 1.0


def _draw_panel(draw: ImageDraw.ImageDraw, top: int, panel: Panel) -> None:
    big, small = _font(17), _font(13)
    diffs = [float(d) for d in panel.diffs]
    _text(draw, (MARGIN, top + 10), panel.metric, big, INK)
    _text(draw, (MARGIN, top + 32), f"{panel.label}: difference per pair", small, MUTED)
    shown = panel.mean if not panel.too_few else Estimate(panel.mean.value, None, None, panel.mean.n)
    if panel.win_rate is not None and panel.win_rate.value is not None:
        w = panel.win_rate
        _text(draw, (WIDTH - MARGIN, top + 10),
              f"win rate {w.value:.2f}" + (f" [{w.low:.2f}, {w.high:.2f}]" if w.low is not None and not panel.too_few
                                           else "") + f", n={w.n}", big, INK, "right")
    if panel.mean.value is not None:
        _text(draw, (WIDTH - MARGIN, top + 32), f"mean {_interval(shown)} " + (
            "(too few prompts to conclude)" if panel.too_few else f"({panel.level:.0%} interval)"),
            small, MUTED, "right")
    if not diffs and panel.mean.value is None:
        _text(draw, (WIDTH / 2, top + STRIP_TOP + STRIP_HEIGHT / 2 - 8), "no pairs", big, MUTED, "center")
        return

    marks = diffs + [v for v in (shown.value, shown.low, shown.high) if v is not None]
    lo, hi = _range(marks)

    def x_of(value: float) -> float:
        return MARGIN + (value - lo) / (hi - lo) * (WIDTH - 2 * MARGIN)

    strip_top, axis_y = top + STRIP_TOP, top + AXIS_Y
    # axis, ticks and their labels
    draw.line([(MARGIN, axis_y), (WIDTH - MARGIN, axis_y)], fill=AXIS, width=1)
    ticks, step = _ticks(lo, hi)
    for value in ticks:
        x = round(x_of(value))
        draw.line([(x, axis_y), (x, axis_y + 5)], fill=AXIS, width=1)
        _text(draw, (x, axis_y + 8), _tick_label(value, step), small, INK, "center")
    # zero line through the strip
    zero = round(x_of(0.0))
    draw.line([(zero, strip_top - 4), (zero, axis_y)], fill=ZERO_LINE, width=1)
    # the differences, jittered vertically
    band = STRIP_HEIGHT - 2 * DOT_RADIUS - 2
    for d, j in zip(diffs, _jitter(len(diffs))):
        x, y = x_of(d), strip_top + DOT_RADIUS + 1 + j * band
        colour = WIN if d > 0 else LOSS if d < 0 else TIE
        draw.ellipse([x - DOT_RADIUS, y - DOT_RADIUS, x + DOT_RADIUS, y + DOT_RADIUS], fill=colour)
    # the interval as a bar and the mean as a bold tick, over the dots
    middle = strip_top + STRIP_HEIGHT / 2
    if shown.low is not None and shown.high is not None:
        low, high = x_of(shown.low), x_of(shown.high)
        draw.line([(low, middle), (high, middle)], fill=INTERVAL, width=3)
        for x in (low, high):
            draw.line([(x, middle - 6), (x, middle + 6)], fill=INTERVAL, width=2)
    if panel.mean.value is not None:
        x = x_of(panel.mean.value)
        draw.rectangle([x - 2, strip_top + 2, x + 2, strip_top + STRIP_HEIGHT - 2], fill=INTERVAL)


def paired_differences(panels: list[Panel], title: str) -> Image.Image:
    """The figure: a title over one panel per metric, WIDTH wide and
    TITLE_HEIGHT + PANEL_HEIGHT * len(panels) tall, on white."""
    if not panels:
        raise ValueError("paired_differences needs at least one panel")
    image = Image.new("RGB", (WIDTH, TITLE_HEIGHT + PANEL_HEIGHT * len(panels)), BACKGROUND)
    draw = ImageDraw.Draw(image, "RGBA")  # RGBA fills blend: overlapping dots show as darker
    _text(draw, (WIDTH / 2, 12), title, _font(20), INK, "center")
    for i, panel in enumerate(panels):
        top = TITLE_HEIGHT + PANEL_HEIGHT * i
        if i:
            draw.line([(MARGIN, top), (WIDTH - MARGIN, top)], fill=(225, 225, 225), width=1)
        _draw_panel(draw, top, panel)
    return image


# --- win rates along a sweep axis ------------------------------------------------------------------

SLOT = 96  # px per axis value
CHART_LEFT, CHART_RIGHT = 48, 16
CHART_TOP, CHART_HEIGHT = 46, 200  # the plot area, below the title
CHART_MIN_WIDTH = 420
LEGEND_LINE = 18
EVEN = (150, 150, 150)  # the 0.5 line
GRID = (232, 232, 232)
# Matplotlib's tab10, the series' colours in turn.
PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


@dataclass(frozen=True)
class Series:
    """One line of a win-rate chart: `points[i]` is (win rate, low, high) at the i-th axis value,
    low and high None where no interval is shown (too few prompts), or None with no pairs there."""

    label: str
    points: Sequence[tuple[float, float | None, float | None] | None]


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    """`text`, cut with '...' to at most `width` pixels (a value can be a long prompt or a path)."""
    text = _plain(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def win_rates(title: str, labels: list[str], series: list[Series], axis_name: str = "",
              subtitle: str = "win rate (ties one half), 95 % intervals over prompts") -> Image.Image:
    """The chart: SLOT px per value (at least CHART_MIN_WIDTH wide), a legend line per series.
    Filled dots carry their interval; hollow ones have none (too few prompts to conclude)."""
    if not labels or not series or any(len(s.points) != len(labels) for s in series):
        raise ValueError("win_rates needs values, series, and one point (or None) per value in each series")
    width = max(CHART_MIN_WIDTH, CHART_LEFT + CHART_RIGHT + SLOT * len(labels))
    legend_top = CHART_TOP + CHART_HEIGHT + 44
    height = legend_top + LEGEND_LINE * (len(series) + 1) + 8
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    big, small = _font(15), _font(12)
    _text(draw, (width / 2, 4), _fit(draw, title, big, width - 16), big, INK, "center")
    _text(draw, (width / 2, 22), _fit(draw, subtitle, small, width - 16), small, MUTED, "center")
    left = CHART_LEFT + (width - CHART_LEFT - CHART_RIGHT - SLOT * len(labels)) / 2
    top, bottom = CHART_TOP, CHART_TOP + CHART_HEIGHT

    def y_of(value: float) -> float:
        return bottom - min(1.0, max(0.0, value)) * CHART_HEIGHT

    ticks, step = _ticks(0.0, 1.0, 5)
    for t in ticks:
        y = round(y_of(t))
        draw.line([(left, y), (left + SLOT * len(labels), y)], fill=GRID, width=1)
        _text(draw, (left - 6, y - 7), _tick_label(t, step), small, INK, "right")
    draw.line([(left, round(y_of(0.5))), (left + SLOT * len(labels), round(y_of(0.5)))], fill=EVEN, width=2)
    draw.line([(left, top), (left, bottom), (left + SLOT * len(labels), bottom)], fill=AXIS, width=1)
    for i, label in enumerate(labels):
        _text(draw, (left + SLOT * (i + 0.5), bottom + 6), _fit(draw, label, small, SLOT - 6), small, INK, "center")
    if axis_name:
        _text(draw, (left + SLOT * len(labels) / 2, bottom + 24), axis_name, small, MUTED, "center")
    # Series side by side within a value's slot, so that their intervals do not hide each other.
    spread = min(12.0, 0.6 * SLOT / len(series))
    for s, line in enumerate(series):
        colour = PALETTE[s % len(PALETTE)]
        shift = (s - (len(series) - 1) / 2) * spread
        xy = [(left + SLOT * (i + 0.5) + shift, p) for i, p in enumerate(line.points) if p is not None]
        for (x0, p0), (x1, p1) in zip(xy, xy[1:]):
            draw.line([(x0, y_of(p0[0])), (x1, y_of(p1[0]))], fill=colour, width=1)
        for x, (value, low, high) in xy:
            y = y_of(value)
            if low is not None and high is not None:
                draw.line([(x, y_of(low)), (x, y_of(high))], fill=colour, width=2)
                for end in (low, high):
                    draw.line([(x - 3, y_of(end)), (x + 3, y_of(end))], fill=colour, width=1)
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
            else:
                draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=BACKGROUND, outline=colour, width=2)
        y = legend_top + LEGEND_LINE * s
        draw.rectangle([CHART_LEFT, y + 3, CHART_LEFT + 10, y + 13], fill=colour)
        _text(draw, (CHART_LEFT + 16, y), _fit(draw, line.label, small, width - CHART_LEFT - 24), small, INK)
    _text(draw, (CHART_LEFT, legend_top + LEGEND_LINE * len(series)),
          _fit(draw, "grey line: 0.5, no preference · hollow: too few prompts, no interval", small,
               width - CHART_LEFT - 8), small, MUTED)
    return image

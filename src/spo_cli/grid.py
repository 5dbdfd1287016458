"""Labelled comparison grids: a header row of column labels, a left column of prompts and seeds."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (24, 24, 24)
MUTED = (110, 110, 110)
MISSING = (225, 225, 225)


@dataclass(frozen=True)
class Layout:
    cell_w: int
    cell_h: int
    gutter: int
    label_w: int  # the left column
    header_h: int
    font_px: int
    columns: int
    rows: int
    caption_h: int = 0  # text under each cell (scores), part of the row's height

    @property
    def size(self) -> tuple[int, int]:
        w = self.label_w + self.columns * (self.cell_w + self.gutter) + self.gutter
        h = self.header_h + self.rows * (self.cell_h + self.caption_h + self.gutter) + self.gutter
        return w, h

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """The image's box; its caption, if any, is the `caption_h` pixels below it."""
        x = self.label_w + self.gutter + col * (self.cell_w + self.gutter)
        y = self.header_h + self.gutter + row * (self.cell_h + self.caption_h + self.gutter)
        return x, y, x + self.cell_w, y + self.cell_h


def fit(size: tuple[int, int], cell_size: int | None) -> tuple[int, int]:
    """The cell's size in the grid: the image's, shrunk (never grown) so its long side ≤ cell_size."""
    w, h = size
    if cell_size and max(w, h) > cell_size:
        scale = cell_size / max(w, h)
        return max(1, round(w * scale)), max(1, round(h * scale))
    return w, h


def layout(cell: tuple[int, int], columns: int, rows: int, caption_lines: int = 0) -> Layout:
    cell_w, cell_h = cell
    # Text scales with the cells so labels stay readable on a 64-pixel test grid and a 1024 one.
    font_px = max(11, min(36, round(min(cell_w, cell_h) / 14)))
    gutter = max(2, font_px // 4)
    label_w = max(cell_w * 3 // 5, font_px * 9)
    header_h = font_px * 2 + gutter * 2
    caption_h = round(caption_font_px(font_px) * 1.25) * caption_lines + (gutter if caption_lines else 0)
    return Layout(cell_w, cell_h, gutter, label_w, header_h, font_px, columns, rows, caption_h)


def caption_font_px(font_px: int) -> int:
    return max(10, round(font_px * 0.8))


def _font(px: int):
    return ImageFont.load_default(size=px)


def wrap(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels, at most `max_lines` lines, the last one ellipsised."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width or not line:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    lines = [_clip(ln, font, width) for ln in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _clip(lines[-1].rstrip("…") + " …", font, width)
    return lines


def _clip(text: str, font, width: int) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def render(cells: list[list[Image.Image | None]], column_labels: list[str], row_labels: list[tuple[str, str]],
           cell: tuple[int, int], captions: list[list[list[str]]] | None = None,
           corner: str | None = None) -> Image.Image:
    """One grid page. `cells[row][col]` is an image (resized to `cell`) or None for a missing one;
    `row_labels[row]` is (prompt, detail line such as the seed); `captions[row][col]`, if given,
    are short lines under the cell (its scores); `corner`, above the row labels, names what the
    whole page holds (a sweep's Z value)."""
    lines_under = max((len(c) for row in captions or [] for c in row), default=0)
    lay = layout(cell, len(column_labels), len(cells), lines_under)
    grid = Image.new("RGB", lay.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = _font(lay.font_px)
    small = _font(max(10, round(lay.font_px * 0.85)))
    line_h = round(lay.font_px * 1.25)

    if corner:
        lines = wrap(corner, font, lay.label_w - 2 * lay.gutter, 2)
        y = (lay.header_h - line_h * len(lines)) // 2
        for ln in lines:
            draw.text((lay.gutter, y), ln, fill=INK, font=font)
            y += line_h

    for col, label in enumerate(column_labels):
        x0, _, x1, _ = lay.cell_box(0, col)
        lines = wrap(label, font, lay.cell_w - lay.gutter, 2)
        y = (lay.header_h - line_h * len(lines)) // 2
        for ln in lines:
            draw.text(((x0 + x1) // 2, y), ln, fill=INK, font=font, anchor="ma")
            y += line_h

    for row, (prompt, detail) in enumerate(row_labels):
        _, y0, _, y1 = lay.cell_box(row, 0)
        detail_h = round(small.size * 1.25)
        room = (lay.cell_h - 2 * lay.gutter - detail_h) // line_h  # prompt lines that fit above the detail
        if room < 1:  # a row too short for two lines: the detail and the prompt share one
            prompt, detail, room = " · ".join(t for t in (detail, prompt) if t), "", 1
        lines = wrap(prompt, font, lay.label_w - 2 * lay.gutter, room)
        y = y0 + lay.gutter
        for ln in lines:
            draw.text((lay.gutter, y), ln, fill=INK, font=font)
            y += line_h
        if detail:
            draw.text((lay.gutter, y + lay.gutter), detail, fill=MUTED, font=small)
        for col in range(lay.columns):
            box = lay.cell_box(row, col)
            image = cells[row][col]
            if image is None:
                draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=MISSING)  # end point inclusive
                draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), "failed", fill=MUTED, font=small,
                          anchor="mm")
            else:
                grid.paste(image.convert("RGB").resize(cell, Image.LANCZOS) if image.size != cell else
                           image.convert("RGB"), box[:2])
            if captions:
                cap = _font(caption_font_px(lay.font_px))
                y = box[3] + lay.gutter // 2
                for text in captions[row][col]:
                    draw.text((box[0], y), _clip(text, cap, lay.cell_w), fill=INK, font=cap)
                    y += round(cap.size * 1.25)
    return grid

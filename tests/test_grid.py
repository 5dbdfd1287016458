"""Comparison grids, without a model: geometry, labels, paging, the columns, and `spo compare`'s option parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from spo_cli import comparison, grid
from spo_cli import request as jobs
from spo_cli.cli import compare, options
from spo_cli.comparison import Column
from spo_cli.request import ImageTask as Row
from spo_cli.errors import EXIT_USAGE, UsageError

# Saturated colours, none of them grey, white or the ink: a pixel of one of these is a cell's.
PALETTE = [(220, 30, 30), (30, 180, 40), (40, 60, 220), (230, 200, 20), (20, 200, 210), (200, 40, 200),
           (250, 130, 10), (120, 60, 20), (90, 10, 130), (10, 110, 90), (160, 220, 60), (240, 110, 150)]
LONG_PROMPT = ("a child and a penguin sitting on the moon, watching the earth rise over a crater, "
               "cinematic lighting, detailed oil painting with soft warm colours")


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def solid_cells(rows: int, cols: int, cell: tuple[int, int]) -> list[list[Image.Image]]:
    return [[Image.new("RGB", cell, PALETTE[r * cols + c]) for c in range(cols)] for r in range(rows)]


def cell_mask(lay: grid.Layout) -> np.ndarray:
    """True where some cell's box is."""
    w, h = lay.size
    mask = np.zeros((h, w), bool)
    for r in range(lay.rows):
        for c in range(lay.columns):
            x0, y0, x1, y1 = lay.cell_box(r, c)
            mask[y0:y1, x0:x1] = True
    return mask


def is_any_colour(a: np.ndarray, colours) -> np.ndarray:
    return np.any([np.all(a == np.array(c), axis=-1) for c in colours], axis=0)


def inked(a: np.ndarray) -> np.ndarray:
    """Pixels that differ from the white background."""
    return np.any(a != np.array(grid.BACKGROUND), axis=-1)


def dark(a: np.ndarray) -> np.ndarray:
    """Text-ish pixels: clearly darker than the background and grey (not a cell colour)."""
    return (a.max(axis=-1) < 160) & (a.max(axis=-1) - a.min(axis=-1) < 30)


# ---------------------------------------------------------------------------------------------
# layout and render


@pytest.mark.parametrize("side", [16, 64, 128, 512, 1024])
@pytest.mark.parametrize("cols,rows", [(1, 1), (2, 3), (5, 2)])
def test_render_size_is_layout_size_and_cells_land_in_their_boxes(side, cols, rows):
    cell = (side, side * 3 // 4 if side >= 64 else side)
    lay = grid.layout(cell, cols, rows)
    page = grid.render(solid_cells(rows, cols, cell), [f"model {c}" for c in range(cols)],
                       [(f"prompt {r}", f"seed {r}") for r in range(rows)], cell)
    assert page.size == lay.size
    a = pixels(page)
    for r in range(rows):
        for c in range(cols):
            x0, y0, x1, y1 = lay.cell_box(r, c)
            assert (x1 - x0, y1 - y0) == cell
            assert np.all(a[y0:y1, x0:x1] == PALETTE[r * cols + c]), (r, c)
    # No cell colour anywhere else: not in the gutters, the header band or the label column.
    outside = ~cell_mask(lay)
    assert not np.any(is_any_colour(a, PALETTE[: rows * cols]) & outside)
    # Gutters between and around the cells (below the header, right of the label column) are background.
    body = a[lay.header_h:, lay.label_w:]
    assert not np.any(inked(body) & outside[lay.header_h:, lay.label_w:])


def test_layout_geometry_is_consistent():
    lay = grid.layout((100, 80), 3, 2)
    w, h = lay.size
    assert lay.cell_box(0, 0)[:2] == (lay.label_w + lay.gutter, lay.header_h + lay.gutter)
    assert lay.cell_box(1, 2)[2:] == (w - lay.gutter, h - lay.gutter)  # the last cell, one gutter from the edge
    # Neighbouring cells are one gutter apart, never overlapping.
    assert lay.cell_box(0, 1)[0] - lay.cell_box(0, 0)[2] == lay.gutter
    assert lay.cell_box(1, 0)[1] - lay.cell_box(0, 0)[3] == lay.gutter
    assert lay.gutter >= 2 and lay.label_w > 0 and lay.header_h > lay.font_px


def test_render_resizes_cells_of_another_size():
    cell = (64, 48)
    big = [[Image.new("RGB", (256, 192), PALETTE[0]), Image.new("RGB", (64, 48), PALETTE[1])]]
    page = grid.render(big, ["a", "b"], [("p", "seed 1")], cell)
    lay = grid.layout(cell, 2, 1)
    a = pixels(page)
    for c in range(2):
        x0, y0, x1, y1 = lay.cell_box(0, c)
        assert np.all(a[y0:y1, x0:x1] == PALETTE[c])


def test_missing_cell_draws_the_grey_failed_placeholder():
    cell = (128, 128)
    cells = [[Image.new("RGB", cell, PALETTE[0]), None], [None, Image.new("RGB", cell, PALETTE[3])]]
    page = grid.render(cells, ["a", "b"], [("p", "seed 1"), ("q", "seed 2")], cell)
    lay = grid.layout(cell, 2, 2)
    a = pixels(page)
    for r, c in [(0, 1), (1, 0)]:
        x0, y0, x1, y1 = lay.cell_box(r, c)
        box = a[y0:y1, x0:x1]
        grey = np.all(box == grid.MISSING, axis=-1)
        assert grey.mean() > 0.8  # mostly the placeholder grey …
        assert grey[0, 0] and grey[-1, -1] and grey[0, -1] and grey[-1, 0]  # … to its corners
        assert np.any(np.all(box == grid.MUTED, axis=-1) | dark(box) & ~grey)  # … with the word "failed"
        assert not np.any(is_any_colour(box, PALETTE))
    # The real cells are untouched.
    for r, c, colour in [(0, 0, PALETTE[0]), (1, 1, PALETTE[3])]:
        x0, y0, x1, y1 = lay.cell_box(r, c)
        assert np.all(a[y0:y1, x0:x1] == colour)


def test_missing_cell_placeholder_stays_inside_its_box():
    cell = (64, 64)
    page = grid.render([[None, None], [None, None]], ["a", "b"], [("p", "seed 1"), ("q", "seed 2")], cell)
    lay = grid.layout(cell, 2, 2)
    a = pixels(page)
    grey = np.all(a == grid.MISSING, axis=-1)
    assert not np.any(grey & ~cell_mask(lay))


def test_header_and_label_column_carry_text():
    cell = (128, 96)
    cols, rows = 3, 4
    page = grid.render(solid_cells(rows, cols, cell), ["SDXL base", "SPO-SDXL", "SPO LoRA x0.5"],
                       [(f"a red fox in fresh snow {r}", f"seed {r}") for r in range(rows)], cell)
    lay = grid.layout(cell, cols, rows)
    a = pixels(page)
    ink = np.all(a == grid.INK, axis=-1) | dark(a)
    for c in range(cols):
        x0, _, x1, _ = lay.cell_box(0, c)
        assert ink[:lay.header_h, x0:x1].sum() > 20, f"no label above column {c}"
    for r in range(rows):
        _, y0, _, y1 = lay.cell_box(r, 0)
        assert ink[y0:y1, :lay.label_w].sum() > 20, f"no label left of row {r}"
        # the detail line (the seed) is in the muted grey, below the prompt
        assert np.any(np.all(a[y0:y1, :lay.label_w] == grid.MUTED, axis=-1) | dark(a[y0:y1, :lay.label_w]))
    # Nothing above the label column's first row but background (the corner is empty).
    assert not inked(a[:lay.header_h, :lay.label_w]).any()


def test_font_grows_with_the_cell_and_stays_readable():
    sizes = [16, 32, 64, 96, 128, 256, 384, 512, 768, 1024, 2048]
    fonts = [grid.layout((s, s), 2, 2).font_px for s in sizes]
    assert fonts == sorted(fonts)  # never shrinks as cells grow
    assert grid.layout((64, 64), 2, 2).font_px >= 11
    assert min(fonts) >= 11
    assert grid.layout((1024, 1024), 2, 2).font_px > grid.layout((64, 64), 2, 2).font_px
    # Portrait and landscape cells are sized by their short side.
    assert grid.layout((1024, 512), 2, 2).font_px == grid.layout((512, 512), 2, 2).font_px
    for s in sizes:
        lay = grid.layout((s, s), 2, 2)
        assert lay.header_h >= 2 * lay.font_px  # room for two header lines
        assert lay.label_w >= 8 * lay.font_px  # room for "seed 4294967295" in the label column


@pytest.mark.parametrize("side", [32, 64, 128, 256, 512, 1024])
def test_labels_stay_in_the_header_band_and_label_column(side):
    cell = (side, side)
    cols, rows = 3, 3
    labels = ["SDXL base", "SPO LoRA x0.5 " + "with a label far too long to fit " * 3, "W" * 80]
    row_labels = [(LONG_PROMPT, "seed 4294967295"), ("W" * 200, "seed 0"), ("short", "seed 12")]
    page = grid.render(solid_cells(rows, cols, cell), labels, row_labels, cell)
    lay = grid.layout(cell, cols, rows)
    a = pixels(page)
    text = inked(a) & ~cell_mask(lay)
    # Header labels: in the header band, each within its own column's x range.
    header = text[:lay.header_h + lay.gutter]
    assert not header[lay.header_h:].any(), "a column label runs below the header band"
    for c in range(cols):
        x0, _, x1, _ = lay.cell_box(0, c)
        assert header[:, x0:x1].any()
    xs = np.nonzero(header.any(axis=0))[0]
    assert xs.min() >= lay.label_w  # nothing in the corner above the label column
    # Row labels: left of the cells only.
    body = text[lay.header_h:]
    assert not body[:, lay.label_w:].any(), "a row label runs into the cells or the gutters"


@pytest.mark.parametrize("cell", [
    (16, 16), (24, 24), (32, 24),
    (32, 32), (40, 30), (48, 36), (64, 64), (64, 48), (128, 96), (256, 192), (512, 512), (1024, 768)])
def test_row_labels_stay_within_their_row(cell):
    # A long prompt wraps to the lines its row has room for, the seed line included, and no further:
    # the middle row's label is the only text in the label column and must stay inside its row.
    rows = 3
    page = grid.render(solid_cells(rows, 1, cell), ["m"],
                       [("", ""), (LONG_PROMPT * 2, "seed 4294967295"), ("", "")], cell)
    lay = grid.layout(cell, 1, rows)
    ink = inked(pixels(page)[:, :lay.label_w])
    _, y0, _, y1 = lay.cell_box(1, 0)
    assert ink[y0:y1].any()
    assert not ink[:y0].any() and not ink[y1:].any(), "a row label runs into its neighbours"
    # The seed line is drawn: the row has more ink than without it.
    bare = grid.render(solid_cells(rows, 1, cell), ["m"], [("", ""), (LONG_PROMPT * 2, ""), ("", "")], cell)
    assert ink.sum() > inked(pixels(bare)[:, :lay.label_w]).sum()


# ---------------------------------------------------------------------------------------------
# fit and wrap


@pytest.mark.parametrize("size,cell_size,expected", [
    ((1024, 1024), 512, (512, 512)),
    ((1024, 768), 512, (512, 384)),
    ((768, 1024), 512, (384, 512)),
    ((1216, 832), 256, (256, 175)),
    ((300, 200), 512, (300, 200)),  # never enlarged
    ((512, 512), 512, (512, 512)),
    ((1024, 1024), None, (1024, 1024)),
    ((4000, 10), 100, (100, 1)),  # never below one pixel
])
def test_fit_shrinks_the_long_side_and_never_enlarges(size, cell_size, expected):
    got = grid.fit(size, cell_size)
    assert got == expected
    assert max(got) <= max(size)
    if cell_size:
        assert max(got) <= max(cell_size, min(max(size), cell_size))


def font(px: int = 14):
    return ImageFont.load_default(size=px)


@pytest.mark.parametrize("width", [40, 80, 150, 400])
def test_wrap_respects_width(width):
    f = font()
    lines = grid.wrap(LONG_PROMPT, f, width, 100)
    assert lines
    for ln in lines:
        assert f.getlength(ln) <= width, ln
    if width >= 80:  # no word was clipped: the words all come back, in order
        assert " ".join(lines).split() == LONG_PROMPT.split()


def test_wrap_respects_max_lines_and_ellipsises_the_last_line():
    f = font()
    full = grid.wrap(LONG_PROMPT, f, 120, 100)
    assert len(full) > 3
    lines = grid.wrap(LONG_PROMPT, f, 120, 3)
    assert len(lines) == 3
    assert lines[:2] == full[:2]
    assert lines[-1].endswith("…")
    assert all(f.getlength(ln) <= 120 for ln in lines)
    one = grid.wrap(LONG_PROMPT, f, 120, 1)
    assert len(one) == 1 and one[0].endswith("…") and f.getlength(one[0]) <= 120


def test_wrap_short_text_is_untouched():
    f = font()
    assert grid.wrap("a red fox", f, 400, 2) == ["a red fox"]
    assert grid.wrap("  a   red\tfox ", f, 400, 2) == ["a red fox"]
    assert grid.wrap("", f, 400, 2) == []


def test_wrap_clips_a_very_long_word():
    f = font()
    word = "supercalifragilistic" * 10
    lines = grid.wrap(word, f, 100, 2)
    assert len(lines) == 1
    assert lines[0].endswith("…")
    assert word.startswith(lines[0][:-1])
    assert f.getlength(lines[0]) <= 100
    # Inside a sentence: the long word gets its own clipped line, the others wrap around it.
    lines = grid.wrap(f"a {word} fox", f, 100, 5)
    assert lines == ["a", lines[1], "fox"] and lines[1].endswith("…") and f.getlength(lines[1]) <= 100


# ---------------------------------------------------------------------------------------------
# comparison.write_grids: pages and cell sizes


def fake_comparison(tmp_path: Path, n_rows: int, n_cols: int, image_size: tuple[int, int],
                    missing: set[tuple[int, int]] = frozenset()):
    cells_dir = tmp_path / "cells"
    columns = [Column(f"Model {c}", jobs.ModelRequest(model=f"org/model-{c}"), f"model-{c}") for c in range(n_cols)]
    rows = []
    for r in range(n_rows):
        req = jobs.ImageRequest(prompt=f"prompt number {r}", seed=r, width=image_size[0], height=image_size[1])
        rows.append(Row(req, f"prompt-number-{r}-s{r}-0000000{r}"))
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            if (r, c) in missing:
                continue
            folder = cells_dir / col.folder
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", image_size, PALETTE[(r * n_cols + c) % len(PALETTE)]).save(folder / f"{row.stem}.png")
    return columns, rows, cells_dir


def test_write_grids_pages(tmp_path):
    columns, rows, cells_dir = fake_comparison(tmp_path, 5, 2, (64, 64))
    out = tmp_path / "out"
    paths = comparison.write_grids(out, "a-fox", columns, rows, cells_dir, 512, 2)
    assert [p.name for p in paths] == ["a-fox-grid-1.png", "a-fox-grid-2.png", "a-fox-grid-3.png"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # nothing else, nothing temporary
    for n, (path, rows_on_page) in enumerate(zip(paths, [2, 2, 1])):
        lay = grid.layout((64, 64), 2, rows_on_page)
        with Image.open(path) as im:
            assert im.size == lay.size
            a = pixels(im)
        for r in range(rows_on_page):
            for c in range(2):
                x0, y0, x1, y1 = lay.cell_box(r, c)
                assert np.all(a[y0:y1, x0:x1] == PALETTE[((2 * n + r) * 2 + c) % len(PALETTE)])


def test_write_grids_shows_a_cell_that_failed_now_as_failed(tmp_path):
    """A cell that failed in this run is never shown as the image an earlier run left under its name,
    on whichever page its row falls (row 2 is the first row of page 2 here)."""
    columns, rows, cells_dir = fake_comparison(tmp_path, 3, 2, (64, 64))
    paths = comparison.write_grids(tmp_path / "out", "f", columns, rows, cells_dir, 512, 2, failed={(1, 2)})
    with Image.open(paths[1]) as im:
        a = pixels(im)
    lay = grid.layout((64, 64), 2, 1)
    x0, y0, x1, y1 = lay.cell_box(0, 1)
    assert not np.any(np.all(a[y0:y1, x0:x1] == PALETTE[2 * 2 + 1], axis=-1))  # not the stale image
    x0, y0, x1, y1 = lay.cell_box(0, 0)
    assert np.all(a[y0:y1, x0:x1] == PALETTE[2 * 2])  # its neighbour is drawn


def test_write_grids_single_page_has_no_number(tmp_path):
    columns, rows, cells_dir = fake_comparison(tmp_path, 3, 3, (64, 64))
    out = tmp_path / "out"
    paths = comparison.write_grids(out, "a-fox", columns, rows, cells_dir, 512, 8)
    assert paths == [out / "a-fox-grid.png"]
    with Image.open(paths[0]) as im:
        assert im.size == grid.layout((64, 64), 3, 3).size
    # Exactly rows_per_page rows is one page too.
    assert [p.name for p in comparison.write_grids(out, "b", columns, rows, cells_dir, 512, 3)] == ["b-grid.png"]


def test_write_grids_cell_size_shrinks_cells(tmp_path):
    columns, rows, cells_dir = fake_comparison(tmp_path, 2, 2, (256, 192))
    out = tmp_path / "out"
    (path,) = comparison.write_grids(out, "g", columns, rows, cells_dir, 100, 8)
    fitted = grid.fit((256, 192), 100)
    assert fitted == (100, 75)
    lay = grid.layout(fitted, 2, 2)
    with Image.open(path) as im:
        assert im.size == lay.size
        a = pixels(im)
    for r in range(2):
        for c in range(2):
            x0, y0, x1, y1 = lay.cell_box(r, c)
            assert np.all(a[y0:y1, x0:x1] == PALETTE[r * 2 + c])
    # A --cell-size larger than the images leaves them at their own size.
    (path,) = comparison.write_grids(out, "h", columns, rows, cells_dir, 1024, 8)
    with Image.open(path) as im:
        assert im.size == grid.layout((256, 192), 2, 2).size


def test_write_grids_missing_cells_are_placeholders(tmp_path):
    columns, rows, cells_dir = fake_comparison(tmp_path, 2, 2, (64, 64), missing={(0, 1), (1, 1)})
    (path,) = comparison.write_grids(tmp_path / "out", "g", columns, rows, cells_dir, 512, 8)
    lay = grid.layout((64, 64), 2, 2)
    with Image.open(path) as im:
        a = pixels(im)
    for r in range(2):
        x0, y0, x1, y1 = lay.cell_box(r, 1)
        assert np.all(a[y0:y1, x0:x1] == grid.MISSING, axis=-1).mean() > 0.8
        x0, y0, x1, y1 = lay.cell_box(r, 0)
        assert np.all(a[y0:y1, x0:x1] == PALETTE[r * 2])


def test_write_grids_with_no_image_at_all_uses_the_requested_size(tmp_path):
    columns, rows, cells_dir = fake_comparison(tmp_path, 1, 2, (96, 64), missing={(0, 0), (0, 1)})
    (path,) = comparison.write_grids(tmp_path / "out", "g", columns, rows, cells_dir, 48, 8)
    with Image.open(path) as im:
        assert im.size == grid.layout(grid.fit((96, 64), 48), 2, 1).size


# ---------------------------------------------------------------------------------------------
# compare's option parsing


def usage_error(fn, *args, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as e:
        fn(*args, **kwargs)
    assert e.value.exit_code == EXIT_USAGE == 2
    return e.value


def test_parse_scales():
    assert compare.parse_scales(None) == []
    assert compare.parse_scales("") == []
    assert compare.parse_scales("0,0.5,1") == [0.0, 0.5, 1.0]
    assert compare.parse_scales(" 0.25 , 1.5") == [0.25, 1.5]
    for bad in ["0,half,1", "0,,1", "1;2", "x"]:
        usage_error(compare.parse_scales, bad)
    assert "half" in usage_error(compare.parse_scales, "0,half").message


def test_parse_seeds():
    assert compare.parse_seeds("1,2,3", 0, 1) == [1, 2, 3]
    assert compare.parse_seeds(" 7, 8", 0, 1) == [7, 8]
    assert compare.parse_seeds(None, 5, 3) == [5, 6, 7]
    assert compare.parse_seeds(None, 0, 1) == [0]
    for bad in ["1,two", "1.5", "1,,2", "a"]:
        usage_error(compare.parse_seeds, bad, 0, 1)
    usage_error(compare.parse_seeds, "-2", 0, 1)  # out of range
    [drawn] = compare.parse_seeds(None, -1, 1)  # --seed -1: a random one, as in A1111
    assert 0 <= drawn < 2**32 and compare.parse_seeds("-1", 0, 1) != compare.parse_seeds("-1", 0, 1)
    usage_error(compare.parse_seeds, str(2**32), 0, 1)
    usage_error(compare.parse_seeds, None, 0, 0)  # --num-images 0


COMMON = dict(vae=None, dtype="auto", device="auto")


def columns(base=None, spo=None, spo_lora=None, models=(), labels=(), scales=(), lora_scale=None, revision=None):
    return comparison.build_columns(base, spo, spo_lora, list(models), list(labels), list(scales), lora_scale,
                                    revision, dict(COMMON), options.model_request)


def test_build_columns_defaults_to_base_and_spo():
    cols = columns()
    assert [c.label for c in cols] == ["SDXL base", "SPO-SDXL"]
    assert [c.request.model for c in cols] == ["base", "spo"]
    assert [c.folder for c in cols] == ["sdxl-base", "spo-sdxl"]
    assert all(c.request.dtype == "auto" and c.request.device == "auto" and c.request.vae is None for c in cols)


def test_build_columns_choices():
    cols = columns(base=True, scales=[0, 0.5, 1])
    assert [c.label for c in cols] == ["SDXL base", "SPO LoRA x0", "SPO LoRA x0.5", "SPO LoRA x1"]
    assert [(c.request.model, c.request.lora_scale) for c in cols[1:]] == [("spo-lora", 0), ("spo-lora", 0.5),
                                                                          ("spo-lora", 1)]
    assert len({c.folder for c in cols}) == 4
    # A bare --lora-scales replaces the default pair rather than adding to it.
    assert [c.label for c in columns(scales=[0.5])] == ["SPO LoRA x0.5"]
    assert [c.label for c in columns(spo_lora=True, lora_scale=0.75)] == ["SPO LoRA x0.75"]
    # --no-base with --spo, or --model alone.
    assert [c.label for c in columns(base=False, spo=True)] == ["SPO-SDXL"]
    cols = columns(models=["./runs/my-sdxl-finetune/", "org/other"], labels=["mine"])
    assert [c.label for c in cols] == ["mine", "other"]
    assert [c.request.model for c in cols] == ["./runs/my-sdxl-finetune/", "org/other"]


def test_build_columns_errors():
    usage_error(columns, False, False, False)  # everything switched off
    usage_error(columns, False, None, None)  # --no-base alone: nothing left
    e = usage_error(columns, True, True, None, ["org/a"], ["A", "B"])  # more --label than --model
    assert "--label" in e.message
    usage_error(columns, None, None, None, [], ["A"])
    # Two columns labelled alike (same folder under cells/).
    usage_error(columns, None, None, None, ["org/model", "other/model"])
    usage_error(columns, None, None, None, ["org/a", "org/b"], ["Same", "same"])
    usage_error(columns, True, None, None, ["org/a"], ["SDXL base"])
    usage_error(columns, None, None, None, [], [], [0.5, 0.5])
    usage_error(columns, None, None, None, [], [], [1, 1.0])
    usage_error(columns, None, None, True, [], [], [1])  # --spo-lora at scale 1 and --lora-scales 1
    e = usage_error(columns, True, True, None, lora_scale=0.5)  # a strength with no LoRA column
    assert "--lora-scale 0.5 sets the strength of the --spo-lora column" in e.message
    e = usage_error(columns, True, True, revision="abc")  # --revision pins --model columns only
    assert "--revision applies to --model columns" in e.message
    assert [c.request.revision for c in columns(models=["org/a"], revision="v2")] == ["v2"]


def test_columns_keep_the_order_given():
    """eval --columns and compare's column options build the columns in the order the user named
    them: the grid, the tables and every "later against earlier" comparison follow it (issue 27:
    `base,spo-lora:0.5,spo` used to become base, spo, LoRA and report "LoRA vs SPO")."""
    import typer

    from spo_cli.cli import app
    from spo_cli.cli import eval as eval_cli

    def eval_labels(text):
        return [c.label for c in comparison.build_columns(**eval_cli.parse_columns(text), revision=None,
                                                          common=dict(COMMON), model_request=options.model_request)]

    assert eval_labels("base,spo-lora:0.5,spo") == ["SDXL base", "SPO LoRA x0.5", "SPO-SDXL"]
    assert eval_labels("spo,base") == ["SPO-SDXL", "SDXL base"]
    assert eval_labels("org/mine,spo-lora,base,spo-lora:0.25,spo") == [
        "mine", "SPO LoRA x1", "SDXL base", "SPO LoRA x0.25", "SPO-SDXL"]

    command = typer.main.get_command(app).commands["compare"]

    def compare_labels(*args):
        ctx = command.make_context("compare", ["a prompt", *args])
        p = ctx.params
        scales = compare.parse_scales(p["lora_scales"])
        order = compare.column_order(ctx.meta.get(compare._ORDER, []), len(p["model"] or []), len(scales))
        return [c.label for c in comparison.build_columns(
            p["base"], p["spo"], p["spo_lora"], p["model"] or [], p["label"] or [], scales, p["lora_scale"], None,
            dict(COMMON), options.model_request, order)]

    assert compare_labels("--spo", "--base") == ["SPO-SDXL", "SDXL base"]
    assert compare_labels("--lora-scales", "1,0", "--base") == ["SPO LoRA x1", "SPO LoRA x0", "SDXL base"]
    assert compare_labels("--model", "org/a", "--spo-lora", "--spo", "--model", "org/b") == [
        "a", "b", "SPO LoRA x1", "SPO-SDXL"]  # the --model columns at the first --model, in their order
    assert compare_labels("--no-base", "--spo") == ["SPO-SDXL"]
    assert compare_labels() == ["SDXL base", "SPO-SDXL"]  # the default pair, SPO against SDXL


@pytest.mark.parametrize("text, words", [
    ("base,spo-lora:nan", "--columns: 'spo-lora:nan' needs a finite number after 'spo-lora:'"),
    ("base,spo-lora:1e999", "--columns: 'spo-lora:1e999' needs a finite number after 'spo-lora:'"),
    ("base,spo-lora:0.5,spo-lora:.5", "--columns names the SPO LoRA at strength 0.5 twice"),
    ("spo-lora,spo-lora:1", "--columns names the SPO LoRA at strength 1 twice"),
])
def test_eval_columns_refusals_name_the_columns_option(text, words):
    # Before: "--lora-scale must be a finite number, not nan" (an option not given), and "Give each --model
    # its own --label", options eval does not have.
    from spo_cli.cli import eval as eval_cli
    from spo_cli.errors import UsageError

    with pytest.raises(UsageError) as e:
        eval_cli.parse_columns(text)
    assert e.value.paragraph().startswith(words) and "--label" not in e.value.paragraph(), e.value.paragraph()


@pytest.mark.parametrize("text, words", [
    ("nan", "--lora-scales: 'nan' is not a finite number"),
    ("0.5,1e999", "--lora-scales: '1e999' is not a finite number"),
    ("0.5,.5", "--lora-scales lists 0.5 twice"),
    ("x" * 5000, "--lora-scales: 'xxx"),
])
def test_compare_lora_scales_refusals_name_the_option_given(text, words):
    # Before: "--lora-scale must be a finite number" (another option), "Give each --model its own --label"
    # for 0.5,.5, and a bad item quoted whole.
    from spo_cli.errors import UsageError

    with pytest.raises(UsageError) as e:
        compare.parse_scales(text)
    assert e.value.paragraph().startswith(words) and len(e.value.paragraph()) < 300, e.value.paragraph()

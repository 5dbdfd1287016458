"""A sweep's layout, pure (no model): compare's columns and rows, every cell's place, the grid pages."""

from __future__ import annotations

import pytest

from spo_cli.cli import options as opts
from spo_cli.comparison import build_columns, build_rows
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest
from spo_cli.sweep import axes as ax
from spo_cli.sweep import plan

DEFAULTS = ImageRequest(prompt="", seed=0, width=64, height=64, steps=2)


def columns(base=True, spo=True, spo_lora=None, models=(), scales=()):
    return build_columns(base, spo, spo_lora, list(models), [], list(scales), None, None, {}, opts.model_request)


def rows(prompt="a red fox", seeds=(1,), **defaults):
    return build_rows(prompt, None, None, ImageRequest(**{**DEFAULTS.__dict__, **defaults}), list(seeds), print,
                      True)[0]


def layout(x=None, y=None, z=None, *, cols=None, implicit=True, base_rows=None, versus=None, yes=False):
    axes = ax.parse_axes(x, y, z)
    if any(a.name == "model" for a in axes):
        cols, implicit = plan.build_models(next(a for a in axes if a.name == "model"), {}, opts.model_request), False
    return plan.build(axes, cols if cols is not None else columns(), implicit, base_rows or rows(), common={},
                      model_request=opts.model_request, versus=versus, yes=yes)[0]


def test_image_axes_make_rows_and_every_cell_maps_to_its_request():
    p = layout("steps=1,2", "guidance=3,7", cols=columns(base=None), base_rows=rows(seeds=(1, 2)))
    assert [d.name for d in p.dims] == ["steps", "guidance", "model"]
    assert len(p.columns) == 1 and len(p.rows) == 8 and len(p.cells) == 8
    for c in p.cells:
        r = p.rows[c.row].request
        assert (r.steps, r.guidance, r.seed) == ((1, 2)[c.coords[0]], (3.0, 7.0)[c.coords[1]], (1, 2)[c.base_row])
    assert len({r.stem for r in p.rows}) == 8  # each distinct request its own file name


def test_axes_apply_in_x_y_z_order_and_equal_requests_merge():
    # prompt S/R also rewrites the negative prompt: a negative axis applied before it (X before Y) is rewritten
    p = layout("negative=blurry red", "prompt-sr=red,blue", cols=columns(base=None))
    assert [r.request.negative_prompt for r in p.rows] == ["blurry red", "blurry blue"]
    p = layout("prompt-sr=red,blue", "negative=blurry red", cols=columns(base=None))
    assert [r.request.negative_prompt for r in p.rows] == ["blurry red", "blurry red"]
    # two seed rows under a seed axis are the same two requests: 4 cells, 2 rows rendered
    p = layout("seed=5,6", cols=columns(base=None), base_rows=rows(seeds=(1, 2)))
    assert len(p.cells) == 4 and sorted(r.request.seed for r in p.rows) == [5, 6]
    assert {(c.base_row, c.row) for c in p.cells} == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_lora_scale_axis_turns_spo_into_its_lora_form_and_base_stays_one_column():
    p = layout("lora-scale=0.5,1", cols=columns(base=True, spo=True))
    labels = [c.label for c in p.columns]
    assert labels == ["SDXL base", "SPO LoRA x0.5", "SPO LoRA x1"]  # base once, for both strengths
    assert p.columns[1].request.model == "spo-lora" and p.columns[1].request.lora_scale == 0.5
    base_cells = [c for c in p.cells if c.coords[p.dim("model")] == 0]
    assert len(base_cells) == 2 and {c.column for c in base_cells} == {0}
    spo_cells = sorted((c.coords[p.dim("lora-scale")], c.column) for c in p.cells if c.coords[p.dim("model")] == 1)
    assert spo_cells == [(0, 1), (1, 2)]


def test_named_model_axis_in_eval_grammar():
    p = layout("model=base,spo-lora:0.5,spo")
    assert [c.label for c in p.columns] == ["SDXL base", "SPO LoRA x0.5", "SPO-SDXL"]
    assert [d.name for d in p.dims] == ["model"] and p.versus == "model"
    with pytest.raises(UsageError, match="needs a number after 'spo-lora:'"):
        layout("model=base,spo-lora:x")
    with pytest.raises(UsageError, match="label alike"):
        layout("model=/a/mine,/b/mine")


def test_versus_defaults_to_model_then_x_and_must_be_swept():
    assert layout("steps=1,2").versus == "model"  # base and spo: two models
    assert layout("steps=1,2", "guidance=3,7", cols=columns(base=None)).versus == "steps"
    assert layout("steps=1,2", "guidance=3,7", versus="guidance").versus == "guidance"
    with pytest.raises(UsageError, match="--versus 'seed' is not an axis of this sweep"):
        layout("steps=1,2", versus="seed")
    with pytest.raises(UsageError, match="not an axis"):
        layout("steps=1,2", cols=columns(base=None), versus="model")  # one model: nothing to compare
    with pytest.raises(UsageError, match="with two values or more"):
        layout("steps=1,2", "guidance=3", versus="guidance")


def test_count_refused_past_the_limit_unless_yes():
    many = rows(seeds=range(1, 11))  # 10 rows × 2 models × 1000 steps values = 20,000
    with pytest.raises(UsageError, match="20,000 images"):
        layout("steps=1-1000", base_rows=many)
    assert plan.bound(list(ax.parse_axes("steps=1-1000", None, None)), 10, 2) == 20_000
    # many columns, few rows: cheap to lay out. 100 strengths × 100 steps is the limit itself, allowed
    assert len(layout("lora-scale=0-0.99 [100]", "steps=1-100", cols=columns(base=None)).cells) == 10_000
    with pytest.raises(UsageError, match="10,100 images"):
        layout("lora-scale=0-1 [101]", "steps=1-100", cols=columns(base=None))
    p = layout("lora-scale=0-1 [101]", "steps=1-100", cols=columns(base=None), yes=True)
    assert len(p.columns) * len(p.rows) == 10_100


def _image():
    from spo_cli.request import InputImage

    return InputImage(path="/nowhere/in.png", sha256="0" * 64, width=64, height=64, bytes=1)


def test_rechecked_as_a_whole():
    with pytest.raises(UsageError, match="has no input image"):
        layout("strength=0.5,1")
    with pytest.raises(UsageError, match="too small for --watermark"):
        layout("size=512x512,64x64", base_rows=rows(watermark=True, width=512, height=512))
    with pytest.raises(UsageError, match="runs 0.50 denoising steps"):
        layout("steps=4,1", base_rows=rows(strength=0.5, image=_image()))
    with pytest.raises(UsageError, match="is not in the prompt"):
        layout("prompt-sr=cat,dog")


def test_pages_one_grid_per_z_value_x_across_y_down():
    p = layout("steps=1,2", "guidance=3,7", "seed=1,2,3", base_rows=rows(seeds=(0,)))
    pages = plan.pages(p, "fox", rows_per_page=1)
    # 3 Z values, 2 Y values one per page
    assert [pg.name for pg in pages] == ["fox-grid-z1-1.png", "fox-grid-z1-2.png", "fox-grid-z2-1.png",
                                         "fox-grid-z2-2.png", "fox-grid-z3-1.png", "fox-grid-z3-2.png"]
    pg = pages[3]  # z = seed 2, y = guidance 7
    assert pg.column_labels == ["steps: 1 · SDXL base", "steps: 1 · SPO-SDXL", "steps: 2 · SDXL base",
                                "steps: 2 · SPO-SDXL"]
    assert pg.row_labels == [("a red fox", "guidance: 7")]  # the seed is an axis: not repeated per row
    for col, k in enumerate(pg.cells[0]):
        cell = p.cells[k]
        assert p.cell_axes(cell) == {"steps": f"steps: {1 + col // 2}", "guidance": "guidance: 7",
                                     "seed": "seed: 2", "model": ("SDXL base", "SPO-SDXL")[col % 2]}
    one = plan.pages(layout("steps=1,2", cols=columns(base=None), base_rows=rows(seeds=(4, 5))), "fox", 8)
    assert [pg.name for pg in one] == ["fox-grid.png"] and one[0].column_labels == ["steps: 1", "steps: 2"]
    assert one[0].row_labels == [("a red fox", "seed 4"), ("a red fox", "seed 5")]


def test_settings_and_labelled_sidecar_axes():
    p = layout("lora-scale=0.5", "steps=1,2", cols=columns(base=None))
    cols, rws = plan.labelled(p)
    from spo_cli.comparison import cell_extra

    base = layout("lora-scale=0.5,1", cols=columns())  # SDXL base: one column at both strengths
    assert plan.labelled(base)[0][0].axes == (("model", "SDXL base"),)
    c = p.cells[-1]
    assert cell_extra(cols[c.column], rws[c.row]) == {
        "column": "SPO LoRA x0.5", "axes": {"model": "SPO-SDXL", "lora-scale": "lora-scale: 0.5", "steps": "steps: 2"}}
    s = plan.settings(cols[c.column], rws[c.row])
    assert (s["model"], s["lora_scale"], s["steps"], s["strength"]) == ("SPO LoRA x0.5", 0.5, 2, None)
    base = layout("steps=1,2", cols=columns(spo=None))
    assert plan.settings(base.columns[0], base.rows[0])["lora_scale"] is None  # no LoRA, no strength
    scored = plan.scored_cells(p, [[{"m": float(ri)}] for ri in range(len(p.rows))])
    assert [(s.coords, s.base_row, s.group, s.scores) for s in scored] == [
        (c.coords, 0, "a red fox", {"m": float(c.row)}) for c in p.cells]


def test_versus_with_no_axis_of_two_values_says_so():
    with pytest.raises(UsageError) as e:
        layout("steps=1", cols=columns(base=None), versus="steps")
    assert "Name one of: ." not in str(e.value.hint) and "No axis of this sweep has two values" in e.value.hint


def test_a_rerun_removes_the_report_and_charts_it_does_not_write(tmp_path):
    # A scored sweep over guidance, then a re-run without --score (or without that axis): the old
    # report and chart would describe cells this run's grid and JSON no longer hold.
    from spo_cli.comparison import remove_old_pages

    names = ["fox-grid.png", "fox-grid-z2.png", "fox-contact.png", "fox-report.md", "fox-guidance.png",
             "fox-model.png", "fox-notes.md", "fox-mine.png", "other-report.md", "other-steps.png"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    remove_old_pages(tmp_path, "fox", [tmp_path / "fox-grid.png"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox-grid.png", "fox-mine.png", "fox-notes.md",
                                                         "other-report.md", "other-steps.png"]


def test_a_failed_cell_is_named_by_its_axis_values():
    # Two cells that differ only in steps printed the same error line: which one failed?
    from spo_cli.cli.compare import failed_cell

    p = layout("steps=1,2", "seed=4,5", cols=columns(base=None))
    cols, rows_ = plan.labelled(p)
    lines = {failed_cell(cols[c.column], rows_[c.row]) for c in p.cells}
    assert lines == {f"SPO-SDXL, 'a red fox' seed {s}, steps: {n}" for s in (4, 5) for n in (1, 2)}


def test_a_grid_page_too_large_to_read_back_is_refused_before_loading():
    # 200 steps values × 2 models across, of 512-px cells (1024² images): a 205,000-px-wide page,
    # which the contact sheet could not open (PIL's bomb check) after every cell was rendered.
    big = layout("steps=1-200", base_rows=rows(width=1024, height=1024))
    with pytest.raises(UsageError, match=r"A grid page of this sweep would be about 205,312×1,024 pixels"):
        plan.check_pages(big, 512, 8)
    plan.check_pages(big, 64, 8)  # smaller cells: the same sweep fits
    plan.check_pages(layout("steps=1-200"), 512, 8)  # 64² images are never grown to 512
    tall = layout("steps=1,2", "seed=1-200", cols=columns(base=None), base_rows=rows(width=1024, height=1024))
    with pytest.raises(UsageError, match=r"2 column\(s\) × 200 row\(s\) of 512×512 cells"):
        plan.check_pages(tall, 512, 200)
    plan.check_pages(tall, 512, 8)  # the rows split into pages


def build_warnings(x, y=None, *, cols, versus=None):
    return plan.build(ax.parse_axes(x, y, None), cols, True, rows(), common={}, model_request=opts.model_request,
                      versus=versus)[1]


def test_versus_lora_scale_warns_of_columns_without_a_lora():
    # SDXL base is one image at every strength: its pairs are ties that dilute the overall win rate.
    said = build_warnings("lora-scale=0.5,1", cols=columns(), versus="lora-scale")
    assert any("SDXL base has no LoRA" in w for w in said)
    assert not any("no LoRA" in w for w in build_warnings("lora-scale=0.5,1", cols=columns(base=None),
                                                          versus="lora-scale"))
    assert not any("no LoRA" in w for w in build_warnings("lora-scale=0.5,1", cols=columns()))  # versus model


def test_versus_defaults_to_an_axis_with_two_values_and_seeds_last():
    # An X of one value was the default, and --score refused it after the whole render.
    one = columns(base=None)
    assert layout("steps=1", "guidance=3,7", cols=one).versus == "guidance"
    assert layout("seed=1,2", "guidance=3,7", cols=one).versus == "guidance"  # seeds are replicates
    assert layout("seed=1,2", "steps=1", cols=one).versus == "seed"  # nothing else to compare
    assert layout("seed=1,2", "model=base,spo").versus == "model"
    assert layout("steps=1", cols=one).versus == "steps"  # nothing with two values: --score refuses it
    with pytest.raises(UsageError, match=r"no axis of this sweep has two \(steps: steps: 1; model: SPO-SDXL\)"):
        plan.check_scored(layout("steps=1", cols=one), versus_given=False)
    with pytest.raises(UsageError, match="--versus steps: the steps axis has one value"):
        plan.check_scored(layout("steps=1", cols=one), versus_given=True)
    plan.check_scored(layout("steps=1", "guidance=3,7", cols=one), versus_given=False)


def test_a_lora_scale_axis_with_no_lora_to_scale_is_refused():
    # --base --x lora-scale=0.5,1 rendered one SDXL image in every cell: "the strength does nothing".
    with pytest.raises(UsageError, match=r"--x lora-scale sets the SPO LoRA's strength, and no model of this "
                                         r"sweep has one \(SDXL base\)"):
        layout("lora-scale=0.5,1", cols=columns(spo=None))
    with pytest.raises(UsageError, match="no model of this sweep has one"):
        layout("model=base", "lora-scale=0.5,1")
    assert len(layout("lora-scale=0.5,1", cols=columns()).columns) == 3  # base once, spo at each strength

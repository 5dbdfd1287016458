"""X/Y/Z sweeps in `spo compare` on the tiny pipelines: the issue's examples, every axis' cell equal to
`spo generate` with that cell's settings, the grids per Z value, resume and replay of a cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.test_scores import score_cache  # noqa: F401 - the tiny scorers, a fixture

pytestmark = pytest.mark.slow  # pipelines: not in the fast tier

PROMPT = "a red fox in the snow"
# 32×32 and one step where the axis allows: the pixels are compared, so the smallest image does.
TINY = ["--width", "32", "--height", "32", "--steps", "1", "--device", "cpu"]
NO_CFG = ["--guidance", "1"]  # one UNet pass per step instead of two, where guidance is not what is tested
SIZE = ["--width", "32", "--height", "32", "--device", "cpu"]  # for sweeps over steps


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def sweep(out: Path, *args: str, prompt: str = PROMPT) -> dict:
    r = invoke("compare", prompt, "--out", str(out), "--json", "--quiet", *args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    summary["index_data"] = json.loads(Path(summary["index"]).read_text())
    return summary


def cells_at(index: dict, **axes: str) -> list[dict]:
    """The sweep's cells whose axis labels include `axes` (axis names with _ for -)."""
    want = {k.replace("_", "-"): v for k, v in axes.items()}
    return [c for c in index["sweep"]["cells"] if all(c["axes"].get(k) == v for k, v in want.items())]


def one(index: dict, **axes: str) -> dict:
    [c] = {c["image"]: c for c in cells_at(index, **axes)}.values()  # cells sharing an image are one
    assert c["status"] == "ok", c
    return c


def generate(out: Path, *args: str, prompt: str = PROMPT) -> Path:
    r = invoke("generate", prompt, "--out", str(out), "--json", "--quiet", "--device", "cpu", *args)
    assert r.exit_code == 0, r.output
    [made] = json.loads(r.stdout)
    return Path(made["image"])


def same(out: Path, cell: dict, made: Path) -> None:
    assert np.array_equal(pixels(out / cell["image"]), pixels(made)), cell["axes"]


# -- the examples (smaller numbers) ------------------------------------------------------

@pytest.fixture(scope="module")
def xyz(hub_cache, tmp_path_factory):
    """Example 4: spo compare "a fox" --x model=base,spo --y steps=10-50[5] --z guidance=3,7."""
    out = tmp_path_factory.mktemp("xyz")
    return out, sweep(out, *SIZE, "--seeds", "1", "--x", "model=base,spo", "--y", "steps=1-2 [2]",
                      "--z", "guidance=3,7")


@pytest.mark.xdist_group("sweep")
def test_model_steps_guidance_grid_per_z(xyz):
    out, summary = xyz
    index = summary["index_data"]
    assert [c["label"] for c in index["columns"]] == ["SDXL base", "SPO-SDXL"]
    assert len(index["rows"]) == 4 and summary["rendered"] == 8  # 2 steps × 2 guidance rows, 2 models
    names = [Path(p).name for p in summary["grid"]]
    assert names == ["a-red-fox-in-the-snow-grid-z1.png", "a-red-fox-in-the-snow-grid-z2.png",
                     "a-red-fox-in-the-snow-contact.png"]
    sw = index["sweep"]
    assert [(a["slot"], a["name"], a["values"]) for a in sw["axes"]] == [
        ("x", "model", ["base", "spo"]), ("y", "steps", [1, 2]), ("z", "guidance", [3.0, 7.0])]
    assert sw["versus"] == "model" and len(sw["cells"]) == 8
    # one shape per entry (the contact sheet was a stray {"contact": …} entry among the Z grids)
    assert sw["grids"] == [{"z": f"guidance: {g}", "pages": [f"a-red-fox-in-the-snow-grid-z{k}.png"]}
                           for k, g in ((1, 3), (2, 7))]
    assert sw["contact"] == "a-red-fox-in-the-snow-contact.png"
    c = one(index, model="SPO-SDXL", steps="steps: 1", guidance="guidance: 7")
    assert c["settings"] | {"prompt": None} == {
        "model": "SPO-SDXL", "lora_scale": None, "prompt": None, "negative": None, "seed": 1, "steps": 1,
        "guidance": 7.0, "scheduler": "default", "width": 32, "height": 32, "prompt_syntax": "auto",
        "emphasis": "original", "strength": None}
    meta = json.loads((out / c["sidecar"]).read_text())
    assert meta["compare"] == {"column": "SPO-SDXL", "axes": {"model": "SPO-SDXL", "steps": "steps: 1",
                                                             "guidance": "guidance: 7"}}
    from spo_cli import grid

    # columns: the X values; rows: the Y values × the one prompt-seed row
    with Image.open(summary["grid"][0]) as im:
        assert im.size == grid.layout((32, 32), 2, 2).size
        assert json.loads(im.info["spo-cli-grid"])["cells"][0] == index["sweep"]["cells"][0]["image"]
    with Image.open(summary["grid"][2]) as im:  # the contact sheet: both Z grids side by side
        assert im.size[0] > 2 * grid.layout((32, 32), 2, 2).size[0]


@pytest.mark.xdist_group("sweep")
def test_xyz_cells_equal_generate(xyz, tmp_path):
    out, summary = xyz
    index = summary["index_data"]
    for model, steps, guidance in (("base", "1", "7"), ("spo", "2", "3")):
        label = {"base": "SDXL base", "spo": "SPO-SDXL"}[model]
        made = generate(tmp_path / model, *SIZE, "--model", model, "--steps", steps, "--guidance", guidance,
                        "--seed", "1")
        same(out, one(index, model=label, steps=f"steps: {steps}", guidance=f"guidance: {guidance}"), made)


@pytest.mark.xdist_group("sweep")
def test_rerun_renders_only_missing_or_changed_cells(xyz, tmp_path):
    src, first = xyz
    out = tmp_path / "again"
    shutil.copytree(src, out)
    args = [*SIZE, "--seeds", "1", "--x", "model=base,spo", "--y", "steps=1-2 [2]", "--z", "guidance=3,7"]
    again = sweep(out, *args)
    assert (again["rendered"], again["reused"]) == (0, 8) and again["bytes_loaded"] == 0
    # a missing cell is rendered again, alone, and comes out the same
    gone = one(first["index_data"], model="SPO-SDXL", steps="steps: 2", guidance="guidance: 7")
    (out / gone["image"]).unlink()
    again = sweep(out, *args)
    assert (again["rendered"], again["reused"]) == (1, 7)
    assert np.array_equal(pixels(out / gone["image"]), pixels(src / gone["image"]))
    # a changed value (steps 2 → 3): the 4 cells at steps 1 are reused, the 4 at steps 3 rendered
    again = sweep(out, *SIZE, "--seeds", "1", "--x", "model=base,spo", "--y", "steps=1,3", "--z", "guidance=3,7")
    assert (again["rendered"], again["reused"]) == (4, 4)


@pytest.mark.xdist_group("sweep")
def test_a_cell_replays(xyz, tmp_path):
    out, summary = xyz
    c = one(summary["index_data"], model="SDXL base", steps="steps: 2", guidance="guidance: 7")
    r = invoke("replay", str(out / c["sidecar"]), "--out", str(tmp_path), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [made] = json.loads(r.stdout)
    same(out, c, Path(made["image"]))


def test_base_spo_steps_by_guidance(hub_cache, tmp_path):
    """Example 1: --base --spo --x steps=… --y guidance=… --seeds …: the implicit model columns inside each X."""
    summary = sweep(tmp_path, *SIZE, "--base", "--spo", "--x", "steps=1,2", "--y", "guidance=3", "--seeds", "1")
    index = summary["index_data"]
    assert summary["rendered"] == 4 and len(index["sweep"]["cells"]) == 4
    assert [d["name"] for d in index["sweep"]["dims"]] == ["steps", "guidance", "model"]
    [page] = summary["grid"]
    from spo_cli import grid

    with Image.open(page) as im:  # 2 steps × 2 models across, 1 guidance × 1 seed down
        assert im.size == grid.layout((32, 32), 4, 1).size
    c = one(index, steps="steps: 2", guidance="guidance: 3", model="SDXL base")
    made = generate(tmp_path / "gen", *SIZE, "--model", "base", "--steps", "2", "--guidance", "3", "--seed", "1")
    same(tmp_path, c, made)


def test_prompt_sr_by_lora_scale(hub_cache, tmp_path):
    """Example 3: "a red fox" --spo --x "prompt-sr=red fox,arctic fox" --y lora-scale=…: SPO at each strength
    is SDXL base + the SPO LoRA, and prompt S/R rewrites the prompt."""
    summary = sweep(tmp_path, *TINY, *NO_CFG, "--spo", "--seeds", "1", "--x", "prompt-sr=red fox,arctic fox",
                    "--y", "lora-scale=0.5,1")
    index = summary["index_data"]
    assert [c["label"] for c in index["columns"]] == ["SPO LoRA x0.5", "SPO LoRA x1"]
    c = one(index, prompt_sr="arctic fox", lora_scale="lora-scale: 0.5")
    assert c["settings"]["prompt"] == "a arctic fox in the snow" and c["settings"]["lora_scale"] == 0.5
    made = generate(tmp_path / "gen", *TINY, *NO_CFG, "--model", "spo-lora", "--lora-scale", "0.5", "--seed", "1",
                    prompt="a arctic fox in the snow")
    same(tmp_path, c, made)


@pytest.mark.usefixtures("score_cache")
def test_scheduler_and_negative_over_a_prompt_file(hub_cache, tmp_path):
    """Example 2: --prompts prompts.txt --spo --x scheduler=… (--score: the same cells, scored)."""
    f = tmp_path / "prompts.txt"
    f.write_text("a red fox\na boat\n")
    args = [*TINY, "--prompts", str(f), "--spo", "--x", "scheduler=euler,unipc",
            "--y", "negative=none,blurry"]
    r = invoke("compare", "--out", str(tmp_path / "out"), "--json", "--quiet", *args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    index = json.loads(Path(summary["index"]).read_text())
    assert summary["rendered"] == 8 and [Path(p).name for p in summary["grid"]] == ["prompts-grid.png"]
    [c] = [c for c in cells_at(index, scheduler="scheduler: unipc", negative="negative: blurry")
           if c["settings"]["prompt"] == "a boat"]
    same(tmp_path / "out", c, generate(tmp_path / "a", *TINY, "--seed", "0", "--scheduler", "unipc",
                                       "--negative", "blurry", prompt="a boat"))
    [c] = [c for c in cells_at(index, scheduler="scheduler: euler", negative="negative: none")
           if c["settings"]["prompt"] == "a red fox"]
    assert c["settings"]["negative"] is None
    same(tmp_path / "out", c, generate(tmp_path / "b", *TINY, "--seed", "0", "--scheduler", "euler",
                                       prompt="a red fox"))
    r = invoke("compare", "--out", str(tmp_path / "out"), "--json", "--quiet", *args, "--score", "--metric",
               "pickscore")
    assert r.exit_code == 0, r.output
    scored = json.loads(r.stdout)
    # one model: the scores compare the X axis, the schedulers, overall and at each negative prompt
    assert scored["reused"] == 8 and scored["scores"]["sweep"]["versus"] == "scheduler"
    assert [e["value"] for e in scored["scores"]["sweep"]["by_axis"]["negative"]] == ["negative: none",
                                                                                   "negative: blurry"]
    index = json.loads(Path(scored["index"]).read_text())
    assert all(isinstance(c["scores"]["pickscore"], float) for c in index["sweep"]["cells"])
    assert "scheduler" in (tmp_path / "out" / "prompts-report.md").read_text()
    assert [Path(p).name for p in scored["reports"]] == ["prompts-report.md", "prompts-negative.png"]
    # The terminal shows what --versus compares (the schedulers), not compare's one column against nothing.
    r = invoke("compare", "--out", str(tmp_path / "out"), *args, "--score", "--metric", "pickscore")
    assert r.exit_code == 0, r.output
    assert "scheduler: unipc vs scheduler: euler" in r.stdout and "Each later scheduler (a)" in r.stdout
    assert "prompts-negative.png  scheduler compared at each negative value" in r.stdout
    with Image.open(tmp_path / "out" / "prompts-negative.png") as im:
        assert im.width > 100


# -- every axis: a cell equals `spo generate` with its settings ------------------------------------

def test_seed_size_axes(hub_cache, tmp_path):
    summary = sweep(tmp_path, "--steps", "1", *NO_CFG, "--device", "cpu", "--spo", "--x", "seed=3,4",
                    "--y", "size=32x32,24x32")
    index = summary["index_data"]
    assert summary["rendered"] == 4
    c = one(index, seed="seed: 4", size="size: 24x32")
    same(tmp_path, c, generate(tmp_path / "a", "--steps", "1", *NO_CFG, "--seed", "4", "--width", "24", "--height", "32"))


def test_prompt_syntax_emphasis_strength_axes(hub_cache, tmp_path):
    Image.new("RGB", (32, 32), (200, 60, 30)).save(tmp_path / "in.png")
    prompt = "a (red:1.4) fox, snow"
    args = [*SIZE, *NO_CFG, "--steps", "2", "--image", str(tmp_path / "in.png")]
    summary = sweep(tmp_path / "out", *args, "--seeds", "1", "--spo", "--x", "strength=0.5,1", "--y", "prompt-syntax=a1111,plain",
                    "--z", "emphasis=original,none-norm", prompt=prompt)
    index = summary["index_data"]
    c = one(index, strength="strength: 0.5", prompt_syntax="prompt-syntax: a1111", emphasis="emphasis: none-norm")
    same(tmp_path / "out", c, generate(tmp_path / "a", *args, "--seed", "1", "--strength", "0.5", "--prompt-syntax", "a1111",
                                       "--emphasis", "none-norm", prompt=prompt))
    c = one(index, strength="strength: 1", prompt_syntax="prompt-syntax: plain", emphasis="emphasis: original")
    same(tmp_path / "out", c, generate(tmp_path / "b", *args, "--seed", "1", "--strength", "1", "--prompt-syntax", "plain",
                                       prompt=prompt))


# -- the layout, pure ------------------------------------------------------------------------------

def test_no_axis_leaves_compare_as_it_was(hub_cache, tmp_path):
    summary = sweep(tmp_path, *TINY, "--spo", "--seeds", "1")
    assert "sweep" not in summary["index_data"]
    assert [Path(p).name for p in summary["grid"]] == ["a-red-fox-in-the-snow-grid.png"]


def test_refused_before_torch(tmp_path):
    """What the sweep checks is refused with exit 2, in one message, before torch is imported."""
    from tests.conftest import probe_cli

    out = ["--out", str(tmp_path / "never")]
    cases = {
        "--versus 'seed' is not an axis of this sweep": ["--x", "steps=1,2", "--versus", "seed"],
        "--versus names the sweep axis --score compares across, and no --x is given": ["--versus", "steps"],
        "sets how much of an input image is re-drawn": ["--x", "strength=0.5,1"],
        "This sweep renders 40,000 images": ["--x", "steps=1-1000", "--y", "guidance=1-20"],
        "'cat' is not in the prompt": ["--x", "prompt-sr=cat,dog"],
        "--x steps sweeps what --steps sets": ["--x", "steps=1,2", "--steps", "3"],
        "--x model sweeps what --spo sets": ["--x", "model=base,spo", "--spo"],
        "too small for --watermark": ["--watermark", "--x", "size=512x512,64x64"],
        "that the grid would label alike": ["--x", "model=/a/mine,/b/mine"],
    }
    said = probe_cli({k: ["compare", PROMPT, *out, *v] for k, v in cases.items()})
    for words, text in said.items():
        assert text.strip().endswith("EXIT:2:HEAVY:"), (words, text)
        assert words in " ".join(text.split()) and "Traceback" not in text, (words, text)
    assert not (tmp_path / "never").exists()

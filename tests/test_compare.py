"""`spo compare` on the tiny pipelines: cells equal `spo generate`, shared loading, resume, grids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli import presets
from spo_cli.cli import app

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier

PROMPT = "a child and a penguin sitting on the moon"
# float32 (the CPU's default): float16 matmuls on a CPU are several times slower. The UNet swap,
# which needs float16 (where the files match byte for byte, as on the Hub), has a test of its own.
TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]
# float16 on a CPU is many times slower: a test that checks what is loaded, not pixels, runs at the
# smallest size the tiny models take.
SMALL = ["--width", "16", "--height", "16", "--steps", "1", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def generate(out: Path, seed: int, *args: str, n: int = 1) -> list[Path]:
    """`spo generate` of seeds seed, seed+1, ... (one load for all of them)."""
    r = invoke("generate", PROMPT, *TINY, "--seed", str(seed), "-n", str(n), "--out", str(out), "--json", "--quiet",
               *args)
    assert r.exit_code == 0, r.output
    return [Path(w["image"]) for w in json.loads(r.stdout)]


def run_compare(out: Path, *args: str, seeds: str = "1,2", size: list[str] = TINY) -> dict:
    r = invoke("compare", PROMPT, *size, "--seeds", seeds, "--out", str(out), "--json", "--quiet", *args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    summary["index_data"] = json.loads(Path(summary["index"]).read_text())
    return summary


def setup_of(setup: list[str], label: str) -> str:
    """The load/reuse line of a column's set-up."""
    i = setup.index(f"column {label}")
    return next(line for line in setup[i + 1:] if line.startswith(("load", "reuse")))


def cell(index: dict, out: Path, label: str, seed: int) -> Path:
    col = [c["label"] for c in index["columns"]].index(label)
    row = [r["seed"] for r in index["rows"]].index(seed)
    entry = index["cells"][row][col]
    assert entry["status"] == "ok", entry
    return out / entry["image"]


@pytest.fixture(scope="module")
def compared(hub_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    summary = run_compare(out, "--base", "--spo", "--lora-scales", "0,1")
    return out, summary


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_grid_and_index(compared):
    out, summary = compared
    index = summary["index_data"]
    assert [c["label"] for c in index["columns"]] == ["SDXL base", "SPO-SDXL", "SPO LoRA x0", "SPO LoRA x1"]
    assert [(r["prompt"], r["seed"]) for r in index["rows"]] == [(PROMPT, 1), (PROMPT, 2)]
    assert summary["rendered"] == 8 and summary["reused"] == 0 and summary["failed"] == 0
    [page] = summary["grid"]
    assert Path(page).name == "a-child-and-a-penguin-sitting-on-the-grid.png"
    from spo_cli import grid

    with Image.open(page) as im:
        assert im.size == grid.layout((64, 64), 4, 2).size
    for row in index["cells"]:
        for entry in row:
            meta = json.loads((out / entry["sidecar"]).read_text())
            assert meta["schema"] == "spo-cli/1" and (out / entry["image"]).exists()
            assert meta["compare"]["column"] in [c["label"] for c in index["columns"]]


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_cells_equal_spo_generate(compared, tmp_path):
    out, summary = compared
    index = summary["index_data"]
    for label, args in (("SDXL base", ["--model", "base"]), ("SPO-SDXL", ["--model", "spo"]),
                        ("SPO LoRA x1", ["--model", "spo-lora"])):
        for seed, made in zip((1, 2), generate(tmp_path / label, 1, *args, n=2)):
            assert np.array_equal(pixels(cell(index, out, label, seed)), pixels(made)), (label, seed)


def test_unet_swap_shares_everything_but_the_unet(hub_cache, tmp_path):
    # float16: SDXL base's fp16 variant files and the merged checkpoint's text encoders and VAE are
    # the same bytes, as on the Hub, so only the UNet is loaded for the SPO column.
    summary = run_compare(tmp_path, "--base", "--spo", "--dtype", "fp16", seeds="1", size=SMALL)
    setup = summary["index_data"]["setup"]
    spo = setup_of(setup, "SPO-SDXL")
    assert spo.startswith("load unet;") and "reuse text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae" in spo
    assert summary["bytes_loaded"] > 0


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_lora_columns_share_the_base_unet_and_one_adapter(compared):
    _, summary = compared
    setup = summary["index_data"]["setup"]
    # float32: the merged checkpoint's text encoders and VAE are stored in float16, so they differ
    # from SDXL base's float32 files and are loaded again; only the tokenizers are the same
    assert setup_of(setup, "SPO-SDXL") == "load text_encoder, text_encoder_2, vae, unet; reuse tokenizer, tokenizer_2"
    # the LoRA columns reuse the base UNet with the adapter loaded once
    assert sum("load LoRA" in line for line in setup) == 1
    assert sum(line.startswith("load") and "unet" in line for line in setup) == 2


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_lora_scale_zero_is_the_base_column(compared):
    out, summary = compared
    index = summary["index_data"]
    for seed in (1, 2):
        assert np.array_equal(pixels(cell(index, out, "SPO LoRA x0", seed)), pixels(cell(index, out, "SDXL base", seed)))
        assert not np.array_equal(pixels(cell(index, out, "SPO LoRA x1", seed)),
                                  pixels(cell(index, out, "SDXL base", seed)))


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_resume_reuses_cells_and_renders_only_what_is_new(compared, tmp_path):
    src, _ = compared
    out = tmp_path / "cmp"
    shutil.copytree(src, out)
    again = run_compare(out, "--base", "--spo", "--lora-scales", "0,1")
    assert (again["rendered"], again["reused"]) == (0, 8)
    assert again["index_data"]["setup"] == [] and again["bytes_loaded"] == 0  # no model was even loaded
    # A new column and a new seed row: only the 2 + 5 new cells are rendered.
    wider = run_compare(out, "--base", "--spo", "--lora-scales", "0,1,0.5", seeds="1,2,3")
    assert (wider["rendered"], wider["reused"]) == (7, 8)
    assert wider["index_data"]["cells"][2][4]["status"] == "ok"


def test_batch_size_across_cells(hub_cache, tmp_path):
    summary = run_compare(tmp_path, "--spo", "--batch-size", "2")
    index = summary["index_data"]
    for seed, made in zip((1, 2), generate(tmp_path / "gen", 1, "--model", "spo", n=2)):
        assert np.abs(pixels(cell(index, tmp_path, "SPO-SDXL", seed)) - pixels(made)).max() <= 1


def test_a_model_that_differs_loads_what_differs(hub_cache, repos, tmp_path):
    from safetensors.torch import load_file, save_file

    custom = tmp_path / "my-finetune"
    shutil.copytree(repos[presets.SDXL_BASE], custom)
    for f in (custom / "text_encoder").glob("*.safetensors"):
        state = load_file(f)
        key = next(k for k in state if k.endswith("final_layer_norm.weight"))
        state[key] = state[key] * 1.5
        save_file(state, f)
    summary = run_compare(tmp_path / "out", "--base", "--model", str(custom), "--label", "mine", seeds="1")
    setup = summary["index_data"]["setup"]
    mine = setup_of(setup, "mine")
    # the verification caught the changed text encoder; the rest really is SDXL base's
    assert mine == "load text_encoder; reuse text_encoder_2, tokenizer, tokenizer_2, vae, unet"
    [made] = generate(tmp_path / "gen", 1, "--model", str(custom))
    assert np.array_equal(pixels(cell(summary["index_data"], tmp_path / "out", "mine", 1)), pixels(made))


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_keep_loaded_frees_nothing_and_gives_the_same_cells(compared, tmp_path):
    src, first = compared
    summary = run_compare(tmp_path, "--base", "--spo", "--keep-loaded", seeds="1")
    assert not any(line.startswith("free") for line in summary["index_data"]["setup"])
    for label in ("SDXL base", "SPO-SDXL"):
        assert np.array_equal(pixels(cell(summary["index_data"], tmp_path, label, 1)),
                              pixels(cell(first["index_data"], src, label, 1)))


@pytest.mark.xdist_group("compared")  # one worker renders the shared comparison once
def test_pages_and_cell_size(compared, tmp_path):
    src, _ = compared
    shutil.copytree(src, tmp_path / "cmp")
    summary = run_compare(tmp_path / "cmp", "--base", "--spo", "--lora-scales", "0,1", "--rows-per-page", "1",
                          "--cell-size", "32")
    assert [Path(p).name for p in summary["grid"]] == ["a-child-and-a-penguin-sitting-on-the-grid-1.png",
                                                       "a-child-and-a-penguin-sitting-on-the-grid-2.png"]
    from spo_cli import grid

    with Image.open(summary["grid"][0]) as im:
        assert im.size == grid.layout((32, 32), 4, 1).size


def test_prompts_file_rows(hub_cache, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"prompt": "a red fox", "steps": 3}) + "\n" + json.dumps({"prompt": "a boat"}) + "\n")
    summary = run_compare(tmp_path / "out", "--spo", "--prompts", str(f), seeds="1")
    rows = summary["index_data"]["rows"]
    assert [(r["prompt"], r["seed"]) for r in rows] == [(PROMPT, 1), ("a red fox", 1), ("a boat", 1)]
    fox = summary["index_data"]["cells"][1][0]
    assert json.loads((tmp_path / "out" / fox["sidecar"]).read_text())["steps"] == 3


def test_revision_pins_a_model_column(hub_cache, tmp_path):
    commit = hub_cache[presets.SDXL_BASE]
    r = invoke("compare", PROMPT, *TINY, "--seeds", "1", "--no-base", "--no-spo", "--model", presets.SDXL_BASE,
               "--label", "pinned", "--revision", commit, "--out", str(tmp_path), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [column] = json.loads(Path(json.loads(r.stdout)["index"]).read_text())["columns"]
    assert (column["model"]["revision"], column["model"]["commit"]) == (commit, commit)
    assert column["model_request"]["revision"] == commit
    r = invoke("compare", PROMPT, *TINY, "--seeds", "1", "--no-base", "--no-spo", "--model", presets.SDXL_BASE,
               "--revision", "no-such-tag", "--out", str(tmp_path / "bad"))
    assert r.exit_code == 1 and "no-such-tag" in " ".join(r.stderr.split())


@pytest.mark.parametrize("args, words", [
    (["--no-base", "--no-spo"], "No model chosen"),
    (["--lora-scales", "0,abc"], "'abc' is not a number"),
    (["--seeds", "1,x"], "--seeds has 'x', which is not a seed or a range such as 0-3"),
    (["--model", "base", "--label", "SDXL base", "--base"], "labelled alike"),
    (["--label", "orphan"], "more --label than --model"),
    (["--lora-scale", "0.5"], "sets the strength of the --spo-lora column"),
    (["--revision", "v2"], "--revision applies to --model columns"),
    (["--cell-size", "8"], "--cell-size must be from 16 to 4,096"),
    (["--seeds", "-2"], "--seeds has '-2', which is not a seed or a range"),
    (["--seeds", "3-1"], "--seeds has the range 3-1, which runs backwards"),
])
def test_bad_inputs(hub_cache, tmp_path, args, words):
    r = invoke("compare", PROMPT, *TINY, "--out", str(tmp_path), *args)
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.stderr.split()) and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == []


def test_empty_prompt_file_and_no_prompt(hub_cache, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing here\n")
    r = invoke("compare", "--prompts", str(empty), *TINY, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "holds no prompts" in r.stderr
    r = invoke("compare", *TINY, "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "Nothing to compare" in r.stderr

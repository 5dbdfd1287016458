"""Image to image in batch, compare and replay, and --keep-inputs: each command's images equal
`spo generate`'s with the same settings; sidecars replay to the same pixels; inputs are found by
their recorded path and SHA-256, or by their kept copy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli import inputs, prompts
from spo_cli.cli import app
from spo_cli.errors import UsageError
from spo_cli.outputs import metadata

TINY = ["--steps", "2", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args: str):
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    return r


def generate(out: Path, *args: str) -> list[dict]:
    return json.loads(ok("generate", *args, *TINY, "--out", out, "--json", "--quiet").stdout)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture
def pictures(tmp_path) -> Path:
    """A 32×32 input with some structure, a mask (white square = repaint) and a second input."""
    folder = tmp_path / "pics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "fox.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "other.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(folder / "mask.png")
    return folder


def write_lines(path: Path, *lines: dict) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


# ---------------------------------------------------------------------------------------------
# Fast: what is checked before any model


def test_the_jsonl_edit_keys_are_inputs_edit_keys():
    assert prompts.EDIT_KEYS == inputs.EDIT_KEYS
    assert set(prompts.EDIT_KEYS) <= set(prompts.KEYS)


@pytest.mark.parametrize("line, says", [
    ({"prompt": "x", "image": "../outside.png"}, "leads out of"),
    ({"prompt": "x", "image": 5}, "'image' must be a string"),
    ({"prompt": "x", "image": "missing.png"}, "'image' 'missing.png' does not exist"),
    ({"prompt": "x", "image": "fox.png", "strength": 2}, "'strength'"),
    ({"prompt": "x", "mask": "mask.png"}, "'mask' has nothing to act on without 'image'"),
    ({"prompt": "x", "hires": 1.5, "image": "fox.png"}, "'hires' cannot be used with an input image"),
])
def test_a_bad_edit_on_a_line_is_named_by_file_and_line_and_nothing_runs(pictures, tmp_path, line, says):
    (tmp_path / "outside.png").write_bytes((pictures / "fox.png").read_bytes())
    f = write_lines(pictures / "edits.jsonl", {"prompt": "fine", "image": "fox.png"}, line)
    r = invoke("batch", f, *TINY, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert f"{f}:2: " in r.output and says in r.output
    assert f"{f}:1" not in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_a_symlink_out_of_the_prompt_files_folder_is_refused(pictures, tmp_path):
    (tmp_path / "secret.png").write_bytes((pictures / "fox.png").read_bytes())
    (pictures / "link.png").symlink_to(tmp_path / "secret.png")
    f = write_lines(pictures / "edits.jsonl", {"prompt": "x", "image": "link.png"})
    r = invoke("batch", f, *TINY, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "leads out of" in r.output


def test_stdins_lines_are_read_from_the_current_folder_and_stay_in_it(pictures, tmp_path, monkeypatch):
    monkeypatch.chdir(pictures)
    (tmp_path / "outside.png").write_bytes((pictures / "fox.png").read_bytes())
    r = CliRunner().invoke(app, ["batch", "-", *TINY, "--out", str(tmp_path / "out")],
                           input=json.dumps({"prompt": "x", "image": "../outside.png"}) + "\n")
    assert r.exit_code == 2 and "<stdin>:1: 'image' '../outside.png' leads out of" in r.output
    assert str(pictures) in r.output


def test_a_wrong_image_option_is_the_command_lines_error(pictures, tmp_path):
    f = write_lines(pictures / "p.jsonl", {"prompt": "a"}, {"prompt": "b"})
    r = invoke("batch", f, "--image", pictures / "nope.png", *TINY, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "--image" in r.output and "p.jsonl:" not in r.output


def test_compare_reads_a_prompt_files_edit_lines_as_batch_does(pictures, tmp_path):
    f = write_lines(pictures / "c.jsonl", {"prompt": "a", "image": "fox.png"}, {"prompt": "b", "image": "../x.png"})
    r = invoke("compare", "--prompts", f, "--base", "--spo", *TINY, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert f"{f}:2: 'image' '../x.png'" in r.output and f"{f}:1" not in r.output


def test_compare_checks_its_image_options_before_any_model(pictures, tmp_path):
    r = invoke("compare", "a fox", "--image", pictures / "fox.png", "--strength", "0.1", *TINY, "--out",
               tmp_path / "out")
    assert r.exit_code == 2 and "--strength" in r.output and not (tmp_path / "out").exists()


def sidecar(tmp_path: Path, **fields) -> Path:
    meta = {"schema": metadata.SCHEMA, "prompt": "x", "seed": 1, "steps": 2, "guidance": 5.0, "width": 32,
            "height": 32, "scheduler": {"name": "default"}, "model_request": {"model": "spo"}, "model": {},
            "dtype": "float32", **fields}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(meta))
    return path


GOOD = {"path": "/nowhere/fox.png", "sha256": "a" * 64, "width": 32, "height": 32, "bytes": 10}


@pytest.mark.parametrize("fields, says", [
    ({"init_image": "fox.png", "strength": 0.5}, "'init_image' should be an object"),
    ({"init_image": {**GOOD, "sha256": "xyz"}, "strength": 0.5}, "'init_image.sha256' is not a SHA-256"),
    ({"init_image": {**GOOD, "copy": "../../../etc/passwd"}, "strength": 0.5}, "'init_image.copy' is not a copy"),
    ({"init_image": {**GOOD, "copy": "/etc/x.png"}, "strength": 0.5}, "'init_image.copy' is not a copy"),
    ({"init_image": {**GOOD, "path": 7}, "strength": 0.5}, "'init_image.path' must be a string"),
    ({"init_image": GOOD}, "'strength' is missing"),
    ({"hires": [1.5]}, "'hires' should be an object"),
    ({"hires": {"scale": 1.5, "upscaler": "latent"}}, "'hires.strength' is missing"),
])
def test_a_damaged_sidecars_edit_fields_are_refused_in_one_paragraph(tmp_path, fields, says):
    path = sidecar(tmp_path, **fields)
    with pytest.raises(UsageError, match=None) as e:
        metadata.recorded_edits(json.loads(path.read_text()), path)
    assert says in e.value.message and str(path) in e.value.message
    r = invoke("replay", path, "--out", tmp_path / "out")
    assert r.exit_code == 2 and says in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("fields, says", [
    ({"init_image": GOOD, "strength": 7}, "'strength'"),
    ({"hires": {"scale": "big", "upscaler": "latent", "strength": 0.7}}, "'hires.scale'"),
    ({"hires": {"scale": 1.5, "upscaler": "esrgan", "strength": 0.7}}, "'hires.upscaler'"),
])
def test_a_sidecars_edit_values_go_through_the_same_checks(pictures, tmp_path, fields, says):
    path = sidecar(tmp_path, **fields)
    given = ["--image", pictures / "fox.png"] if "init_image" in fields else []
    r = invoke("replay", path, *given, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    assert f"{path}: {says}" in r.output and "Traceback" not in r.output


def test_replay_of_a_missing_or_changed_input_says_what_to_do(pictures, tmp_path):
    data = (pictures / "fox.png").read_bytes()
    import hashlib

    good = {**GOOD, "path": str(pictures / "fox.png"), "sha256": hashlib.sha256(data).hexdigest()}
    gone = sidecar(tmp_path, init_image={**good, "path": str(pictures / "gone.png")}, strength=0.5)
    r = invoke("replay", gone, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "is gone" in r.output and "--image" in r.output
    changed = sidecar(tmp_path, init_image={**good, "sha256": "b" * 64}, strength=0.5)
    r = invoke("replay", changed, "--out", tmp_path / "out")
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"is not the one this was made from: its SHA-256 is {good['sha256']}, recorded {'b' * 64}" in text
    assert "give --image to point at the right file" in text.lower()


def test_an_img2img_infotext_needs_the_image(tmp_path):
    text = "a fox\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 32x32, Denoising strength: 0.6"
    r = invoke("replay", "--infotext", text, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "Denoising strength: 0.6" in r.output and "--image" in r.output


# ---------------------------------------------------------------------------------------------
# Slow: the tiny pipelines


@pytest.mark.slow
def test_batch_edit_lines_equal_generate(hub_cache, pictures, tmp_path, out):
    f = write_lines(pictures / "edits.jsonl",
                    {"prompt": "a fox in winter", "image": "fox.png", "strength": 0.6, "seed": 7, "name": "i2i"},
                    {"prompt": "a red scarf", "image": "fox.png", "mask": "mask.png", "strength": 1.0, "seed": 8,
                     "mask_blur": 2, "name": "inpaint"},
                    {"prompt": "a lighthouse", "hires": 1.5, "hires_upscaler": "lanczos", "width": 16, "height": 16,
                     "seed": 9, "name": "hires"},
                    {"prompt": "plain", "width": 16, "height": 16, "seed": 10, "name": "plain"})
    ok("batch", f, *TINY, "--out", out, "--json", "--quiet")
    for name, args in [
        ("i2i", ["a fox in winter", "--image", pictures / "fox.png", "--strength", "0.6", "--seed", "7"]),
        ("inpaint", ["a red scarf", "--image", pictures / "fox.png", "--mask", pictures / "mask.png",
                     "--strength", "1", "--mask-blur", "2", "--seed", "8"]),
        ("hires", ["a lighthouse", "--hires", "1.5", "--hires-upscaler", "lanczos", "--width", "16", "--height", "16",
                   "--seed", "9"]),
    ]:
        [g] = generate(tmp_path / "gen" / name, *args)
        assert np.array_equal(pixels(out / f"{name}.png"), pixels(g["image"])), name
    meta = json.loads((out / "inpaint.json").read_text())
    assert meta["init_image"]["path"] == str((pictures / "fox.png").resolve())
    assert meta["mask_image"]["path"] == str((pictures / "mask.png").resolve())
    assert (meta["strength"], meta["mask_blur"]) == (1.0, 2)
    assert json.loads((out / "hires.json").read_text())["hires"]["width"] == 24
    assert "init_image" not in json.loads((out / "plain.json").read_text())


@pytest.mark.slow
def test_batch_options_apply_to_lines_without_their_own_and_resume_follows_the_image(hub_cache, pictures,
                                                                                      tmp_path, out):
    f = write_lines(tmp_path / "p.jsonl", {"prompt": "a", "name": "a"}, {"prompt": "b", "name": "b", "strength": 1.0},
                    {"prompt": "c", "name": "c", "image": "pics/other.png"})
    image = tmp_path / "in.png"
    shutil.copy(pictures / "fox.png", image)
    args = ["batch", f, "--image", image, "--strength", "0.5", *TINY, "--out", out, "--json", "--quiet"]
    assert json.loads(ok(*args).stdout)["generated"] == 3
    meta = {n: json.loads((out / f"{n}.json").read_text()) for n in "abc"}
    assert (meta["a"]["strength"], meta["b"]["strength"], meta["c"]["strength"]) == (0.5, 1.0, 0.5)
    assert meta["a"]["init_image"]["path"] == meta["b"]["init_image"]["path"] == str(image.resolve())
    assert meta["c"]["init_image"]["path"] == str((pictures / "other.png").resolve())
    before = {n: (out / f"{n}.png").stat().st_mtime_ns for n in "abc"}
    assert json.loads(ok(*args).stdout)["generated"] == 0  # nothing changed: nothing to do

    shutil.copy(pictures / "other.png", image)  # other bytes at the same path: lines a and b are other specs
    summary = json.loads(ok(*args).stdout)
    assert (summary["generated"], summary["already_done"]) == (2, 1)
    assert (out / "c.png").stat().st_mtime_ns == before["c"]
    assert all((out / f"{n}.png").stat().st_mtime_ns != before[n] for n in "ab")
    assert json.loads((out / "a.json").read_text())["init_image"]["sha256"] == meta["c"]["init_image"]["sha256"]


@pytest.mark.slow
def test_compare_on_one_input_each_cell_equals_generate(hub_cache, pictures, tmp_path, out):
    ok("compare", "the same fox, in winter", "--image", pictures / "fox.png", "--mask", pictures / "mask.png",
       "--strength", "0.9", "--base", "--spo", "--seeds", "1,2", *TINY, "--out", out, "--keep-inputs", "--json",
       "--quiet")
    index = json.loads(next(out.glob("*-grid.json")).read_text())
    assert [c["label"] for c in index["columns"]] == ["SDXL base", "SPO-SDXL"]
    assert index["rendered"] == 4 and index["failed"] == 0
    cell = out / index["cells"][1][1]["image"]  # SPO, seed 2
    [g] = generate(tmp_path / "gen", "the same fox, in winter", "--image", pictures / "fox.png", "--mask",
                   pictures / "mask.png", "--strength", "0.9", "--seed", "2", "--model", "spo")
    assert np.array_equal(pixels(cell), pixels(g["image"]))
    # the kept input, recorded from the cell's folder, and the cell replays from it alone
    meta = json.loads(cell.with_suffix(".json").read_text())
    assert meta["init_image"]["copy"].startswith("../../inputs/")
    assert len(list((out / "inputs").iterdir())) == 2  # image and mask, once each for four cells
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    shutil.rmtree(pictures)
    [again] = json.loads(ok("replay", moved / index["cells"][1][1]["sidecar"], "--out", tmp_path / "r", "--json",
                            "--quiet").stdout)
    assert np.array_equal(pixels(again["image"]), pixels(g["image"]))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["img2img", "inpaint", "hires"])
def test_replay_gives_the_same_pixels(hub_cache, pictures, out, mode):
    args = {"img2img": ["--image", pictures / "fox.png", "--strength", "0.7"],
            "inpaint": ["--image", pictures / "fox.png", "--mask", pictures / "mask.png", "--mask-blur", "2"],
            "hires": ["--hires", "1.5", "--width", "16", "--height", "16", "--hires-steps", "3"]}[mode]
    [orig] = generate(out / "g", "a fox", "--seed", "5", *args)
    [again] = json.loads(ok("replay", orig["image"], "--out", out / "r", "--json", "--quiet").stdout)
    assert np.array_equal(pixels(again["image"]), pixels(orig["image"]))
    a, b = (json.loads(Path(w["sidecar"]).read_text()) for w in (orig, again))
    for key in ("init_image", "mask_image", "strength", "mask_blur", "mask_crop", "hires"):
        assert a.get(key) == b.get(key), key


@pytest.mark.slow
def test_replay_with_another_image_warns_and_uses_it(hub_cache, pictures, out):
    [orig] = generate(out / "g", "a fox", "--seed", "5", "--image", pictures / "fox.png")
    r = ok("replay", orig["sidecar"], "--image", pictures / "other.png", "--out", out / "r", "--json")
    [again] = json.loads(r.stdout)
    assert "the pixels will differ" in " ".join(r.stderr.split())
    [direct] = generate(out / "d", "a fox", "--seed", "5", "--image", pictures / "other.png")
    assert np.array_equal(pixels(again["image"]), pixels(direct["image"]))


@pytest.mark.slow
def test_keep_inputs_makes_a_folder_that_replays_anywhere(hub_cache, pictures, tmp_path, out):
    orig, _ = generate(out, "a scarf", "--seed", "3", "--image", pictures / "fox.png", "--mask", pictures / "mask.png",
                      "-n", "2", "--keep-inputs")
    meta = json.loads(Path(orig["sidecar"]).read_text())
    copy = out / meta["init_image"]["copy"]
    assert meta["init_image"]["copy"] == f"inputs/{meta['init_image']['sha256'][:16]}.png"
    assert copy.read_bytes() == (pictures / "fox.png").read_bytes()
    assert meta["init_image"]["path"] == str((pictures / "fox.png").resolve())  # the original too
    assert sorted(p.name for p in (out / "inputs").iterdir()) == sorted(
        f"{meta[k]['sha256'][:16]}.png" for k in ("init_image", "mask_image"))
    moved = tmp_path / "elsewhere"
    shutil.move(out, moved)
    shutil.rmtree(pictures)
    [again] = json.loads(ok("replay", moved / Path(orig["sidecar"]).name, "--out", tmp_path / "r", "--json",
                            "--quiet").stdout)
    assert np.array_equal(pixels(again["image"]), pixels(moved / Path(orig["image"]).name))


@pytest.mark.slow
def test_keep_inputs_in_batch_and_replay(hub_cache, pictures, tmp_path, out):
    f = write_lines(pictures / "e.jsonl", {"prompt": "a", "image": "fox.png", "name": "a"},
                    {"prompt": "b", "image": "fox.png", "name": "b"})
    ok("batch", f, *TINY, "--out", out / "b", "--keep-inputs", "--quiet")
    assert len(list((out / "b" / "inputs").iterdir())) == 1
    assert json.loads((out / "b" / "a.json").read_text())["init_image"]["copy"].startswith("inputs/")
    ok("replay", out / "b" / "a.json", "--out", out / "r", "--keep-inputs", "--quiet")
    [meta] = [json.loads(p.read_text()) for p in (out / "r").glob("*.json")]
    assert (out / "r" / meta["init_image"]["copy"]).is_file()


@pytest.mark.slow
def test_an_infotext_with_hires_replays_to_the_same_image(hub_cache, out):
    [written] = generate(out / "g", "a lighthouse", "--seed", "4", "--width", "16", "--height", "16", "--hires",
                         "1.5", "--hires-steps", "3", "--hires-strength", "0.5")
    with Image.open(written["image"]) as im:
        text = im.info["parameters"]
    assert "Hires upscale: 1.5" in text and "Hires upscaler: Latent" in text and "Denoising strength: 0.5" in text
    [again] = json.loads(ok("replay", "--infotext", text, "--device", "cpu", "--out", out / "r", "--json",
                            "--quiet").stdout)
    assert np.array_equal(pixels(again["image"]), pixels(written["image"]))
    assert json.loads(Path(again["sidecar"]).read_text())["hires"] == json.loads(
        Path(written["sidecar"]).read_text())["hires"]


@pytest.mark.slow
def test_an_img2img_infotext_with_image_replays_to_the_same_image(hub_cache, pictures, out):
    [written] = generate(out / "g", "a fox", "--seed", "4", "--image", pictures / "fox.png", "--strength", "0.6")
    with Image.open(written["image"]) as im:
        text = im.info["parameters"]
    r = ok("replay", "--infotext", text, "--image", pictures / "fox.png", "--device", "cpu", "--out", out / "r",
           "--json", "--quiet")
    [again] = json.loads(r.stdout)
    assert np.array_equal(pixels(again["image"]), pixels(written["image"]))



@pytest.mark.slow
def test_a_mask_crop_infotext_with_image_and_mask_replays_to_the_same_image(hub_cache, pictures, out):
    [written] = generate(out / "g", "a fox", "--seed", "4", "--image", pictures / "fox.png", "--mask",
                         pictures / "mask.png", "--strength", "0.9", "--mask-crop", "4", "--mask-blur", "2")
    with Image.open(written["image"]) as im:
        text = im.info["parameters"]
    assert "Mask blur: 2, Inpaint area: Only masked, Masked area padding: 4" in text  # A1111's keys
    [again] = json.loads(ok("replay", "--infotext", text, "--image", pictures / "fox.png", "--mask",
                            pictures / "mask.png", "--device", "cpu", "--out", out / "r", "--json", "--quiet").stdout)
    assert json.loads(Path(again["sidecar"]).read_text())["mask_crop"] == 4
    assert np.array_equal(pixels(again["image"]), pixels(written["image"]))


@pytest.mark.slow
def test_an_only_masked_infotext_without_mask_warns_and_redraws_the_whole_image(hub_cache, pictures, out):
    text = ("a fox\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 32x32, Denoising strength: 0.6, "
            "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 8")
    r = ok("replay", "--infotext", text, "--image", pictures / "fox.png", "--device", "cpu", "--out", out, "--json")
    assert "is from inpainting (Mask blur: 4); without --mask the whole image is re-drawn" in " ".join(r.output.split())
    [made] = json.loads(r.stdout)
    meta = json.loads(Path(made["sidecar"]).read_text())
    assert meta["strength"] == 0.6 and "mask_image" not in meta and meta.get("mask_crop") is None

"""Image to image driven as a hostile user drives it: option values and files that must be refused
before torch, in one paragraph, named as the user wrote them (an option, a sidecar's field, an A1111
text's key)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.conftest import probe_cli
from tests.test_i2i_cli import sidecar



def invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture(scope="module")
def fox(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pics") / "fox.png"
    Image.new("RGB", (64, 48), (200, 80, 20)).save(path)
    return path


def _cases(fox: Path, out: Path) -> dict[str, list[str]]:
    def generate(*args):  # each case its own output folder (OUT/<its first option>): checked apart
        return ["generate", "a fox", "--steps", "4", *args, "--out", str(out / args[0].strip("-"))]

    return {
        # the input's size, not 1024², is the image's: too small for the watermark
        "watermark on a small input": generate("--image", str(fox), "--watermark"),
        "hires no larger": generate("--hires", "1.0001", "--width", "64", "--height", "64"),
    }


SAYS = {
    "watermark on a small input": "error: 64×48 is too small for --watermark",
    "hires no larger": "error: --hires 1.0001 makes no larger image from 64×64",
}


@pytest.fixture(scope="module")
def probed(fox, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "out"
    cases = _cases(fox, out)
    return out, probe_cli(cases)


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("name", list(SAYS))
def test_refused_with_exit_2_in_one_paragraph_before_torch(probed, name):
    out, stderrs = probed
    *said, status = stderrs[name].rstrip("\n").split("\n")
    assert status == "EXIT:2:HEAVY:", (status, said)
    assert len(said) == 1 and said[0].startswith(SAYS[name]), said
    args = _cases(Path("fox.png"), out)[name]
    assert not Path(args[args.index("--out") + 1]).exists()  # refused before the output folder was made


def _sidecar(tmp_path: Path, **fields) -> Path:
    return sidecar(tmp_path, **{"width": 64, "height": 64, **fields})


HIRES = {"scale": 1.5, "upscaler": "latent", "steps": None, "strength": 0.7}
INFOTEXT = "a fox\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, "


@pytest.mark.parametrize("source, says", [
    ({"hires": {**HIRES, "steps": -3}}, "x.json: 'hires.steps' must be from 0"),
    ({"hires": {**HIRES, "scale": 100}}, "x.json: 'hires.scale' must be over 1"),
    ({"hires": {**HIRES, "upscaler": "R-ESRGAN 4x+"}}, "x.json: 'hires.upscaler' cannot be"),
    ({"hires": {**HIRES, "strength": 0}}, "x.json: 'hires.strength' must be over 0"),
    ({"init_image": {"path": "/etc/passwd", "sha256": "a" * 64}, "strength": 0.5},
     "x.json: 'init_image' '/etc/passwd' is not an image"),
    ("Denoising strength: 0.7, Hires upscale: 100", "--infotext: 'Hires upscale' must be over 1"),
    ("Denoising strength: 0.7, Hires upscale: 2, Hires steps: -5", "--infotext: 'Hires steps' must be from 0"),
    ("Denoising strength: 2, Hires upscale: 2", "--infotext: 'Denoising strength' must be over 0"),
])
def test_a_recorded_edit_value_is_named_as_its_file_names_it(tmp_path, source, says):
    args = (["--infotext", INFOTEXT + source] if isinstance(source, str) else [_sidecar(tmp_path, **source)])
    code, said = invoke("replay", *args, "--out", tmp_path / "out")
    assert code == 2 and says in said and "Traceback" not in said, said


@pytest.mark.parametrize("args, says", [
    (["--hires", "1.0001", "--width", "64", "--height", "64"],
     "--hires 1.0001 makes no larger image from 64×64: sides are cut to multiples of 8, so the second pass would "
     "re-draw it at its own size. Use at least 1.13."),
    (["--hires", "1.001"], "--hires 1.001 makes no larger image from 1024×1024"),
])
def test_a_hires_factor_that_makes_no_larger_image_is_refused(tmp_path, args, says):
    code, said = invoke("generate", "a fox", "--steps", "4", *args, "--out", tmp_path / "out")
    assert code == 2 and f"error: {says}" in said and not (tmp_path / "out").exists(), said


def test_the_least_factor_offered_makes_a_larger_image():
    from spo_cli import validate

    for w, h in [(64, 64), (1024, 1024), (64, 1024), (8, 8), (1016, 8)]:
        with pytest.raises(Exception) as e:
            validate.hires_grows(w, h, 1.0000001)
        least = float(e.value.hint.split("at least ")[1].rstrip("."))
        assert validate.hires_grows(w, h, least) != (w, h)


@pytest.mark.parametrize("args, says", [
    (["--image", "FOX", "--strength", "1.0000001"], "--strength must be over 0 (0 would give back the input "
     "unchanged) and at most 1, not 1.0000001."),
    (["--image", "FOX", "--strength", "1e-400"], "at most 1, not 0."),  # underflows to 0 as it is read
    (["--hires", "4.0000001"], "--hires must be over 1 (1 would re-draw the image at its own size) and at most 4, "
     "not 4.0000001."),
    (["--guidance", "100.0000001"], "--guidance must be from 0 to 100, not 100.0000001."),
])
def test_a_refused_number_is_shown_as_given_not_rounded_onto_the_limit(tmp_path, fox, args, says):
    args = [str(fox) if a == "FOX" else a for a in args]
    code, said = invoke("generate", "a fox", "--steps", "4", *args, "--out", tmp_path / "out")
    assert code == 2 and says in said and not (tmp_path / "out").exists(), said


def test_a_bright_colour_mask_is_refused_saying_colours_are_read_by_brightness(tmp_path, fox):
    Image.new("RGB", (64, 48), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (64, 48), (100, 100, 100)).save(tmp_path / "grey.png")
    code, said = invoke("generate", "a fox", "--image", fox, "--mask", tmp_path / "red.png", "--out", tmp_path / "out")
    assert code == 2 and "no pixel is lighter than half grey" in said and "pure red is 76 of 255" in said, said
    code, said = invoke("generate", "a fox", "--image", fox, "--mask", tmp_path / "grey.png", "--out", tmp_path / "out")
    assert code == 2 and "no pixel is lighter than half grey" in said and "red" not in said, said


@pytest.mark.parametrize("fields, says", [
    ({"init_image": {"path": "/nowhere/fox.png", "sha256": "a" * 64}, "strength": None}, "x.json: 'strength' is null."),
    ({"hires": {**HIRES, "strength": None}}, "x.json: 'hires.strength' is null."),
    ({"hires": {**HIRES, "scale": None}}, "x.json: 'hires.scale' is null."),
])
def test_a_recorded_edit_value_set_to_null_is_refused_not_defaulted(tmp_path, fields, says):
    code, said = invoke("replay", _sidecar(tmp_path, **fields), "--out", tmp_path / "out")
    assert code == 2 and says in said, said


def test_the_size_offered_for_a_long_input_says_its_megapixels(tmp_path):
    Image.new("RGB", (16, 4096), (90, 90, 90)).save(tmp_path / "tall.png")
    code, said = invoke("generate", "a fox", "--image", tmp_path / "tall.png", "--width", "64", "--out", tmp_path / "o")
    assert code == 2 and "would make a 64×16384 image" in said, said
    assert "--width 16 --height 4096 (0.066 MP, as long as a side may be, the same shape)" in said, said


def test_replay_with_strength_names_a_bad_recorded_value_as_the_files(tmp_path, fox):
    import hashlib

    image = {"path": str(fox), "sha256": hashlib.sha256(fox.read_bytes()).hexdigest()}
    path = _sidecar(tmp_path, init_image=image, strength=0.5, mask_image=image, mask_blur=10**9)
    code, said = invoke("replay", path, "--strength", "0.5", "--out", tmp_path / "out")
    # replay has no --mask-blur: the value is the file's
    assert code == 2 and f"{path}: 'mask_blur' must be from 0 to 64" in said, said
    code, said = invoke("replay", path, "--strength", "0.1", "--out", tmp_path / "out")
    assert code == 2 and said.startswith("error: --strength 0.1 with 2 --steps runs 0.20"), said


def test_a_prompt_files_edit_notes_and_refusals_name_their_line(tmp_path):
    from spo_cli import prompts
    from spo_cli.request import ImageRequest

    Image.new("RGB", (62, 46), (90, 90, 90)).save(tmp_path / "odd.png")
    text = "".join(json.dumps({"prompt": "a fox", "image": "odd.png"}) + "\n" for _ in range(2))
    parsed = prompts.apply_edits(prompts.parse(text, "p.jsonl"), ImageRequest(prompt="", seed=1, steps=4), {},
                                 tmp_path)
    # one note per line, each saying which: the same words from two lines are two notes
    assert [pl.notes[0] for pl in parsed.lines] == [
        f"p.jsonl:{n}: The input is 62×46; it is resized to 56×40 (sides are multiples of 8)." for n in (1, 2)]
    assert all(note.startswith(f"p.jsonl:{pl.line}: ") for pl in parsed.lines for note in pl.notes)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a fox", "image": "odd.png", "watermark": True}) + "\n")
    code, said = invoke("batch", tmp_path / "p.jsonl", "--out", tmp_path / "out")
    assert code == 2 and f"{tmp_path / 'p.jsonl'}:1: 56×40 is too small for 'watermark'" in said, said
    assert "line:" not in said

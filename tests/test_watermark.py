"""--watermark: SDXL's invisible watermark, as diffusers' pipeline applies it, recorded as part of the
recipe and found again by `spo_cli.watermark.probe`. And the reverse, which matters more: with
invisible-watermark installed (the [test] extra installs it), an image made without --watermark is
the unmarked image, although diffusers' SDXL pipelines mark by default once the package is there."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli import infotext, prompts, validate, watermark
from spo_cli.cli import app
from spo_cli.errors import UsageError
from spo_cli.outputs import metadata
from spo_cli.request import ImageRequest
from spo_cli.serve import api

PROMPT = "a child and a penguin sitting on the moon"
# The smallest image SDXL's watermark goes into (validate.WATERMARK_WIDTH_MIN): what the pipeline tests make.
# Guidance 1, which diffusers runs without classifier-free guidance: half the UNet's work at a size
# where its attention is most of the time, and nothing the mark depends on.
MARKABLE = ["--width", "256", "--height", "256", "--steps", "1", "--guidance", "1"]


def smooth(side: int = 256, seed: int = 0) -> np.ndarray:
    """A photo-like RGB image in [0, 1]: gradients and a little noise (a tiny model's output is noise)."""
    y, x = np.mgrid[0:side, 0:side] / side
    img = np.stack([0.5 + 0.3 * np.sin(6 * x + 3 * y), 0.5 + 0.3 * np.cos(4 * y), 0.4 + 0.2 * np.sin(9 * x * y)], -1)
    return np.clip(img + np.random.default_rng(seed).normal(0, 0.03, img.shape), 0, 1)


def marked_by_diffusers(img: np.ndarray) -> np.ndarray:
    """`img` through diffusers' own SDXL watermarker, as its pipeline hands it the decoded images
    ([-1, 1], NCHW) and postprocesses them after (to uint8)."""
    import torch
    from diffusers.pipelines.stable_diffusion_xl.watermark import StableDiffusionXLWatermarker

    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() * 2 - 1
    out = StableDiffusionXLWatermarker().apply_watermark(t)[0].permute(1, 2, 0).numpy()
    return ((out / 2 + 0.5).clip(0, 1) * 255).round().astype(np.uint8)


def save(arr: np.ndarray, path: Path, **kw) -> Path:
    Image.fromarray(arr if arr.dtype == np.uint8 else (arr * 255).round().astype(np.uint8)).save(path, **kw)
    return path


# ---------------------------------------------------------------------------------------------
# The probe


def test_the_bits_are_diffusers_own():
    from diffusers.pipelines.stable_diffusion_xl.watermark import WATERMARK_BITS

    assert list(watermark.BITS) == WATERMARK_BITS and len(watermark.BITS) == 48


def test_a_marked_image_is_found_and_an_unmarked_one_is_not(tmp_path):
    marked = watermark.probe(save(marked_by_diffusers(smooth()), tmp_path / "marked.png"))
    assert marked["checked"] and marked["present"], marked
    assert marked["bits_matching"] >= watermark.MATCH_MIN_BITS and marked["verdict"] == "very likely watermarked"
    assert marked["summary"].startswith("SDXL invisible watermark: ") and "of 48 bits match" in marked["summary"]
    for seed in range(3):
        plain = watermark.probe(save(smooth(seed=seed), tmp_path / f"plain{seed}.png"))
        assert plain["checked"] and not plain["present"], plain
        assert plain["bits_matching"] <= 33  # nowhere near: Stability's "no watermark" or "undecided"
        assert plain["summary"].startswith("none found: ")
    assert json.dumps(marked)  # what `spo inspect --json` prints


def test_the_decoder_reads_what_invisible_watermarks_own_decoder_reads(tmp_path):
    from imwatermark import WatermarkDecoder

    for img in (marked_by_diffusers(smooth()), (smooth(seed=4) * 255).astype(np.uint8)):
        theirs = WatermarkDecoder("bits", 48).decode(np.ascontiguousarray(img[:, :, ::-1]), "dwtDct")
        assert watermark.decode_bits(img) == [int(b) for b in theirs]


def test_a_file_that_cannot_carry_or_show_the_mark_is_not_checked(tmp_path, monkeypatch):
    small = watermark.probe(save(smooth(128), tmp_path / "small.png"))
    assert small["checked"] is False and small["present"] is False and "too small" in small["note"]
    assert small["summary"] == small["note"]
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    junk = watermark.probe(tmp_path / "junk.png")
    assert junk["checked"] is False and "not a readable image" in junk["note"]
    monkeypatch.setitem(sys.modules, "imwatermark", None)  # how Python blocks an import
    missing = watermark.probe(tmp_path / "small.png")
    assert missing["checked"] is False and 'pip install "spo-cli[watermark]"' in missing["note"]


def test_a_huge_image_is_not_decoded(tmp_path, monkeypatch):
    monkeypatch.setattr(watermark, "PIXELS_MAX", 256 * 255)
    out = watermark.probe(save(smooth(), tmp_path / "big.png"))
    assert out["checked"] is False and "more than" in out["note"]


@pytest.mark.slow  # a subprocess
def test_the_probe_imports_no_torch(tmp_path):
    import subprocess

    path = save(marked_by_diffusers(smooth()), tmp_path / "m.png")
    code = (f"import sys; from spo_cli import watermark; r = watermark.probe({str(path)!r}); "
            "print(r['present'], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stderr


# ---------------------------------------------------------------------------------------------
# The request, its checks and its records


def test_the_field_is_checked_as_true_or_false():
    assert validate.image_values({"watermark": True}) == {"watermark": True}
    for bad in ("true", 1, None):
        with pytest.raises(UsageError, match="must be true or false"):
            validate.image_values({"watermark": bad})


@pytest.mark.parametrize("width, height, ok", [(256, 256, True), (None, None, True), (1024, 64, True),
                                               (248, 1024, False), (256, 248, False), (512, 120, False)])
def test_the_size_check_is_the_one_diffusers_and_invisible_watermark_make(width, height, ok):
    if ok:
        validate.watermark_size(width, height)
        return
    with pytest.raises(UsageError) as e:
        validate.watermark_size(width, height)
    assert "too small for --watermark" in e.value.message and "256" in e.value.hint


def test_a_marked_image_is_its_own_recipe():
    plain, marked = ImageRequest("a fox", 1), ImageRequest("a fox", 1, watermark=True)
    assert plain.group_key() != marked.group_key()  # never in one pipeline call
    assert plain.spec_hash() != marked.spec_hash()
    # A request without it hashes as before the field existed (pinned in test_request): resumes still match.


def meta_of(request: ImageRequest) -> dict:
    from datetime import datetime

    return metadata.build(request, {"model": {"id": "x/y"}, "model_request": {"model": "spo"}},
                          {"dtype": "float32", "device": "cpu", "versions": {"spo-cli": "0"}},
                          {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler", "config": {}},
                          width=256, height=256, batch_size=1, elapsed_s=1.0, created=datetime(2026, 12, 2))


def test_sidecar_and_infotext_record_it_and_replay_reads_it_back(tmp_path):
    marked, plain = meta_of(ImageRequest(PROMPT, 5, watermark=True)), meta_of(ImageRequest(PROMPT, 5))
    assert marked["watermark"] is True and plain["watermark"] is False
    text = metadata.a1111_parameters(marked)
    assert "Watermark: SDXL" in text and "Watermark" not in metadata.a1111_parameters(plain)
    fields, ignored = infotext.to_request_fields(infotext.parse(text))
    assert fields["watermark"] is True and "Watermark" not in ignored
    assert "watermark" not in infotext.to_request_fields(infotext.parse(metadata.a1111_parameters(plain)))[0]
    with pytest.raises(infotext.InfotextError, match="Watermark 'yes'"):
        infotext.to_request_fields(infotext.parse(text.replace("Watermark: SDXL", "Watermark: yes")))
    image, _ = metadata.recorded_requests(marked, tmp_path / "x.json")
    assert image.watermark is True
    old = {k: v for k, v in plain.items() if k != "watermark"}  # a sidecar from before --watermark
    assert metadata.recorded_requests(old, tmp_path / "x.json")[0].watermark is False
    with pytest.raises(UsageError, match="'watermark' must be true or false"):
        metadata.recorded_requests({**marked, "watermark": "yes"}, tmp_path / "x.json")


def textured(side: int = 512) -> np.ndarray:
    """Shapes under fine grain (the benchmark's picture-like image): detail in the chroma, where
    the mark is, that PIL's default 4:2:0 JPEG subsampling averages away."""
    from PIL import ImageFilter

    base = Image.effect_mandelbrot((side, side), (-2.0, -1.25, 0.75, 1.25), 60).convert("RGB")
    grain = Image.effect_noise((side, side), 24).convert("RGB")
    return np.asarray(Image.blend(base.filter(ImageFilter.GaussianBlur(3)), grain, 0.15), dtype=np.float64) / 255


def test_spos_own_jpeg_keeps_the_mark_of_a_marked_image(tmp_path):
    from spo_cli.outputs import files

    img = Image.fromarray(marked_by_diffusers(textured()))
    marked = files.write_pair(tmp_path, "marked", "jpg", img, meta_of(ImageRequest(PROMPT, 5, watermark=True)))
    got = watermark.probe(Path(marked["image"]))
    assert got["present"] and got["bits_matching"] >= 46, got  # 33 (undecided) at PIL's default 4:2:0
    # An unmarked image is encoded as before (4:2:0: smaller files, the A1111 and PIL default).
    from PIL import JpegImagePlugin

    plain = files.write_pair(tmp_path, "plain", "jpg", img, meta_of(ImageRequest(PROMPT, 5)))
    with Image.open(plain["image"]) as a, Image.open(marked["image"]) as b:
        assert (JpegImagePlugin.get_sampling(a), JpegImagePlugin.get_sampling(b)) == (2, 0)


def test_a_jsonl_line_sets_it_and_a_small_image_is_refused_by_line():
    parsed = prompts.parse('{"prompt": "a", "watermark": true}\n{"prompt": "b"}\n{"prompt": "c", "watermark": 1}\n'
                           '{"prompt": "d", "watermark": true, "width": 128}\n', "p.jsonl")
    assert [pl.settings.get("watermark") for pl in parsed.lines] == [True, None, True]
    assert parsed.problems == ["p.jsonl:3: 'watermark' must be true or false, not 1"]
    with pytest.raises(UsageError, match=r"p.jsonl:4: 128×1024 is too small for 'watermark'"):
        prompts.tasks(parsed, ImageRequest("", 0), 1)
    tasks, _ = prompts.tasks(prompts.parse('{"prompt": "b"}\n', "q.jsonl"),
                             ImageRequest("", 0, watermark=True), 1)  # batch --watermark: every line
    assert tasks[0].request.watermark is True


@pytest.mark.parametrize("args, words", [
    (["generate", "a fox", "--watermark"], 'pip install "spo-cli[watermark]"'),
    (["batch", "-", "--watermark"], 'pip install "spo-cli[watermark]"'),
    (["serve", "--watermark"], 'pip install "spo-cli[watermark]"'),
    (["compare", "a fox", "--watermark"], 'pip install "spo-cli[watermark]"'),
    (["replay", "--infotext", "a fox\nSteps: 2, Seed: 1, Watermark: SDXL"], 'pip install "spo-cli[watermark]"'),
])
def test_without_the_extra_it_is_the_pip_command_before_anything_loads(monkeypatch, tmp_path, args, words):
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, args, input="a fox\n")
    assert r.exit_code == 2, r.output
    assert words in " ".join(r.output.split()) and "Traceback" not in r.output
    assert not (tmp_path / "outputs").exists()


def test_a_size_too_small_is_refused_before_anything_loads(tmp_path):
    r = CliRunner().invoke(app, ["generate", "a fox", "--watermark", "--width", "128", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    assert "128×1024 is too small for --watermark" in " ".join(r.output.split())
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# spo serve


CTX = api.Context(("spo",), max_images=8)
MARKS = api.Context(("spo",), max_images=8, watermark=True)


def test_openai_and_spos_own_route_take_the_field():
    assert api.openai_job({"prompt": "a fox", "watermark": True}, CTX).images[0].watermark is True
    assert api.openai_job({"prompt": "a fox"}, CTX).images[0].watermark is False
    job = api.run_job({"images": [{"prompt": "a fox", "seed": 1, "watermark": True}]}, CTX)
    assert job.images[0].watermark is True
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"prompt": "a fox", "watermark": True, "size": "128x128"}, CTX)
    assert e.value.field == "watermark" and "too small" in e.value.message
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"prompt": "a fox", "watermark": "yes"}, CTX)
    assert e.value.field == "watermark"


def test_a_server_started_with_watermark_marks_every_image_whatever_the_api():
    assert api.a1111_job({"prompt": "a fox"}, MARKS)[0].images[0].watermark is True
    assert api.openai_job({"prompt": "a fox"}, MARKS).images[0].watermark is True
    assert api.run_job({"images": [{"prompt": "a fox", "seed": 1, "watermark": True}]}, MARKS).images[0].watermark
    with pytest.raises(api.BadRequest) as e:  # what `spo generate --server` sends without --watermark
        api.run_job({"images": [{"prompt": "a fox", "seed": 1, "watermark": False}]}, MARKS)
    assert e.value.field == "images[0].watermark" and "started with --watermark" in e.value.message


def test_a_server_without_the_extra_refuses_a_marked_request(monkeypatch):
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"prompt": "a fox", "watermark": True}, CTX)
    assert e.value.field == "watermark" and 'pip install "spo-cli[watermark]"' in e.value.message
    assert api.openai_job({"prompt": "a fox"}, CTX).images[0].watermark is False  # the others are unaffected


# ---------------------------------------------------------------------------------------------
# Pixels: spo's images against diffusers' own pipeline (tiny model, 256², the smallest markable)


def spo(*args: str) -> list[dict]:
    r = CliRunner().invoke(app, [*args, "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def diffusers_pipes(hub_cache):
    """The authors' pipeline as diffusers builds it with invisible-watermark installed (marking), and the
    same parts with add_watermarker=False."""
    import warnings

    import torch
    from diffusers import StableDiffusionXLPipeline

    from spo_cli import presets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        marking = StableDiffusionXLPipeline.from_pretrained(presets.SPO_MERGED, torch_dtype=torch.float32)
    assert marking.watermark is not None  # diffusers' default once the package is installed: the trap
    plain = StableDiffusionXLPipeline.from_pipe(marking, add_watermarker=False)
    for p in (marking, plain):
        p.set_progress_bar_config(disable=True)
    return {"marked": marking, "plain": plain}


def reference(pipe, seed: int) -> np.ndarray:
    import torch

    return np.asarray(pipe(PROMPT, num_inference_steps=1, width=256, height=256, guidance_scale=1.0,
                           generator=torch.Generator("cpu").manual_seed(seed)).images[0])


@pytest.mark.slow
def test_the_default_is_diffusers_unmarked_image_watermark_its_marked_one_and_replay_makes_each(diffusers_pipes,
                                                                                                 tmp_path):
    [plain] = spo("generate", PROMPT, "--seed", "3", *MARKABLE, "--device", "cpu", "--out", str(tmp_path / "a"))
    [marked] = spo("generate", PROMPT, "--seed", "3", *MARKABLE, "--device", "cpu", "--watermark",
                   "--out", str(tmp_path / "b"))
    expected_plain, expected_marked = reference(diffusers_pipes["plain"], 3), reference(diffusers_pipes["marked"], 3)
    assert not np.array_equal(expected_plain, expected_marked)  # the mark changes pixels, so the test can fail
    assert np.array_equal(pixels(plain["image"]), expected_plain)
    assert np.array_equal(pixels(marked["image"]), expected_marked)
    assert watermark.probe(Path(marked["image"]))["present"] is True
    assert watermark.probe(Path(plain["image"]))["present"] is False
    meta = metadata.read(Path(marked["image"]))
    assert meta["watermark"] is True and "Watermark: SDXL" in metadata.a1111_parameters(meta)
    assert metadata.read(Path(plain["sidecar"]))["watermark"] is False
    # The mark is part of the recipe: replay makes it again, and --no-watermark makes the unmarked image.
    # (The infotext's `Watermark: SDXL` and a prompt file's "watermark" read into the same request field:
    # test_sidecar_and_infotext_record_it_and_replay_reads_it_back, test_a_jsonl_line_sets_it_and_a_small_image_…)
    [again] = spo("replay", marked["image"], "--device", "cpu", "--out", str(tmp_path / "r"))
    assert np.array_equal(pixels(again["image"]), expected_marked)
    [unmarked] = spo("replay", marked["image"], "--no-watermark", "--device", "cpu", "--out", str(tmp_path / "u"))
    assert np.array_equal(pixels(unmarked["image"]), expected_plain)


@pytest.mark.slow
def test_the_engine_and_pipelines_derived_from_it_never_mark_unasked(hub_cache, monkeypatch):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from spo_cli.cli import loading
    from spo_cli.cli.ui import UI
    from spo_cli.request import ModelRequest, RunOptions

    engine = loading.open_model(UI(quiet=True), ModelRequest(device="cpu"), RunOptions(), [])[0]
    assert engine.pipe.watermark is None  # as loaded: from_pretrained's default would mark
    assert StableDiffusionXLImg2ImgPipeline.from_pipe(engine.pipe).watermark is not None  # diffusers' default
    assert engine.derived("img2img").watermark is None
    assert engine.derived("inpaint").watermark is None
    # The hires fix marks the image it makes, not its first pass, which the second draws over: with the
    # Lanczos upscaler that pass is decoded, and diffusers would mark it.
    from spo_cli.request import Hires, ImageRequest

    marked_by = []

    def spied(cls):
        real = cls.__call__

        def call(pipe, *args, **kwargs):
            marked_by.append((cls.__name__, pipe.watermark is not None))
            return real(pipe, *args, **kwargs)
        return call

    request = ImageRequest("a fox", 1, steps=1, guidance=1.0, width=208, height=208,  # 208 × 1.25 → 256²
                           watermark=True, hires=Hires(1.25, "lanczos", None, 0.7))
    for cls in (type(engine.pipe), type(engine.derived("img2img"))):
        monkeypatch.setattr(cls, "__call__", spied(cls))
    engine.run([request])
    assert marked_by == [("StableDiffusionXLPipeline", False), ("StableDiffusionXLImg2ImgPipeline", True)]


def test_the_extra_is_in_pyproject_and_the_tests_install_it():
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(req.startswith("invisible-watermark") for req in extras[watermark.EXTRA])
    own = next(r for r in extras["test"] if r.startswith("spo-cli["))
    assert watermark.EXTRA in own[len("spo-cli["):-1].split(",")

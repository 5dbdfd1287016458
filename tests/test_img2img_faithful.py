"""Image to image, inpainting and the hires fix make exactly what diffusers makes, on the tiny pipelines.

The reference side is diffusers' own StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline,
made with from_pipe from the authors' pipeline (as test_faithful builds it) and called with the same
generators; the hires fix is A1111's steps composed by hand with diffusers. The other side is the real
CLI, or spo's engine where a test needs one load for many runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from spo_cli import presets
from spo_cli.cli import app
from tests.test_faithful import DIFFUSERS_SCHEDULERS, PROMPT, authors_pipeline, generate_json, pixels
from tests.test_prompt_syntax import WORDS, hand_embeddings

# One worker holds the module's pipelines (the authors', its img2img and inpaint views, spo's engine).
# early: one group of about 25 s of pipeline runs, started first so that it runs beside the rest.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("img2img"), pytest.mark.early]

CPU = ["--device", "cpu"]


def seeded(seeds) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def worst(a: list[dict], b: list[dict]) -> int:
    return max(int(np.abs(pixels(x["image"]).astype(int) - pixels(y["image"]).astype(int)).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Inputs: a 64² picture, a 70² one (not a multiple of 8), a 32² one, and masks (white = repaint)."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    paths = {}
    for name, side in (("image", 64), ("odd", 70), ("small", 32)):
        # Smooth colours (noise upscaled), so the VAE sees something like a picture.
        base = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        paths[name] = folder / f"{name}.png"
        base.resize((side, side), Image.Resampling.BICUBIC).save(paths[name])
    for name, side, box in (("mask", 64, (16, 20, 44, 52)), ("small_mask", 32, (8, 8, 24, 20))):
        mask = Image.new("L", (side, side), 0)
        mask.paste(255, box)
        paths[name] = folder / f"{name}.png"
        mask.save(paths[name])
    return paths


def rgb(path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def mask_of(path, blur: int = 0) -> Image.Image:
    with Image.open(path) as im:
        mask = im.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur else mask


@pytest.fixture(scope="module")
def merged(hub_cache):
    return authors_pipeline(presets.SPO_MERGED)


def view(pipe, kind: str, **kwargs):
    import diffusers

    cls = {"img2img": diffusers.StableDiffusionXLImg2ImgPipeline,
           "inpaint": diffusers.StableDiffusionXLInpaintPipeline}[kind]
    out = cls.from_pipe(pipe, add_watermarker=False, **kwargs)
    out.set_progress_bar_config(disable=True)
    return out


@pytest.fixture(scope="module")
def i2i(merged):
    return view(merged, "img2img")


@pytest.fixture(scope="module")
def inp(merged):
    return view(merged, "inpaint")


def run(pipe, seeds=(7,), prompt=PROMPT, *, steps: int, **kwargs) -> np.ndarray:
    images = pipe(prompt=None if prompt is None else [prompt] * len(seeds), num_inference_steps=steps,
                  guidance_scale=5.0, generator=seeded(seeds), **kwargs).images
    return np.stack([np.asarray(im) for im in images])


# -- img2img and inpaint through the CLI ----------------------------------------------------------


def test_img2img_matches_diffusers(i2i, files, out):
    [w] = generate_json(out, PROMPT, "--seed", "7", "--steps", "4", "--image", str(files["image"]),
                        "--strength", "0.6", *CPU)
    assert np.array_equal(pixels(w["image"]), run(i2i, steps=4, image=rgb(files["image"]), strength=0.6)[0])
    meta = json.loads(Path(w["sidecar"]).read_text())
    assert (meta["width"], meta["height"], meta["strength"]) == (64, 64, 0.6)


def test_an_input_off_the_8_pixel_grid_is_resized_as_diffusers_resizes_images(i2i, files, out):
    # 70² → 64² (SDXL's latents are 8 pixels; the tiny VAE's 2, so diffusers leaves 70² alone here):
    # resized as diffusers' own image processor resizes.
    [w] = generate_json(out, PROMPT, "--seed", "8", "--steps", "4", "--image", str(files["odd"]), *CPU)
    resized = i2i.image_processor.resize(rgb(files["odd"]), height=64, width=64)
    assert np.array_equal(pixels(w["image"]), run(i2i, (8,), steps=4, image=resized, strength=0.75)[0])


def test_img2img_at_a_given_size_makes_that_size(i2i, files, out):
    # The img2img pipeline has no width/height (its **kwargs swallow them): spo resizes the input first,
    # with the Lanczos filter diffusers' image processor uses.
    [w] = generate_json(out, PROMPT, "--seed", "9", "--steps", "4", "--image", str(files["image"]),
                        "--width", "48", "--height", "32", *CPU)
    got = pixels(w["image"])
    assert got.shape == (32, 48, 3)
    resized = rgb(files["image"]).resize((48, 32), Image.Resampling.LANCZOS)
    assert np.array_equal(got, run(i2i, (9,), steps=4, image=resized, strength=0.75)[0])


@pytest.mark.parametrize("blur", [0, 4])
def test_inpaint_matches_diffusers_with_the_same_blurred_mask(inp, files, out, blur):
    [w] = generate_json(out, PROMPT, "--seed", "3", "--steps", "4", "--image", str(files["image"]), "--mask",
                        str(files["mask"]), "--strength", "0.9", "--mask-blur", str(blur), *CPU)
    expected = run(inp, (3,), steps=4, image=rgb(files["image"]), mask_image=mask_of(files["mask"], blur),
                   strength=0.9, width=64, height=64)[0]
    assert np.array_equal(pixels(w["image"]), expected)
    assert json.loads(Path(w["sidecar"]).read_text())["mask_blur"] == blur


def test_mask_crop_is_diffusers_padding_mask_crop(inp, files, out):
    [w] = generate_json(out, PROMPT, "--seed", "4", "--steps", "4", "--image", str(files["image"]), "--mask",
                        str(files["mask"]), "--mask-crop", "8", *CPU)
    expected = run(inp, (4,), steps=4, image=rgb(files["image"]), mask_image=mask_of(files["mask"], 4),
                   strength=0.75, width=64, height=64, padding_mask_crop=8)[0]
    assert np.array_equal(pixels(w["image"]), expected)
    plain = run(inp, (4,), steps=4, image=rgb(files["image"]), mask_image=mask_of(files["mask"], 4),
                strength=0.75, width=64, height=64)[0]
    assert not np.array_equal(expected, plain)  # the crop is a different picture: the test can tell


def test_mask_crop_in_a_batch_is_each_seed_alone(hub_cache, files, out):
    # diffusers takes one image with padding_mask_crop: spo makes such images one per call.
    args = [PROMPT, "--steps", "4", "--image", str(files["image"]), "--mask", str(files["mask"]), "--mask-crop", "8",
            *CPU]
    two = generate_json(out / "n2", *args, "--seed", "20", "-n", "2", "--batch-size", "2")
    [alone] = generate_json(out / "n1", *args, "--seed", "21")
    assert np.array_equal(pixels(two[1]["image"]), pixels(alone["image"]))


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
def test_batch_size_does_not_change_edits_beyond_rounding(hub_cache, files, out, mode):
    args = [PROMPT, "--seed", "50", "-n", "3", "--steps", "4", "--image", str(files["image"]), *CPU]
    if mode == "inpaint":
        args += ["--mask", str(files["mask"])]
    one = generate_json(out / "b1", *args, "--batch-size", "1")
    three = generate_json(out / "b3", *args, "--batch-size", "3")
    assert [w["seed"] for w in one] == [w["seed"] for w in three] == [50, 51, 52]
    print(f"max per-channel difference, {mode} batch 1 vs 3: {worst(one, three)}/255")
    assert worst(one, three) <= 1
    assert not np.array_equal(pixels(three[0]["image"]), pixels(three[1]["image"]))


def test_a1111_prompt_syntax_reaches_img2img_as_embeddings(i2i, files, out):
    prompt = "(" + " ".join(WORDS[:3]) + ":1.4) " + " ".join(WORDS[3:6])
    [w] = generate_json(out, prompt, "--seed", "12", "--steps", "4", "--image", str(files["image"]), *CPU)
    meta = json.loads(Path(w["sidecar"]).read_text())
    assert meta["prompt_syntax"] == "a1111"
    embeds, pooled = hand_embeddings(i2i, [(" ".join(WORDS[:3]), 1.4), (" ".join(WORDS[3:6]), 1.0)])
    expected = run(i2i, (12,), None, steps=4, image=rgb(files["image"]), strength=0.75, prompt_embeds=embeds,
                   pooled_prompt_embeds=pooled)[0]
    assert np.array_equal(pixels(w["image"]), expected)


def test_spo_lora_img2img_matches_load_lora_weights_by_hand(hub_cache, files, out):
    [w] = generate_json(out, PROMPT, "--seed", "6", "--steps", "4", "--image", str(files["image"]), "--model",
                        "spo-lora", "--lora-scale", "0.8", *CPU)
    base = authors_pipeline(presets.SDXL_BASE)
    base.load_lora_weights(presets.SPO_LORA, weight_name=presets.SPO_LORA_FILE)
    expected = run(view(base, "img2img"), (6,), steps=4, image=rgb(files["image"]), strength=0.75,
                   cross_attention_kwargs={"scale": 0.8})[0]
    assert np.array_equal(pixels(w["image"]), expected)
    no_lora = run(view(authors_pipeline(presets.SDXL_BASE), "img2img"), (6,), steps=4, image=rgb(files["image"]),
                  strength=0.75)[0]
    assert not np.array_equal(expected, no_lora)


def test_fp16_img2img_matches_diffusers_in_fp16(hub_cache, files, out):
    # The loaded dtype carries over (from_pipe casts every module to float32 unless told), and the
    # fp16-fix VAE encodes the input without diffusers' float32 upcast.
    [w] = generate_json(out, PROMPT, "--seed", "2", "--steps", "2", "--strength", "1", "--image",
                        str(files["small"]), "--dtype", "fp16", *CPU)
    pipe = authors_pipeline(presets.SPO_MERGED, torch.float16, fp16_fix_vae=True)
    ref = view(pipe, "img2img", torch_dtype=torch.float16)
    assert ref.unet.dtype == torch.float16 and not ref.vae.config.force_upcast
    assert np.array_equal(pixels(w["image"]), run(ref, (2,), steps=2, image=rgb(files["small"]), strength=1.0)[0])


# -- the hires fix, against A1111's steps composed by hand ------------------------------------------


@pytest.mark.parametrize("upscaler,extra", [("latent", []), ("lanczos", ["--hires-steps", "4", "--hires-strength", "0.5"])])
def test_hires_fix_is_the_two_passes_composed_by_hand(merged, i2i, out, upscaler, extra):
    [w] = generate_json(out, PROMPT, "--seed", "5", "--width", "64", "--height", "48", "--steps", "3", "--hires",
                        "1.5", "--hires-upscaler", upscaler, *extra, *CPU)
    low = merged(PROMPT, num_inference_steps=3, width=64, height=48, guidance_scale=5.0, generator=seeded([5]),
                 output_type="latent" if upscaler == "latent" else "pil").images
    if upscaler == "latent":  # A1111's "Latent": bilinear, no antialiasing, on the latents
        f = merged.vae_scale_factor  # the tiny VAE's is 2
        big = torch.nn.functional.interpolate(low, size=(72 // f, 96 // f), mode="bilinear", antialias=False)
    else:
        big = [low[0].resize((96, 72), Image.Resampling.LANCZOS)]
    # A1111 runs all the hires steps (3, or 4) of a schedule stretched to steps / strength: 4 and 8 steps,
    # the last 3 and 4 of them, which diffusers runs as int(4 × 0.875) and int(8 × 0.5625).
    schedule, strength = (8, 0.5625) if extra else (4, 0.875)
    expected = run(i2i, (5,), steps=schedule, image=big, strength=strength)[0]  # re-seeded, as A1111 does
    got = pixels(w["image"])
    assert got.shape == (72, 96, 3)
    assert np.array_equal(got, expected)
    meta = json.loads(Path(w["sidecar"]).read_text())
    assert (meta["width"], meta["height"]) == (64, 48)  # A1111's Size: the first pass's
    assert (meta["hires"]["width"], meta["hires"]["height"], meta["hires"]["upscaler"]) == (96, 72, upscaler)


# -- every scheduler, on one engine -------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(hub_cache):
    """spo's engine on the merged checkpoint, as generate loads it."""
    from spo_cli.cli import loading
    from spo_cli.cli.ui import UI
    from spo_cli.request import ModelRequest, RunOptions

    return loading.open_model(UI(quiet=True), ModelRequest(device="cpu"), RunOptions(), [])[0]


def edit(files, mode: str, **kwargs):
    from spo_cli import inputs
    from spo_cli.request import ImageRequest

    fields = {"image": inputs.check(files["small"]), "strength": 0.75}
    if mode == "inpaint":
        fields |= {"mask": inputs.check(files["small_mask"]), "mask_blur": 2}
    return ImageRequest(PROMPT, 11, **(fields | kwargs))


def reference_scheduler(pipe, name: str, seed: int):
    import diffusers

    cls, kwargs = DIFFUSERS_SCHEDULERS.get(name, ("EulerDiscreteScheduler", {}))
    if cls == "DPMSolverSDEScheduler":
        kwargs = {**kwargs, "noise_sampler_seed": seed}
    return getattr(diffusers, cls).from_config(pipe.scheduler.config, **kwargs)


@pytest.mark.parametrize("mode", ["img2img", "inpaint"])
@pytest.mark.parametrize("name", list(presets.SCHEDULERS))
def test_every_scheduler_edits_as_diffusers_does(engine, merged, files, mode, name):
    # Enough steps that a third-order multistep update runs after img2img's cut (int(6 × 0.75) = 4).
    steps = 6 if name.startswith("dpm++3m") else 4
    [got] = engine.run([edit(files, mode, steps=steps, scheduler=name)])
    ref = view(merged, mode, scheduler=reference_scheduler(merged, name, 11))
    kwargs = {"mask_image": mask_of(files["small_mask"], 2), "width": 32, "height": 32} if mode == "inpaint" else {}
    expected = run(ref, (11,), steps=steps, image=rgb(files["small"]), strength=0.75, **kwargs)[0]
    assert np.array_equal(np.asarray(got.image), expected)


def test_a_text_to_image_after_an_edit_is_unchanged(engine, files):
    # The pipelines share the scheduler, and img2img sets its begin index: the next text to image
    # must start from the beginning again.
    from spo_cli.request import ImageRequest

    plain = ImageRequest(PROMPT, 4, steps=3, width=32, height=32, scheduler="dpm++2m")
    [before] = engine.run([plain])
    engine.run([edit(files, "img2img", steps=4, scheduler="dpm++2m")])
    [after] = engine.run([plain])
    assert np.array_equal(np.asarray(before.image), np.asarray(after.image))


@pytest.mark.parametrize("mode,name,expected", [
    ("img2img", "euler", 2), ("img2img", "heun", 2), ("inpaint", "dpm++sde", 2),
    ("hires", "euler", 3 + 3), ("hires", "heun", 3 + 3),
])
def test_progress_counts_the_steps_each_pass_runs(engine, files, mode, name, expected):
    # img2img at 0.5 runs int(4 × 0.5) = 2 of 4 steps; hires 3 steps then all 3 again (A1111's). Heun and
    # DPM++ SDE call back about twice a step.
    from spo_cli.request import Hires, ImageRequest

    if mode == "hires":
        request = ImageRequest(PROMPT, 1, steps=3, width=32, height=32, scheduler=name, hires=Hires(1.5))
    else:
        request = edit(files, mode, steps=4, strength=0.5, scheduler=name)
    assert request.denoising_steps == expected
    seen = []
    engine.run([request], on_step=lambda *a: seen.append(a))
    assert seen == [(i, expected) for i in range(1, expected + 1)]


# -- memory: offload on derived pipelines, the VAE fitted to the GPU ---------------------------------


def test_model_offloaded_edits_match_the_unhooked_pipeline(hub_cache, i2i, files):
    # accelerate's hooks live on the shared modules; on the CPU they run with the CPU as the execution
    # device, which is enough to check that the derived pipeline runs through them, pixel for pixel.
    # (Sequential offload cannot run so: accelerate fails to move its meta weights to the CPU, even for
    # diffusers' own text to image.)
    offload = "model"
    from spo_cli.engine import Engine
    from spo_cli.request import ImageRequest, RunOptions

    pipe = authors_pipeline(presets.SPO_MERGED)  # its own: the hooks stay on these modules
    getattr(pipe, f"enable_{offload}_cpu_offload")(device="cpu")
    engine = Engine(pipe, "cpu", "float32", options=RunOptions(offload=offload))
    [got] = engine.run([edit(files, "img2img", steps=4, strength=0.5)])
    expected = run(i2i, (11,), steps=4, image=rgb(files["small"]), strength=0.5)[0]
    assert np.array_equal(np.asarray(got.image), expected)
    derived = engine.derived("img2img")
    # It knows it offloads: its calls end with every module back in host memory.
    assert derived._offload_device == torch.device("cpu", 0) and len(derived._all_hooks) == 4
    [again] = engine.run([ImageRequest(PROMPT, 4, steps=2, width=32, height=32)])  # text to image still runs
    assert again.image.size == (32, 32)


def test_a_vae_pass_that_would_not_fit_is_tiled_for_that_call_and_recorded(hub_cache, files, out, monkeypatch):
    # No GPU here: the free memory is what the policy reads, so it is made tiny; the tiny VAE's tiles
    # are 64 px, so the 96 px second pass of a hires fix is tiled and its 64 px first pass is not.
    from spo_cli.engine import Engine

    seen = []
    real = Engine._vae_fits

    def spy(self, w, h, n):
        seen.append((w, h))
        return real(self, w, h, n)

    monkeypatch.setattr(Engine, "_available_memory", lambda self: 1)
    monkeypatch.setattr(Engine, "_vae_fits", spy)
    args = [PROMPT, "--seed", "5", "--width", "64", "--height", "64", "--steps", "3", "--hires", "1.5", *CPU]
    r = CliRunner().invoke(app, ["generate", *args, "--out", str(out / "t"), "--json"])
    assert r.exit_code == 0, r.output
    [tiled] = json.loads(r.stdout)
    # said once, above the progress (not in quiet mode), as well as recorded
    assert " ".join(r.stderr.split()).count("so VAE tiling was turned on for it (recorded in the sidecar") == 1
    meta = json.loads(Path(tiled["sidecar"]).read_text())
    assert seen == [(64, 64), (96, 96)]
    assert meta["run_options"]["vae_tiling"] is True and meta["run_options"]["vae_auto"]["vae_tiling"] is True
    monkeypatch.undo()
    [plain] = generate_json(out / "p", *args)
    plain_meta = json.loads(Path(plain["sidecar"]).read_text())
    assert plain_meta["run_options"]["vae_tiling"] is False and "vae_auto" not in plain_meta["run_options"]
    assert not np.array_equal(pixels(tiled["image"]), pixels(plain["image"]))  # tiling shows in the pixels


def test_off_cuda_the_vae_policy_reads_no_memory_and_leaves_the_vae_alone(engine, files, monkeypatch):
    from spo_cli.request import Hires, ImageRequest

    assert engine._available_memory() is None
    engine.run([edit(files, "img2img", steps=4)])
    assert not engine.pipe.vae.use_tiling and not engine.pipe.vae.use_slicing
    assert engine.call_facts({"run_options": {"vae_tiling": False}}) == {"run_options": {"vae_tiling": False}}
    # Turned on for one call, off again after it.
    monkeypatch.setattr(engine, "_available_memory", lambda: 1)
    engine.run([ImageRequest(PROMPT, 1, steps=3, width=64, height=64, hires=Hires(1.5))] * 2)
    assert engine.call_facts({})["run_options"] == {
        "vae_slicing": True, "vae_tiling": True, "vae_auto": engine._vae_auto}
    assert not engine.pipe.vae.use_tiling and not engine.pipe.vae.use_slicing


def test_derived_pipelines_share_the_modules_and_add_no_watermark(engine):
    # The watermarker skips images under 256 px, so the tiny pipelines' pixels cannot show it.
    for mode in ("img2img", "inpaint"):
        derived = engine.derived(mode)
        assert derived.watermark is None and derived is engine.derived(mode)
        assert all(getattr(derived, name) is getattr(engine.pipe, name)
                   for name in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer"))

"""`spo generate` makes exactly what the authors' diffusers code makes, on the tiny pipelines.

The reference side of every comparison is plain diffusers called the way the SPO authors' inference
script calls it, loading by repo id from the (offline) HF cache; the other side is the real CLI.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from spo_cli import presets
from spo_cli.cli import app

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier

TINY = ["--width", "64", "--height", "64", "--steps", "3"]
# float16 and bfloat16 on a CPU are many times slower than float32 (a 64 px float16 image takes seconds):
# tests in those dtypes run at a size the tiny models still take, on the same code path.
SMALL = ["--width", "16", "--height", "16", "--steps", "2"]
PROMPT = "a child and a penguin sitting on the moon"
# The sampler tests (twenty schedulers, each against diffusers): a sampler acts on every latent alike, and
# 32² (16² latents) runs at less than half the cost of 64². The whole-pipeline tests stay at 64².
SAMPLER = ["--width", "32", "--height", "32"]


def spo(*args: str):
    result = CliRunner().invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result


def generate_json(out: Path, *args: str) -> list[dict]:
    return json.loads(spo("generate", *args, "--out", str(out), "--json", "--quiet").stdout)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def authors_pipeline(repo: str, dtype=torch.float32, fp16_fix_vae: bool = False):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline

    kwargs = {}
    with warnings.catch_warnings():  # diffusers' FutureWarning for torch_dtype, the script's spelling
        warnings.simplefilter("ignore", FutureWarning)
        if fp16_fix_vae:
            kwargs["vae"] = AutoencoderKL.from_pretrained(presets.FP16_FIX_VAE, torch_dtype=dtype)
        pipe = StableDiffusionXLPipeline.from_pretrained(repo, torch_dtype=dtype, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipe, seed: int, prompt: str = PROMPT, *, size: int = 64, steps: int = 3, **kwargs) -> np.ndarray:
    image = pipe(
        prompt, num_inference_steps=steps, width=size, height=size, guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(seed), **kwargs,
    ).images[0]
    return np.asarray(image)


@pytest.fixture(scope="module")
def merged_pipeline(hub_cache):
    """The authors' pipeline for the merged checkpoint, loaded once per worker: tests that change its
    scheduler do so on a pipeline of their own that shares these components (`from_pipe`)."""
    return authors_pipeline(presets.SPO_MERGED)


def test_merged_spo_matches_authors_code_pixel_for_pixel(merged_pipeline, out):
    [written] = generate_json(out, PROMPT, "--seed", "42", *TINY, "--device", "cpu")
    expected = reference(merged_pipeline, 42)
    assert np.array_equal(pixels(written["image"]), expected)


def test_fp16_with_fp16_fix_vae_matches_authors_code(hub_cache, out):
    # The authors' script exactly: float16, VAE swapped for madebyollin/sdxl-vae-fp16-fix.
    [written] = generate_json(out, PROMPT, "--seed", "7", *SMALL, "--device", "cpu", "--dtype", "fp16")
    meta = json.loads(Path(written["sidecar"]).read_text())
    assert meta["dtype"] == "float16"
    assert meta["vae"]["id"] == presets.FP16_FIX_VAE and meta["vae"]["commit"] == hub_cache[presets.FP16_FIX_VAE]
    expected = reference(authors_pipeline(presets.SPO_MERGED, torch.float16, fp16_fix_vae=True), 7, size=16, steps=2)
    assert np.array_equal(pixels(written["image"]), expected)


def test_spo_lora_matches_load_lora_weights_by_hand(hub_cache, out):
    from diffusers import DPMSolverMultistepScheduler

    [written] = generate_json(
        out, PROMPT, "--seed", "3", *TINY, "--device", "cpu", "--model", "spo-lora",
        "--lora-scale", "0.8", "--scheduler", "dpm++2m-karras",
    )
    pipe = authors_pipeline(presets.SDXL_BASE)
    pipe.load_lora_weights(presets.SPO_LORA, weight_name=presets.SPO_LORA_FILE)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, use_karras_sigmas=True)
    expected = reference(pipe, 3, cross_attention_kwargs={"scale": 0.8})
    assert np.array_equal(pixels(written["image"]), expected)
    meta = json.loads(Path(written["sidecar"]).read_text())
    assert meta["lora"]["scale"] == 0.8 and meta["lora"]["file"] == presets.SPO_LORA_FILE
    assert meta["lora"]["commit"] == hub_cache[presets.SPO_LORA]
    assert meta["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    assert meta["scheduler"]["config"]["use_karras_sigmas"] is True


def test_lora_scale_zero_is_the_base_model(hub_cache, out):
    [lora0] = generate_json(out / "a", PROMPT, "--seed", "5", *TINY, "--device", "cpu", "--model", "spo-lora",
                            "--lora-scale", "0")
    [base] = generate_json(out / "b", PROMPT, "--seed", "5", *TINY, "--device", "cpu", "--model", "base")
    [lora1] = generate_json(out / "c", PROMPT, "--seed", "5", *TINY, "--device", "cpu", "--model", "spo-lora")
    assert np.array_equal(pixels(lora0["image"]), pixels(base["image"]))
    assert not np.array_equal(pixels(lora1["image"]), pixels(base["image"]))


def test_same_command_twice_gives_identical_pixels_and_distinct_files(hub_cache, out):
    [a] = generate_json(out, PROMPT, "--seed", "11", *TINY, "--device", "cpu")
    [b] = generate_json(out, PROMPT, "--seed", "11", *TINY, "--device", "cpu")
    assert a["image"] != b["image"]  # never overwrite
    assert np.array_equal(pixels(a["image"]), pixels(b["image"]))


def test_batch_size_does_not_change_images_beyond_rounding(hub_cache, out):
    one = generate_json(out / "b1", PROMPT, "--seed", "100", "-n", "4", "--batch-size", "1", *TINY, "--device", "cpu")
    four = generate_json(out / "b4", PROMPT, "--seed", "100", "-n", "4", "--batch-size", "4", *TINY, "--device", "cpu")
    assert [w["seed"] for w in one] == [w["seed"] for w in four] == [100, 101, 102, 103]
    worst = max(
        int(np.abs(pixels(a["image"]).astype(int) - pixels(b["image"]).astype(int)).max()) for a, b in zip(one, four)
    )
    # Batched kernels round differently; one generator per image keeps the noise identical.
    print(f"max per-channel difference, batch 1 vs 4: {worst}/255")
    assert worst <= 1
    metas = [json.loads(Path(w["sidecar"]).read_text()) for w in four]
    assert {m["batch_size"] for m in metas} == {4}


@pytest.mark.parametrize("name", ["dpm++sde-karras", "dpm++2m-sde"])
def test_sde_noise_follows_each_images_seed_whatever_the_batch(hub_cache, out, name):
    # DPM++ SDE's Brownian noise has seeds of its own (one tree per image), DPM++ 2M SDE's comes from the
    # generators: either way an image is its seed's, alone or in a batch, and different seeds differ.
    args = [PROMPT, "--seed", "30", "-n", "2", *TINY, *SAMPLER, "--device", "cpu", "--scheduler", name]
    one = generate_json(out / "b1", *args, "--batch-size", "1")
    two = generate_json(out / "b2", *args, "--batch-size", "2")
    alone = generate_json(out / "n1", PROMPT, "--seed", "31", *TINY, *SAMPLER, "--device", "cpu", "--scheduler", name)
    for a, b in zip(one, two):
        assert int(np.abs(pixels(a["image"]).astype(int) - pixels(b["image"]).astype(int)).max()) <= 1
    assert np.array_equal(pixels(one[1]["image"]), pixels(alone[0]["image"]))
    assert not np.array_equal(pixels(one[0]["image"]), pixels(one[1]["image"]))


@pytest.fixture(scope="module")
def cpu_engine(hub_cache):
    """spo's own engine on the merged checkpoint, as generate loads it (no test here builds
    dpm++sde-karras on it but the one that blocks torchsde)."""
    from spo_cli.cli import loading
    from spo_cli.cli.ui import UI
    from spo_cli.request import ModelRequest, RunOptions

    return loading.open_model(UI(quiet=True), ModelRequest(device="cpu"), RunOptions(), [])[0]


def test_a_loaded_engine_without_torchsde_refuses_dpm_sde_with_the_extra(cpu_engine, monkeypatch):
    # spo serve's path: requests reach the engine with no command-line precheck before them.
    import sys

    from spo_cli.errors import UsageError

    engine = cpu_engine
    monkeypatch.setitem(sys.modules, "torchsde", None)  # how Python blocks an import
    with pytest.raises(UsageError) as e:
        engine.scheduler("dpm++sde-karras")
    assert "needs torchsde" in str(e.value) and 'pip install "spo-cli[sde]"' in e.value.hint
    assert engine.scheduler("dpm++2m-sde") is engine.scheduler("dpm++2m-sde")  # the others are unaffected


@pytest.mark.parametrize("name", ["heun", "dpm++sde", "euler"])
def test_progress_counts_the_steps_asked_for_with_second_order_samplers(cpu_engine, name):
    # Heun and DPM++ SDE call the model twice a step: the callback comes 5 times for 3 steps.
    from spo_cli.request import ImageRequest

    seen = []
    cpu_engine.run([ImageRequest(PROMPT, 1, steps=3, width=64, height=64, scheduler=name)], on_step=lambda *a: seen.append(a))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_images_in_one_call_differ_by_seed(hub_cache, out):
    written = generate_json(out, PROMPT, "--seed", "1", "-n", "2", "--batch-size", "2", *TINY, "--device", "cpu")
    assert not np.array_equal(pixels(written[0]["image"]), pixels(written[1]["image"]))


@pytest.mark.parametrize("source", ["png", "json"])
def test_replay_reproduces_pixels_exactly(hub_cache, out, source):
    [orig] = generate_json(out, PROMPT, "--seed", "21", *TINY, "--device", "cpu", "--negative", "blurry, dark",
                           "--scheduler", "euler-a", "--guidance", "6.5")
    path = orig["image"] if source == "png" else orig["sidecar"]
    [again] = json.loads(spo("replay", path, "--out", str(out / "replayed"), "--json", "--quiet").stdout)
    assert np.array_equal(pixels(again["image"]), pixels(orig["image"]))
    meta = json.loads(Path(again["sidecar"]).read_text())
    assert meta["negative_prompt"] == "blurry, dark" and meta["guidance"] == 6.5
    assert meta["scheduler"]["name"] == "euler-a"
    assert meta["model"]["revision"] == hub_cache[presets.SPO_MERGED]  # pinned to the recorded commit


def test_replay_overrides_recorded_settings(hub_cache, out):
    [orig] = generate_json(out, PROMPT, "--seed", "21", *TINY, "--device", "cpu")
    [again] = json.loads(spo("replay", orig["image"], "--steps", "4", "--seed", "22", "--out", str(out),
                             "--json", "--quiet").stdout)
    meta = json.loads(Path(again["sidecar"]).read_text())
    assert (meta["steps"], meta["seed"], meta["prompt"]) == (4, 22, PROMPT)
    assert not np.array_equal(pixels(again["image"]), pixels(orig["image"]))


# diffusers' documented mapping of A1111 sampler names to its schedulers (docs: "Schedulers" → the
# A1111/k-diffusion table, and "Noise schedules and schedule types": Karras is use_karras_sigmas,
# Exponential is linspace spacing with use_exponential_sigmas, SGM Uniform is trailing spacing; Euler's
# and DPM++ SDE's Karras also take linspace spacing, for A1111's whole sigma range), written
# out here so the test does not check presets.py against itself. DPM++ 3M SDE is DPM++ 2M SDE at
# solver_order 3 (DPMSolverMultistepScheduler's docs).
_EXP = {"timestep_spacing": "linspace", "use_exponential_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
DIFFUSERS_SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-karras": ("EulerDiscreteScheduler", {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
    "euler-exponential": ("EulerDiscreteScheduler", _EXP),
    "euler-sgm-uniform": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++2m-exponential": ("DPMSolverMultistepScheduler", _EXP),
    "dpm++2m-sgm-uniform": ("DPMSolverMultistepScheduler", {"timestep_spacing": "trailing"}),
    "dpm++2m-sde": ("DPMSolverMultistepScheduler", _SDE),
    "dpm++2m-sde-karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True,
                                                           "algorithm_type": "sde-dpmsolver++"}),
    "dpm++2m-sde-exponential": ("DPMSolverMultistepScheduler", {**_SDE, **_EXP}),
    "dpm++3m-sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
    "dpm++3m-sde-karras": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3, "use_karras_sigmas": True}),
    "dpm++3m-sde-exponential": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3, **_EXP}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Not the table's DPMSolverSinglestepScheduler, a deterministic solver: diffusers' port of the
    # stochastic k-diffusion sampler A1111 runs (DPMSolverSDEScheduler's docs), its noise seeded per image.
    "dpm++sde": ("DPMSolverSDEScheduler", {}),
    "dpm++sde-karras": ("DPMSolverSDEScheduler", {"timestep_spacing": "linspace", "use_karras_sigmas": True}),
}
# Enough steps for a third-order multistep update to run (the last two fall back to lower orders).
_STEPS = {name: 5 for name in DIFFUSERS_SCHEDULERS if name.startswith("dpm++3m")}


def test_the_scheduler_table_covers_every_choice():
    assert set(DIFFUSERS_SCHEDULERS) == set(presets.SCHEDULERS) - {"default"}


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in a sidecar: not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", list(DIFFUSERS_SCHEDULERS))
def test_every_scheduler_matches_diffusers(merged_pipeline, out, name):
    import diffusers

    steps = _STEPS.get(name, 3)
    [written] = generate_json(out, PROMPT, "--seed", "9", *TINY, *SAMPLER, "--steps", str(steps), "--device", "cpu",
                              "--scheduler", name)
    cls, kwargs = DIFFUSERS_SCHEDULERS[name]
    if cls == "DPMSolverSDEScheduler":
        kwargs = {**kwargs, "noise_sampler_seed": 9}  # the seed, as spo seeds the Brownian noise
    scheduler = getattr(diffusers, cls).from_config(merged_pipeline.scheduler.config, **kwargs)
    pipe = diffusers.StableDiffusionXLPipeline.from_pipe(merged_pipeline, scheduler=scheduler)
    assert type(pipe.scheduler).__name__ == cls and type(merged_pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert np.array_equal(pixels(written["image"]), reference(pipe, 9, size=32, steps=steps))
    meta = _strict_json(Path(written["sidecar"]).read_text())  # DPM's -inf config value included
    assert meta["scheduler"]["class"] == cls


def test_a1111_sampler_names_make_the_same_images_as_spos(hub_cache, out):
    [ours] = generate_json(out / "spo", PROMPT, "--seed", "5", *TINY, *SAMPLER, "--device", "cpu", "--scheduler",
                           "dpm++2m-sde-karras")
    [theirs] = generate_json(out / "a1111", PROMPT, "--seed", "5", *TINY, *SAMPLER, "--device", "cpu", "--scheduler",
                             "dpm++ 2m sde KARRAS")
    [again] = generate_json(out / "again", PROMPT, "--seed", "5", *TINY, *SAMPLER, "--device", "cpu", "--scheduler",
                            "DPM++ 2M SDE Karras")
    # The SDE noise comes from the seed's generator: the same seed, the same image.
    assert np.array_equal(pixels(ours["image"]), pixels(theirs["image"]))
    assert np.array_equal(pixels(again["image"]), pixels(theirs["image"]))
    meta = json.loads(Path(theirs["sidecar"]).read_text())
    assert (meta["scheduler"]["name"], meta["scheduler"]["a1111"]) == ("dpm++2m-sde-karras", "DPM++ 2M SDE Karras")


@pytest.mark.parametrize("name", ["euler-sgm-uniform", "dpm++2m-sde"])
def test_an_a1111_text_spo_wrote_replays_to_the_same_image(hub_cache, out, name):
    # euler-sgm-uniform is written with its Schedule type apart, dpm++2m-sde with `Schedule type: Uniform`.
    [written] = generate_json(out / "g", PROMPT, "--seed", "3", *TINY, *SAMPLER, "--device", "cpu", "--scheduler", name)
    with Image.open(written["image"]) as im:
        text = im.info["parameters"]
    text = ", ".join(p for p in text.split(", ") if not p.startswith("Version: "))  # as A1111 reads it
    assert "Schedule type: " in text
    [again] = json.loads(spo("replay", "--infotext", text, "--device", "cpu", "--out", str(out / "r"), "--json",
                             "--quiet").stdout)
    assert json.loads(Path(again["sidecar"]).read_text())["scheduler"]["name"] == name
    assert np.array_equal(pixels(again["image"]), pixels(written["image"]))


def test_scheduler_replaces_a_sampler_spo_lacks_in_an_infotext(hub_cache, out):
    text = f"{PROMPT}\nSteps: 3, Sampler: DPM++ 2S a, Schedule type: Karras, CFG scale: 5, Seed: 8, Size: 32x32"
    [again] = json.loads(spo("replay", "--infotext", text, "--scheduler", "Euler a", "--device", "cpu",
                             "--out", str(out / "r"), "--json", "--quiet").stdout)
    [ref] = generate_json(out / "g", PROMPT, "--seed", "8", *TINY, *SAMPLER, "--device", "cpu",
                          "--scheduler", "euler-a")
    assert json.loads(Path(again["sidecar"]).read_text())["scheduler"]["name"] == "euler-a"
    assert np.array_equal(pixels(again["image"]), pixels(ref["image"]))


def test_replay_changes_model_lora_dtype_and_negative(hub_cache, out):
    [orig] = generate_json(out / "o", PROMPT, "--seed", "4", *SMALL, "--device", "cpu", "--model", "spo-lora",
                           "--lora-scale", "0.5", "--negative", "blurry")

    def replay(*args):
        [w] = json.loads(spo("replay", orig["sidecar"], *args, "--out", str(out / "r"), "--json", "--quiet").stdout)
        return w, json.loads(Path(w["sidecar"]).read_text())

    w, meta = replay("--lora-scale", "1")
    [ref] = generate_json(out / "g1", PROMPT, "--seed", "4", *SMALL, "--device", "cpu", "--model", "spo-lora",
                          "--negative", "blurry")
    assert meta["lora"]["scale"] == 1.0 and np.array_equal(pixels(w["image"]), pixels(ref["image"]))

    w, meta = replay("--model", "base")  # another model: the recorded LoRA belonged to the old one
    [ref] = generate_json(out / "g2", PROMPT, "--seed", "4", *SMALL, "--device", "cpu", "--model", "base",
                          "--negative", "blurry")
    assert meta["lora"] is None and meta["model_request"]["model"] == "base"
    assert np.array_equal(pixels(w["image"]), pixels(ref["image"]))

    w, meta = replay("--negative", "")  # "" clears the recorded negative: back to none
    [ref] = generate_json(out / "g3", PROMPT, "--seed", "4", *SMALL, "--device", "cpu", "--model", "spo-lora",
                          "--lora-scale", "0.5")
    assert meta["negative_prompt"] is None and np.array_equal(pixels(w["image"]), pixels(ref["image"]))

    _, meta = replay("--dtype", "bf16")
    assert meta["dtype"] == "bfloat16"

    r = CliRunner().invoke(app, ["replay", orig["sidecar"], "--model", "spo", "--lora-scale", "0.3",
                                 "--out", str(out / "x")])
    assert r.exit_code == 2 and "has nothing to act on" in " ".join(r.stderr.split())

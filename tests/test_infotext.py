"""Unit tests for spo_cli.infotext: A1111 "parameters" text → spo request fields.

Layout rules are A1111's `parse_generation_parameters` (modules/infotext_utils.py); sampler names
and their default schedules are A1111's (sd_samplers_kdiffusion.py, sd_schedulers.py). Pure and fast.
"""

from __future__ import annotations

import random
import re

import pytest

from spo_cli import infotext, presets, validate
from spo_cli.infotext import (Infotext, InfotextError, UnknownSampler, parse, sampler_fields, scheduler_name,
                              to_request_fields)
from spo_cli.outputs.metadata import a1111_parameters

# The example in A1111's parse_generation_parameters docstring.
A1111_DOC = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""

# As A1111 1.10 with ADetailer, hires fix and a LoRA writes it (shape of a Civitai download).
CIVITAI = """masterpiece, best quality, 1girl, (red scarf:1.2), snowy street,
night, city lights <lora:detail_tweaker:0.6>
Negative prompt: (worst quality, low quality:1.4), blurry,
watermark
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 832x1216, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, \
Denoising strength: 0.4, Clip skip: 2, ADetailer model: face_yolov8n.pt, ADetailer confidence: 0.3, \
ADetailer version: 24.9.0, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, \
Lora hashes: "detail_tweaker: 1b9f2b4a2a4e, other: 0123, third: 4567", Emphasis: No norm, Version: v1.10.1"""


def fields(text: str) -> dict:
    return to_request_fields(parse(text))[0]


def ignored(text: str) -> list[str]:
    return to_request_fields(parse(text))[1]


def test_a1111_docstring_example():
    info = parse(A1111_DOC)
    assert info.prompt.startswith("girl with an artist's beret") and info.prompt.endswith("intricate")
    assert info.negative.startswith("ugly, fat") and info.negative.endswith("messy drawing")
    assert info.params == {"Steps": "20", "Sampler": "Euler a", "CFG scale": "7", "Seed": "965400086",
                           "Size": "512x512", "Model hash": "45dee52b"}
    got, left = to_request_fields(info)
    assert got == {"prompt": info.prompt, "negative": info.negative, "steps": 20, "scheduler": "euler-a",
                   "guidance": 7.0, "seed": 965400086, "width": 512, "height": 512}
    assert left == ["Model hash"]


def test_civitai_shaped_text_with_extensions():
    info = parse(CIVITAI)
    assert info.prompt == "masterpiece, best quality, 1girl, (red scarf:1.2), snowy street,\n" \
                          "night, city lights <lora:detail_tweaker:0.6>"
    assert info.negative == "(worst quality, low quality:1.4), blurry,\nwatermark"
    assert info.params["Lora hashes"] == "detail_tweaker: 1b9f2b4a2a4e, other: 0123, third: 4567"
    assert info.params["Hires upscaler"] == "Latent"
    got, left = to_request_fields(info)
    assert got["scheduler"] == "dpm++2m-karras"
    assert (got["steps"], got["guidance"], got["seed"], got["width"], got["height"]) == (28, 6.5, 1234567890, 832, 1216)
    assert got["emphasis"] == "none-norm"
    # the hires fix: Denoising strength is its second pass's, and no img2img strength
    assert (got["hires"], got["hires_steps"], got["hires_upscaler"], got["hires_strength"]) == (2.0, 10, "latent", 0.4)
    assert "strength" not in got
    assert left == ["Model hash", "Model", "VAE hash", "VAE", "Clip skip", "ADetailer model",
                    "ADetailer confidence", "ADetailer version", "Lora hashes", "Version"]


def test_no_negative_prompt():
    got = fields("a cat on a mat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 1024x1024")
    assert got["prompt"] == "a cat on a mat" and got["negative"] is None


def test_empty_negative_prompt_is_none():
    assert fields("a cat\nNegative prompt: \nSteps: 20, Sampler: Euler, CFG scale: 7")["negative"] is None


def test_multi_line_prompt_and_negative_lines_are_stripped_as_a1111_does():
    info = parse("  first line  \n\tsecond, line\n\nNegative prompt:   bad  \n  worse\r\n"
                 "Steps: 20, Sampler: Euler, CFG scale: 7")
    assert info.prompt == "first line\nsecond, line\n"
    assert info.negative == "bad\nworse"


@pytest.mark.parametrize("newline", ["\r\n", "\r"])
def test_windows_and_old_mac_line_ends(newline):
    info = parse(newline.join(["a cat", "Negative prompt: dog", "Steps: 20, Sampler: Euler, CFG scale: 7",
                               "Template: a cat"]))
    assert (info.prompt, info.negative, info.params["CFG scale"]) == ("a cat", "dog", "7")


def test_quoted_values_hold_commas_colons_and_escapes():
    info = parse('a cat\nSteps: 20, Lora hashes: "a: 1, b: 2", Note: "say \\"hi\\", then go", Seed: 3')
    assert info.params == {"Steps": "20", "Lora hashes": "a: 1, b: 2", "Note": 'say "hi", then go', "Seed": "3"}


def test_a_bad_quoted_value_is_kept_as_written():
    assert parse('a\nSteps: 20, Note: "bad \\q escape", Seed: 3').params["Note"] == '"bad \\q escape"'


def test_a_last_line_with_fewer_than_3_pairs_is_prompt_text():
    info = parse("a cat\nStyle: noir, Mood: dark")
    assert info.prompt == "a cat\nStyle: noir, Mood: dark" and info.params == {}
    assert fields("just a prompt") == {"prompt": "just a prompt", "negative": None}


def test_lines_after_the_parameters_line_are_tolerated_and_reported():
    text = ("a {red|blue} cat\nNegative prompt: dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5\n"
            "Template: a {red|blue} cat\nNegative Template: dog")
    info = parse(text)
    assert (info.prompt, info.negative) == ("a {red|blue} cat", "dog")
    assert info.extra == ("Template: a {red|blue} cat", "Negative Template: dog")
    got, left = to_request_fields(info)
    assert got["seed"] == 5 and got["scheduler"] == "euler-a"
    assert left == ["Template", "Negative Template"]


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "Steps: 20, Sampler: Euler, CFG scale: 7",
                                  "Negative prompt: ugly\nSteps: 20, Sampler: Euler, CFG scale: 7"])
def test_no_prompt_is_refused(text):
    with pytest.raises(InfotextError, match="no prompt") as e:
        parse(text)
    assert isinstance(e.value, ValueError)


# ---------------------------------------------------------------------------------------------
# Samplers

PARAMS = "a cat\nSteps: 20, {}, CFG scale: 7, Seed: 1, Size: 1024x1024"


@pytest.mark.parametrize(("sampler", "expected"), [
    ("Sampler: Euler", "euler"),
    ("Sampler: Euler a", "euler-a"),
    ("Sampler: DDIM", "ddim"),
    ("Sampler: UniPC", "unipc"),
    ("Sampler: DPM++ 2M", "dpm++2m-karras"),  # no Schedule type is Automatic: Karras for DPM++ 2M, as A1111 1.9 on
    ("Sampler: DPM++ 2M, Version: spo-cli 0.3.0", "dpm++2m"),  # spo's texts before it wrote Schedule type
    ("Sampler: DPM++ 2M, Version: v1.10.1", "dpm++2m-karras"),
    ("Sampler: DPM++ 2M Karras", "dpm++2m-karras"),
    ("Sampler: DPM++ 2M SDE Karras", "dpm++2m-sde-karras"),
    ("Sampler: DPM++ 2M, Schedule type: Karras", "dpm++2m-karras"),
    ("Sampler: DPM++ 2M SDE, Schedule type: Karras", "dpm++2m-sde-karras"),
    ("Sampler: DPM++ 2M, Schedule type: Automatic", "dpm++2m-karras"),  # 1.9 on: DPM++ 2M's default is Karras
    ("Sampler: DPM++ 2M, Schedule type: Uniform", "dpm++2m"),
    ("Sampler: Euler a, Schedule type: Automatic", "euler-a"),
    ("Sampler: Euler, Schedule type: Uniform", "euler"),
    ("Sampler: DDIM, Schedule type: Karras", "ddim"),  # timestep samplers ignore the schedule type
    ("Sampler: UniPC, Schedule type: Exponential", "unipc"),
    ("Sampler: dpm++ 2m karras", "dpm++2m-karras"),
    ("Sampler: Euler, Schedule type: Karras", "euler-karras"),
    ("Sampler: Euler Karras", "euler-karras"),
    ("Sampler: Euler, Schedule type: Exponential", "euler-exponential"),
    ("Sampler: Euler, Schedule type: SGM Uniform", "euler-sgm-uniform"),
    ("Sampler: Euler, Schedule type: sgm_uniform", "euler-sgm-uniform"),  # A1111's name for it, as its API takes
    ("Sampler: Euler SGMUniform", "euler-sgm-uniform"),  # and its alias
    ("Sampler: Euler SGM Uniform", "euler-sgm-uniform"),  # longest schedule first, unlike A1111
    ("Sampler: DPM++ 2M, Schedule type: Exponential", "dpm++2m-exponential"),
    ("Sampler: DPM++ 2M, Schedule type: SGM Uniform", "dpm++2m-sgm-uniform"),
    ("Sampler: DPM++ 2M SDE", "dpm++2m-sde-exponential"),  # Automatic: Exponential for the SDE samplers
    ("Sampler: DPM++ 2M SDE, Schedule type: Uniform", "dpm++2m-sde"),
    ("Sampler: DPM++ 2M SDE Exponential", "dpm++2m-sde-exponential"),
    ("Sampler: DPM++ 2M SDE, Version: spo-cli 0.3.0", "dpm++2m-sde"),
    ("Sampler: DPM++ 3M SDE", "dpm++3m-sde-exponential"),
    ("Sampler: DPM++ 3M SDE, Schedule type: Uniform", "dpm++3m-sde"),
    ("Sampler: DPM++ 3M SDE Karras", "dpm++3m-sde-karras"),
    ("Sampler: DPM++ 3M SDE, Schedule type: Karras", "dpm++3m-sde-karras"),
    ("Sampler: Heun", "heun"),
    ("Sampler: Heun, Schedule type: Automatic", "heun"),
    ("Sampler: DPM++ SDE Karras", "dpm++sde-karras"),
    ("Sampler: DPM++ SDE", "dpm++sde-karras"),  # Automatic: Karras
    ("Sampler: DPM++ SDE, Schedule type: Uniform", "dpm++sde"),
    ("Sampler: EulerDiscreteScheduler", "default"),  # spo's own text for a checkpoint default
    ("Sampler: KDPM2DiscreteScheduler", "default"),
])
def test_samplers_map_to_spo_schedulers(sampler, expected):
    assert fields(PARAMS.format(sampler))["scheduler"] == expected


@pytest.mark.parametrize(("sampler", "named"), [
    ("Sampler: LCM", "'LCM'"),
    ("Sampler: DPM++ 2S a Karras", "'DPM++ 2S a Karras'"),
    ("Sampler: DPM++ SDE, Schedule type: Exponential", "'DPM++ SDE, Schedule type: Exponential'"),
    ("Sampler: DPM++ 2M SDE Heun", "(its Automatic schedule is Exponential)"),
    ("Sampler: Euler a, Schedule type: Karras", "'Euler a, Schedule type: Karras'"),
    ("Sampler: Heun, Schedule type: Karras", "'Heun, Schedule type: Karras'"),
    ("Sampler: DPM++ 2M SDE, Schedule type: SGM Uniform", "'DPM++ 2M SDE, Schedule type: SGM Uniform'"),
    ("Sampler: Euler, Schedule type: Polyexponential", "'Euler, Schedule type: Polyexponential'"),
])
def test_samplers_spo_lacks_are_refused_with_the_list(sampler, named):
    with pytest.raises(UnknownSampler) as e:
        fields(PARAMS.format(sampler))
    message = str(e.value)
    assert named in message
    for choice in presets.SCHEDULERS.values():
        assert choice.a1111 in message


def test_unknown_schedule_type_is_refused():
    with pytest.raises(InfotextError, match="Schedule type 'Sideways'"):
        scheduler_name("Euler", "Sideways")


def test_schedule_type_without_sampler_is_ignored():
    got, left = to_request_fields(parse("a cat\nSteps: 20, Schedule type: Karras, Seed: 1"))
    assert "scheduler" not in got and left == ["Schedule type"]


def test_every_spo_scheduler_maps_back_from_its_a1111_name_and_the_fields_spo_writes():
    for choice in presets.SCHEDULERS.values():
        if choice.a1111:
            written = sampler_fields(choice.a1111)
            assert scheduler_name(written["Sampler"], written.get("Schedule type")) == choice.name
            assert scheduler_name(choice.a1111, name_only=True) == choice.name


@pytest.mark.parametrize(("sampler", "schedule", "written"), [
    ("DPM++ 2M", "", {"Schedule type": "Uniform"}),  # A1111's Automatic for it is Karras: say it is not
    ("DPM++ 2M", "Karras", {}),
    ("DPM++ 2M", "Exponential", {"Schedule type": "Exponential"}),
    ("DPM++ 2M Karras", "", {}),  # the name carries it
    ("DPM++ 2M SDE Karras", "", {}),
    ("DPM++ 2M SDE", "", {"Schedule type": "Uniform"}),  # Automatic is Exponential for it
    ("DPM++ 3M SDE Exponential", "", {}),
    ("Euler", "", {}), ("Euler a", "", {}), ("Heun", "", {}),  # Automatic is plain sigmas for these
    ("Euler", "Karras", {"Schedule type": "Karras"}),
    ("Euler Exponential", "", {}),
    ("Euler SGM Uniform", "", {"Sampler": "Euler", "Schedule type": "SGM Uniform"}),  # A1111 takes 'Uniform' off
    ("DPM++ 2M SGM Uniform", "", {"Sampler": "DPM++ 2M", "Schedule type": "SGM Uniform"}),
    ("DDIM", "Karras", {}), ("UniPC", "", {}),  # timestep samplers lay out their own steps
])
def test_schedule_type_is_written_when_a1111_would_read_another(sampler, schedule, written):
    assert sampler_fields(sampler, schedule) == {"Sampler": sampler, **written}


# A1111 1.9 on, as written (sd_schedulers.py, sd_samplers.get_sampler_and_scheduler, the default schedule of
# each sampler in sd_samplers_kdiffusion.py), for the samplers spo names: what it runs for an infotext.
_A1111_SCHEDULES = [("automatic", "Automatic", ()), ("uniform", "Uniform", ()), ("karras", "Karras", ()),
                    ("exponential", "Exponential", ()), ("polyexponential", "Polyexponential", ()),
                    ("sgm_uniform", "SGM Uniform", ("SGMUniform",)), ("kl_optimal", "KL Optimal", ()),
                    ("align_your_steps", "Align Your Steps", ()), ("simple", "Simple", ()), ("normal", "Normal", ()),
                    ("ddim", "DDIM", ()), ("beta", "Beta", ())]
_A1111_DEFAULT = {"DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential", "DPM++ 3M SDE": "exponential",
                  "Euler": "uniform", "Euler a": "uniform", "Heun": "uniform", "DDIM": None, "UniPC": None}
# A1111 before 1.9: the names that carried a schedule (sd_samplers_kdiffusion.py, 1.8).
_A1111_OLD = {"DPM++ 2M Karras", "DPM++ SDE Karras", "DPM++ 2M SDE Karras", "DPM++ 2M SDE Exponential", "DPM++ 3M SDE Karras",
              "DPM++ 3M SDE Exponential", *_A1111_DEFAULT}
# What each spo scheduler is in A1111's terms (diffusers' table): sampler, schedule (None: timestep samplers).
SPO_IN_A1111 = {
    "euler": ("Euler", "Uniform"), "euler-karras": ("Euler", "Karras"), "euler-exponential": ("Euler", "Exponential"),
    "euler-sgm-uniform": ("Euler", "SGM Uniform"), "euler-a": ("Euler a", "Uniform"), "heun": ("Heun", "Uniform"),
    "ddim": ("DDIM", None), "unipc": ("UniPC", None),
    "dpm++2m": ("DPM++ 2M", "Uniform"), "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "dpm++2m-exponential": ("DPM++ 2M", "Exponential"), "dpm++2m-sgm-uniform": ("DPM++ 2M", "SGM Uniform"),
    "dpm++2m-sde": ("DPM++ 2M SDE", "Uniform"), "dpm++2m-sde-karras": ("DPM++ 2M SDE", "Karras"),
    "dpm++2m-sde-exponential": ("DPM++ 2M SDE", "Exponential"),
    "dpm++3m-sde": ("DPM++ 3M SDE", "Uniform"), "dpm++3m-sde-karras": ("DPM++ 3M SDE", "Karras"),
    "dpm++3m-sde-exponential": ("DPM++ 3M SDE", "Exponential"),
    "dpm++sde": ("DPM++ SDE", "Uniform"), "dpm++sde-karras": ("DPM++ SDE", "Karras"),
}


def a1111_runs(sampler: str, schedule_type: str | None) -> tuple[str | None, str | None]:
    found = next((s for s in _A1111_SCHEDULES if schedule_type in s[:2]), _A1111_SCHEDULES[0])
    for schedule in _A1111_SCHEDULES:
        for option in (schedule[1], schedule[0], *schedule[2]):
            if sampler.endswith(" " + option):
                found, sampler = schedule, sampler[:-len(option) - 1]
                break
    if sampler not in _A1111_DEFAULT:
        return None, None  # A1111 falls back to its default sampler
    if _A1111_DEFAULT[sampler] is None:
        return sampler, None
    name = _A1111_DEFAULT[sampler] if found[0] == "automatic" else found[0]
    return sampler, next(s[1] for s in _A1111_SCHEDULES if s[0] == name)


def test_every_spo_scheduler_has_its_a1111_meaning_written_down():
    assert set(SPO_IN_A1111) == set(presets.SCHEDULERS) - {"default"}


@pytest.mark.parametrize("name", list(SPO_IN_A1111))
def test_a1111_runs_the_sampler_and_schedule_spo_used(name):
    written = sampler_fields(presets.SCHEDULERS[name].a1111)
    assert a1111_runs(written["Sampler"], written.get("Schedule type")) == SPO_IN_A1111[name]
    sampler, schedule = SPO_IN_A1111[name]
    old = sampler if schedule in ("Uniform", None) else f"{sampler} {schedule}"
    if old in _A1111_OLD:  # A1111 before 1.9 reads the sampler's name alone
        assert written["Sampler"] == old


@pytest.mark.parametrize("name", list(SPO_IN_A1111))
def test_a1111s_own_split_text_reads_as_the_same_scheduler(name):
    # As A1111 1.9 on writes it: the sampler, and the schedule type apart, always.
    sampler, schedule = SPO_IN_A1111[name]
    if schedule is not None:
        assert scheduler_name(sampler, schedule) == name


def test_a_missing_schedule_type_is_automatic_as_in_a1111s_api_too():
    assert scheduler_name("DPM++ 2M") == scheduler_name("DPM++ 2M", "Automatic") == "dpm++2m-karras"
    assert scheduler_name("DPM++ 2M", name_only=True) == "dpm++2m"


# ---------------------------------------------------------------------------------------------
# Values

@pytest.mark.parametrize(("pair", "key"), [
    ("Steps: 20.5", "Steps"), ("Steps: twenty", "Steps"), ("Steps: ", "Steps"),
    ("Seed: 12a", "Seed"), ("Seed: -", "Seed"),
    ("CFG scale: seven", "CFG scale"), ("CFG scale: 1_0", "CFG scale"),
    ("Size: 1024", "Size"), ("Size: 1024x", "Size"), ("Size: axb", "Size"), ("Size: 1024 x 768", "Size"),
    ("Size: 1024x768x2", "Size"), ("Size: a1024x768", "Size"), (f"Size: {'9' * 5000}x1", "Size"),
    (f"Seed: {'9' * 5000}", "Seed"),
    ("Emphasis: Loud", "Emphasis"),
])
def test_malformed_values_are_refused_naming_key_and_value(pair, key):
    with pytest.raises(InfotextError) as e:
        fields(f"a cat\nSampler: Euler, {pair}, Model: x, Version: y")
    value = pair.split(":", 1)[1].strip()
    assert str(e.value).startswith(key)
    if len(value) < 40:
        assert repr(value) in str(e.value)
    else:  # a 5,000-digit value is quoted by its start and its length, not whole
        assert repr(value)[:30] in str(e.value) and f"({len(value):,} characters)" in str(e.value)
        assert len(str(e.value)) < 200


def test_values_out_of_range_are_left_to_validate():
    got = fields("a cat\nSteps: -3, CFG scale: 1e9, Seed: 99999999999999999999, Size: 0x7")
    assert (got["steps"], got["guidance"], got["seed"], got["width"], got["height"]) == \
        (-3, 1e9, 99999999999999999999, 0, 7)


@pytest.mark.parametrize(("written", "mapped"), [
    ("Original", "original"), ("No norm", "none-norm"), ("Ignore", "ignore"), ("None", "none")])
def test_emphasis_is_read_not_ignored(written, mapped):
    got, left = to_request_fields(parse(f"a (cat)\nSteps: 20, Seed: 1, Emphasis: {written}"))
    assert got["emphasis"] == mapped and "Emphasis" not in left


def test_parse_never_raises_anything_but_infotext_error():
    rng = random.Random(1234)
    pieces = ["a", " ", ",", ":", '"', "\\", "\n", "\r", "Negative prompt:", "Steps: 20", "Sampler: Euler",
              "Size: 5x5", "Schedule type: Karras", "x", "Seed: 1", "CFG scale: 7", "é", "\x00", "Emphasis: None"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 25)))
        try:
            info = parse(text)
            to_request_fields(info)
        except InfotextError:
            pass


def test_infotext_is_frozen():
    info = parse(A1111_DOC)
    assert isinstance(info, Infotext)
    with pytest.raises(AttributeError):
        info.prompt = "x"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# Round trip through spo's own writer

def meta(scheduler: str, cls: str, a1111: str, **over) -> dict:
    base = {
        "prompt": "a lighthouse in a storm, (cinematic:1.2), 35mm: wide",
        "negative_prompt": "blurry, low quality",
        "seed": 42, "steps": 30, "guidance": 5.0, "width": 1024, "height": 768,
        "scheduler": {"name": scheduler, "class": cls, "a1111": a1111, "config": {}},
        "prompt_syntax": "a1111", "emphasis": "original", "prompt_windows": 1,
        "model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep"},
        "versions": {"spo-cli": "0.3.0"},
    }
    base.update(over)
    return base


@pytest.mark.parametrize("name", [n for n, c in presets.SCHEDULERS.items() if c.a1111])
def test_spo_infotext_round_trips(name):
    choice = presets.SCHEDULERS[name]
    m = meta(name, choice.class_name, choice.a1111)
    got, left = to_request_fields(parse(a1111_parameters(m)))
    assert got == {"prompt": m["prompt"], "negative": m["negative_prompt"], "steps": 30, "guidance": 5.0,
                   "seed": 42, "width": 1024, "height": 768, "scheduler": name}
    assert left == ["Model", "Version"]


def test_spo_infotext_round_trips_with_lora_vae_and_no_negative():
    m = meta("euler-a", "EulerAncestralDiscreteScheduler", "Euler a", negative_prompt=None,
             prompt="line one,\nline two: (red:0.8)", guidance=7.5, seed=2**63 - 1,
             lora={"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep_LoRA", "file": presets.SPO_LORA_FILE, "scale": 0.8},
             vae={"id": presets.FP16_FIX_VAE})
    got, left = to_request_fields(parse(a1111_parameters(m)))
    assert (got["prompt"], got["negative"], got["guidance"], got["seed"]) == (m["prompt"], None, 7.5, 2**63 - 1)
    assert got["scheduler"] == "euler-a"
    assert left == ["Model", "Lora", "VAE", "Version"]


def test_spo_checkpoint_default_round_trips():
    # spo names the checkpoint's own scheduler by its A1111 name when there is one ("default" with
    # EulerDiscreteScheduler is written "Euler": the same sampler), by its class when there is not.
    assert fields(a1111_parameters(meta("default", "EulerDiscreteScheduler", "Euler")))["scheduler"] == "euler"
    assert fields(a1111_parameters(meta("default", "KDPM2DiscreteScheduler", "")))["scheduler"] == "default"


@pytest.mark.parametrize(("config", "read"), [
    ({}, "dpm++2m"), ({"use_karras_sigmas": True}, "dpm++2m-karras"),
    ({"use_exponential_sigmas": True}, "dpm++2m-exponential"),
])
def test_a_checkpoints_own_sigmas_are_written_as_its_schedule_type(config, read):
    m = meta("default", "DPMSolverMultistepScheduler", "DPM++ 2M")
    m["scheduler"]["config"] = config
    info = parse(a1111_parameters(m))
    del info.params["Version"]  # as A1111 reads it
    assert to_request_fields(info)[0]["scheduler"] == read


def test_replay_suggests_scheduler_for_a_sampler_spo_lacks_before_loading_anything(tmp_path):
    from typer.testing import CliRunner

    from spo_cli.cli import app

    text = "a fox\nSteps: 3, Sampler: DPM++ 2S a Karras, Seed: 1, Size: 64x64"
    r = CliRunner().invoke(app, ["replay", "--infotext", text, "--out", str(tmp_path / "o")])
    message = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "'DPM++ 2S a Karras'" in message and "Give --scheduler" in message
    assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["replay", "--infotext", text, "--scheduler", "DPM++ 3M  SDE", "--out", str(tmp_path)])
    message = " ".join(r.stderr.split())
    assert r.exit_code == 2 and "--scheduler cannot be 'DPM++ 3M" in message and "DPM++ 3M SDE Karras" in message


def test_scheduler_replaces_the_texts_sampler_unread():
    text = "a fox\nSteps: 3, Sampler: LCM, Schedule type: Sideways, Seed: 1"
    got, left = to_request_fields(parse(text), sampler=False)
    assert "scheduler" not in got and left == []
    with pytest.raises(InfotextError):
        to_request_fields(parse(text))


@pytest.mark.parametrize("over, key, value", [
    ({"prompt_syntax": "a1111", "emphasis": "none-norm"}, "emphasis", "none-norm"),
    ({"prompt_syntax": "plain"}, "prompt_syntax", "plain"),  # brackets read as text: said so
])
def test_spo_infotext_records_how_the_prompt_was_read(over, key, value):
    m = meta("euler", "EulerDiscreteScheduler", "Euler", **over)
    m.pop("emphasis") if over["prompt_syntax"] == "plain" else None
    got, left = to_request_fields(parse(a1111_parameters(m)))
    assert got[key] == value and left == ["Model", "Version"]


def test_a_plain_prompt_without_brackets_needs_no_syntax_key():
    m = meta("euler", "EulerDiscreteScheduler", "Euler", prompt="a red fox", negative_prompt=None,
             prompt_syntax="plain")
    assert "Prompt syntax" not in a1111_parameters(m) and "Emphasis" not in a1111_parameters(m)


# ---------------------------------------------------------------------------------------------
# Bounded and linear

# A1111's re_param (modules/infotext_utils.py): `_pairs` must find exactly what findall finds.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def test_pairs_find_what_a1111s_regex_finds():
    rng = random.Random(20)
    alphabet = ["a", "b", "1", "_", " ", " ", "-", "/", ":", ",", '"', "\\", "\t", "é", "\xa0", "\x1c", ".", "Steps"]
    for _ in range(20_000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert infotext._pairs(line) == A1111_RE_PARAM.findall(line), line


@pytest.mark.parametrize("line", [
    'Steps: 20, Sampler: "DPM, 2M", Seed: 1', 'k: "a\\"b", j: ""', 'k: "a"b, j: 2', 'k: "\\', 'k: "a\\"',
    "a: b:c, d:", " x y: 1", "x:1, yy:2", 'k: "a", "b": c', "k: v" + ", k: v" * 50,
])
def test_pairs_on_chosen_lines(line):
    assert infotext._pairs(line) == A1111_RE_PARAM.findall(line)


def test_a_megabyte_of_text_is_refused_before_it_is_read(monkeypatch):
    def read(line):
        raise AssertionError("over-limit text was parsed")

    monkeypatch.setattr(infotext, "_pairs", read)
    with pytest.raises(InfotextError, match=r"1,000,000 characters long; .* at most 100,000"):
        parse("a " * 500_000)


# Inputs that made A1111's regex (and spo's parser before) quadratic: a run of key characters with
# no ':', an unclosed quote in every value, many lines, many `Steps:` lines that are not the last.
WORST = {
    "no colon": "a " * 50_000,
    "unclosed quotes": 'k: "a, ' * 15_000,
    "key characters": "ab-/ " * 20_000,
    "many lines": "a\n" * 50_000,
    "many Steps lines": "Steps: a a a\n" * 8_000,
    "escapes": 'k: "\\\\\\' * 15_000,
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", list(WORST))
def test_the_worst_inputs_at_the_length_limit_end(name):
    # No timing here (a shared machine is noisy): these take about 0.04 s each, and a quadratic parser
    # took minutes at this length (10,000 characters took 1.9 s, 20,000 took 7.6 s), which the timeout
    # turns into a failure. The CPU bound itself is measured by benchmarks/hostile.py --round2.
    text = WORST[name][:validate.INFOTEXT_MAX_CHARS]
    assert len(text) == validate.INFOTEXT_MAX_CHARS
    try:
        to_request_fields(parse(text))
    except InfotextError:
        pass


def test_a_long_prompt_with_all_its_lines_is_read_whole():
    lines = [f"line {i}" for i in range(5000)]
    info = parse("\n".join(["", "", *lines, "Negative prompt: ", "", "n1", "Steps: 1, Seed: 2, Size: 8x8"]))
    assert info.prompt == "\n".join(lines) and info.negative == "n1"


# ---------------------------------------------------------------------------------------------
# A1111's conventions

def test_seed_minus_one_is_a1111s_random_seed():
    got, left = to_request_fields(parse("a cat\nSteps: 20, Seed: -1, Size: 512x512"))
    assert "seed" not in got and left == []
    assert fields("a cat\nSteps: 20, Seed: -2, Size: 512x512")["seed"] == -2  # left to validate, which refuses it


@pytest.mark.parametrize("size", ["١٠٢٤x١٠٢٤", "1024x١٠٢٤", "１０２４x1024", "²x8", "1024X1024", " 1024x1024x"])
def test_size_takes_ascii_digits_only(size):
    with pytest.raises(InfotextError, match="Size"):
        fields(f"a cat\nSteps: 20, Seed: 1, Size: {size}")


@pytest.mark.parametrize("name", [n for n, c in presets.SCHEDULERS.items() if c.a1111])
def test_spo_infotext_reads_back_the_same_scheduler_in_a1111s_way(name):
    # A1111 has no idea of spo's Version: the text alone must say which schedule was used.
    choice = presets.SCHEDULERS[name]
    text = a1111_parameters(meta(name, choice.class_name, choice.a1111))
    info = parse(text)
    del info.params["Version"]
    assert to_request_fields(info)[0]["scheduler"] == name


@pytest.mark.parametrize("text, warned", [
    ("a fox\nSteps: 3, Sampler: Euler", True),  # two settings: A1111 reads the line as prompt text
    ("a fox\nSteps: 3", True),
    ("a fox\nSteps: 3, Sampler: Euler, Seed: 1", False),  # a settings line
    ("a fox: red, tail: long", False),  # colons in a prompt are no settings line
])
def test_a_settings_line_too_short_to_be_one_is_said_to_be_prompt_text(capsys, text, warned):
    # Before: the prompt became 'a fox Steps: 3, Sampler: Euler' and the warning said the text set no Sampler.
    from spo_cli.cli.replay import from_infotext
    from spo_cli.cli.ui import UI

    image, _, _, _ = from_infotext(UI(), text, "--infotext")
    err = " ".join(capsys.readouterr().err.split())
    assert ("holds fewer than 3 settings, so it is read as part of the prompt, as A1111 reads it" in err) == warned
    if warned:
        assert "'Steps: 3" in err and "Steps:" in image.prompt


# --------------------------------------------------------------------------------------------
# Image to image and the hires fix


def test_hires_fields_as_a1111_writes_them():
    got = fields("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.55, "
                 "Hires upscale: 1.5, Hires upscaler: Lanczos")
    assert (got["hires"], got["hires_upscaler"], got["hires_strength"]) == (1.5, "lanczos", 0.55)
    assert "hires_steps" not in got and "strength" not in got  # A1111 writes Hires steps only when set


def test_img2img_strength_and_mask_blur_without_hires():
    got, left = to_request_fields(parse("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Denoising strength: 0.6, "
                                        "Mask blur: 4, Inpaint area: Only masked"))
    # A1111's parser reads a missing padding as 32 (infotext_utils.parse_generation_parameters).
    assert (got["strength"], got["mask_blur"], got["mask_crop"]) == (0.6, 4, 32) and "hires" not in got
    assert left == []


def test_mask_crop_is_written_as_a1111s_only_masked_and_read_back():
    # A1111 writes Inpaint area and Masked area padding for Only masked (processing.py, inpaint_full_res);
    # its paste reads a text without them as Whole picture.
    m = meta("euler", "EulerDiscreteScheduler", "Euler", strength=0.9, mask_image={"path": "/m.png"}, mask_blur=4,
             mask_crop=24)
    text = a1111_parameters(m)
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 24" in text
    got, left = to_request_fields(parse(text))
    assert (got["strength"], got["mask_blur"], got["mask_crop"]) == (0.9, 4, 24) and left == ["Model", "Version"]
    whole = a1111_parameters(meta("euler", "EulerDiscreteScheduler", "Euler", strength=0.9,
                                  mask_image={"path": "/m.png"}, mask_blur=4, mask_crop=None))
    assert "Inpaint area" not in whole and "mask_crop" not in to_request_fields(parse(whole))[0]
    # Padding 0 (A1111's API default) is a crop too: the mask's own box.
    zero = a1111_parameters(meta("euler", "EulerDiscreteScheduler", "Euler", strength=0.9,
                                 mask_image={"path": "/m.png"}, mask_blur=4, mask_crop=0))
    assert "Inpaint area: Only masked, Masked area padding: 0" in zero and fields(zero)["mask_crop"] == 0
    # With Hires upscale the text is text to image's: its inpaint keys are not taken, and said so.
    got, left = to_request_fields(parse("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Hires upscale: 2, "
                                        "Inpaint area: Only masked, Masked area padding: 8"))
    assert "mask_crop" not in got and left == ["Inpaint area", "Masked area padding"]
    assert "mask_crop" not in fields("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Inpaint area: Whole picture, "
                                     "Masked area padding: 32")
    with pytest.raises(InfotextError, match="Inpaint area 'Everywhere' is not one A1111 writes"):
        fields("a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Inpaint area: Everywhere")


@pytest.mark.parametrize("name, upscaler, warned", [
    ("Latent", "latent", False), ("latent", "latent", False), ("Lanczos", "lanczos", False),
    ("Latent (antialiased)", "latent", True), ("Latent (bicubic antialiased)", "latent", True),
    ("ESRGAN_4x", "lanczos", True), ("R-ESRGAN 4x+", "lanczos", True), ("Nearest", "lanczos", True),
])
def test_a1111_hires_upscalers_map_to_the_nearest_of_spos_two(name, upscaler, warned):
    notes = []
    got, _ = to_request_fields(parse(f"a fox\nSteps: 20, Sampler: Euler, Hires upscale: 2, Hires upscaler: {name}"),
                               notes=notes)
    assert got["hires_upscaler"] == upscaler
    assert bool(notes) == warned
    if warned:
        assert name in notes[0] and "will differ" in notes[0]


@pytest.mark.parametrize("text, says", [
    ("Hires upscale: big", "Hires upscale 'big' is not a number"),
    ("Hires upscale: 2, Hires steps: 1.5", "Hires steps '1.5' is not a whole number"),
    ("Denoising strength: lots", "Denoising strength 'lots' is not a number"),
    ("Mask blur: 4px", "Mask blur '4px' is not a whole number"),
    ("Hires upscale: 2, Hires upscaler: ", "Hires upscaler is empty"),
])
def test_unreadable_edit_values_are_named(text, says):
    with pytest.raises(InfotextError, match=re.escape(says)):
        fields(f"a fox\nSteps: 20, Sampler: Euler, {text}")


@pytest.mark.parametrize("resize, scale", [("1536x1152", 1.5), ("1536x0", 1.5), ("0x1728", 2.25), ("2048x1536", 2.0)])
def test_a1111_hires_resize_is_read_as_the_scale_it_makes(resize, scale):
    # A1111 writes `Hires resize: WxH` instead of `Hires upscale` when hr_resize_x/y were given
    # (processing.py calculate_target_resolution); its Denoising strength is then the hires pass's too.
    got, left = to_request_fields(parse(f"a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Size: 1024x768, "
                                        f"Denoising strength: 0.5, Hires resize: {resize}, Hires upscaler: Latent"))
    assert (got["hires"], got["hires_strength"], got["hires_upscaler"]) == (scale, 0.5, "latent")
    assert "strength" not in got and left == []


@pytest.mark.parametrize("resize, says", [("1536x1536", "is not the 1024x768 image scaled"), ("0x0", "is not WIDTHxHEIGHT"),
                                          ("big", "is not WIDTHxHEIGHT")])
def test_a1111_hires_resize_of_another_shape_is_refused(resize, says):
    with pytest.raises(InfotextError, match=says):
        fields(f"a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Size: 1024x768, Hires resize: {resize}")

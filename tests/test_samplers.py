"""A1111's sampler names through spo serve's request bodies (pure: no torch, no web server).

Every spo scheduler by the names an A1111 client sends: the old combined name in `sampler_name`, and
A1111 1.9's sampler with its schedule type apart in `scheduler`."""

from __future__ import annotations

import pytest

from spo_cli import infotext, presets
from spo_cli.serve import api

CTX = api.Context(("spo",), max_images=8)
NAMES = [n for n, c in presets.SCHEDULERS.items() if c.a1111]


def a1111(**body) -> str:
    return api.a1111_job({"prompt": "a fox", **body}, CTX)[0].images[0].scheduler


@pytest.mark.parametrize("name", NAMES)
def test_every_scheduler_by_its_a1111_name_combined_split_or_spos(name):
    combined = presets.SCHEDULERS[name].a1111
    fields = infotext.sampler_fields(combined)  # what spo writes; the API takes the same pair
    assert a1111(sampler_name=fields["Sampler"], scheduler=fields.get("Schedule type", "Automatic")) == name
    if fields == {"Sampler": combined}:  # else A1111 reads the name alone as another schedule, and so does spo
        assert a1111(sampler_name=combined) == name
    assert a1111(sampler_name=name) == name  # spo's own name, as everywhere spo takes a scheduler
    if fields["Sampler"] != api.A1111_DEFAULTS["sampler_index"]:  # at its default: the checkpoint's own
        # the field's name before A1111 1.6
        assert a1111(sampler_index=fields["Sampler"], scheduler=fields.get("Schedule type", "Automatic")) == name
    job, parameters = api.a1111_job({"prompt": "a fox", "sampler_name": fields["Sampler"].upper(),
                                     "scheduler": fields.get("Schedule type")}, CTX)
    assert job.images[0].scheduler == name and parameters["sampler_name"] == combined


def test_a1111_api_schedule_types():
    assert a1111(sampler_name="Euler", scheduler="Karras") == "euler-karras"
    assert a1111(sampler_name="Euler", scheduler="sgm_uniform") == "euler-sgm-uniform"
    assert a1111(sampler_name="DPM++ 2M SDE") == "dpm++2m-sde-exponential"  # no scheduler: Automatic, as A1111
    assert a1111(sampler_name="DPM++ 3M SDE", scheduler="Uniform") == "dpm++3m-sde"
    assert a1111(sampler_name="Heun", scheduler="Automatic") == "heun"


@pytest.mark.parametrize("body", [{"sampler_name": "dpm++2m-karras", "scheduler": "Karras"},  # spo's name: alone
                                  {"sampler_name": "default"}, {"sampler_name": "Heun", "scheduler": "Karras"},
                                  {"sampler_name": "DPM++ 2S a Karras"}])
def test_a1111_api_refuses_what_spo_lacks_naming_the_field(body):
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", **body}, CTX)
    assert e.value.field == "sampler_name" and "DPM++ 3M SDE Karras" in e.value.message


def test_openai_and_spo_bodies_take_a1111_names_in_scheduler():
    job = api.openai_job({"prompt": "a fox", "scheduler": "DPM++ 2M SDE Exponential"}, CTX)
    assert job.images[0].scheduler == "dpm++2m-sde-exponential"
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"prompt": "a fox", "scheduler": "DPM++ 2S a"}, CTX)
    assert e.value.field == "scheduler" and "dpm++3m-sde, " in e.value.message and "DPM++ 3M SDE," in e.value.message


@pytest.mark.parametrize("command", [["generate", "a fox", "--scheduler", "DPM++ SDE Karras"],
                                     ["generate", "a fox", "--scheduler", "dpm++sde"]])
def test_dpmpp_sde_without_torchsde_is_an_instruction_before_anything_loads(monkeypatch, tmp_path, command):
    import sys

    from typer.testing import CliRunner

    from spo_cli.cli import app

    monkeypatch.setitem(sys.modules, "torchsde", None)  # how Python blocks an import
    r = CliRunner().invoke(app, [*command, "--out", str(tmp_path / "o")])
    message = " ".join(r.output.split())
    assert r.exit_code == 2 and "needs torchsde" in message and 'pip install "spo-cli[sde]"' in message, r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


def test_every_scheduler_extra_is_in_pyproject():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, modules in presets.SCHEDULER_EXTRAS.items():
        assert all(any(m in req for req in extras[name]) for m in modules)
        own = next(r for r in extras["test"] if r.startswith("spo-cli["))  # the tests run every sampler
        assert name in own[len("spo-cli["):-1].split(",")


@pytest.mark.parametrize("name", [n for n, c in presets.SCHEDULERS.items() if "Karras" in c.a1111])
def test_every_karras_schedule_spans_the_models_whole_sigma_range_as_a1111s(name):
    """A1111's Karras runs from the model's largest sigma to its smallest (k-diffusion's sigma_max,
    sigma_min). Euler and DPM++ SDE under SDXL's "leading" spacing started at 11.48, not 14.61."""
    import diffusers
    import numpy as np

    from spo_cli import tiny

    choice = presets.SCHEDULERS[name]
    if choice.extra:
        pytest.importorskip("torchsde")
    config = tiny.scheduler_config()  # SDXL base's own scheduler settings
    scheduler = getattr(diffusers, choice.class_name).from_config(config, **dict(choice.kwargs))
    scheduler.set_timesteps(30)
    alphas = np.cumprod(1 - np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5,
                                        config["num_train_timesteps"]) ** 2)
    sigmas = ((1 - alphas) / alphas) ** 0.5
    got = scheduler.sigmas.numpy()
    assert got[0] == pytest.approx(sigmas[-1], rel=1e-4) and got[-2] == pytest.approx(sigmas[0], rel=1e-4)

"""spo serve's request bodies → image requests (pure: no torch, no web server)."""

from __future__ import annotations

import json

import pytest

from spo_cli.serve import api

CTX = api.Context(("spo", "base"), max_images=8)


def test_openai_body_becomes_the_cli_request():
    job = api.openai_job({"prompt": "a red fox", "n": 3, "size": "1216x832", "seed": 41, "steps": 30,
                          "negative_prompt": "blurry", "scheduler": "euler-a", "model": "base"}, CTX)
    assert [r.seed for r in job.images] == [41, 42, 43]  # as `spo generate --seed 41 -n 3`
    first = job.images[0]
    assert (first.width, first.height, first.steps, first.negative_prompt, first.scheduler) == (
        1216, 832, 30, "blurry", "euler-a")
    assert first.guidance == 5.0 and first.prompt_syntax == "auto"  # the CLI's defaults
    assert job.model == "base" and job.warnings == ()


def test_openai_model_names_of_other_services_get_the_default_with_a_warning():
    job = api.openai_job({"prompt": "a fox", "model": "gpt-image-1", "quality": "high", "style": "vivid"}, CTX)
    assert job.model == "spo"
    assert any("'gpt-image-1' is not loaded" in w for w in job.warnings)
    assert any("'quality'" in w for w in job.warnings)
    assert not any("'style'" in w for w in job.warnings)  # left at OpenAI's default: nothing to say


def test_a1111_body_seeds_sampler_and_echo():
    job, parameters = api.a1111_job({"prompt": "a (fox:1.2)", "seed": 7, "batch_size": 2, "n_iter": 2,
                                     "sampler_name": "DPM++ 2M Karras", "cfg_scale": 6, "steps": 25}, CTX)
    assert [r.seed for r in job.images] == [7, 8, 9, 10]  # A1111: seed + i over batch_size × n_iter
    assert job.images[0].scheduler == "dpm++2m-karras" and job.images[0].guidance == 6.0
    assert parameters["sampler_name"] == "DPM++ 2M Karras" and parameters["batch_size"] == 2
    assert api.a1111_job({"prompt": "a fox", "sampler_name": "DPM++ 2M", "scheduler": "Karras"}, CTX)[0] \
        .images[0].scheduler == "dpm++2m-karras"  # A1111 1.9's separate schedule type
    random = api.a1111_job({"prompt": "a fox", "seed": -1}, CTX)[0].images[0].seed
    assert 0 <= random <= 2**32 - 1


def test_a1111_fields_spo_lacks_warn_only_when_they_would_change_the_image():
    quiet, _ = api.a1111_job({"prompt": "a fox", "enable_hr": False, "restore_faces": False, "styles": [],
                              "subseed": -1, "tiling": False}, CTX)
    assert quiet.warnings == ()
    loud, _ = api.a1111_job({"prompt": "a fox", "enable_hr": True, "tiling": True, "made_up": 1}, CTX)
    assert {w.split("'")[1] for w in loud.warnings} == {"enable_hr", "tiling", "made_up"}


@pytest.mark.parametrize("body,field", [
    ({"prompt": "a fox", "steps": True}, "steps"),  # JSON true is not a number of steps
    ({"prompt": "a fox", "cfg_scale": float("inf")}, "cfg_scale"),
    ({"prompt": "a fox", "width": 1024, "height": 4096 + 8}, "width"),
    ({"prompt": "a fox", "batch_size": 4, "n_iter": 3}, "n_iter"),  # 12 images, the server takes 8
    ({"prompt": "a fox", "override_settings": {"sd_model_checkpoint": 5}}, "override_settings.sd_model_checkpoint"),
])
def test_a1111_refusals_name_the_field(body, field):
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job(body, CTX)
    assert e.value.field == field and e.value.status == 400


def test_run_job_takes_exactly_the_request_fields():
    job = api.run_job({"model": "spo", "images": [{"prompt": "a fox", "seed": 3, "negative_prompt": None,
                                                   "width": None, "steps": 4}]}, CTX)
    assert job.images[0].seed == 3 and job.images[0].steps == 4 and job.save is False
    with pytest.raises(api.BadRequest) as e:
        api.run_job({"images": [{"prompt": "a fox", "seed": 3, "cfg": 5}]}, CTX)
    assert e.value.field == "images[0]" and "cfg" in e.value.message
    with pytest.raises(api.BadRequest) as e:
        api.run_job({"model": "nope", "images": [{"prompt": "a fox", "seed": 3}]}, CTX)
    assert e.value.field == "model"
    with pytest.raises(api.BadRequest) as e:
        api.run_job({"images": [{"prompt": "a fox", "seed": 3, "steps": 0}]}, CTX)
    assert e.value.field == "images[0].steps"


@pytest.mark.parametrize("blocked, command", [("uvicorn", ["serve"]), ("pyarrow", ["eval", "--paper"])])
def test_a_missing_extra_is_an_instruction(monkeypatch, blocked, command):
    """Without the extra's library: exit 2 and the pip command, before anything is loaded or bound."""
    import sys

    from typer.testing import CliRunner

    from spo_cli.cli import app

    monkeypatch.setitem(sys.modules, blocked, None)  # how Python blocks an import
    r = CliRunner().invoke(app, command)
    assert r.exit_code == 2, r.output
    extra = "serve" if blocked == "uvicorn" else "score"
    assert f'pip install "spo-cli[{extra}]"' in " ".join(r.output.split()) and "Traceback" not in r.output


@pytest.mark.parametrize("size", ["64x64junk", "64x64 ", " 64x64", "64x64\n", "64X64", "64x", "x64", "64*64",
                                  "0064x0064x", "1024x1024x1024"])
def test_a_size_is_exactly_width_x_height(size):
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"prompt": "a fox", "size": size}, CTX)
    assert e.value.field == "size" and e.value.status == 400


def test_a_size_and_a_width_are_not_both_given():
    for extra in ({"width": 64}, {"height": 64}):
        with pytest.raises(api.BadRequest) as e:
            api.openai_job({"prompt": "a fox", "size": "64x64", **extra}, CTX)
        assert e.value.field == next(iter(extra)) and "not both" in e.value.message
    job = api.openai_job({"prompt": "a fox", "size": "auto", "width": 64, "height": 128}, CTX)
    assert (job.images[0].width, job.images[0].height) == (64, 128)


@pytest.mark.parametrize("parse", [api.openai_job, api.a1111_job, api.run_job])
def test_numbers_anywhere_in_a_body_are_finite(parse):
    """1e999 parses as infinity: refused wherever it is, even in a field spo ignores (A1111 echoes the
    body back in `parameters`, which cannot hold it)."""
    body = json.loads('{"prompt": "a fox", "images": [{"prompt": "a fox", "seed": 1}], "zz": [1, {"y": 1e999}]}')
    with pytest.raises(api.BadRequest) as e:
        parse(body, CTX)
    assert e.value.field == "zz[1].y" and "finite" in e.value.message


def test_batch_size_times_n_iter_may_reach_the_limit_exactly():
    job, _ = api.a1111_job({"prompt": "a fox", "batch_size": 4, "n_iter": 2, "seed": 5}, CTX)  # 8, the server's limit
    assert len(job.images) == 8
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "batch_size": 3, "n_iter": 3}, CTX)
    assert e.value.field == "n_iter" and "9" in e.value.message


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "AEvilScheduler", "EulerDiscreteScheduler",
                                  " DDIMScheduler "])
def test_a_diffusers_class_is_not_an_a1111_sampler(name):
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "sampler_name": name}, CTX)
    assert e.value.field == "sampler_name" and "not an A1111 sampler" in e.value.message
    assert "DPM++ 2M" in e.value.message  # and what it could have been


def test_seeds_refused_name_the_seed_field():
    for parse, body in ((api.openai_job, {"prompt": "a fox", "seed": -5}), (api.a1111_job, {"prompt": "a", "seed": -2}),
                        (api.openai_job, {"prompt": "a fox", "seed": 2**32 - 1, "n": 2}),
                        (api.a1111_job, {"prompt": "a fox", "seed": "7"})):
        with pytest.raises(api.BadRequest) as e:
            parse(body, CTX)
        assert e.value.field == "seed" and e.value.status == 400


@pytest.mark.parametrize("text", ['{"prompt": "a cat", "prompt": "a dog"}',
                                  '{"prompt": "a", "extra": {"n": 1, "n": 2}}'])
def test_a_key_given_twice_is_refused(text):
    with pytest.raises(api.BadRequest, match="given twice"):
        api.parse_json(text.encode())


def test_a_size_speaks_the_one_grammar_with_a_bounded_echo():
    assert api._size("1216x832") == (1216, 832)
    with pytest.raises(api.BadRequest) as e:
        api._size("٣x٣")  # Arabic-Indic digits: refused here as in infotext
    assert e.value.field == "size"
    with pytest.raises(api.BadRequest) as e:
        api._size("9" * 100_000)
    assert len(str(e.value)) < 300

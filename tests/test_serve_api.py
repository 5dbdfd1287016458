"""spo serve's request bodies → image requests, error bodies and the listing endpoints (no torch, no web server: the
app tests call it as ASGI on a worker that is never started)."""

from __future__ import annotations

import base64
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
    assert {w.split("'")[1] for w in loud.warnings} == {"tiling", "made_up"}  # enable_hr is spo's hires fix


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


# --------------------------------------------------------------------------------------------
# Issue 27: A1111's defaults are not "ignored", sampler_index, error bodies, the listing endpoints

# What webuiapi 0.9's WebUIApi().txt2img(prompt=…) sends, every field at the library's default.
WEBUIAPI_DEFAULT = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "",
    "hr_negative_prompt": "", "denoising_strength": 0.7, "firstphase_width": 0, "firstphase_height": 0,
    "prompt": "a fox", "styles": [], "seed": -1, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
    "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 20, "cfg_scale": 7.0, "width": 512,
    "height": 512, "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "override_settings": {},
    "override_settings_restore_afterwards": True, "sampler_name": "Euler a", "scheduler": "automatic",
    "sampler_index": "Euler a", "script_name": None, "script_args": [], "send_images": True, "save_images": False,
    "alwayson_scripts": {}}


def ignored(job) -> set[str]:
    return {w.split("'")[1] for w in job.warnings if "was ignored" in w}


def test_webuiapis_default_call_is_warned_of_nothing_it_did_not_ask():
    job, _ = api.a1111_job(WEBUIAPI_DEFAULT, CTX)
    assert ignored(job) == set()
    assert job.images[0].scheduler == "euler-a" and job.images[0].steps == 20


@pytest.mark.parametrize("change, warned", [
    ({"eta": 0.5}, "eta"),  # Euler a adds noise at eta 1; another eta changes it
    ({"sampler_name": "DDIM", "sampler_index": "DDIM"}, "eta"),  # webuiapi's eta 1 is not DDIM's 0
    ({"enable_hr": True, "hr_sampler_name": "DDIM"}, "hr_sampler_name"),  # read only with the hires fix, then on
    ({"enable_hr": True, "hr_prompt": "a cat"}, "hr_prompt"),
    ({"seed_resize_from_w": 768, "seed_resize_from_h": 768}, "seed_resize_from_w"),
    ({"s_churn": 1}, "s_tmax"),  # 0 is A1111's "no limit", read only with churn
    ({"subseed_strength": 0.5, "subseed": 3}, "subseed"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"s_noise": 1.1}, "s_noise"),
    ({"script_name": "x/y/z plot", "script_args": [1]}, "script_args"),
    ({"seed_resize_from_w": "768", "seed_resize_from_h": 768}, "seed_resize_from_w"),  # not a number: said
])
def test_an_ignored_field_is_warned_of_once_it_would_change_the_image(change, warned):
    job, _ = api.a1111_job({**WEBUIAPI_DEFAULT, **change}, CTX)
    assert warned in ignored(job)


@pytest.mark.parametrize("quiet", [
    {"sampler_name": "Euler", "sampler_index": "Euler", "eta": 0.3},  # Euler never reads eta
    {"sampler_name": "DDIM", "sampler_index": "DDIM", "eta": 0},
    {"seed_resize_from_w": 512, "seed_resize_from_h": 512},  # the image's own size: no resize
    {"seed_resize_from_w": 768, "seed_resize_from_h": -1},  # A1111 resizes only when both are set
    {"s_tmax": 5, "s_tmin": 2},  # without churn
    {"eta": None, "s_churn": None, "styles": None},  # None: A1111's "the server's default"
    {"do_not_save_grid": True, "override_settings_restore_afterwards": False, "force_task_id": "task-1"},  # no pixel
])
def test_fields_at_values_that_change_nothing_are_not_warned_of(quiet):
    job, _ = api.a1111_job({**WEBUIAPI_DEFAULT, **quiet}, CTX)
    assert ignored(job) == set()


def test_sampler_index_is_applied_and_never_called_ignored():
    job, parameters = api.a1111_job({"prompt": "a fox", "sampler_index": "DPM++ 2M Karras"}, CTX)
    assert job.images[0].scheduler == "dpm++2m-karras" and parameters["sampler_name"] == "DPM++ 2M Karras"
    assert ignored(job) == set()
    # A1111 reads `sampler_name or sampler_index`: the name wins, an empty name gives way.
    job, _ = api.a1111_job({"prompt": "a fox", "sampler_name": "DDIM", "sampler_index": "UniPC"}, CTX)
    assert job.images[0].scheduler == "ddim" and ignored(job) == set()
    job, _ = api.a1111_job({"prompt": "a fox", "sampler_name": "", "sampler_index": "UniPC"}, CTX)
    assert job.images[0].scheduler == "unipc"
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "sampler_index": "Nope 3000"}, CTX)
    assert e.value.field == "sampler_index"  # the field the client used


def test_automatic_needs_no_sampler():
    job, _ = api.a1111_job({"prompt": "a fox", "scheduler": "automatic"}, CTX)
    assert job.images[0].scheduler == "default"
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "scheduler": "Karras"}, CTX)
    assert e.value.field == "scheduler"


def test_error_bodies_speak_each_dialect():
    bad = api.BadRequest("request: 'size' must be WIDTHxHEIGHT.", "size")
    assert bad.body("/v1/images/generations") == {"error": {
        "message": "request: 'size' must be WIDTHxHEIGHT.", "type": "invalid_request_error", "param": "size",
        "code": "invalid_value"}}
    assert bad.body("/spo/v1/run") == bad.body("/v1/images/generations")  # spo's own clients read OpenAI's
    # A1111's handle_exception: {error, detail, body, errors}, which its clients print.
    assert bad.body("/sdapi/v1/txt2img") == {"error": "HTTPException", "detail": bad.message, "body": "",
                                             "errors": f"400: {bad.message}"}
    with pytest.raises(api.BadRequest) as e:
        api.openai_job({"n": 1}, CTX)
    assert e.value.body()["error"]["code"] == "missing_required_parameter"
    assert api.BadRequest("m", None, 401).body()["error"] == {"message": "m", "type": "invalid_request_error",
                                                              "param": None, "code": "invalid_api_key"}
    assert api.BadRequest("m", None, 429).body()["error"]["code"] == "rate_limit_exceeded"
    assert api.BadRequest("m", None, 503).body()["error"]["type"] == "server_error"
    assert api.BadRequest("m", None, 400).body()["error"]["code"] is None  # the body as a whole: no field


def test_schedulers_listed_are_the_ones_a_request_can_use():
    listed = api.a1111_schedulers()
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} == set(listed[0])
    labels = [s["label"] for s in listed]
    assert labels[:2] == ["Automatic", "Uniform"] and "Karras" in labels
    assert "Beta" not in labels  # A1111 has it; no sampler of spo runs it
    for label in labels:  # each one is accepted with some sampler spo knows
        assert any(_accepts(c.a1111.removesuffix(" " + label), label) for c in api.presets.SCHEDULERS.values()
                   if c.a1111), label


def _accepts(sampler: str, schedule: str) -> bool:
    try:
        api.a1111_job({"prompt": "a fox", "sampler_name": sampler, "scheduler": schedule}, CTX)
        return True
    except api.BadRequest:
        return False


def test_loras_are_the_ones_the_models_carry():
    hub = {"id": "org/repo", "source": "hub", "file": "spo_lora.safetensors", "scale": 0.5}
    local = {"id": "/loras/detail.safetensors", "source": "local", "file": "detail.safetensors", "scale": 1.0}
    listed = api.a1111_loras([{"lora": hub}, {"lora": None}, {"loras": [local, hub]}])
    assert listed == [{"name": "spo_lora", "alias": "spo_lora", "path": "org/repo/spo_lora.safetensors", "metadata": {}},
                      {"name": "detail", "alias": "detail", "path": "/loras/detail.safetensors", "metadata": {}}]
    assert api.a1111_loras([{"lora": None}]) == []
    named = dict(local, id="/loras/x/detail-v2.safetensors", file="detail-v2.safetensors", name="detail")  # a tag's name
    assert api.a1111_loras([{"loras": [named]}])[0]["name"] == "detail"


def test_sd_models_give_a_single_files_hash_as_a1111_does():
    sha = "0123456789abcdef" * 4
    listed = api.a1111_sd_models({"merge": {"model": {"id": "/ckpt/merge.safetensors", "source": "file", "sha256": sha}},
                                  "spo": {"model": {"id": "org/spo-sdxl", "source": "hub"}}})
    assert listed == [
        {"title": "merge [0123456789]", "model_name": "merge", "hash": "0123456789", "sha256": sha,
         "filename": "/ckpt/merge.safetensors", "config": None},
        {"title": "spo", "model_name": "spo", "hash": None, "sha256": None, "filename": "org/spo-sdxl", "config": None}]


def test_openai_models_list_the_served_labels():
    listed = api.openai_models(CTX, {"spo": {"model": {"id": "org/spo-sdxl", "source": "hub"}},
                                     "base": {"model": {"id": "/models/base", "source": "local"}}}, 1700000000)
    assert listed == {"object": "list", "data": [
        {"id": "spo", "object": "model", "created": 1700000000, "owned_by": "org"},
        {"id": "base", "object": "model", "created": 1700000000, "owned_by": "local"}]}
    assert api.openai_models(CTX, {}, 1)["data"][0]["owned_by"] == "spo"  # not loaded yet


# --------------------------------------------------------------------------------------------
# --api-auth-file: A1111's credentials, held to the token's rules

PASSWORD = "correct-horse-battery"


def test_api_auth_is_read_from_a_file_or_the_environment(tmp_path, monkeypatch):
    from spo_cli.cli.serve import read_api_auth

    path = tmp_path / "auth"
    path.write_text(f"alice:{PASSWORD}, bob:{PASSWORD}:with-colon\n carol:{PASSWORD}\n")
    assert read_api_auth(str(path)) == (("alice", PASSWORD), ("bob", f"{PASSWORD}:with-colon"), ("carol", PASSWORD))
    monkeypatch.delenv("SPO_API_AUTH", raising=False)
    assert read_api_auth(None) == ()
    monkeypatch.setenv("SPO_API_AUTH", f"dave:{PASSWORD}")
    assert read_api_auth(None) == (("dave", PASSWORD),)


@pytest.mark.parametrize("text, says", [
    ("alice", "not user:password"),
    (f":{PASSWORD}", "not user:password"),
    ("alice:short", "at least 16"),
    (f"alice:{PASSWORD} x", "at least 16"),  # a space: not one password
    (f"alice:{PASSWORD},alice:{PASSWORD}", "given twice"),
    ("  \n", "no user:password"),
])
def test_bad_api_auth_is_refused_without_echoing_a_password(tmp_path, text, says):
    from spo_cli.cli.serve import read_api_auth
    from spo_cli.errors import UsageError

    path = tmp_path / "auth"
    path.write_text(text)
    with pytest.raises(UsageError) as e:
        read_api_auth(str(path))
    assert says in e.value.paragraph() and PASSWORD not in e.value.paragraph()


# --------------------------------------------------------------------------------------------
# The same, through the real app and its guard (a worker never started: no model)

def basic(user: str, password: str) -> dict:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


TOKEN = "a-test-token-0123456789"


def test_basic_auth_beside_the_token(tmp_path):
    from tests.test_serve_parts import call, make_app

    app, _ = make_app(tmp_path, token=TOKEN, api_auth=(("alice", PASSWORD), ("bob", "another-password-123")))
    for headers in (basic("alice", PASSWORD), basic("bob", "another-password-123"), {"Authorization": f"Bearer {TOKEN}"},
                    {"Authorization": "basic " + basic("alice", PASSWORD)["Authorization"].split()[1]}):
        assert call(app, "GET", "/sdapi/v1/samplers", headers)[0] == 200, headers
    for headers in (basic("alice", "another-password-123"), basic("alice", PASSWORD + "x"), basic("mallory", PASSWORD),
                    basic("alice", ""), {"Authorization": "Basic not-base64!"}, {"Authorization": "Basic YWxpY2U="},
                    {"Authorization": f"Bearer {PASSWORD}"}, {"Authorization": f"Basic {TOKEN}"}, {}):
        status, body, answer = call(app, "GET", "/sdapi/v1/samplers", headers)
        assert status == 401, headers
        assert body["error"] == "HTTPException" and "Basic" in body["detail"] and "Bearer" in body["detail"]
        assert answer["www-authenticate"] == 'Bearer, Basic realm="spo", charset="UTF-8"'
        assert PASSWORD not in json.dumps(body)
    status, body, _ = call(app, "GET", "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key" and body["error"]["param"] == "Authorization"


def test_basic_auth_alone_and_not_when_only_a_token_is_set(tmp_path):
    from tests.test_serve_parts import call, make_app

    app, _ = make_app(tmp_path, api_auth=(("alice", PASSWORD),))
    assert call(app, "GET", "/v1/models", basic("alice", PASSWORD))[0] == 200
    status, _, answer = call(app, "GET", "/v1/models", {"Authorization": f"Bearer {PASSWORD}"})
    assert status == 401 and answer["www-authenticate"] == 'Basic realm="spo", charset="UTF-8"'
    app, _ = make_app(tmp_path, token=TOKEN)
    status, _, answer = call(app, "GET", "/v1/models", basic("alice", TOKEN))
    assert status == 401 and answer["www-authenticate"] == "Bearer"


def test_listing_endpoints_answer_before_the_model_is_loaded(tmp_path):
    from tests.test_serve_parts import call, make_app

    app, _ = make_app(tmp_path)
    status, body, _ = call(app, "GET", "/v1/models")
    assert status == 200 and body["object"] == "list" and [m["id"] for m in body["data"]] == ["spo"]
    assert call(app, "GET", "/v1/models/spo")[1]["id"] == "spo"
    status, body, _ = call(app, "GET", "/v1/models/dall-e-3")
    assert status == 404 and body["error"]["code"] == "model_not_found" and "spo" in body["error"]["message"]
    assert call(app, "GET", "/sdapi/v1/schedulers")[1] == api.a1111_schedulers()
    assert call(app, "GET", "/sdapi/v1/upscalers")[1] == [{"name": "None", "model_name": None, "model_path": None,
                                                           "model_url": None, "scale": 4}]
    assert call(app, "GET", "/sdapi/v1/loras")[:2] == (200, [])
    status, body, _ = call(app, "GET", "/sdapi/v1/extra-single-image")  # not served: A1111's 404 body
    assert status == 404 and body["error"] == "HTTPException" and body["errors"].startswith("404: ")


def test_a_refused_body_is_answered_in_its_endpoints_dialect(tmp_path):
    from tests.test_serve_parts import make_app, post

    app, worker = make_app(tmp_path)
    status, body, _ = post(app, "/sdapi/v1/txt2img", {"prompt": "a fox", "steps": 0})
    assert status == 400 and set(body) == {"error", "detail", "body", "errors"} and "'steps'" in body["detail"]
    status, body, _ = post(app, "/v1/images/generations", {"prompt": "a fox", "steps": 0})
    assert status == 400 and body["error"]["param"] == "steps" and body["error"]["code"] == "invalid_value"
    assert worker.queued == 0


def test_off_loopback_basic_users_serve_as_the_token(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from spo_cli.cli import app

    monkeypatch.delenv("SPO_TOKEN", raising=False)
    monkeypatch.delenv("SPO_API_AUTH", raising=False)
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--api-auth-file" in " ".join(r.output.split())
    path = tmp_path / "auth"
    path.write_text(f"alice:{PASSWORD}")
    # Past the credentials check, the next one (a model named twice) is what refuses it: nothing loads.
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--api-auth-file", str(path), "--models", "a,a"])
    assert r.exit_code == 2 and "must name each model once" in r.output, r.output


def test_an_empty_schedule_type_is_automatic_and_an_unknown_one_is_named():
    """Clients send '' for a field they leave unset (sampler_name '' is unset too), and A1111 reads an
    empty schedule type as Automatic. A type it does not know is the 'scheduler' field's fault."""
    assert api.a1111_job({"prompt": "a fox", "scheduler": ""}, CTX)[0].images[0].scheduler == "default"
    own = api.a1111_job({"prompt": "a fox", "sampler_name": "DPM++ 2M"}, CTX)[0].images[0].scheduler
    for empty in ("", "  "):
        job, _ = api.a1111_job({"prompt": "a fox", "sampler_name": "DPM++ 2M", "scheduler": empty}, CTX)
        assert job.images[0].scheduler == own == "dpm++2m-karras"
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "sampler_name": "DPM++ 2M", "scheduler": "Sideways"}, CTX)
    assert e.value.field == "scheduler" and "'Sideways'" in e.value.message
    with pytest.raises(api.BadRequest) as e:
        api.a1111_job({"prompt": "a fox", "sampler_name": "Sideways", "scheduler": "Karras"}, CTX)
    assert e.value.field == "sampler_name"


def test_what_a_body_holds_is_echoed_bounded():
    """Names a client sent come back in refusals and warnings: a 200,000-character one is quoted by
    its start and size, and a thousand unknown fields are not a thousand warnings."""
    huge = "B" + "b" * 200_000
    refusals = [(api.a1111_job, {"sampler_name": huge + "Scheduler"}), (api.openai_job, {"response_format": huge})]
    for parse, body in refusals:
        with pytest.raises(api.BadRequest) as e:
            parse({"prompt": "a fox", **body}, CTX)
        assert len(e.value.message) < 1000 and "200,0" in e.value.message, parse
    warned = [(api.a1111_job, {"spo_model": huge}),
              (api.a1111_job, {"override_settings": {"sd_model_checkpoint": huge}}),
              (api.openai_job, {"model": huge}), (api.openai_job, {"output_format": huge}),
              (api.openai_job, {huge: 1}), (api.a1111_job, {huge: 1, **{f"k{i}": 1 for i in range(1000)}})]
    for parse, body in warned:
        job = parse({"prompt": "a fox", **body}, CTX)
        job = job[0] if isinstance(job, tuple) else job
        assert 0 < len(job.warnings) <= 21 and sum(map(len, job.warnings)) < 5000, (parse, job.warnings[:3])
    job, _ = api.a1111_job({"prompt": "a fox", **{f"k{i}": 1 for i in range(1000)}}, CTX)
    assert job.warnings[-1] == "980 more fields spo does not support were ignored."
    job, _ = api.a1111_job({"prompt": "a fox", **{f"k{i:02}": 1 for i in range(21)}}, CTX)
    assert len(job.warnings) == 21 and job.warnings[-1] == "1 more field spo does not support was ignored."
    assert {w.split("'")[1] for w in job.warnings[:-1]} == {f"k{i:02}" for i in range(20)}
    job, _ = api.a1111_job({"prompt": "a fox", **{f"k{i:02}": 1 for i in range(20)}}, CTX)
    assert len(job.warnings) == 20 and ignored(job) == {f"k{i:02}" for i in range(20)}  # all named, none counted


def test_a_schedule_type_with_the_default_sampler_index_is_euler_with_it():
    """sampler_index 'Euler' is A1111's default, which spo's own scheduler stands for; but with a schedule
    type it is what A1111 runs: 'Euler' and 'Karras' make Euler Karras, not a refusal."""
    def scheduler(**body):
        return api.a1111_job({"prompt": "a fox", **body}, CTX)[0].images[0].scheduler

    assert scheduler(sampler_index="Euler", scheduler="Karras") == scheduler(sampler_name="Euler", scheduler="Karras")
    assert scheduler(sampler_index="Euler", scheduler="Karras") != "default"
    assert scheduler(sampler_index="Euler") == scheduler(sampler_index="Euler", scheduler="Automatic") == "default"


def test_openai_fields_that_never_change_the_image_are_not_warned_of():
    """`user` (an end user's id, for abuse monitoring), `moderation` and `output_compression` (PNG has
    none to set) change no pixel at any value; quality and style would."""
    quiet = {"user": "user-1234", "moderation": "low", "output_compression": 50}
    job = api.openai_job({"prompt": "a fox", **quiet}, CTX)
    assert job.warnings == ()
    job = api.openai_job({"prompt": "a fox", **quiet, "quality": "hd", "style": "natural"}, CTX)
    assert {w.split("'")[1] for w in job.warnings} == {"quality", "style"}


# --------------------------------------------------------------------------------------------
# Issue 23: image to image in the bodies (no pipeline: the jobs the routes would queue)

def _png(path, size=(64, 48), mode="RGB", color=(200, 30, 30)):
    from PIL import Image

    Image.new(mode, size, color).save(path)
    return path


def _b64(path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture
def ctx(tmp_path):
    return api.Context(("spo",), max_images=8, uploads=tmp_path / "out" / "inputs")


def test_a1111_img2img_reads_a1111s_fields_into_the_cli_request(tmp_path, ctx):
    import hashlib

    from PIL import Image

    image = _png(tmp_path / "in.png", (1024, 1024))  # SDXL's size: nothing to warn of
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (256, 256, 768, 768))
    mask.save(tmp_path / "mask.png")
    mask = tmp_path / "mask.png"
    job, parameters = api.a1111_img2img_job({
        "prompt": "a fox", "init_images": [_b64(image)], "mask": _b64(mask), "denoising_strength": 0.6, "steps": 10,
        "seed": 3, "batch_size": 2, "mask_blur": 6, "inpaint_full_res": True, "inpaint_full_res_padding": 32,
        "inpainting_fill": 1}, ctx)
    first = job.images[0]
    assert [r.seed for r in job.images] == [3, 4] and first.mode == "inpaint"
    assert (first.strength, first.mask_blur, first.mask_crop) == (0.6, 6, 32)
    assert first.image.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert first.image.path == str(ctx.uploads / f"{first.image.sha256}.png")  # kept by its content
    assert job.warnings == () and (parameters["width"], parameters["height"]) == (1024, 1024)
    assert parameters["init_images"] is None and parameters["mask"] is None
    # Defaults: A1111's strength and blur, spo's whole picture when inpaint_full_res is absent.
    job, _ = api.a1111_img2img_job({"prompt": "a fox", "init_images": [_b64(image)], "mask": _b64(mask)}, ctx)
    assert (job.images[0].strength, job.images[0].mask_blur, job.images[0].mask_crop) == (0.75, 4, None)
    job, _ = api.a1111_img2img_job({"prompt": "a fox", "init_images": [_b64(image)], "mask_blur_x": 2,
                                    "mask_blur_y": 2, "mask": _b64(mask)}, ctx)
    assert job.images[0].mask_blur == 2
    # Without a mask, the mask's fields change nothing and say nothing.
    job, _ = api.a1111_img2img_job({"prompt": "a fox", "init_images": [_b64(image)], "inpainting_fill": 0,
                                    "inpaint_full_res": True, "mask_blur": 9}, ctx)
    assert job.images[0].mode == "img2img" and job.images[0].mask_blur == 0 and job.warnings == ()


def test_a1111_inverted_mask_is_kept_as_the_mask_that_runs(tmp_path, ctx):
    from PIL import Image

    image = _png(tmp_path / "in.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 32, 48))
    mask.save(tmp_path / "half.png")
    job, _ = api.a1111_img2img_job({"prompt": "a fox", "init_images": [_b64(image)],
                                    "mask": _b64(tmp_path / "half.png"), "inpainting_mask_invert": 1}, ctx)
    with Image.open(job.images[0].mask.path) as kept:
        assert kept.getpixel((0, 0)) == 0 and kept.getpixel((63, 0)) == 255  # white is now the right half


@pytest.mark.parametrize("change, field", [
    ({"init_images": []}, "init_images"),
    ({"init_images": "abc"}, "init_images"),
    ({"denoising_strength": 0}, "denoising_strength"),
    ({"denoising_strength": 2}, "denoising_strength"),
    ({"mask": "%%%"}, "mask"),
    ({"inpainting_mask_invert": 2, "mask": None}, None),  # without a mask: never read
    ({"resize_mode": 2, "width": 32, "height": 32}, "resize_mode"),
])
def test_a1111_img2img_refusals_name_the_field(tmp_path, ctx, change, field):
    body = {"prompt": "a fox", "init_images": [_b64(_png(tmp_path / "in.png"))], "steps": 10, **change}
    if field is None:
        api.a1111_img2img_job(body, ctx)
        return
    with pytest.raises(api.BadRequest) as e:
        api.a1111_img2img_job(body, ctx)
    assert e.value.field == field and e.value.status == 400


def test_a1111_hires_fields_map_to_the_cli_hires(ctx):
    job, parameters = api.a1111_job({"prompt": "a fox", "enable_hr": True, "width": 512, "height": 768}, ctx)
    hires = job.images[0].hires
    assert (hires.scale, hires.upscaler, hires.steps, hires.strength) == (2.0, "latent", None, 0.75)  # A1111's API
    assert parameters["hr_upscaler"] == "Latent" and parameters["denoising_strength"] == 0.75
    job, _ = api.a1111_job({"prompt": "a fox", "enable_hr": True, "width": 512, "height": 768, "hr_resize_x": 768,
                            "hr_upscaler": "lanczos", "hr_second_pass_steps": 20, "denoising_strength": 0.4}, ctx)
    hires = job.images[0].hires
    assert (hires.scale, hires.upscaler, hires.steps, hires.strength) == (1.5, "lanczos", 20, 0.4)
    job, _ = api.a1111_job({"prompt": "a fox", "enable_hr": True, "width": 512, "height": 768, "hr_resize_y": 1152,
                            "hr_resize_x": 768}, ctx)
    assert job.images[0].hires.scale == 1.5  # both given, the same shape: a scale
    assert api.a1111_job({"prompt": "a fox", "enable_hr": False, "hr_scale": 3}, ctx)[0].images[0].hires is None
    for change, field in (({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler"), ({"hr_resize_x": 1024,
                          "hr_resize_y": 1024}, "hr_resize_x"), ({"hr_scale": 1}, "hr_scale"),
                          ({"denoising_strength": 0.01}, "denoising_strength"), ({"enable_hr": "yes"}, "enable_hr")):
        with pytest.raises(api.BadRequest) as e:
            api.a1111_job({"prompt": "a fox", "enable_hr": True, "width": 512, "height": 768, **change}, ctx)
        assert e.value.field == field, change


def test_openai_edit_masks_are_converted_to_white_means_repaint(tmp_path, ctx):
    import io

    from PIL import Image

    def png(im) -> bytes:
        buf = io.BytesIO()
        im.save(buf, "PNG")
        return buf.getvalue()

    image = png(Image.new("RGB", (64, 48), (10, 120, 200)))
    mask = Image.new("RGBA", (64, 48), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 24, 24))
    fields = {"prompt": "a boat", "n": "2", "seed": "7", "steps": "4", "size": "", "model": "dall-e-2"}
    job = api.openai_edit_job(fields, {"image": [image], "mask": [png(mask)]}, ctx)
    first = job.images[0]
    assert [r.seed for r in job.images] == [7, 8] and first.steps == 4 and first.strength == 1.0
    with Image.open(first.mask.path) as kept:
        assert kept.mode == "L" and kept.getpixel((10, 10)) == 255 and kept.getpixel((40, 40)) == 0
    # No mask, no transparency: the whole image at spo's strength. No mask, a transparent hole: that hole.
    assert api.openai_edit_job(fields, {"image": [image]}, ctx).images[0].mode == "img2img"
    holed = api.openai_edit_job({**fields, "strength": "0.5"}, {"image[]": [png(mask)]}, ctx).images[0]
    assert holed.mode == "inpaint" and holed.strength == 0.5
    for files, extra, param in (({}, {}, "image"), ({"image": [image, image]}, {}, "image"),
                                ({"image": [image], "mask": [image]}, {}, "mask"),
                                ({"image": [b"not a png"]}, {}, "image"),
                                ({"image": [image]}, {"steps": "many"}, "steps"),
                                ({"image": [image], "other": [image]}, {}, "other")):
        with pytest.raises(api.BadRequest) as e:
            api.openai_edit_job({**fields, **extra}, files, ctx)
        assert e.value.field == param, (files.keys(), extra)


def test_run_job_takes_inputs_by_their_checksum(tmp_path, ctx):
    import hashlib

    image = _png(tmp_path / "in.png")
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    item = {"prompt": "a fox", "seed": 1, "steps": 10, "image": sha, "strength": 0.5}
    ctx.uploads.mkdir(parents=True)
    (ctx.uploads / f"{sha}.png").write_bytes(b"planted under the name")  # a name is not its content
    job = api.run_job({"images": [item, {**item, "seed": 2}], "inputs": {sha: _b64(image)}}, ctx)
    assert [r.image.sha256 for r in job.images] == [sha, sha] and job.images[0].strength == 0.5
    assert (ctx.uploads / f"{sha}.png").read_bytes() == image.read_bytes()
    hires = api.run_job({"images": [{"prompt": "a fox", "seed": 1, "steps": 10, "width": 64, "height": 64,
                                     "hires": {"scale": 1.5, "upscaler": "lanczos", "steps": None, "strength": 0.7}}]},
                        ctx).images[0].hires
    assert (hires.scale, hires.upscaler) == (1.5, "lanczos")
    with pytest.raises(api.BadRequest) as e:
        api.run_job({"images": [item], "inputs": {"0" * 64: _b64(image)}}, ctx)
    assert e.value.field == "inputs" and "SHA-256" in e.value.message
    with pytest.raises(api.BadRequest) as e:
        api.run_job({"images": [item]}, ctx)
    assert e.value.field == "images[0].image"


def test_base64_is_read_strictly_but_may_be_wrapped():
    import base64
    import textwrap

    from spo_cli.serve import uploads

    data = bytes(range(256)) * 3
    text = base64.b64encode(data).decode()
    assert uploads.from_base64("\n".join(textwrap.wrap(text, 76)), "f") == data  # as `base64` prints it
    assert uploads.from_base64("data:image/png;base64," + text, "f") == data
    for bad in (text[:40] + "*" + text[40:], text[:-1], "data:image/png," + text, "", None, 5):
        with pytest.raises(uploads.BadUpload) as e:
            uploads.from_base64(bad, "f")
        assert e.value.field == "f" and e.value.status == 400
    with pytest.raises(uploads.BadUpload) as e:
        uploads.from_base64("A" * (uploads.UPLOAD_BYTES_MAX // 3 * 4 + 8), "f")
    assert e.value.status == 413


def test_openai_edit_form_reads_watermark_as_a_boolean(tmp_path, ctx):
    # A multipart form has only text: the openai SDK sends a boolean as "true" / "false".
    image = _png(tmp_path / "in.png", (256, 256)).read_bytes()
    fields = {"prompt": "a boat", "steps": "4"}
    assert api.openai_edit_job({**fields, "watermark": "true"}, {"image": [image]}, ctx).images[0].watermark is True
    assert api.openai_edit_job({**fields, "watermark": "False"}, {"image": [image]}, ctx).images[0].watermark is False
    with pytest.raises(api.BadRequest) as e:
        api.openai_edit_job({**fields, "watermark": "yes"}, {"image": [image]}, ctx)
    assert e.value.field == "watermark"


def test_a_data_url_of_any_media_type_is_read_as_its_bytes(tmp_path, ctx):
    # The page's FileReader names the type from the file's name: a PNG without an extension is
    # "application/octet-stream", a text file "text/plain"; what decides is what the bytes are.
    image = _b64(_png(tmp_path / "in.png"))
    for url in ("data:application/octet-stream;base64," + image, "data:;base64," + image):
        job, _ = api.a1111_img2img_job({"prompt": "a fox", "init_images": [url], "steps": 4}, ctx)
        assert job.images[0].mode == "img2img"
    text = "data:text/plain;base64," + base64.b64encode(b"hello, not an image").decode()
    with pytest.raises(api.BadRequest) as e:
        api.a1111_img2img_job({"prompt": "a fox", "init_images": [text], "steps": 4}, ctx)
    assert e.value.field == "init_images[0]" and "not an image" in e.value.message

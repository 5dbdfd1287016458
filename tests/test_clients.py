"""spo serve as the client libraries people use see it: webuiapi (AUTOMATIC1111's API) and the openai SDK,
unmodified, against a real uvicorn on a loopback port with the tiny pipeline (no mocks).

One server for the module, loaded once with two models (the plain one and the preset that carries a
LoRA); it wants credentials, as a server off loopback would: a bearer token (the openai SDK's api_key)
or HTTP Basic (webuiapi's username and password, A1111's --api-auth).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.request

import numpy as np
import openai  # the test extra's: a missing one fails here rather than skipping what it tests
import pytest
import webuiapi
from PIL import Image

from tests.conftest import HANG
from tests.test_serve import Running, png_pixels

# early: the serve group is about 50 s in one worker; started last, it would run alone at the end.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve"), pytest.mark.early]


TOKEN = "a-test-token-0123456789"
USER, PASSWORD = "alice", "correct-horse-battery"
SMALL = {"width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def served(hub_cache, tmp_path_factory):
    s = Running(tmp_path_factory.mktemp("clients"), labels=("spo", "spo-lora"), token=TOKEN,
                api_auth=((USER, PASSWORD),)).start().ready()
    host, port = s.url.removeprefix("http://").split(":")
    s.host, s.port = host, int(port)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def webui(served):
    return webuiapi.WebUIApi(host=served.host, port=served.port, username=USER, password=PASSWORD)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key=TOKEN, max_retries=0, timeout=HANG)


def test_webuiapi_txt2img_with_its_defaults_is_warned_of_nothing(webui):
    """webuiapi sends every field at its own defaults (eta 1, hr_upscaler Latent, seed_resize 0,
    sampler_index …): none would change the image, so none is called ignored."""
    result = webui.txt2img(prompt="a red fox", seed=7, **SMALL)
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["all_seeds"] == [7] and result.info["sampler_name"] == "Euler a"
    assert [w for w in result.info["warnings"] if "ignored" in w] == []
    # The sampler it names by the old field alone is applied (with webuiapi's scheduler "automatic":
    # DPM++ 2M's own Karras, as A1111 reads it), and said to be.
    by_index = webui.txt2img(prompt="a red fox", seed=7, sampler_name="", sampler_index="DPM++ 2M", **SMALL)
    assert by_index.info["sampler_name"] == by_index.parameters["sampler_name"] == "DPM++ 2M Karras"
    assert not any("sampler_index" in w for w in by_index.info["warnings"])
    assert np.abs(png_pixels(_png(result.images[0])) - png_pixels(_png(by_index.images[0]))).max() > 0


def test_webuiapi_lists_schedulers_loras_and_upscalers(webui):
    schedulers = webui.get_schedulers()
    assert {"automatic", "uniform", "karras"} <= {s["name"] for s in schedulers}
    assert all(set(s) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for s in schedulers)
    loras = webui.get_loras()  # the spo-lora preset's LoRA, by its file's stem
    assert [lora["name"] for lora in loras] == ["spo_sdxl_10ep_4k-data_lora_diffusers"]
    assert set(loras[0]) == {"name", "alias", "path", "metadata"}
    assert webui.get_upscalers() == [{"name": "None", "model_name": None, "model_path": None, "model_url": None,
                                      "scale": 4}]
    assert webui.util_get_scheduler_names() == sorted(s["name"] for s in schedulers)


def test_webuiapi_needs_its_credentials(served):
    anonymous = webuiapi.WebUIApi(host=served.host, port=served.port)
    with pytest.raises(RuntimeError) as e:
        anonymous.txt2img(prompt="a red fox", **SMALL)
    status, text = e.value.args
    assert status == 401 and json.loads(text)["error"] == "HTTPException"  # A1111's error body
    wrong = webuiapi.WebUIApi(host=served.host, port=served.port)
    wrong.set_auth(USER, PASSWORD + "x")
    refused = wrong.get_loras()  # its listing helpers hand back whatever JSON comes
    assert refused["error"] == "HTTPException" and "user name and password" in refused["detail"]
    wrong.set_auth(USER, PASSWORD)
    assert wrong.get_upscalers()[0]["name"] == "None"


def test_openai_images_generate_as_b64_json_and_url(client, served):
    common = dict(prompt="a red fox", n=1, size="64x64", extra_body={"seed": 11, "steps": 2})
    b64 = client.images.generate(response_format="b64_json", **common)
    pixels = png_pixels(base64.b64decode(b64.data[0].b64_json))
    linked = client.images.generate(response_format="url", **common)
    url = linked.data[0].url
    assert url.startswith(served.url + "/outputs/")
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=HANG) as r:
        assert np.array_equal(png_pixels(r.read()), pixels)  # same seed, same pixels, either way


def test_openai_models_list_and_retrieve(client):
    listed = client.models.list()
    assert [m.id for m in listed.data] == ["spo", "spo-lora"]
    assert all(m.object == "model" and m.created > 0 and m.owned_by for m in listed.data)
    assert client.models.retrieve("spo-lora").id == "spo-lora"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("dall-e-3")
    assert e.value.code == "model_not_found"


@pytest.mark.parametrize("kwargs, param", [
    (dict(size="64x64x64"), "size"),
    (dict(size="64x64", extra_body={"steps": 0}), "steps"),
    (dict(size="64x64", response_format="jpeg"), "response_format"),
])
def test_openai_errors_carry_param_type_and_code(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="a red fox", **kwargs)
    assert (e.value.param, e.value.type, e.value.code) == (param, "invalid_request_error", "invalid_value")
    assert param in e.value.message


def test_openai_without_the_token(served):
    anonymous = openai.OpenAI(base_url=served.url + "/v1", api_key="not-the-token-0000000", max_retries=0,
                              timeout=HANG)
    with pytest.raises(openai.AuthenticationError) as e:
        anonymous.models.list()
    assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_openai_images_edit_and_webuiapi_img2img_are_spo_generate_pixels(client, webui, tmp_path):
    """The SDK's client.images.edit (multipart, OpenAI's transparent = repaint mask) and webuiapi's
    img2img (base64, white = repaint, every field at webuiapi's defaults) give `spo generate`'s pixels."""
    from tests.test_serve import cli_image, noise_png, square_mask

    image = noise_png(tmp_path / "in.png")
    white = square_mask(tmp_path / "white.png")
    masked, _ = cli_image(tmp_path, "a red fox", "--image", str(image), "--mask", str(white), "--seed", "4",
                          "--steps", "2", "--strength", "1")
    with image.open("rb") as f, square_mask(tmp_path / "clear.png", openai=True).open("rb") as m:
        edited = client.images.edit(image=f, mask=m, prompt="a red fox", model="gpt-image-1",
                                    extra_body={"seed": 4, "steps": 2})
    assert np.array_equal(png_pixels(base64.b64decode(edited.data[0].b64_json)), masked)

    redrawn, _ = cli_image(tmp_path, "a red fox", "--image", str(image), "--seed", "4", "--steps", "2",
                           "--strength", "0.5", "--width", "64", "--height", "64")
    result = webui.img2img(images=[Image.open(image)], prompt="a red fox", seed=4, steps=2, cfg_scale=5,
                           denoising_strength=0.5, width=64, height=64, sampler_name="Euler", scheduler="automatic")
    assert np.array_equal(png_pixels(_png(result.images[0])), redrawn)
    assert [w for w in result.info["warnings"] if "ignored" in w or "not supported" in w] == []

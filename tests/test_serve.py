"""spo serve over real HTTP: a real uvicorn on a loopback port, the tiny pipeline, no mocks.

One server (one loaded pipeline) serves every test here; it runs uvicorn in a thread of the test process,
as `spo serve` runs it in its main thread. The shutdown test starts the real command in a process.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.conftest import HANG, SPO_CLI

# early: the serve group is about 50 s in one worker; started last, it would run alone at the end.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serve"), pytest.mark.early]

SIZE = {"width": 64, "height": 64}
TOKEN = "a-test-token-0123456789"
WAIT = 300  # a deadline for every polling loop: long against a busy machine, short against a hang


def wait_for(condition, what: str, every: float = 0.05):
    """Poll `condition` until it is true (and return its value), or fail once WAIT seconds have passed."""
    deadline = time.monotonic() + WAIT
    while not (value := condition()):
        assert time.monotonic() < deadline, f"waited {WAIT} s for {what}"
        time.sleep(every)
    return value


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def request(url: str, body=None, *, method: str | None = None, headers: dict | None = None, raw: bytes | None = None):
    """(status, parsed JSON or text, headers) of one HTTP request; 4xx/5xx are answers, not errors."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=HANG) as r:
            status, text, hdrs = r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        status, text, hdrs = e.code, e.read(), e.headers
    try:
        return status, json.loads(text), hdrs
    except ValueError:
        return status, text.decode("utf-8", "replace"), hdrs


def metrics(url: str) -> dict[tuple, float]:
    """/metrics parsed by prometheus_client's own parser: {(name, (label, value)…): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text, _ = request(url + "/metrics")
    assert status == 200, text
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(url: str, name: str, missing: float | None = None, **labels) -> float:
    """One series' value. A series not there fails, unless `missing` is given (a counter that may not
    have counted yet): a label renamed must not read as 0."""
    got = metrics(url)
    key = (name, *sorted(labels.items()))
    assert missing is not None or key in got, f"no series {key} in /metrics"
    return got.get(key, missing)


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB")).astype(int)


class Running:
    """A built server (spo_cli.cli.serve.build) run by uvicorn in a thread."""

    def __init__(self, tmp: Path, labels=("spo",), **kw):
        import uvicorn

        from spo_cli.cli.serve import build
        from spo_cli.cli.ui import UI

        self.server = build(UI(quiet=True), list(labels), device="cpu", out=str(tmp / "out"), **kw)
        self.url = self.server.url
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.server.app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.server.sock]}, daemon=True)

    def start(self, worker: bool = True) -> Running:
        if worker:
            self.server.worker.start()
        self.thread.start()
        wait_for(lambda: self.uvicorn.started, "uvicorn to start", 0.01)
        return self

    def ready(self) -> Running:
        def loaded():
            assert not self.server.worker.load_error, self.server.worker.load_error
            return request(self.url + "/health")[0] == 200

        wait_for(loaded, "the model to load")
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join()
        self.server.worker.drain()


@contextmanager
def another_app(running: Running, settings):
    """A second app (other settings: a token, --no-save) on `running`'s loaded worker: its URL."""
    import uvicorn

    from spo_cli.serve.app import create_app

    app = uvicorn.Server(uvicorn.Config(create_app(running.server.worker, settings), host="127.0.0.1", port=0,
                                        log_level="warning", lifespan="off"))
    thread = threading.Thread(target=app.run, daemon=True)
    thread.start()
    wait_for(lambda: app.started, "uvicorn to start", 0.01)
    try:
        yield f"http://127.0.0.1:{app.servers[0].sockets[0].getsockname()[1]}"
    finally:
        app.should_exit = True
        thread.join()


def spawn(folder: Path, *args: str, **popen):
    # Its stderr goes to a file: a pipe nobody reads until the end could fill and stop the server.
    # One OpenMP thread: it waits beside the other tests, and threads that outnumber the free cores
    # spin-wait on each other (a call of the tiny model went from a second to minutes on a busy machine).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(folder / "stderr.log", "w") as log:
        proc = subprocess.Popen([*SPO_CLI, "serve", "--port", "0", "--device", "cpu", "--out", str(folder / "out"),
                                 "--json", *args], stdout=subprocess.PIPE, stderr=log, text=True, env=env, **popen)
    yield proc, folder
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def spawned(hub_cache, tmp_path_factory):
    """`spo serve` in a process of its own, for the SIGTERM test. Starting it (importing torch and diffusers,
    loading the model: nearly all of that test's time) overlaps the tests before it, as `server` asks
    for it first."""
    # --debug: uvicorn logs at info level, and none of it may reach stdout (--json: one line there); and
    # the access lines hold no secret even then.
    yield from spawn(tmp_path_factory.mktemp("spawned"), "--debug", "--max-queue", "2")


@pytest.fixture(scope="session")
def spawned_for_ctrl_c(hub_cache, tmp_path_factory):
    """Another `spo serve` process, for the second Ctrl-C; started early, as `spawned` is."""
    yield from spawn(tmp_path_factory.mktemp("spawned-ctrl-c"))


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.fixture(scope="session")
def spawned_sigint_ignored(hub_cache, tmp_path_factory):
    """`spo serve` started with SIGINT ignored, as a script's `spo serve &` starts it."""
    yield from spawn(tmp_path_factory.mktemp("spawned-sigint-ignored"), preexec_fn=_ignore_sigint)


# Session-scoped, not module-scoped: under xdist a worker may run other modules' tests between these,
# and pytest would tear a module's server down and load its pipeline again each time.
@pytest.fixture(scope="session")
def server(hub_cache, tmp_path_factory, spawned, spawned_for_ctrl_c):
    # Batches of up to 2 images, gathered for up to 0.3 s: long enough that two requests sent together
    # share a call on a busy machine, short against a pipeline call.
    s = Running(tmp_path_factory.mktemp("serve"), batch_size=2, batch_wait_ms=300, max_queue=4).start().ready()
    yield s
    s.stop()


def test_answers_are_spo_generate_pixels_with_the_same_metadata(server, tmp_path):
    """OpenAI and A1111 requests give the pixels `spo generate --seed S` gives with the same settings,
    the infotext its PNG carries, and the files it writes."""
    r = invoke("generate", "a red fox in fresh snow", "--seed", "7", "-n", "2", "--steps", "2", "--width", "64",
               "--height", "64", "--device", "cpu", "--scheduler", "dpm++2m-karras", "--out", str(tmp_path),
               "--json", "--quiet")
    assert r.exit_code == 0, r.output
    cli = json.loads(r.stdout)
    cli_pixels = [png_pixels(Path(w["image"]).read_bytes()) for w in cli]

    status, body, _ = request(server.url + "/v1/images/generations", {
        "prompt": "a red fox in fresh snow", "n": 2, "size": "64x64", "seed": 7, "steps": 2,
        "scheduler": "dpm++2m-karras", "model": "dall-e-3", "quality": "hd"})
    assert status == 200, body
    assert set(body) == {"created", "data", "spo"} and len(body["data"]) == 2
    served = [base64.b64decode(d["b64_json"]) for d in body["data"]]
    for ours, theirs in zip(served, cli_pixels):
        assert np.abs(png_pixels(ours) - theirs).max() <= 1  # the two may share a call: ≤ 1/255, as in batch
    assert body["spo"]["seeds"] == [7, 8]
    assert any("'model' 'dall-e-3' is not loaded" in w for w in body["spo"]["warnings"])
    assert any("'quality'" in w for w in body["spo"]["warnings"])
    # Written like spo generate: an image and its sidecar under --out, the sidecar's recipe the CLI's.
    out = server.server.settings.out
    sidecar = json.loads((out / body["spo"]["files"][0]).with_suffix(".json").read_text())
    cli_sidecar = json.loads(Path(cli[0]["sidecar"]).read_text())
    recipe = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "model", "vae",
              "dtype", "prompt_syntax", "generator_device")
    assert {k: sidecar[k] for k in recipe} == {k: cli_sidecar[k] for k in recipe}
    assert (out / body["spo"]["files"][0]).read_bytes() == served[0]

    status, body, _ = request(server.url + "/sdapi/v1/txt2img", {
        "prompt": "a red fox in fresh snow", "seed": 7, "steps": 2, "cfg_scale": 5, "width": 64, "height": 64,
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 1, "n_iter": 2,
        "enable_hr": False, "restore_faces": False, "styles": []})  # A1111 defaults: no warning
    assert status == 200, body
    assert set(body) == {"images", "parameters", "info"}  # A1111's TextToImageResponse
    info = json.loads(body["info"])
    assert info["all_seeds"] == [7, 8] and info["seed"] == 7 and info["sampler_name"] == "DPM++ 2M Karras"
    assert {"prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "width", "height",
            "cfg_scale", "steps", "batch_size", "infotexts", "job_timestamp", "sd_model_name"} <= set(info)
    assert [w for w in info["warnings"] if "not supported" in w] == [] and body["parameters"]["n_iter"] == 2
    for b64, theirs in zip(body["images"], cli_pixels):
        data = base64.b64decode(b64)
        assert np.abs(png_pixels(data) - theirs).max() <= 1
    with Image.open(Path(cli[0]["image"])) as im:
        assert info["infotexts"][0] == im.text["parameters"]


def test_requests_of_one_shape_share_a_call_and_keep_their_pixels(server):
    before = metric(server.url, "spo_batched_images_total", device="cpu", model="spo")
    body = {"prompt": "a lighthouse in a storm", "steps": 2, "size": "64x64"}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda seed: request(server.url + "/v1/images/generations", {**body, "seed": seed}),
                                (11, 12)))
    assert [a[0] for a in answers] == [200, 200]
    assert metric(server.url, "spo_batched_images_total", device="cpu", model="spo") - before == 2  # one call held both
    alone = [request(server.url + "/v1/images/generations", {**body, "seed": s, "n": 1})[1] for s in (11,)]
    together = png_pixels(base64.b64decode(answers[0][1]["data"][0]["b64_json"]))
    assert np.abs(together - png_pixels(base64.b64decode(alone[0]["data"][0]["b64_json"]))).max() <= 1


def test_a1111_endpoints_progress_interrupt_and_a_full_queue(server):
    url = server.url
    status, models, _ = request(url + "/sdapi/v1/sd-models")
    assert status == 200 and [m["model_name"] for m in models] == ["spo"]
    assert {"title", "model_name", "hash", "sha256", "filename", "config"} <= set(models[0])
    status, samplers, _ = request(url + "/sdapi/v1/samplers")
    assert status == 200 and {"Euler", "Euler a", "DPM++ 2M"} <= {s["name"] for s in samplers}
    status, options, _ = request(url + "/sdapi/v1/options")
    assert status == 200 and options["sd_model_checkpoint"] == "spo"
    status, body, _ = request(url + "/sdapi/v1/options", {"sd_model_checkpoint": "x"})
    assert status == 200 and "sd_model_checkpoint" in body["warnings"][0]

    # A slow job of 4 images in calls of 2: while its first call runs, the queue (4) holds its other
    # two, so a request for 3 more is turned away with 429; an interrupt stops the call in flight.
    slow = {"prompt": "a slow one", "n": 4, "size": "64x64", "steps": 200, "seed": 1}
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(request, url + "/v1/images/generations", slow)
        def stepping():
            assert not job.done(), job.result()
            p = request(url + "/sdapi/v1/progress")[1]
            return p if p["state"]["sampling_step"] >= 3 else None

        p = wait_for(stepping, "the slow job's third step")
        assert 0 < p["progress"] < 1 and p["eta_relative"] > 0 and p["state"]["sampling_steps"] == 200
        status, body, headers = request(url + "/v1/images/generations", {**slow, "n": 3})
        assert status == 429 and headers["Retry-After"] and "busy" in body["error"]["message"]
        assert request(url + "/sdapi/v1/interrupt", {})[0] == 200

        def interrupted():  # the job's second call, once it runs, is interrupted too
            if request(url + "/sdapi/v1/progress")[1]["state"]["sampling_step"] >= 1:
                assert request(url + "/sdapi/v1/interrupt", {})[0] == 200
            return job.done()

        wait_for(interrupted, "the job to be interrupted")
        status, body, _ = job.result()
    # Every image of the job was interrupted: no image, and it says why.
    assert status == 409 and "interrupted" in body["error"]["message"], body
    assert request(url + "/health")[1]["status"] == "ready"


def test_a_client_that_goes_away_has_its_queued_images_dropped(server):
    import http.client

    url = server.url
    worker = server.server.worker
    made = metric(url, "spo_images_total", device="cpu", model="spo")
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(request, url + OPENAI, {"prompt": "in flight", "n": 2, "size": "64x64", "steps": 200})
        wait_for(lambda: request(url + "/sdapi/v1/progress")[1]["state"]["sampling_step"] >= 1, "the first step")
        host, port = url.removeprefix("http://").split(":")
        gone = http.client.HTTPConnection(host, int(port))
        gone.request("POST", OPENAI, json.dumps({"prompt": "queued, then abandoned", "n": 3, "size": "64x64",
                                                 "steps": 1}), {"Content-Type": "application/json"})
        wait_for(lambda: worker.queued >= 3, "the second request to be queued", 0.02)
        gone.close()  # the client goes away before its turn
        wait_for(lambda: not worker.queued, "the abandoned images to be dropped")
        wait_for(lambda: request(url + "/sdapi/v1/interrupt", {}) and slow.done(), "the slow job to end")
    assert slow.result()[0] == 409
    assert metric(url, "spo_images_total", device="cpu", model="spo") == made  # neither interrupted nor abandoned ones were made


# At least 30 requests a hostile or careless client sends: each is a 4xx with a JSON error that
# names the field, never a 500, and (but for the DDIM one, which the loaded scheduler refuses)
# none reaches the pipeline.
OPENAI = "/v1/images/generations"
A1111 = "/sdapi/v1/txt2img"
HOSTILE = [
    (OPENAI, {}, 400, "prompt"),
    (OPENAI, {"prompt": ""}, 400, "prompt"),
    (OPENAI, {"prompt": 5}, 400, "prompt"),
    (OPENAI, {"prompt": "x" * 10_001}, 400, "prompt"),
    (OPENAI, {"prompt": "a\u0000b"}, 400, "prompt"),
    (OPENAI, {"prompt": "a fox", "n": 0}, 400, "n"),
    (OPENAI, {"prompt": "a fox", "n": 5}, 400, "n"),  # more than the queue holds
    (OPENAI, {"prompt": "a fox", "n": "2"}, 400, "n"),
    (OPENAI, {"prompt": "a fox", "n": 1.5}, 400, "n"),
    (OPENAI, {"prompt": "a fox", "size": "huge"}, 400, "size"),
    (OPENAI, {"prompt": "a fox", "size": "-64x64"}, 400, "size"),
    (OPENAI, {"prompt": "a fox", "size": "65x64"}, 400, "size"),
    (OPENAI, {"prompt": "a fox", "size": "99999x99999"}, 400, "size"),
    (OPENAI, {"prompt": "a fox", "size": "4096x4096"}, 400, "size"),  # 16 MP: past the pixel limit
    (OPENAI, {"prompt": "a fox", "response_format": "jpeg"}, 400, "response_format"),
    (OPENAI, {"prompt": "a fox", "seed": -5}, 400, "seed"),
    (OPENAI, {"prompt": "a fox", "seed": 2**32}, 400, "seed"),
    (OPENAI, {"prompt": "a fox", "seed": 4294967295, "n": 2}, 400, "seed"),  # the second seed overflows
    (OPENAI, {"prompt": "a fox", "steps": 0}, 400, "steps"),
    (OPENAI, {"prompt": "a fox", "steps": 10**9}, 400, "steps"),
    (OPENAI, {"prompt": "a fox", "guidance": "high"}, 400, "guidance"),
    (OPENAI, {"prompt": "a fox", "scheduler": "warp-drive"}, 400, "scheduler"),
    # valid on its face; the loaded model's DDIM cannot lay out 1000 steps (refused before denoising)
    (OPENAI, {"prompt": "a fox", "scheduler": "ddim", "steps": 1000, "size": "64x64"}, 400, "steps"),
    (OPENAI, {"prompt": "a fox", "generator_device": "tpu"}, 400, "generator_device"),
    (OPENAI, {"prompt": "a fox", "model": 42}, 400, "model"),
    (OPENAI, [1, 2], 400, None),
    (OPENAI, "a fox", 400, None),
    (A1111, {"prompt": "a fox", "cfg_scale": "NaN"}, 400, "cfg_scale"),
    (A1111, {"prompt": "a fox", "steps": -1}, 400, "steps"),
    (A1111, {"prompt": "a fox", "width": -64}, 400, "width"),
    (A1111, {"prompt": "a fox", "width": 60}, 400, "width"),
    (A1111, {"prompt": "a fox", "sampler_name": "LMS Karras++"}, 400, "sampler_name"),
    (A1111, {"prompt": "a fox", "sampler_name": "DPM++ 2M", "scheduler": "Sometimes"}, 400, "scheduler"),
    (A1111, {"prompt": "a fox", "batch_size": 65}, 400, "batch_size"),
    (A1111, {"prompt": "a fox", "batch_size": 2, "n_iter": 3}, 400, "n_iter"),
    (A1111, {"prompt": "a fox", "seed": 1e30}, 400, "seed"),
    (A1111, {"prompt": "a fox", "prompt_syntax": "markdown"}, 400, "prompt_syntax"),
    (A1111, {"prompt": "a fox", "negative_prompt": ["x"]}, 400, "negative_prompt"),
    (A1111, {"negative_prompt": "blurry"}, 400, "prompt"),
    (A1111, {"prompt": "a fox", "sampler_name": " "}, 400, "sampler_name"),  # "" is A1111's "none given"
    (A1111, {"prompt": "a fox", "scheduler": "Karras"}, 400, "scheduler"),  # a schedule type with no sampler
    (A1111, {"prompt": "(" * 400 + "a fox" + ")" * 400}, 400, "prompt"),  # 1.1 ** 400: NaN images
    (OPENAI, {"prompt": "a fox", "size": "\u00b2x\u00b2"}, 400, "size"),  # digits to str.isdigit, not to int()
    (OPENAI, {"prompt": "a fox", "size": "64x64junk"}, 400, "size"),
    (OPENAI, {"prompt": "a fox", "size": "64x64", "width": 64}, 400, "width"),
    (A1111, {"prompt": "a fox", "sampler_name": "DPMSolverMultistepScheduler"}, 400, "sampler_name"),
    (A1111, {"prompt": "a fox", "sampler_name": "AEvilScheduler"}, 400, "sampler_name"),
    (OPENAI, {"prompt": "a fox", "x": [[[[[[[[[[[[[[[[[[[["a"]]]]]]]]]]]]]]]]]]]]}, 400, "x[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"),
    # on this CPU-only server, noise on a GPU is refused by the worker, before any denoising
    (OPENAI, {"prompt": "a fox", "generator_device": "cuda", "size": "64x64", "steps": 1}, 400, "generator_device"),
    ("/spo/v1/run", {"images": [{"prompt": "a fox", "seed": None}]}, 400, "images[0]"),
    ("/spo/v1/run", {"images": [1]}, 400, "images[0]"),
    ("/spo/v1/run", {"model": 0, "images": [{"prompt": "a fox", "seed": 1}]}, 400, "model"),
    ("/spo/v1/run", {"images": [{"prompt": "a fox", "seed": 1, "steps": 0}]}, 400, "images[0].steps"),
]


@pytest.mark.parametrize("path,body,status,field", HOSTILE, ids=[f"{i}" for i in range(len(HOSTILE))])
def test_hostile_request(server, path, body, status, field):
    got, answer, _ = request(server.url + path, body)
    assert got == status, answer
    if path.startswith("/sdapi/"):  # A1111's error body names the field in its words
        assert f"'{field}'" in answer["detail"], answer
    else:
        assert answer["error"]["param"] == field and answer["error"]["message"], answer


def test_hostile_transport(server, tmp_path):
    url = server.url
    calls = metric(url, "spo_pipeline_calls_total", device="cpu", model="spo")
    cases = [
        (request(url + OPENAI, raw=b"{not json"), 400),
        # echoed back in answers or warnings, so refused before anything is made
        (request(url + A1111, raw=b'{"prompt": "a fox", "steps": 1, "width": 64, "height": 64, "zz": NaN}'), 400),
        (request(url + OPENAI, raw=b'{"prompt": "a fox", "steps": 1, "size": "64x64", "\\ud800": 1}'), 400),
        (request(url + "/sdapi/v1/options", raw=b'{"\\ud800": 1}'), 400),
        (request(url + OPENAI, raw=b"[" * 200_000 + b"]" * 200_000), 400),
        (request(url + "/spo/v1/gallery?limit=abc"), 400),
        (request(url + OPENAI, raw=b'{"prompt": "a fox", "steps": NaN}'), 400),
        (request(url + A1111, raw=b'{"prompt": "a fox", "steps": 1, "width": 64, "height": 64, "zz": 1e999}'), 400),
        (request(url + OPENAI, raw=b"\xff\xfe"), 400),
        (request(url + OPENAI, raw=b'{"prompt": "' + b"x" * (1 << 20) + b'"}'), 413),
        (request(url + OPENAI, method="GET"), 405),
        (request(url + "/sdapi/v1/extra-single-image", {"prompt": "x"}), 404),  # not served
        (request(url + "/outputs/../../../etc/passwd"), 404),
        (request(url + "/outputs/%2e%2e%2f%2e%2e%2fetc%2fpasswd"), 404),
        (request(url + "/outputs/..%2fserve.py"), 404),
        (request(url + "/outputs/nothing-here.png"), 404),
        (request(url + "/outputs/"), 404),
    ]
    # a link inside --out that points outside it is not followed
    out = server.server.settings.out
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (out / "link.json").symlink_to(secret)
    cases.append((request(url + "/outputs/link.json"), 404))
    for (status, body, _), want in cases:
        # OpenAI's error body, or A1111's under /sdapi/ (its message is `detail`)
        assert status == want and isinstance(body, dict) and (body.get("detail") or body["error"]["message"]), (
            want, status, body)
    assert metric(url, "spo_pipeline_calls_total", device="cpu", model="spo") == calls  # none of it reached the pipeline

    # A client that goes away in the middle of its body is not a server error.
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as half:
        half.sendall(b"POST " + OPENAI.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"pro")
    wait_for(lambda: metric(url, "spo_http_requests_total", 0.0, path=OPENAI, code="499"), "the 499 to be counted")
    assert metric(url, "spo_http_requests_total", 0.0, path=OPENAI, code="500") == 0


def test_the_gallery_passes_over_what_spo_did_not_write(server, tmp_path):
    out = server.server.settings.out
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    (out / "zz-broken.json").symlink_to(tmp_path / "nowhere.json")
    (out / "zz-types.json").write_text(json.dumps({"file": "zz-types.png", "scheduler": "euler", "model": "x",
                                                   "seed": "7"}))
    Image.new("RGB", (8, 8)).save(out / "zz-types.png")
    (out / "zz-out.json").write_text(json.dumps({"file": "../" + secret.name}))
    (out / "zz-list.json").write_text("[1, 2]")
    status, listing, _ = request(server.url + "/spo/v1/gallery?limit=500")
    assert status == 200, listing
    files = [item["file"] for item in listing["images"]]
    assert "zz-types.png" in files and not any(".." in f for f in files)
    odd = next(item for item in listing["images"] if item["file"] == "zz-types.png")
    assert (odd["scheduler"], odd["model"], odd["seed"]) == (None, None, None)  # wrong types read as absent


def test_other_hosts_other_origins_and_other_bodies_are_refused_over_http(server):
    """The guard in front of the real server: DNS rebinding (Host), other sites (Origin) and bodies a page
    can send without a preflight (text/plain) are refused before anything is read or made."""
    url = server.url
    calls = metric(url, "spo_pipeline_calls_total", device="cpu", model="spo")
    good = {"prompt": "a fox", "size": "64x64", "steps": 1, "seed": 1}
    status, body, _ = request(url + "/spo/v1/gallery", headers={"Host": "evil.example:" + url.rsplit(":", 1)[1]})
    assert status == 421 and body["error"]["param"] == "Host" and "images" not in body
    status, body, _ = request(url + OPENAI, good, headers={"Origin": "http://evil.example"})
    assert status == 403 and body["error"]["param"] == "Origin"
    status, body, _ = request(url + OPENAI, good, headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["error"]["message"]
    status, body, _ = request(url + A1111, good, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "'Content-Type: application/json'" in body["detail"]  # A1111's error body
    assert metric(url, "spo_pipeline_calls_total", device="cpu", model="spo") == calls
    status, body, _ = request(url + OPENAI, {}, headers={"Origin": url, "Host": url.removeprefix("http://")})
    assert status == 400 and body["error"]["param"] == "prompt"  # the page's own origin passes


def test_the_gallery_never_blocks_on_what_is_in_out(server):
    """A FIFO named like a sidecar (which hung every later gallery request), a link to /dev/zero (which
    grew the server without end) and a 1 GiB sparse sidecar: passed over, and the answer comes."""
    out = server.server.settings.out
    odd = [out / "zz-fifo.json", out / "zz-zero.json", out / "zz-sparse.json"]
    os.mkfifo(odd[0])
    odd[1].symlink_to("/dev/zero")
    with open(odd[2], "wb") as f:
        f.write(b'{"file": "x.png"')
        f.truncate(1 << 30)
    try:
        for _ in range(3):  # more than once: a blocked read used to hold an executor thread for good
            status, listing, _ = request(server.url + "/spo/v1/gallery?limit=500")
            assert status == 200 and not {i["file"] for i in listing["images"]} & {p.name for p in odd}
        assert request(server.url + "/outputs/zz-fifo.json")[0] == 404
    finally:
        for path in odd:
            path.unlink()


def test_metrics_health_page_and_outputs(server):
    """/metrics read with prometheus_client's own parser, before and after known requests."""
    url = server.url
    before = metrics(url)

    def grew(after: dict, key: tuple) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    made = request(url + OPENAI, {"prompt": "for the metrics", "n": 2, "size": "64x64", "steps": 1, "seed": 5})
    assert made[0] == 200, made
    request(url + "/no/such/page")
    request(url + "/outputs/" + made[1]["spo"]["files"][0])
    after = metrics(url)
    spo = (("device", "cpu"), ("model", "spo"))  # --device cpu: the one device, named as asked
    assert grew(after, ("spo_images_total", *spo)) == 2
    assert grew(after, ("spo_pipeline_calls_total", *spo)) == 1  # --batch-size 2: one call for both
    assert grew(after, ("spo_batched_images_total", *spo)) == 0  # one request's images: not batching
    assert grew(after, ("spo_image_failures_total", *spo)) == 0
    assert grew(after, ("spo_call_seconds_count", *spo)) == 1 and grew(after, ("spo_call_seconds_sum", *spo)) > 0
    assert grew(after, ("spo_queue_wait_seconds_count", *spo)) == 2
    assert grew(after, ("spo_http_requests_total", ("code", "200"), ("path", OPENAI))) == 1
    assert grew(after, ("spo_http_requests_total", ("code", "404"), ("path", "other"))) == 1
    assert grew(after, ("spo_http_requests_total", ("code", "200"), ("path", "/outputs/{name:path}"))) == 1
    assert after[("spo_ready",)] == 1 and after[("spo_queue_depth",)] == 0

    status, page, headers = request(url + "/")
    assert status == 200 and "<title>spo serve</title>" in page and "http://" not in page.split("<script>")[1]
    status, listing, _ = request(url + "/spo/v1/gallery?limit=2")
    assert status == 200 and len(listing["images"]) == 2
    assert urllib.request.urlopen(url + listing["images"][0]["url"], timeout=WAIT).status == 200


def test_interrupt_reaches_a_call_still_waiting_for_company_and_no_later_one(server):
    url = server.url
    assert request(url + "/sdapi/v1/interrupt", {})[0] == 200  # idle: nothing to stop, nothing remembered
    assert request(url + "/sdapi/v1/progress")[1]["state"]["interrupted"] is False
    with ThreadPoolExecutor(1) as pool:
        job = pool.submit(request, url + OPENAI, {"prompt": "alone", "size": "64x64", "steps": 100})
        wait_for(lambda: server.server.worker.queued
                 or request(url + "/sdapi/v1/progress")[1]["state"]["sampling_step"], "the job to start", 0.01)
        assert request(url + "/sdapi/v1/interrupt", {})[0] == 200  # waiting for company, or just started
        assert job.result()[0] == 409
    status, body, _ = request(url + OPENAI, {"prompt": "after", "size": "64x64", "steps": 1})
    assert status == 200, body  # the interrupt stopped one call, not this one


def test_a_model_that_does_not_load_is_said_and_ends_the_server(hub_cache):
    r = invoke("serve", "--port", "0", "--device", "cpu", "--models", "nobody/nothing", "--no-save")
    assert r.exit_code == 1, r.output
    assert "nobody/nothing" in r.output and "not available offline" in r.output and "Traceback" not in r.output


def test_a_server_that_is_not_spo_is_said_plainly(tmp_path):
    """--server at some other web server: one paragraph, not an unexpected error."""
    import functools
    import http.server

    (tmp_path / "spo" / "v1").mkdir(parents=True)
    (tmp_path / "spo" / "v1" / "models").write_text("<html>hello</html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{other.server_address[1]}"
        r = invoke("generate", "a fox", "--server", url, "--out", str(tmp_path / "o"))
        assert r.exit_code == 1 and "answered, but not as `spo serve` does" in " ".join(r.output.split())
        assert "Unexpected" not in r.output
    finally:
        other.shutdown()


def test_a_token_is_required_off_loopback(server, tmp_path):
    """Off loopback, spo serve refuses to start without a token; with one, every API call needs it."""
    r = invoke("serve", "--host", "0.0.0.0", "--port", "0")
    assert r.exit_code == 2 and "--token-file" in r.output and "Traceback" not in r.output
    short = tmp_path / "short"
    short.write_text("abc\n")
    r = invoke("serve", "--host", "0.0.0.0", "--token-file", str(short))
    assert r.exit_code == 2 and "at least 16" in r.output
    r = invoke("serve", "--cors-origin", "example.org")
    assert r.exit_code == 2 and "is not an origin" in r.output
    r = invoke("serve", "--models", "spo,spo")
    assert r.exit_code == 2 and "must name each model once" in r.output
    r = invoke("serve", "--port", "70000")
    assert r.exit_code == 2 and "--port must be from 0 to 65,535" in r.output
    r = invoke("serve", "--cors-origin", "https://a b")
    assert r.exit_code == 2 and "is not an origin" in r.output
    r = invoke("serve", "--host", "nonexistent.invalid")
    assert r.exit_code == 2 and "is not an address of this machine" in r.output
    # The same loaded worker behind a second app that wants a token.
    from spo_cli.serve.app import Settings

    settings = Settings(server.server.settings.out, server.server.settings.context, token=TOKEN)
    with another_app(server, settings) as url:
        body = {"prompt": "a fox", "size": "64x64", "steps": 1, "seed": 1}
        assert request(url + OPENAI, body)[0] == 401
        assert request(url + OPENAI, body, headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
        assert request(url + "/sdapi/v1/progress")[0] == 401
        assert request(url + "/outputs/x.png")[0] == 401
        assert request(url + "/spo/v1/gallery")[0] == 401 and request(url + "/spo/v1/info")[0] == 401
        assert request(url + OPENAI, body, headers={"Authorization": f"Basic {TOKEN}"})[0] == 401
        assert request(url + "/health")[0] == 200 and request(url + "/")[0] == 200  # no data in either
        assert request(url + "/health", headers={"Host": "evil.example"})[0] == 421  # rebinding: token or not
        status, answer, _ = request(url + OPENAI, body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and len(answer["data"]) == 1


def test_sigterm_finishes_the_call_in_flight_and_turns_the_queue_away(spawned):
    proc, folder = spawned
    out, log = folder / "out", folder / "stderr.log"
    try:
        started = json.loads(proc.stdout.readline())  # --json: one line, once listening
        url = started["url"]
        assert url.startswith("http://127.0.0.1:") and started["models"] == ["spo"], started

        def ready():
            assert proc.poll() is None, log.read_text()
            return request(url + "/health")[0] == 200

        wait_for(ready, "the model to load", 0.1)
        slow = {"prompt": "a fox", "size": "64x64", "steps": 30, "seed": 3}
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(request, url + OPENAI, slow)
            wait_for(lambda: request(url + "/sdapi/v1/progress")[1]["state"]["sampling_step"] >= 1, "the first step")
            # Nothing of these may reach the log: a query string, the Authorization header, the prompt.
            request(url + "/spo/v1/gallery?limit=2&key=query-secret", headers={"Authorization": "Bearer header-secret"})
            assert request(url + OPENAI, {"prompt": "a private prompt", "n": 0})[0] == 400
            queued = [pool.submit(request, url + OPENAI, {**slow, "seed": s}) for s in (4, 5)]
            wait_for(lambda: request(url + "/health")[1]["queued"] >= 2, "two queued requests")
            status, body, headers = request(url + OPENAI, {**slow, "seed": 6})  # --max-queue 2: full
            assert status == 429 and headers["Retry-After"], body
            proc.send_signal(signal.SIGTERM)
            status, body, _ = running.result()
            assert status == 200 and body["spo"]["seeds"] == [3]  # finished, and written
            for q in queued:
                status, body, headers = q.result()
                assert status == 503 and headers["Retry-After"], body
        proc.wait(timeout=WAIT)
        assert proc.stdout.read() == ""  # uvicorn's access lines went to stderr
        logged = log.read_text()
        assert "Traceback" not in logged
        # spo's access lines, not uvicorn's: client, method and path, status, seconds.
        assert re.search(r'^127\.0\.0\.1:\d+ - "POST /v1/images/generations" 200 \d+\.\d{3}s$', logged, re.M), logged
        assert re.search(r'^127\.0\.0\.1:\d+ - "GET /spo/v1/gallery" 200 \d+\.\d{3}s$', logged, re.M), logged
        assert "HTTP/1.1" not in logged  # uvicorn's own line is off
        assert not any(secret in logged for secret in ("query-secret", "limit=", "header-secret", "private prompt"))
        assert sorted(p.suffix for p in out.iterdir()) == [".json", ".png"]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_second_ctrl_c_abandons_the_call_in_flight_answers_json_and_exits_130(spawned_for_ctrl_c):
    """The first Ctrl-C turns the queue away and lets the call in flight finish; the second abandons it:
    its client is answered JSON 503 (not uvicorn's plain-text 500), nothing of it is written, and the
    process exits 130 (it aborted with 134: the interpreter shut down around the GPU thread in torch)."""
    second_ctrl_c(*spawned_for_ctrl_c)


def test_a_second_sigint_exits_130_though_the_process_started_with_sigint_ignored(spawned_sigint_ignored):
    """Started with SIGINT ignored (a script's `spo serve &`), uvicorn's handler still takes both signals,
    but nothing re-raises them as KeyboardInterrupt: `spo serve` returned from its loop as if nothing
    had happened, and the interpreter shut down around the device's thread in torch (exit 134)."""
    second_ctrl_c(*spawned_sigint_ignored)


def second_ctrl_c(proc, folder: Path) -> None:
    out, log = folder / "out", folder / "stderr.log"
    try:
        url = json.loads(proc.stdout.readline())["url"]

        def ready():
            assert proc.poll() is None, log.read_text()
            return request(url + "/health")[0] == 200

        wait_for(ready, "the model to load", 0.1)
        slow = {"prompt": "a fox", "size": "64x64", "steps": 900, "seed": 3}  # far longer than the test
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(request, url + OPENAI, slow)
            wait_for(lambda: request(url + "/sdapi/v1/progress")[1]["state"]["sampling_step"] >= 1, "the first step")
            queued = pool.submit(request, url + OPENAI, {**slow, "seed": 4})
            wait_for(lambda: request(url + "/health")[1]["queued"] >= 1, "a queued request")
            proc.send_signal(signal.SIGINT)
            status, body, _ = queued.result()  # answered: the first Ctrl-C has been taken
            assert status == 503 and body["error"]["type"] == "server_error", body
            proc.send_signal(signal.SIGINT)
            status, body, headers = running.result()
        assert status == 503 and headers["Retry-After"] and "stopped" in body["error"]["message"], body
        assert proc.wait(timeout=WAIT) == 130
        logged = log.read_text()
        assert "terminate called" not in logged and "Traceback" not in logged, logged
        assert "Interrupted: the call in flight was abandoned" in logged  # by `leave`, which never waits for it
        assert not out.exists() or list(out.iterdir()) == []
    finally:
        if proc.poll() is None:
            proc.kill()


CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                    reason="needs Debian's chromium (.ci/run installs it)")


def launch(p, *args: str):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", *args])


@pytest.fixture(scope="session")
def pair(hub_cache, tmp_path_factory):
    """A second server with two models (the page's compare toggle) and CORS for one origin; /health
    says 'loading' until its worker has loaded them."""
    s = Running(tmp_path_factory.mktemp("pair"), labels=["spo", "base"],
                cors_origins=["http://client.example"]).start(worker=False)
    status, body, _ = request(s.url + "/health")
    assert (status, body["status"]) == (503, "loading")
    s.server.worker.start()
    yield s.ready()
    s.stop()


def test_cors_only_for_the_origins_given(server, pair):
    preflight = {"Origin": "http://client.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    status, _, headers = request(pair.url + OPENAI, method="OPTIONS", headers=preflight)
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "http://client.example"
    status, _, headers = request(pair.url + OPENAI, method="OPTIONS", headers={**preflight, "Origin": "http://evil.example"})
    assert headers.get("Access-Control-Allow-Origin") is None
    status, _, headers = request(server.url + "/health", headers={"Origin": "http://client.example"})
    assert status == 403 and headers.get("Access-Control-Allow-Origin") is None  # off unless --cors-origin


def test_no_save_keeps_images_out_of_the_folder(pair):
    """--no-save: the same worker behind an app that writes nothing; url answers need files."""
    from spo_cli.serve.app import Settings

    ctx = pair.server.settings.context
    settings = Settings(pair.server.settings.out, type(ctx)(ctx.models, max_images=ctx.max_images, save=False))
    with another_app(pair, settings) as url:
        before = sorted(pair.server.settings.out.iterdir())
        status, body, _ = request(url + OPENAI, {"prompt": "kept in memory", "size": "64x64", "steps": 1,
                                                 "model": "base"})
        assert status == 200 and body["spo"]["files"] == [] and body["spo"]["model"] == "base"
        assert png_pixels(base64.b64decode(body["data"][0]["b64_json"])).shape == (64, 64, 3)
        assert sorted(pair.server.settings.out.iterdir()) == before
        status, body, _ = request(url + OPENAI, {"prompt": "x", "response_format": "url"})
        assert status == 400 and body["error"]["param"] == "response_format"


@needs_chromium
def test_the_page_in_a_real_browser(pair):
    """Headless Chromium: type a prompt, click Generate, see the progress bar move and the images
    arrive, SPO and SDXL side by side, with their seed; the gallery already held the earlier image."""
    from playwright.sync_api import sync_playwright

    made = request(pair.url + OPENAI, {"prompt": "made before the page opened", "size": "64x64", "steps": 2})
    assert made[0] == 200, made
    # A file whose name a shell would act on: its replay command must be quoted, not run, when pasted.
    out = pair.server.settings.out
    hostile = "y`touch${IFS}PWNED`$(id) 'q\";x.png"
    first = made[1]["spo"]["files"][0]
    (out / hostile).write_bytes((out / first).read_bytes())
    sidecar = json.loads((out / first).with_suffix(".json").read_text())
    (out / "zz-hostile.json").write_text(json.dumps({**sidecar, "file": hostile, "seed": 99}))
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.set_default_timeout(HANG * 1000)  # a busy machine is slow, not broken
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(pair.url + "/")
            page.wait_for_selector("#gallery .card img")  # the earlier image, from --out
            before = page.locator("#gallery .card").count()
            command = page.locator("#gallery .card[data-seed='99'] button").get_attribute("title")
            path = f"{out}/{hostile}"
            assert command == "spo replay " + shlex.quote(path) and shlex.split(command) == ["spo", "replay", path]
            words = ["", "plain-name_1.png", "a b", "it's", "$HOME", "`id`", "$(id)", "a\nb", "caf\u00e9", "x;y", "\\",
                     "'", "''", "\"", "*", "~user", "a!b", "%+=:,./-@"]
            assert page.evaluate("words => words.map(shellQuote)", words) == [shlex.quote(w) for w in words]
            page.fill("#prompt", "a lighthouse in a storm, seen from the page")
            page.fill("#seed", "4242")
            page.fill("#steps", "40")  # long enough on the tiny model for the bar to be seen moving
            page.evaluate("document.getElementById('size').add(new Option('64x64', '64x64', true, true))")
            assert page.inner_text("#compare-label") == "compare spo with base"
            page.check("#compare")
            page.click("#generate")
            page.wait_for_function("() => { const v = document.getElementById('progress').value; return v > 0 && v < 1; }")
            card = page.locator("#gallery .card[data-seed='4242']")
            card.wait_for()
            assert page.locator("#gallery .card").count() == before + 1
            assert page.locator("#gallery .card").first.get_attribute("data-seed") == "4242"  # newest first
            assert "seed 4242" in card.inner_text() and "40 steps" in card.inner_text()
            assert card.locator(".tag").all_inner_texts() == ["spo", "base"]  # side by side
            widths = page.evaluate("() => [...document.querySelectorAll(\".card[data-seed='4242'] img\")]"
                                   ".map(i => i.naturalWidth)")
            assert widths == [64, 64]
            assert card.locator("button").inner_text() == "copy spo replay command"
            assert page.inner_text("#message") == "" and not errors, (page.inner_text("#message"), errors)
            if os.environ.get("SPO_SCREENSHOT"):  # for the README: SPO_SCREENSHOT=docs/serve-page.png
                page.screenshot(path=os.environ["SPO_SCREENSHOT"])
        finally:
            browser.close()


@contextmanager
def another_site():
    """A page on another origin (another loopback port): the URL of its empty page."""
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            page = b"<!doctype html><title>another site</title><p>nothing to see"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=site.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{site.server_address[1]}/"
    finally:
        site.shutdown()


# What a page on another site tries, run in its own origin: each answers what the page could learn.
ATTACKS = """async (spo) => {
  const body = JSON.stringify({prompt: "made by another site", size: "64x64", steps: 1, seed: 666});
  const tries = {
    simple: fetch(spo + "/v1/images/generations", {method: "POST", mode: "no-cors",
                  headers: {"Content-Type": "text/plain"}, body}).then((r) => r.type),
    form: fetch(spo + "/sdapi/v1/txt2img", {method: "POST", mode: "no-cors", body: new URLSearchParams({x: body})})
          .then((r) => r.type),
    json: fetch(spo + "/v1/images/generations", {method: "POST", headers: {"Content-Type": "application/json"}, body})
          .then((r) => r.status),
    gallery: fetch(spo + "/spo/v1/gallery").then((r) => r.text()),
    info: fetch(spo + "/spo/v1/info").then((r) => r.text()),
  };
  const answers = {};
  for (const [name, attempt] of Object.entries(tries)) {
    answers[name] = await attempt.then((v) => String(v), (e) => "refused: " + e.name);
  }
  return answers;
}"""


@needs_chromium
def test_another_site_can_neither_make_images_nor_read_the_gallery(server):
    """Headless Chromium on a page of another origin: blind ("no-cors") and JSON POSTs make no image and
    reading the gallery fails; a rebinding name (another site's name resolving to 127.0.0.1) reads only
    a 421; spo's own page, on the same server, still makes images and reads its gallery."""
    from playwright.sync_api import sync_playwright

    url = server.url
    port = url.rsplit(":", 1)[1]
    before = metrics(url)
    with another_site() as site, sync_playwright() as p:
        browser = launch(p, "--host-resolver-rules=MAP rebind.test 127.0.0.1")
        try:
            page = browser.new_page()
            page.set_default_timeout(HANG * 1000)
            page.goto(site)
            answers = page.evaluate(ATTACKS, url)
            assert answers["simple"] == answers["form"] == "opaque", answers  # sent blind, answered 403
            for name in ("json", "gallery", "info"):
                assert answers[name] == "refused: TypeError", answers  # no CORS for this origin: nothing read

            # DNS rebinding: a name of the attacker's now points at 127.0.0.1, the page is same-origin.
            response = page.goto(f"http://rebind.test:{port}/")
            assert response.status == 421
            status, text = page.evaluate("async () => { const r = await fetch('/spo/v1/gallery'); "
                                         "return [r.status, await r.text()]; }")
            assert status == 421 and "images" not in json.loads(text)

            # spo's own page on the same server still works.
            page.goto(url + "/")
            page.wait_for_function("() => document.getElementById('status').textContent.startsWith('ready')")
            status, made, listing = page.evaluate("""async () => {
                const r = await fetch('/v1/images/generations', {method: 'POST',
                    headers: {'Content-Type': 'application/json'},
                    body: JSON.stringify({prompt: 'made by the page', size: '64x64', steps: 1, seed: 4343})});
                const body = await r.json();
                const g = await (await fetch('/spo/v1/gallery?limit=500')).json();
                return [r.status, body.spo.seeds, g.images.map((i) => i.seed)];
            }""")
            assert status == 200 and made == [4343] and 4343 in listing and 666 not in listing
        finally:
            browser.close()
    after = metrics(url)

    def grew(code: str, path: str) -> float:
        key = ("spo_http_requests_total", ("code", code), ("path", path))
        return after.get(key, 0.0) - before.get(key, 0.0)

    # the server itself refused them (the browser did send the blind ones and the preflight)
    assert grew("403", OPENAI) == 2 and grew("403", A1111) == 1, after  # blind POST and the JSON one's preflight
    assert grew("403", "/spo/v1/gallery") == 1 and grew("421", "/spo/v1/gallery") >= 1  # Chromium retries a 421
    key = ("spo_images_total", ("device", "cpu"), ("model", "spo"))
    made = after[key] - before.get(key, 0.0)
    assert made == 1  # the page's own image, and no other


def test_generate_and_batch_with_server_write_what_a_local_run_writes(server, tmp_path):
    """--server: the same files as a local run (pixels, sidecar recipe), and batch's resume works."""
    args = ["a red fox in fresh snow", "--seed", "21", "-n", "2", "--steps", "2", "--width", "64", "--height", "64",
            "--json", "--quiet"]
    local = invoke("generate", *args, "--device", "cpu", "--out", str(tmp_path / "local"))
    remote = invoke("generate", *args, "--server", server.url, "--out", str(tmp_path / "remote"))
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    recipe = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "model", "vae",
              "dtype", "prompt_syntax", "generator_device", "schema")
    for a, b in zip(json.loads(local.stdout), json.loads(remote.stdout)):
        assert np.abs(png_pixels(Path(a["image"]).read_bytes()) - png_pixels(Path(b["image"]).read_bytes())).max() <= 1
        sa, sb = (json.loads(Path(x["sidecar"]).read_text()) for x in (a, b))
        assert {k: sa[k] for k in recipe} == {k: sb[k] for k in recipe}

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na cat\na boat\n")
    batch = ["batch", str(prompts), "--steps", "2", "--width", "64", "--height", "64", "--seed", "3",
             "--server", server.url, "--out", str(tmp_path / "batch"), "--json", "--quiet"]
    r = invoke(*batch)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["generated"] == 3
    r = invoke(*batch)
    assert r.exit_code == 0 and json.loads(r.stdout)["already_done"] == 3  # same model identity: resumed

    r = invoke("generate", "a fox", "--server", server.url, "--lora", "x/y", "--out", str(tmp_path / "no"))
    assert r.exit_code == 2 and "--lora cannot be used with --server" in r.output
    r = invoke("generate", "a fox", "--server", "http://127.0.0.1:9", "--out", str(tmp_path / "no"))
    assert r.exit_code == 1 and "cannot be reached" in r.output and "Traceback" not in r.output
    r = invoke("generate", "a fox", "--server", server.url, "--model", "base", "--out", str(tmp_path / "no"))
    assert r.exit_code == 2 and "has no model 'base' loaded" in r.output


def test_generate_watermark_with_server_is_marked_there(server, tmp_path):
    # The server's engine marks as the local one does (test_watermark holds those pixels to diffusers').
    from spo_cli import watermark

    remote = invoke("generate", "a red fox in fresh snow", "--seed", "4", "--steps", "1", "--width", "256", "--height",
                    "256", "--watermark", "--json", "--quiet", "--server", server.url, "--out", str(tmp_path / "remote"))
    assert remote.exit_code == 0, remote.output
    [b] = json.loads(remote.stdout)
    assert json.loads(Path(b["sidecar"]).read_text())["watermark"] is True
    assert watermark.probe(Path(b["image"]))["present"] is True


# --------------------------------------------------------------------------------------------
# Image to image over HTTP: A1111's img2img and hires fix, OpenAI's edits, --image with --server

IMG2IMG = "/sdapi/v1/img2img"
EDITS = "/v1/images/edits"


def noise_png(path: Path, size=(64, 64), mode="RGB", seed=0) -> Path:
    """An input image: seeded noise, so that a pipeline that ignored it would not match."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


def square_mask(path: Path, size=(64, 64), *, openai: bool = False) -> Path:
    """The centre square to repaint: spo's convention (white on black), or OpenAI's (transparent on opaque)."""
    if openai:
        im = Image.new("RGBA", size, (0, 0, 0, 255))
        im.paste((0, 0, 0, 0), (16, 16, 48, 48))
    else:
        im = Image.new("L", size, 0)
        im.paste(255, (16, 16, 48, 48))
    im.save(path)
    return path


def b64_file(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def cli_image(tmp_path: Path, *args: str) -> tuple[np.ndarray, dict]:
    """`spo generate` in this process (its own copy of the tiny pipeline): the pixels and sidecar."""
    out = tmp_path / f"cli-{len(list(tmp_path.glob('cli-*')))}"
    r = invoke("generate", *args, "--device", "cpu", "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)[0]
    return png_pixels(Path(written["image"]).read_bytes()), json.loads(Path(written["sidecar"]).read_text())


def multipart(url: str, fields: dict, files: dict[str, Path], headers: dict | None = None):
    """POST multipart/form-data, as OpenAI's clients send image edits: (status, JSON)."""
    boundary = "spo-test-boundary-7f3a"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, path in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{path.name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + path.read_bytes() + b"\r\n")
    data = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return request(url, raw=data, headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                           **(headers or {})})[:2]


def test_a1111_img2img_and_inpaint_are_spo_generate_pixels(server, tmp_path):
    """/sdapi/v1/img2img gives `spo generate --image [--mask]`'s pixels; the upload is kept once under
    --out/inputs, and the sidecar names that file and its checksum."""
    image, mask = noise_png(tmp_path / "in.png"), square_mask(tmp_path / "mask.png")
    args = ["a red fox in winter", "--image", str(image), "--strength", "0.5", "--seed", "5", "--steps", "2"]
    plain, plain_sidecar = cli_image(tmp_path, *args)
    masked, _ = cli_image(tmp_path, *args, "--mask", str(mask), "--mask-blur", "2")

    body = {"prompt": "a red fox in winter", "init_images": ["data:image/png;base64," + b64_file(image)],
            "denoising_strength": 0.5, "seed": 5, "steps": 2}
    status, answer, _ = request(server.url + IMG2IMG, body)
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert np.array_equal(png_pixels(base64.b64decode(answer["images"][0])), plain)
    assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in info["infotexts"][0]
    assert answer["parameters"]["init_images"] is None and answer["parameters"]["width"] == 64  # the input's size
    out = server.server.settings.out
    sidecar = json.loads((out / info["files"][0]).with_suffix(".json").read_text())
    kept = Path(sidecar["init_image"]["path"])
    assert kept.parent == out / "inputs" and kept.read_bytes() == image.read_bytes()
    assert {k: sidecar["init_image"][k] for k in ("sha256", "width", "height", "bytes")} == \
        {k: plain_sidecar["init_image"][k] for k in ("sha256", "width", "height", "bytes")}

    # webuiapi's defaults beside the mask: inpainting_fill 0 is A1111's "fill", which spo does not do
    status, answer, _ = request(server.url + IMG2IMG, {**body, "mask": b64_file(mask), "mask_blur": 2,
                                                       "inpainting_fill": 0, "initial_noise_multiplier": 1,
                                                       "image_cfg_scale": 1.5, "include_init_images": True})
    assert status == 200, answer
    info = json.loads(answer["info"])
    assert np.array_equal(png_pixels(base64.b64decode(answer["images"][0])), masked)
    assert [w.split("'")[1] for w in info["warnings"] if "not supported" in w] == ["inpainting_fill"]
    assert answer["parameters"]["init_images"] == body["init_images"]  # include_init_images: echoed
    assert sorted(p.name for p in (out / "inputs").iterdir()) == sorted(
        f"{__import__('hashlib').sha256(p.read_bytes()).hexdigest()}.png" for p in (image, mask))


def test_a1111_hires_fix_is_spo_generate_hires(server, tmp_path):
    cli, sidecar = cli_image(tmp_path, "a lighthouse", "--seed", "9", "--steps", "2", "--width", "32", "--height",
                             "32", "--hires", "2", "--hires-strength", "0.5")
    status, answer, _ = request(server.url + A1111, {
        "prompt": "a lighthouse", "seed": 9, "steps": 2, "width": 32, "height": 32, "enable_hr": True,
        "denoising_strength": 0.5, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 64})
    assert status == 200, answer
    served = png_pixels(base64.b64decode(answer["images"][0]))
    assert served.shape == (64, 64, 3) and np.array_equal(served, cli)
    info = json.loads(answer["info"])
    assert (info["width"], info["height"]) == (32, 32)  # A1111's Size: the first pass's
    assert "Hires upscale: 2.0" in info["infotexts"][0] and "Hires upscaler: Latent" in info["infotexts"][0]
    assert sidecar["hires"]["strength"] == 0.5 and answer["parameters"]["denoising_strength"] == 0.5


def test_openai_edits_are_spo_generate_pixels_in_openais_mask_convention(server, tmp_path):
    """Multipart /v1/images/edits: OpenAI's mask (transparent = repaint) is spo's white = repaint; without a
    mask, an opaque image is re-drawn whole at spo's strength."""
    image = noise_png(tmp_path / "in.png")
    args = ["a boat at dusk", "--image", str(image), "--seed", "3", "--steps", "2"]
    whole, _ = cli_image(tmp_path, *args)  # strength 0.75, spo's default
    masked, _ = cli_image(tmp_path, *args, "--mask", str(square_mask(tmp_path / "white.png")), "--strength", "1")
    fields = {"prompt": "a boat at dusk", "seed": "3", "steps": "2", "model": "gpt-image-1"}
    status, answer = multipart(server.url + EDITS, fields, {"image": image})
    assert status == 200, answer
    assert np.array_equal(png_pixels(base64.b64decode(answer["data"][0]["b64_json"])), whole)
    status, answer = multipart(server.url + EDITS, fields,
                               {"image": image, "mask": square_mask(tmp_path / "clear.png", openai=True)})
    assert status == 200, answer
    assert np.array_equal(png_pixels(base64.b64decode(answer["data"][0]["b64_json"])), masked)  # strength 1
    assert "Denoising strength: 1.0" in answer["spo"]["infotexts"][0]


def test_hostile_uploads_are_refused_in_each_dialect(server, tmp_path):
    import hashlib
    import http.client

    from tests.test_client import bomb

    image = noise_png(tmp_path / "in.png")
    body = {"prompt": "a fox", "init_images": [b64_file(image)], "steps": 2, "seed": 1}
    cases = [
        ({"init_images": [base64.b64encode(b"GIF89a but not really").decode()]}, "init_images[0]", "not an image"),
        ({"init_images": ["not base64 at all!"]}, "init_images[0]", "not valid base64"),
        ({"init_images": [base64.b64encode(bomb()).decode()]}, "init_images[0]", ""),  # wording: inputs.py's
        ({"init_images": [b64_file(image)] * 2}, "init_images", "one per request"),
        ({"denoising_strength": 1.5}, "denoising_strength", "denoising_strength"),
        ({"denoising_strength": 0.2}, "denoising_strength", "which is none"),  # int(2 × 0.2) = 0 steps
        ({"mask": b64_file(image), "mask_blur_x": 2, "mask_blur_y": 8}, "mask_blur_x", "differ"),
        ({"width": 32, "height": 48, "resize_mode": 1}, "resize_mode", "Crop and resize"),
    ]
    for change, field, words in cases:
        status, answer, _ = request(server.url + IMG2IMG, {**body, **change})
        assert status == 400 and set(answer) == {"error", "detail", "body", "errors"}, (change, answer)
        assert field in answer["detail"] and words in answer["detail"], (change, answer["detail"])
    # Nothing refused was kept: only the good image's own file (had it been sent before) is there.
    kept = {p.name for p in (server.server.settings.out / "inputs").glob("*")} \
        if (server.server.settings.out / "inputs").exists() else set()
    assert hashlib.sha256(bomb()).hexdigest() + ".png" not in kept

    # A mask of another size: resized to the image, and said.
    status, answer, _ = request(server.url + IMG2IMG, {**body, "mask": b64_file(square_mask(tmp_path / "m.png",
                                                                                          (32, 32)))})
    assert status == 200 and any("the mask is resized" in w for w in json.loads(answer["info"])["warnings"])

    # Over the edit routes' body limit: refused from its Content-Length, unread, in A1111's shape.
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HANG)
    conn.putrequest("POST", IMG2IMG)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(1 << 34))
    conn.endheaders()
    reply = conn.getresponse()
    refused = json.loads(reply.read())
    conn.close()
    assert reply.status == 413 and refused["error"] == "HTTPException" and "over" in refused["detail"]

    # OpenAI's shape on /v1/images/edits: an opaque mask marks nothing; JSON is not what it takes.
    status, answer = multipart(server.url + EDITS, {"prompt": "a fox", "steps": "2", "strength": "0"},
                               {"image": image})
    assert status == 400 and answer["error"]["param"] == "strength", answer
    status, answer = multipart(server.url + EDITS, {"prompt": "a fox", "steps": "2"},
                               {"image": image, "mask": square_mask(tmp_path / "opaque.png")})
    assert status == 400 and answer["error"]["param"] == "mask" and "transparent" in answer["error"]["message"]
    status, answer, _ = request(server.url + EDITS, {"prompt": "a fox"})
    assert status == 415 and "multipart/form-data" in answer["error"]["message"]


def test_generate_image_with_server_writes_what_a_local_run_writes(server, tmp_path):
    """--image and --mask with --server: the input goes to the server, the files written here are a
    local run's (pixels, and a sidecar naming the local input)."""
    image, mask = noise_png(tmp_path / "in.png", (48, 40)), square_mask(tmp_path / "mask.png", (48, 40))
    args = ["a fox", "--image", str(image), "--mask", str(mask), "--strength", "0.5", "--seed", "2", "--steps",
            "2", "-n", "2", "--json", "--quiet"]
    local = invoke("generate", *args, "--device", "cpu", "--out", str(tmp_path / "local"))
    remote = invoke("generate", *args, "--server", server.url, "--out", str(tmp_path / "remote"))
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    for a, b in zip(json.loads(local.stdout), json.loads(remote.stdout)):
        assert np.abs(png_pixels(Path(a["image"]).read_bytes()) - png_pixels(Path(b["image"]).read_bytes())).max() <= 1
        sa, sb = (json.loads(Path(x["sidecar"]).read_text()) for x in (a, b))
        for key in ("init_image", "mask_image", "strength", "mask_blur", "width", "height", "seed"):
            assert sa[key] == sb[key], key
        assert sb["init_image"]["path"] == str(image.resolve())
    hires = ["a lighthouse", "--seed", "9", "--steps", "2", "--width", "32", "--height", "32", "--hires", "1.5",
             "--hires-upscaler", "lanczos", "--json", "--quiet"]
    local = invoke("generate", *hires, "--device", "cpu", "--out", str(tmp_path / "local-hires"))
    remote = invoke("generate", *hires, "--server", server.url, "--out", str(tmp_path / "remote-hires"))
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    a, b = (json.loads(r.stdout)[0] for r in (local, remote))
    assert np.array_equal(png_pixels(Path(a["image"]).read_bytes()), png_pixels(Path(b["image"]).read_bytes()))
    sa, sb = (json.loads(Path(x["sidecar"]).read_text()) for x in (a, b))
    assert sa["hires"] == sb["hires"] and (sb["width"], sb["hires"]["width"]) == (32, 48)


@needs_chromium
def test_the_page_uploads_an_image_and_a_mask(pair, tmp_path):
    """Headless Chromium: choose an image and a mask, set the strength, Generate: the image comes back at
    the input's size, and its sidecar records the uploaded image and mask."""
    import hashlib

    from playwright.sync_api import sync_playwright

    image = noise_png(tmp_path / "upload.png", (48, 32), seed=3)
    mask = square_mask(tmp_path / "mask.png", (48, 32))
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.set_default_timeout(HANG * 1000)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(pair.url + "/")
            page.wait_for_function("() => document.getElementById('scheduler').options.length > 0")
            assert page.locator("#edit-box").is_hidden()  # the mask and strength appear with an image
            page.set_input_files("#image", str(image))
            page.set_input_files("#mask", str(mask))
            page.locator("#strength").fill("0.5")
            assert page.inner_text("#strength-value") == "0.5"
            assert page.eval_on_selector("#size", "s => s.value") == ""  # the image's own size
            page.fill("#prompt", "a fox, from the page")
            page.fill("#seed", "5151")
            page.fill("#steps", "2")
            page.click("#generate")
            card = page.locator("#gallery .card[data-seed='5151']")
            card.wait_for()
            assert "48×32" in card.inner_text() and "strength 0.5" in card.inner_text()
            assert page.evaluate("() => document.querySelector(\".card[data-seed='5151'] img\").naturalWidth") == 48
            assert page.inner_text("#message") == "" and not errors, (page.inner_text("#message"), errors)
        finally:
            browser.close()
    out = pair.server.settings.out
    sidecar = next(m for m in (json.loads(f.read_text()) for f in out.glob("*.json")) if m.get("seed") == 5151)
    for key, sent in (("init_image", image), ("mask_image", mask)):
        assert sidecar[key]["sha256"] == hashlib.sha256(sent.read_bytes()).hexdigest()
        assert Path(sidecar[key]["path"]).read_bytes() == sent.read_bytes()
    assert sidecar["strength"] == 0.5 and (sidecar["width"], sidecar["height"]) == (48, 32)


@needs_chromium
def test_the_page_shows_a_bad_upload_as_text_and_takes_an_image_of_any_name(pair, tmp_path):
    """Headless Chromium: a text file named like HTML is refused in words, and nothing of its name or of
    the answer becomes markup; a PNG whose name says nothing of its type (the browser's FileReader calls
    it application/octet-stream) is made into an image."""
    from playwright.sync_api import sync_playwright

    hostile = tmp_path / "<img src=x onerror=window.pwned=1>.png"
    hostile.write_text("<script>window.pwned=2</script> not an image")
    nameless = tmp_path / "photo"
    nameless.write_bytes(noise_png(tmp_path / "n.png", (48, 32), seed=4).read_bytes())
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.set_default_timeout(HANG * 1000)
            dialogs, errors = [], []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(pair.url + "/")
            page.wait_for_function("() => document.getElementById('scheduler').options.length > 0")
            page.fill("#prompt", "a fox, from a bad file")
            page.fill("#steps", "2")
            page.set_input_files("#image", str(hostile))
            page.click("#generate")
            page.wait_for_function("() => document.getElementById('message').textContent !== ''")
            assert "not an image spo can read" in page.inner_text("#message")
            assert page.evaluate("() => window.pwned") is None and not dialogs
            assert page.locator("#message *").count() == 0 and page.locator("script:not([src])").count() <= 1
            page.set_input_files("#image", str(nameless))
            page.fill("#seed", "6161")
            page.click("#generate")
            page.wait_for_function("() => document.querySelector(\".card[data-seed='6161']\") || "
                                   "document.getElementById('message').textContent !== ''")  # made, or refused
            assert page.inner_text("#message") == "" and not errors and not dialogs, (page.inner_text("#message"), errors)
            assert page.locator("#gallery .card[data-seed='6161']").count() == 1
        finally:
            browser.close()

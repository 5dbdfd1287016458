"""spo serve's parts that need no pipeline: the guard (Host, Origin, token, Content-Type) in front of the
real app, metrics, the gallery's reading of --out, the token rules, and start-up and shutdown around a
model that fails to load. The app runs on a real Worker that is never started (no model is loaded),
called as ASGI, or served by a real uvicorn where the process matters."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from spo_cli.cli import app as cli_app
from spo_cli.serve import api

TOKEN = "a-test-token-0123456789"
WAIT = 300  # a deadline for every wait: long against a busy machine, short against a hang


def make_app(tmp_path: Path, **settings):
    from spo_cli.serve.app import Settings, create_app
    from spo_cli.serve.worker import Worker

    worker = Worker(lambda: {}, tmp_path)  # never started: no model, nothing runs
    settings.setdefault("bound", "127.0.0.1")
    return create_app(worker, Settings(tmp_path, api.Context(("spo",), max_images=4), **settings)), worker


def call(app, method: str = "GET", path: str = "/health", headers: dict | None = None, body: bytes | None = None,
         host: str | None = "127.0.0.1:7860"):
    """(status, JSON body or bytes, headers) of one request handed to the ASGI app."""
    hdrs = dict(headers or {})
    if host is not None:
        hdrs.setdefault("Host", host)
    if body is not None:
        hdrs.setdefault("Content-Length", str(len(body)))
    path, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in hdrs.items()],
             "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 40000)}
    sent, messages = [False], []

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body or b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message):
        messages.append(message)

    asyncio.run(app(scope, receive, send))
    start = messages[0]
    data = b"".join(m.get("body", b"") for m in messages[1:])
    answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
    try:
        return start["status"], json.loads(data), answer_headers
    except ValueError:
        return start["status"], data, answer_headers


def post(app, path: str, payload=None, content_type: str | None = "application/json", **kw):
    headers = dict(kw.pop("headers", {}))
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = json.dumps({} if payload is None else payload).encode()
    return call(app, "POST", path, headers, body, **kw)


def refused(path: str, body) -> tuple[str | None, str]:
    """(field, message) of a refusal as the dialect of `path` writes it: A1111's body (its
    handle_exception's four keys) names the field only in its words."""
    if path.startswith("/sdapi/"):
        assert set(body) == {"error", "detail", "body", "errors"}, body
        return None, body["detail"]
    assert set(body["error"]) == {"message", "type", "param", "code"}, body  # OpenAI's
    return body["error"]["param"], body["error"]["message"]


def samples(app_or_metrics) -> dict[tuple, float]:
    """Every sample of /metrics, parsed by prometheus_client's own parser: {(name, labels…): value}."""
    text = app_or_metrics.exposition()[0].decode()
    return {(s.name, *sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# -- Host: DNS rebinding ----------------------------------------------------------------------------

ALLOWED = ["127.0.0.1:7860", "127.0.0.1", "localhost:7860", "LOCALHOST:1", "localhost.", "[::1]:7860", "[::1]",
           "127.0.0.2:80", "gpu-box.lan:8000", "GPU-BOX.LAN"]
REFUSED = ["evil.example", "evil.example:7860", "127.0.0.1.evil.example", "localhost.evil.example", "",
           "user@localhost", "localhost/x", "[::1", "10.0.0.5:7860", "0.0.0.0:7860", "localhost:99999",
           "gpu-box.lan.evil.example", "xn--gpu-box.lan"]


@pytest.mark.parametrize("host", ALLOWED)
def test_host_values_naming_this_server_are_served(tmp_path, host):
    app, _ = make_app(tmp_path, allow_hosts=["gpu-box.lan"])
    assert call(app, host=host)[0] == 503  # /health: loading (this worker never starts)


@pytest.mark.parametrize("token", [None, TOKEN])
@pytest.mark.parametrize("host", REFUSED + [None])
def test_any_other_host_is_misdirected_with_or_without_a_token(tmp_path, host, token):
    app, worker = make_app(tmp_path, allow_hosts=["gpu-box.lan"], token=token)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in (("GET", "/health"), ("GET", "/spo/v1/gallery"), ("GET", "/spo/v1/info"), ("GET", "/"),
                         ("POST", "/v1/images/generations")):
        if method == "POST":
            status, body, _ = post(app, path, {"prompt": "a fox"}, host=host, headers=auth)
        else:
            status, body, _ = call(app, method, path, auth, host=host)
        assert status == 421, (path, status, body)
        assert body["error"]["param"] == "Host" and "--allow-host" in body["error"]["message"]
    assert worker.queued == 0


def test_a_wildcard_bind_serves_its_addresses_but_only_given_names(tmp_path):
    app, _ = make_app(tmp_path, bound="0.0.0.0", token=TOKEN, allow_hosts=["gpu-box"])
    assert call(app, host="10.0.0.5:8000")[0] == 503  # an address cannot be rebound
    assert call(app, host="[fe80::1]:8000")[0] == 503
    assert call(app, host="gpu-box:8000")[0] == 503
    assert call(app, host="other-box:8000")[0] == 421
    app, _ = make_app(tmp_path, bound="10.0.0.5")
    assert call(app, host="10.0.0.5:7860")[0] == 503 and call(app, host="10.0.0.6:7860")[0] == 421


# -- Origin: other sites' pages ---------------------------------------------------------------------

@pytest.mark.parametrize("origin,host", [
    ("http://127.0.0.1:7860", "127.0.0.1:7860"),
    ("http://localhost:7860", "localhost:7860"),
    ("https://localhost", "localhost"),  # a proxy that ends TLS in front of the server
    ("http://localhost", "localhost:80"),
    ("http://[::1]:7860", "[::1]:7860"),
    ("http://client.example", "127.0.0.1:7860"),  # --cors-origin
])
def test_the_page_itself_and_cors_origins_pass(tmp_path, origin, host):
    app, _ = make_app(tmp_path, cors_origins=["http://client.example"])
    status, body, _ = post(app, "/v1/images/generations", {}, headers={"Origin": origin}, host=host)
    assert status == 400 and body["error"]["param"] == "prompt"  # past the guard, refused by the body check


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:7861", "http://localhost:7860",
                                    "https://127.0.0.1:7861", "http://127.0.0.1:7860/x", "file://", "junk",
                                    "http://client.example.evil"])
def test_other_origins_are_refused_for_every_method(tmp_path, origin):
    app, worker = make_app(tmp_path, cors_origins=["http://client.example"])
    good = {"prompt": "a fox", "size": "64x64", "steps": 1}
    status, body, _ = post(app, "/v1/images/generations", good, headers={"Origin": origin})
    assert status == 403 and body["error"]["param"] == "Origin" and "--cors-origin" in body["error"]["message"]
    status, body, _ = post(app, "/v1/images/generations", good, "text/plain", headers={"Origin": origin})
    assert status == 403  # a "simple" no-cors POST, the way a page would try it
    assert call(app, "GET", "/spo/v1/gallery", {"Origin": origin})[0] == 403
    assert worker.queued == 0


def test_without_origin_a_foreign_referer_is_refused(tmp_path):
    # A form posted from another site by a browser that leaves Origin out still names its page.
    app, worker = make_app(tmp_path, cors_origins=["http://client.example"])
    form = b'--B\r\nContent-Disposition: form-data; name="prompt"\r\n\r\na fox\r\n--B--\r\n'
    for referer in ("http://evil.example/page?x=1", "https://127.0.0.1:7861/", "http://localhost:7860/"):
        status, body, _ = call(app, "POST", "/v1/images/edits", {
            "Referer": referer, "Content-Type": "multipart/form-data; boundary=B"}, form)
        assert status == 403 and body["error"]["param"] == "Referer", (referer, body)
        assert "page?x" not in body["error"]["message"]  # the page's origin, not its address
        assert call(app, "GET", "/spo/v1/gallery", {"Referer": referer})[0] == 403
    # The page itself, a --cors-origin, and what is not a web page's address pass.
    for referer in ("http://127.0.0.1:7860/", "http://client.example/app", "about:client", "android-app://x"):
        assert call(app, "GET", "/spo/v1/gallery", {"Referer": referer})[0] == 200, referer
    assert worker.queued == 0


def test_a_star_cors_origin_lets_any_page_in_but_not_any_host(tmp_path):
    app, _ = make_app(tmp_path, cors_origins=["*"])
    assert post(app, "/v1/images/generations", {}, headers={"Origin": "http://anyone.example"})[0] == 400
    assert post(app, "/v1/images/generations", {}, headers={"Origin": "http://anyone.example"},
                host="anyone.example")[0] == 421


def test_refusals_to_a_cors_origin_can_be_read_there(tmp_path):
    app, _ = make_app(tmp_path, cors_origins=["http://client.example"], token=TOKEN)
    status, body, headers = post(app, "/v1/images/generations", {}, headers={"Origin": "http://client.example"})
    assert status == 401 and headers["access-control-allow-origin"] == "http://client.example"
    status, _, headers = post(app, "/v1/images/generations", {}, headers={"Origin": "http://evil.example"})
    assert status == 403 and "access-control-allow-origin" not in headers
    preflight = {"Origin": "http://client.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    status, _, headers = call(app, "OPTIONS", "/v1/images/generations", preflight)  # no token on a preflight
    assert status == 200 and headers["access-control-allow-origin"] == "http://client.example"


# -- Content-Type -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["text/plain", "text/plain;charset=UTF-8", None, "application/x-www-form-urlencoded",
                                  "multipart/form-data; boundary=x", "application/jsonx", "application/json5", ""])
def test_a_body_must_be_declared_json(tmp_path, kind):
    app, worker = make_app(tmp_path)
    good = {"prompt": "a fox", "size": "64x64", "steps": 1}
    for path in ("/v1/images/generations", "/sdapi/v1/txt2img", "/spo/v1/run", "/sdapi/v1/options",
                 "/sdapi/v1/interrupt"):
        status, body, _ = post(app, path, good, kind)
        assert status == 415, (path, status, body)
        field, message = refused(path, body)
        assert field in ("Content-Type", None) and "application/json" in message and "Content-Type" in message
    assert worker.queued == 0


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_bodies_pass(tmp_path, kind):
    app, _ = make_app(tmp_path)
    status, body, _ = post(app, "/v1/images/generations", {"size": "64x64"}, kind)
    assert status == 400 and body["error"]["param"] == "prompt"


def test_a_post_with_no_body_needs_no_content_type(tmp_path):
    """A1111 clients send interrupt with no body at all; a chunked body still needs its type."""
    app, _ = make_app(tmp_path)
    assert call(app, "POST", "/sdapi/v1/interrupt")[0] == 200
    assert call(app, "POST", "/sdapi/v1/interrupt", {"Content-Length": "0"})[0] == 200
    status, body, _ = call(app, "POST", "/sdapi/v1/interrupt", {"Transfer-Encoding": "chunked"}, b"")
    assert status == 415


# -- The token ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("authorization,status", [
    (f"Bearer {TOKEN}", 400), (f"bearer {TOKEN}", 400), (f"Bearer  {TOKEN} ", 400),
    (None, 401), (f"Basic {TOKEN}", 401), (f"Token {TOKEN}", 401), (TOKEN, 401), (f"Bearer{TOKEN}", 401),
    ("Bearer wrong-token-0123456789", 401), (f"Bearer {TOKEN}x", 401), ("Bearer ", 401),
    ("Bearer a-test-token-0123456789\u00e9", 401),
])
def test_every_api_call_needs_the_bearer_token(tmp_path, authorization, status):
    app, _ = make_app(tmp_path, token=TOKEN)
    headers = {} if authorization is None else {"Authorization": authorization}
    got, body, answer = post(app, "/v1/images/generations", {}, headers=headers)
    assert got == status, body
    if status == 401:
        assert body["error"]["param"] == "Authorization" and answer["www-authenticate"] == "Bearer"


def test_only_the_page_health_and_icon_are_open(tmp_path):
    app, _ = make_app(tmp_path, token=TOKEN)
    for path in ("/spo/v1/gallery", "/spo/v1/info", "/spo/v1/models", "/metrics", "/outputs/x.png",
                 "/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/sd-models", "/nope"):
        assert call(app, "GET", path)[0] == 401, path
    assert call(app, "GET", "/")[0] == 200 and call(app, "GET", "/health")[0] == 503
    assert call(app, "GET", "/favicon.ico")[0] == 204
    assert call(app, "GET", "/spo/v1/info", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


# -- Metrics ------------------------------------------------------------------------------------------

def test_requests_are_counted_by_route_and_status(tmp_path):
    app, worker = make_app(tmp_path)
    call(app, "GET", "/health")
    call(app, "GET", "/health")
    call(app, "GET", "/no/such/path")
    call(app, "GET", "/outputs/none.png")
    call(app, "GET", "/health", host="evil.example")
    post(app, "/v1/images/generations", {}, "text/plain")
    got = samples(worker.metrics)
    http = {k[1:]: v for k, v in got.items() if k[0] == "spo_http_requests_total"}
    assert http == {(("code", "503"), ("path", "/health")): 2, (("code", "404"), ("path", "other")): 1,
                    (("code", "404"), ("path", "/outputs/{name:path}")): 1,
                    (("code", "421"), ("path", "/health")): 1,
                    (("code", "415"), ("path", "/v1/images/generations")): 1}
    assert got[("spo_ready",)] == 0 and got[("spo_queue_depth",)] == 0
    status, text, headers = call(app, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=")


def test_a_request_is_counted_before_its_last_byte_is_sent(tmp_path):
    """A client that has read a whole answer and then asks /metrics must find that answer counted."""
    app, worker = make_app(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not checked here")
    seen = []
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/outputs/a.png", "raw_path": b"/outputs/a.png", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:7860")], "server": ("127.0.0.1", 7860),
             "client": ("127.0.0.1", 40000)}

    requested = []

    async def receive():
        if not requested:
            requested.append(True)
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(WAIT)  # the client stays; Starlette cancels this wait once the file is sent
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            seen.append(samples(worker.metrics).get(
                ("spo_http_requests_total", ("code", "200"), ("path", "/outputs/{name:path}")), 0))

    asyncio.run(app(scope, receive, send))
    assert seen == [1]
    assert samples(worker.metrics)[("spo_http_requests_total", ("code", "200"), ("path", "/outputs/{name:path}"))] == 1


def test_the_worker_calls_are_series_labelled_by_model_and_device():
    from spo_cli.serve.metrics import Metrics

    gpu0, gpu1 = SimpleNamespace(name="cuda:0", state="ready", busy=2), SimpleNamespace(name="cuda:1", state="loading",
                                                                                         busy=0)
    worker = SimpleNamespace(ready=True, queued=3, lanes=[gpu0, gpu1])
    m = Metrics(worker)
    m.known(["spo", "base"], ["cuda:0", "cuda:1"])
    m.queue_wait("spo", "cuda:0", 0.02)
    m.queue_wait("spo", "cuda:0", 7.0)
    m.call("spo", "cuda:0", images=3, seconds=1.5, batched=3)
    m.call("base", "cuda:1", images=1, seconds=0.2, batched=0)
    m.image_failed("spo", "cuda:1")
    got = samples(m)
    spo0, spo1, base1 = (("device", "cuda:0"), ("model", "spo")), (("device", "cuda:1"), ("model", "spo")), \
        (("device", "cuda:1"), ("model", "base"))
    assert got[("spo_ready",)] == 1 and got[("spo_queue_depth",)] == 3
    assert got[("spo_images_total", *spo0)] == 3 and got[("spo_images_total", *base1)] == 1
    assert got[("spo_images_total", *spo1)] == 0  # listed from the start, by `known`
    assert got[("spo_pipeline_calls_total", *spo0)] == 1
    assert got[("spo_batched_images_total", *spo0)] == 3
    assert got[("spo_batched_images_total", *base1)] == 0
    assert got[("spo_image_failures_total", *spo1)] == 1 and got[("spo_image_failures_total", *spo0)] == 0
    assert got[("spo_queue_wait_seconds_count", *spo0)] == 2
    assert got[("spo_queue_wait_seconds_sum", *spo0)] == pytest.approx(7.02)
    assert got[("spo_queue_wait_seconds_bucket", ("device", "cuda:0"), ("le", "0.05"), ("model", "spo"))] == 1
    assert got[("spo_queue_wait_seconds_bucket", ("device", "cuda:0"), ("le", "10.0"), ("model", "spo"))] == 2
    assert got[("spo_call_seconds_sum", *spo0)] == pytest.approx(1.5)
    assert got[("spo_call_seconds_count", *base1)] == 1
    assert got[("spo_device_up", ("device", "cuda:0"))] == 1 and got[("spo_device_up", ("device", "cuda:1"))] == 0
    assert got[("spo_device_busy", ("device", "cuda:0"))] == 2 and got[("spo_device_busy", ("device", "cuda:1"))] == 0
    worker.ready, worker.queued = False, 0  # read when scraped, never stale
    gpu0.busy, gpu1.state = 0, "ready"
    got = samples(m)
    assert got[("spo_ready",)] == 0 and got[("spo_queue_depth",)] == 0
    assert got[("spo_device_busy", ("device", "cuda:0"))] == 0 and got[("spo_device_up", ("device", "cuda:1"))] == 1


# -- The gallery: whatever is in --out ----------------------------------------------------------------

def in_time(fn, *args):
    """fn(*args) on a thread, with a deadline: a read that blocks fails the test rather than hanging it."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)), daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), f"{fn.__name__} blocked"
    return result[0]


def test_the_gallery_reads_only_small_regular_sidecars_inside_out(tmp_path):
    from spo_cli.serve import gallery

    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (8, 8)).save(out / "good.png")
    (out / "good.json").write_text(json.dumps({"file": "good.png", "prompt": "a fox", "seed": 1}))
    os.mkfifo(out / "zz-fifo.json")  # read as a file, it would block for ever
    (out / "zz-zero.json").symlink_to("/dev/zero")  # read whole, it would never end
    with open(out / "zz-sparse.json", "wb") as f:  # 1 GiB on no disk: must not be read
        f.write(b'{"file": "good.png", ')
        f.truncate(1 << 30)
    # valid JSON naming a real image, over the cap by a byte: the cap, not the parser, passes it over
    padded = json.dumps({"file": "good.png", "prompt": "padded"})
    (out / "zz-big.json").write_text(padded[:-1] + " " * (gallery.SIDECAR_MAX_BYTES - len(padded) + 1) + "}")
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"file": "good.png", "prompt": "from outside"}))
    (out / "zz-link.json").symlink_to(outside)  # spo writes no links: not followed
    os.mkfifo(out / "fifo.png")
    (out / "zz-names-fifo.json").write_text(json.dumps({"file": "fifo.png"}))
    (out / "dev.png").symlink_to("/dev/zero")
    (out / "zz-names-dev.json").write_text(json.dumps({"file": "dev.png"}))
    (out / "zz-names-dir.json").write_text(json.dumps({"file": "sub.png"}))
    (out / "sub.png").mkdir()
    (out / "zz-deep.json").write_text("[" * 100_000 + "]" * 100_000)
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    (out / "zz-names-outside.json").write_text(json.dumps({"file": "../secret.png"}))
    (out / "zz-names-number.json").write_text(json.dumps({"file": 5}))

    listing = in_time(gallery.list_outputs, out, 500)
    assert [(i["file"], i["prompt"]) for i in listing] == [("good.png", "a fox")]
    assert in_time(gallery.read_sidecar, out / "zz-fifo.json") is None
    assert gallery.read_sidecar(out / "zz-link.json") is None and gallery.read_sidecar(out / "zz-zero.json") is None
    assert gallery.read_sidecar(out / "good.json") == {"file": "good.png", "prompt": "a fox", "seed": 1}
    assert gallery.regular_inside(out, "fifo.png") is None and gallery.regular_inside(out, "dev.png") is None
    assert gallery.regular_inside(out, "good.png") == (out / "good.png").resolve()
    assert gallery.list_outputs(tmp_path / "missing", 5) == []


def test_outputs_serves_only_regular_files_inside_out(tmp_path):
    app, _ = make_app(tmp_path)
    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "good.txt").write_text("not an output")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "dev.png").symlink_to("/dev/zero")
    assert call(app, "GET", "/outputs/good.png")[0] == 200
    for name in ("fifo.png", "dev.png", "../good.png", "nothing.png", "good.txt"):
        status, body, _ = call(app, "GET", f"/outputs/{name}")
        assert status == 404 and body["error"]["param"] == "path", name
    status, body, _ = call(app, "GET", "/spo/v1/gallery?limit=abc")  # FastAPI's own check, as JSON naming it
    assert status == 400 and body["error"]["param"] == "limit"


# -- What every endpoint answers when no image was made ---------------------------------------------

def test_a_request_with_some_images_made_is_answered_with_them():
    from spo_cli.serve.plumbing import outcome

    made = SimpleNamespace(error=None)
    failed = SimpleNamespace(error="NaN output", status=500, field=None)
    refused = SimpleNamespace(error="no such device", status=400, field="generator_device")
    assert outcome(SimpleNamespace(status=200, images=[made, failed])) is None
    assert outcome(SimpleNamespace(status=200, images=[failed, made])) is None
    answer = outcome(SimpleNamespace(status=200, images=[refused, failed]))
    assert answer.status_code == 400 and json.loads(answer.body)["error"]["param"] == "generator_device"
    answer = outcome(SimpleNamespace(status=503, images=[made]))
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"


def test_a1111_options_are_checked_then_ignored(tmp_path):
    """A1111 clients set options; here each is named as ignored, and the body is checked first, since
    its keys are echoed back."""
    app, _ = make_app(tmp_path)
    status, body, _ = post(app, "/sdapi/v1/options", {"sd_model_checkpoint": "x", "CLIP_stop_at_last_layers": 2})
    assert status == 200 and [w.split("'")[1] for w in body["warnings"]] == ["CLIP_stop_at_last_layers",
                                                                           "sd_model_checkpoint"]
    status, body, _ = call(app, "POST", "/sdapi/v1/options", {"Content-Type": "application/json"}, b'{"\\ud800": 1}')
    assert status == 400 and "surrogate" in refused("/sdapi/v1/options", body)[1]
    status, body, _ = call(app, "GET", "/sdapi/v1/options")
    assert status == 200 and body["sd_model_checkpoint"] == "spo" and body["outdir_txt2img_samples"] == str(tmp_path)
    many = {"a" * 100_000: 1, **{f"opt{i:04}": 1 for i in range(1000)}}  # names echoed: by their start, 20 at most
    status, body, _ = post(app, "/sdapi/v1/options", many)
    warnings = body["warnings"]
    assert status == 200 and len(warnings) == 21 and sum(map(len, warnings)) < 5000 and "100,000" in warnings[0]
    assert body["warnings"][-1] == "981 more settings cannot be changed on a running spo server and were ignored."


# -- spo serve's options ------------------------------------------------------------------------------

def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(cli_app, list(args), env=env)


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom"])
def test_a_token_file_that_is_a_device_is_refused_unread(source):
    r = invoke("serve", "--token-file", source, "--port", "0")
    assert r.exit_code == 2 and "is a device, not a file" in r.output and "Traceback" not in r.output


@pytest.mark.timeout(60)  # a blocking open would wait for a writer for ever
def test_a_token_file_that_is_a_fifo_nobody_writes_does_not_hang(tmp_path):
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    r = invoke("serve", "--token-file", str(fifo), "--port", "0")
    assert r.exit_code == 2 and "printable ASCII" in r.output, r.output


def test_a_token_file_is_read_bounded(tmp_path):
    big = tmp_path / "token"
    big.write_text("x" * 100_000)
    r = invoke("serve", "--token-file", str(big), "--port", "0")
    assert r.exit_code == 2 and "more than 4,096 bytes" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("token", ["\u00e9" * 20, "a-test-token-012345678\u00e9", "tab\tinside-0123456789",
                                   "short", "a-test-token-0123456789\x7f"])
def test_a_token_is_printable_ascii(tmp_path, token):
    file = tmp_path / "token"
    file.write_bytes(token.encode("utf-8"))
    r = invoke("serve", "--token-file", str(file), "--port", "0")
    assert r.exit_code == 2 and "printable ASCII" in r.output and "--token-file" in r.output, r.output
    r = invoke("serve", "--port", "0", env={"SPO_TOKEN": token})
    assert r.exit_code == 2 and "printable ASCII" in r.output and "SPO_TOKEN" in r.output, r.output


def test_a_good_token_is_read_whole(tmp_path, monkeypatch):
    from spo_cli.cli.serve import read_token

    monkeypatch.delenv("SPO_TOKEN", raising=False)
    assert read_token(None) is None
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    assert read_token(str(path)) == TOKEN
    path.write_text("x" * 4096)
    assert read_token(str(path)) == "x" * 4096  # at the limit: still a (long) token
    monkeypatch.setenv("SPO_TOKEN", TOKEN)
    assert read_token(None) == TOKEN


@pytest.mark.parametrize("name", ["http://gpu-box", "gpu-box:8000", "a b", "gpu-box/x", "-gpu", ""])
def test_allow_host_takes_names_only(name):
    r = invoke("serve", "--allow-host", name, "--port", "0")
    assert r.exit_code == 2 and "--allow-host" in r.output and "is not a host name" in r.output, r.output


# -- A model that fails to load, at any moment ------------------------------------------------------

@pytest.mark.parametrize("moment", ["before uvicorn starts", "while serving"])
def test_a_load_failure_at_any_moment_ends_the_server(monkeypatch, tmp_path, moment):
    """The worker loads in its own thread while uvicorn starts; a failure before uvicorn's first tick
    (here: before it is even configured) or long after must both end `spo serve` with exit 1. With
    --json --debug, stdout stays one JSON line (uvicorn's access lines go to stderr)."""
    import uvicorn

    from spo_cli.cli import loading, serve
    from spo_cli.errors import ModelError

    bound = []
    real_listen, real_config = serve.listen, uvicorn.Config

    def listen(host, port):
        sock = real_listen(host, port)
        bound.append(sock.getsockname()[:2])
        return sock

    def start_torch(*args, **kw):
        if moment == "while serving":  # once uvicorn answers: the request is also an access log line
            host, port = bound[0]
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://{host}:{port}/health", timeout=WAIT)
            assert e.value.code == 503
        raise ModelError("The test model cannot be loaded today.")

    def late_config(app, **kw):
        if moment == "before uvicorn starts":  # the worker fails, and is done, before uvicorn is configured
            worker = app.state.spo.worker
            deadline = time.monotonic() + WAIT
            while worker.load_error is None and time.monotonic() < deadline:
                time.sleep(0.01)
            worker.join(WAIT)
        return real_config(app, **kw)

    monkeypatch.setattr(serve, "listen", listen)
    monkeypatch.setattr(loading, "start_torch", start_torch)
    monkeypatch.setattr(uvicorn, "Config", late_config)
    result = []
    thread = threading.Thread(target=lambda: result.append(invoke(
        "serve", "--port", "0", "--out", str(tmp_path / "out"), "--json", "--debug")), daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "spo serve kept serving after its model failed to load"
    r = result[0]
    assert r.exit_code == 1, r.output
    assert "cannot be loaded today" in r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["url"].startswith("http://127.0.0.1:"), r.stdout


# -- /openapi.json, /docs and the access log ---------------------------------------------------------

def conforms(value, schema: dict, schemas: dict) -> bool:
    """Whether `value` satisfies the JSON Schema keywords the document uses (jsonschema is not a
    dependency of spo; this reads $ref, anyOf, type, enum, const, bounds (exclusive too), lengths, pattern, multipleOf,
    properties, required and additionalProperties)."""
    import re

    if "$ref" in schema:
        return conforms(value, schemas[schema["$ref"].rpartition("/")[2]], schemas)
    if "anyOf" in schema:
        return any(conforms(value, s, schemas) for s in schema["anyOf"])
    if "enum" in schema and value not in schema["enum"] or "const" in schema and value != schema["const"]:
        return False
    types = {"string": str, "integer": int, "number": (int, float), "boolean": bool, "null": type(None),
             "array": list, "object": dict}
    kind = schema.get("type")
    if kind is not None and (not isinstance(value, types[kind]) or isinstance(value, bool) and kind != "boolean"):
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", value) or value > schema.get("maximum", value):
            return False
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return False
        if "multipleOf" in schema and value % schema["multipleOf"]:
            return False
    if isinstance(value, str):
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
    if isinstance(value, list):
        return schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)) and all(conforms(v, schema.get("items", {}), schemas)
                                                               for v in value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        if not set(schema.get("required", [])) <= set(value):
            return False
        if schema.get("additionalProperties", True) is False and set(value) - set(props):
            return False
        return all(conforms(v, props[k], schemas) for k, v in value.items() if k in props)
    return True


def test_openapi_describes_every_route_and_its_methods(tmp_path):
    from fastapi.routing import APIRoute

    from spo_cli.serve import docs

    app, _ = make_app(tmp_path, token=TOKEN)  # open, as A1111 serves it: the document holds no data
    status, doc, _ = call(app, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    # FastAPI wraps each included router in one route of the app's: their own routes are what is served.
    routes = [r for wrapper in app.routes
              for r in getattr(getattr(wrapper, "original_router", None), "routes", [wrapper]) if isinstance(r, APIRoute)]
    served: dict[str, set[str]] = {}
    for route in routes:
        served.setdefault(route.path_format, set()).update(m.lower() for m in route.methods)
    assert len(served) >= 18 and {path: set(ops) for path, ops in doc["paths"].items()} == served
    for path, described in doc["paths"].items():
        for method, op in described.items():
            assert "422" not in op["responses"]  # a bad parameter is a 400 with the error body here
            if method == "post" and path not in docs.BODYLESS_POSTS:
                kind = "multipart/form-data" if path == "/v1/images/edits" else "application/json"
                assert op["requestBody"]["content"][kind]["schema"]["$ref"], path
            if path not in {"/", "/health", "/favicon.ico", "/openapi.json", "/docs"}:
                assert "401" in op["responses"], path
    assert {path for _, path in docs.OPERATIONS} <= set(doc["paths"])
    assert call(app, "GET", "/openapi.json", host="evil.example")[0] == 421  # behind the Host check all the same
    assert call(app, "GET", "/docs", {"Origin": "http://evil.example"})[0] == 403


@pytest.mark.parametrize("token,users,schemes", [(TOKEN, (), ["bearer"]), (None, (("ann", TOKEN),), ["basic"]),
                                                  (TOKEN, (("ann", TOKEN),), ["bearer", "basic"]), (None, (), [])])
def test_openapi_names_the_credentials_this_server_takes(tmp_path, token, users, schemes):
    app, _ = make_app(tmp_path, token=token, api_auth=users)
    doc = call(app, "GET", "/openapi.json")[1]
    assert sorted(doc["components"].get("securitySchemes", {})) == sorted(schemes)
    want = [{name: []} for name in schemes]
    for path, described in doc["paths"].items():
        for op in described.values():
            # Either scheme lets a request in; the open pages ask for none, nor does a server with none.
            assert op.get("security", []) == ([] if path in {"/", "/health", "/favicon.ico", "/openapi.json",
                                                              "/docs"} else want), path


def _tiny_png_b64(mask: bool = False) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    im = Image.new("RGB", (16, 16), (9, 99, 199))
    if mask:  # white = repaint, on part of it
        im.paste((255, 255, 255), (0, 0, 8, 16))
    im.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


PNG, MASK = _tiny_png_b64(), _tiny_png_b64(mask=True)
ACCEPTED = {  # bodies api takes (checked below), each as a client sends it
    "/v1/images/generations": [
        {"prompt": "a fox", "n": 2, "size": "64x64", "seed": 7, "steps": 2, "scheduler": "dpm++2m-karras",
         "model": "dall-e-3", "quality": "hd", "response_format": "b64_json", "negative_prompt": None},
        {"prompt": "a fox", "width": 512, "height": 768, "guidance": 7.5, "prompt_syntax": "a1111"}],
    "/sdapi/v1/txt2img": [
        {"prompt": "a fox", "seed": -1, "steps": 20, "cfg_scale": 5, "width": 64, "height": 64,
         "sampler_name": "DPM++ 2M", "scheduler": "Karras", "batch_size": 2, "n_iter": 2, "enable_hr": False,
         "styles": [], "override_settings": {"sd_model_checkpoint": "spo"}},
        {"prompt": "a fox", "steps": 10, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 1.5,
         "hr_upscaler": "Lanczos", "hr_second_pass_steps": 4, "denoising_strength": 0.5}],
    "/sdapi/v1/img2img": [
        {"prompt": "a fox", "init_images": [PNG], "mask": MASK, "denoising_strength": 0.5, "steps": 4,
         "mask_blur": 2, "inpaint_full_res": True, "inpaint_full_res_padding": 8, "inpainting_fill": 1,
         "include_init_images": False, "resize_mode": 0}],
    "/spo/v1/run": [{"model": "spo", "images": [{"prompt": "a fox", "seed": 1, "steps": 2, "width": 64, "height": 64,
                                                   "negative_prompt": None, "emphasis": "none-norm"}]}],
}
REFUSED_BODIES = {  # bodies api refuses for a field's type or range, which the schema must refuse too
    "/v1/images/generations": [{"prompt": 5}, {"prompt": "a fox", "n": 0}, {"prompt": "a fox", "steps": "many"},
                               {"prompt": "a fox", "width": 65}, {"prompt": "a fox", "response_format": "gif"},
                               {"n": 1}, {"prompt": "a fox", "seed": -1}],
    "/sdapi/v1/txt2img": [{"prompt": "a fox", "cfg_scale": 1000}, {"prompt": "a fox", "batch_size": 0},
                          {"prompt": ""}, {"prompt": "a fox", "enable_hr": True, "hr_scale": 1},
                          {"prompt": "a fox", "enable_hr": True, "hr_upscaler": "ESRGAN_4x"}],
    "/sdapi/v1/img2img": [{"prompt": "a fox", "init_images": []}, {"prompt": "a fox", "init_images": [PNG, PNG]},
                          {"prompt": "a fox", "init_images": [PNG], "denoising_strength": 0}],
    "/spo/v1/run": [{"images": []}, {"images": [{"prompt": "a fox"}]},
                    {"images": [{"prompt": "a fox", "seed": 1, "cfg_scale": 5}]}],
}
PARSERS = {"/v1/images/generations": api.openai_job, "/sdapi/v1/txt2img": api.a1111_job, "/spo/v1/run": api.run_job,
           "/sdapi/v1/img2img": api.a1111_img2img_job}


@pytest.mark.parametrize("path", sorted(ACCEPTED))
def test_the_body_schemas_agree_with_what_the_server_accepts(tmp_path, path):
    app, _ = make_app(tmp_path)
    doc = call(app, "GET", "/openapi.json")[1]
    schemas = doc["components"]["schemas"]
    body_schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    ctx = api.Context(("spo",), max_images=4, uploads=tmp_path / "inputs")
    for body in ACCEPTED[path]:
        PARSERS[path](body, ctx)  # accepted by the server's own checks
        assert conforms(body, body_schema, schemas), body
    for body in REFUSED_BODIES[path]:
        with pytest.raises(api.BadRequest):
            PARSERS[path](body, ctx)
        assert not conforms(body, body_schema, schemas), body


def test_the_documented_refusals_are_the_bodies_sent(tmp_path):
    """Each refusal /openapi.json describes is the body that path really answers: OpenAI's error
    (message, type, param, code) and A1111's under /sdapi/, which its clients read."""
    app, _ = make_app(tmp_path, token=TOKEN)
    doc = call(app, "GET", "/openapi.json")[1]
    schemas = doc["components"]["schemas"]
    checked = set()
    for path, described in doc["paths"].items():
        url = path.replace("{model}", "dall-e-3").replace("{name}", "none.png")
        for method, op in described.items():
            ways = {"403": dict(headers={"Origin": "http://evil.example"}), "421": dict(host="evil.example"),
                    "401": {}, "404": dict(headers={"Authorization": f"Bearer {TOKEN}"})}
            for status, kw in ways.items():
                if status not in op["responses"] or status == "404" and "{" not in path:
                    continue
                got, body, _ = call(app, method.upper(), url, **kw)
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert got == int(status) and conforms(body, schema, schemas), (method, path, status, body)
                checked.add((path, status))
    assert {("/sdapi/v1/txt2img", "401"), ("/v1/models/{model}", "404"), ("/v1/images/generations", "421"),
            ("/outputs/{name}", "404")} <= checked


def test_the_docs_page_needs_no_network_and_escapes_what_it_shows(tmp_path):
    from spo_cli.serve import docs

    app, _ = make_app(tmp_path, token=TOKEN)
    status, page, headers = call(app, "GET", "/docs")
    page = page.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "<script" not in page and "src=" not in page and "default-src 'none'" in headers["content-security-policy"]
    for path in ("/v1/images/generations", "/sdapi/v1/txt2img", "/spo/v1/run", "/health", "cfg_scale", "sampler_name"):
        assert path in page
    hostile = {"info": {"title": "<script>x</script>", "version": "1"}, "paths": {"/<b>": {"get": {
        "description": "<img src=x>", "responses": {"200": {"description": "<i>"}}}}}}
    shown = docs.page(hostile)
    assert "<script>x" not in shown and "<img" not in shown and "<b>" not in shown and "&lt;img src=x&gt;" in shown


def test_one_access_line_per_request_without_query_token_or_body(tmp_path, capsys):
    app, _ = make_app(tmp_path, token=TOKEN, access_log=True)
    secret = {"Authorization": f"Bearer {TOKEN}"}
    call(app, "GET", "/spo/v1/gallery?limit=3&key=query-secret", secret)
    post(app, "/v1/images/generations", {"prompt": "a private prompt", "n": 0}, headers=secret)
    call(app, "GET", "/health", host="evil.example")
    call(app, "GET", '/x"\n127.0.0.1:1 - "GET /forged" 200 0.001s')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith('127.0.0.1:40000 - "GET /spo/v1/gallery" 200 ') and lines[0].endswith("s")
    assert lines[1].startswith('127.0.0.1:40000 - "POST /v1/images/generations" 400 ')
    assert lines[2].startswith('127.0.0.1:40000 - "GET /health" 421 ')  # refusals too
    assert lines[3].startswith('127.0.0.1:40000 - "GET /x\\"\\n127.0.0.1:1 - \\"GET /forged\\" 200 0.001s" 401 ')
    text = "\n".join(lines)
    assert TOKEN not in text and "query-secret" not in text and "limit" not in text and "private" not in text
    make_app(tmp_path, access_log=False)[0]  # off: nothing
    call(make_app(tmp_path)[0], "GET", "/health")
    assert capsys.readouterr().err == ""


def test_the_access_line_hides_secrets_in_the_path_and_escapes_the_client(tmp_path, capsys):
    """A client may put the token or a password in the path itself (`curl host/v1/models/$SPO_TOKEN`):
    the line shows neither. The client's address is text too: behind a proxy on loopback (an SSH
    tunnel), uvicorn takes it from X-Forwarded-For, which may hold quotes and terminal escapes."""
    from spo_cli.serve.guard import access_line

    password = "correct-horse-battery"
    app, _ = make_app(tmp_path, token=TOKEN, api_auth=(("alice", password),), access_log=True)
    call(app, "GET", f"/v1/models/{TOKEN}", {"Authorization": f"Bearer {TOKEN}"})
    call(app, "GET", f"/outputs/{password}/{'x' * 261}{TOKEN}")  # the token across the cut at 300
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith('127.0.0.1:40000 - "GET /v1/models/***" 404 '), lines
    assert all(TOKEN[:8] not in line and password[:8] not in line for line in lines), lines
    line = access_line({"method": "GET", "path": "/", "client": ('1.2.3.4" 200 0.001s \x1b[2J', 0)}, 200, 0.5)
    assert "\x1b" not in line and line.startswith('1.2.3.4\\" 200 0.001s \\u001b[2J:0 - "GET /" 200 '), line


LEAVE_WITH_TORCH_BUSY = """
import sys, threading, time, types
import torch
from spo_cli.cli.serve import leave

torch.set_num_threads(1)
inside = threading.Event()

def denoise():  # a GPU thread that is inside torch whenever the process ends
    x, w = torch.randn(1, 64, 128, 128), torch.randn(64, 64, 3, 3)
    while True:
        inside.set()
        torch.nn.functional.conv2d(x, w, padding=1)

threading.Thread(target=denoise, daemon=True).start()
inside.wait()
if sys.argv[1] == "leave":
    leave(types.SimpleNamespace(stop_writing=lambda: print("writes finished", file=sys.stderr)), "busy")
sys.exit(130)  # what `spo serve` did: the interpreter shuts down around the thread, and aborts
"""


@pytest.mark.slow
def test_leaving_with_the_gpu_thread_inside_torch_exits_130_without_aborting(tmp_path):
    """What a second Ctrl-C ends with: the worker thread may still be in a step. A plain exit shuts the
    interpreter down around it and aborts (exit 134, 'terminate called without an active exception');
    `leave` finishes the writes and exits 130 without that."""
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text(LEAVE_WITH_TORCH_BUSY)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), "leave"], capture_output=True, text=True, env=env, timeout=WAIT)
    assert done.returncode == 130 and "terminate called" not in done.stderr, done.stderr
    assert "writes finished" in done.stderr and "Interrupted" in done.stderr and "Traceback" not in done.stderr


def test_an_answer_that_comes_after_the_server_stopped_is_dropped(tmp_path):
    """A call abandoned at shutdown reaches its next step after the event loop has closed: answering its
    (already answered) ticket then must not raise in the worker thread."""
    app, worker = make_app(tmp_path, poll_s=0.01)
    tickets = []
    submit = worker.submit
    worker.submit = lambda job, on_done: tickets.append(submit(job, on_done)) or tickets[-1]
    status, body, _ = post(app, "/v1/images/generations", {"prompt": "a fox"})  # the client leaves; the loop ends
    assert status == 499 and len(tickets) == 1, body
    tickets[0].on_done()


def test_bodies_that_carry_images_have_their_own_limit(tmp_path):
    """A 2 MB body is over the 1 MiB of a txt2img (413, unread) but within img2img's (read, then refused
    for what it holds); the edits route takes only multipart, and a link for the inputs folder is not
    written through."""
    import base64

    from spo_cli.serve import uploads

    app, _ = make_app(tmp_path)
    junk = base64.b64encode(b"\x00" * (3 << 19)).decode()  # 1.5 MiB of bytes, 2 MiB of base64
    body = json.dumps({"prompt": "a fox", "init_images": [junk]}).encode()
    json_type = {"Content-Type": "application/json"}
    assert call(app, "POST", "/sdapi/v1/txt2img", json_type, body)[0] == 413
    status, answer, _ = call(app, "POST", "/sdapi/v1/img2img", json_type, body)
    assert status == 400 and "not an image" in answer["detail"]
    status, answer, _ = call(app, "POST", "/v1/images/edits", json_type, b'{"prompt": "a fox"}')
    assert status == 415 and "multipart/form-data" in answer["error"]["message"]
    form = {"Content-Type": "multipart/form-data; boundary=x"}
    status, answer, _ = call(app, "POST", "/v1/images/edits", form, b"--x\r\nnot a part\r\n--x--\r\n")
    assert status == 400 and answer["error"]["param"] in ("image", None)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "inputs").symlink_to(elsewhere)
    with pytest.raises(uploads.BadUpload) as e:
        uploads.store_png(__import__("PIL.Image", fromlist=["Image"]).new("L", (8, 8)), tmp_path / "out" / "inputs")
    assert e.value.status == 500 and not list(elsewhere.iterdir())


# -- Uploads of refused requests --------------------------------------------------------------------

def _png_b64(size=(64, 48), color=(200, 30, 30)) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_a_refused_request_leaves_no_upload_behind(tmp_path):
    from spo_cli.serve.app import Settings, create_app
    from spo_cli.serve.worker import Worker

    inputs = tmp_path / "out" / "inputs"
    worker = Worker(lambda: {}, tmp_path)  # never started
    app = create_app(worker, Settings(tmp_path, api.Context(("spo",), max_images=4, uploads=inputs), bound="127.0.0.1"))
    body = {"prompt": "a fox", "init_images": [_png_b64()], "steps": 4}
    # Refused after the image was checked and kept (a bad field read after it), then by the queue.
    status, answer, _ = post(app, "/sdapi/v1/img2img", {**body, "denoising_strength": 5})
    assert status == 400 and "denoising_strength" in answer["detail"]
    assert list(inputs.iterdir()) == []
    worker.drain()  # the queue takes nothing now
    assert post(app, "/sdapi/v1/img2img", body)[0] == 503
    assert list(inputs.iterdir()) == []


def test_a_refusal_removes_only_the_uploads_no_one_else_keeps(tmp_path):
    import base64

    from spo_cli.serve import uploads

    data = base64.b64decode(_png_b64())
    with uploads.provisional():
        accepted = uploads.store(data, tmp_path, "image")
    assert accepted.read_bytes() == data  # an accepted request's upload stays
    other = base64.b64decode(_png_b64(color=(1, 2, 3)))
    with pytest.raises(api.BadRequest):
        with uploads.provisional():
            shared = uploads.store(other, tmp_path, "image")
            with uploads.provisional():  # a request sending the same file meanwhile, accepted
                uploads.store(other, tmp_path, "image")
            uploads.store(data, tmp_path, "image")  # kept before this request: not its to remove
            raise api.BadRequest("refused")
    assert shared.read_bytes() == other and accepted.read_bytes() == data


def test_the_no_save_uploads_folder_goes_even_when_a_second_ctrl_c_exits_at_once(monkeypatch):
    import base64

    from spo_cli.cli import serve as serve_cli
    from spo_cli.serve import uploads

    folder = uploads.folder(Path("unused"), save=False)  # the process's one --no-save folder
    uploads.store(base64.b64decode(_png_b64()), folder, "image")

    class Exited(Exception):
        pass

    def exit_now(code):
        raise Exited(code)

    monkeypatch.setattr(os, "_exit", exit_now)  # leave() ends the process without atexit handlers
    with pytest.raises(Exited):
        serve_cli.leave(SimpleNamespace(stop_writing=lambda: None), "a test")
    assert not folder.exists()


def test_bodies_with_images_are_read_a_few_at_a_time(tmp_path):
    # Each such body may be tens of MB once read and decoded: past EDIT_READS_MAX, a request waits unread.
    from spo_cli.serve import plumbing

    app, worker = make_app(tmp_path)
    slots = app.state.spo.edit_reads
    body = json.dumps({"prompt": "a fox", "init_images": []}).encode()  # refused once read: the worker never runs
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/sdapi/v1/img2img", "raw_path": b"/sdapi/v1/img2img", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1:7860"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "server": ("127.0.0.1", 7860), "client": ("127.0.0.1", 40000)}

    async def main():
        for _ in range(plumbing.EDIT_READS_MAX):
            await slots.acquire()  # as many bodies being read as there may be
        read, messages = asyncio.Event(), []

        async def receive():
            read.set()
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            messages.append(message)

        task = asyncio.create_task(app(scope, receive, send))
        for _ in range(100):  # the request runs as far as it can: no I/O here, only the loop's turns
            await asyncio.sleep(0)
        assert not task.done() and not read.is_set()  # waiting, its body not read
        slots.release()
        await asyncio.wait_for(task, WAIT)
        assert read.is_set() and messages[0]["status"] == 400

    asyncio.run(main())


def test_uploaded_inputs_are_not_served_back(tmp_path):
    # A client's uploads are its own: /outputs serves what the server made, not what others sent it.
    app, _ = make_app(tmp_path)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / ("a" * 64 + ".png")).write_bytes(b"\x89PNG")
    (tmp_path / "made.png").write_bytes(b"\x89PNG")
    assert call(app, "GET", "/outputs/made.png")[0] == 200
    for path in ("/outputs/inputs/" + "a" * 64 + ".png", "/outputs/inputs%2f" + "a" * 64 + ".png",
                 "/outputs/./inputs/" + "a" * 64 + ".png"):
        assert call(app, "GET", path)[0] == 404, path

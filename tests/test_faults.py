"""Broken model caches, foreign repos and an unreachable Hub: named, early, with the command that fixes it.

Resolution only (no pipeline is loaded): a private copy of the tiny cache is damaged the ways disks
and interrupted copies damage it, and `resolve` must say which repo and file, and how to repair.
"""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import pytest

from conftest import base_copy
from spo_cli import presets, resolve
from spo_cli.errors import ModelError
from spo_cli.request import ModelRequest
from spo_cli.tiny import add_to_cache

BASE = presets.SDXL_BASE


@pytest.fixture
def cache(repos, tmp_path, monkeypatch) -> Path:
    """A private HF cache with tiny SDXL base, and huggingface_hub pointed at it."""
    from huggingface_hub import constants

    root = tmp_path / "hub"
    add_to_cache(root, BASE, repos[BASE])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def snapshot(cache: Path, repo: str = BASE) -> Path:
    [snap] = (cache / ("models--" + repo.replace("/", "--")) / "snapshots").iterdir()
    return snap


def damage(cache: Path, rel: str, how: str) -> None:
    link = snapshot(cache) / rel
    blob = link.resolve()
    if how == "truncate":
        data = blob.read_bytes()
        blob.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        blob.write_bytes(b"<html>proxy error page</html>")
    elif how == "dangling":
        blob.unlink()
    elif how == "loop":
        link.unlink()
        link.symlink_to(link.name)


def base_fp32(**kw):
    return resolve.resolve_model(ModelRequest(model="base", **kw), "float32", local_only=True)


@pytest.mark.parametrize("rel, how, words", [
    ("unet/diffusion_pytorch_model.safetensors", "truncate", "cut short"),
    ("unet/diffusion_pytorch_model.safetensors", "garbage", "not a safetensors file"),
    ("unet/diffusion_pytorch_model.safetensors", "dangling", "a link to a missing or looping file"),
    ("text_encoder/model.safetensors", "loop", "a link to a missing or looping file"),
    ("unet/config.json", "garbage", "JSONDecodeError"),
    ("model_index.json", "garbage", "JSONDecodeError"),
])
def test_a_damaged_cache_names_the_file_and_the_repair(cache, rel, how, words):
    damage(cache, rel, how)
    with pytest.raises(ModelError) as e:
        base_fp32()
    msg = e.value.paragraph()
    assert f"The copy of '{BASE}' on this machine is damaged: {rel} (" in msg, msg
    assert words in msg
    assert "Repair it with `spo download base --dtype fp32 --force`." in msg


@pytest.mark.parametrize("changes, words", [
    ({"_class_name": "StableDiffusionPipeline"}, "is a StableDiffusionPipeline, not an SDXL pipeline"),
    ({"_class_name": "FluxPipeline"}, "is a FluxPipeline, not an SDXL pipeline"),
    ({"_class_name": ["pipeline", "MyPipeline"]}, "needs custom Python code from the repository"),
    ({"unet": ["my_unets", "FancyUNet"]}, "needs custom Python code from the repository"),
])
def test_only_standard_sdxl_pipelines_are_accepted(repos, tmp_path, changes, words):
    folder = base_copy(repos, tmp_path / "model", **changes)
    with pytest.raises(ModelError) as e:
        resolve.resolve_model(ModelRequest(model=str(folder)), "float32")
    assert words in e.value.message
    assert "trust_remote_code" not in e.value.paragraph()


def test_the_spo_preset_takes_plain_weights_even_beside_fp16_files(repos, tmp_path, monkeypatch):
    # The merged checkpoint is float16 under plain names, as the authors load it; a repo that also
    # held *.fp16.safetensors must not make spo fetch those instead (presets' has_fp16_variant).
    from huggingface_hub import constants

    merged = tmp_path / "merged"
    shutil.copytree(repos[presets.SPO_MERGED], merged)
    for weights in list(merged.glob("*/*.safetensors")):  # a complete fp16 variant beside every weight file
        weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")).write_bytes(weights.read_bytes())
    cache = tmp_path / "hub"
    add_to_cache(cache, presets.SPO_MERGED, merged)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    r = resolve.resolve_model(ModelRequest(model="spo", vae="model"), "float16", local_only=True)
    assert r.pipeline.variant is None
    assert "unet/diffusion_pytorch_model.safetensors" in r.pipeline.files
    assert not any(".fp16." in f for f in r.pipeline.files)


# ---------------------------------------------------------------------------------------------
# The Hub out of reach


@pytest.fixture
def endpoint(monkeypatch):
    from huggingface_hub import constants

    def point(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
    return point


def test_unreachable_refused(endpoint):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    endpoint(f"http://127.0.0.1:{port}")
    assert resolve.unreachable() == f"127.0.0.1:{port} refused the connection"


def test_unreachable_dns(endpoint):
    endpoint("https://no-such-host.invalid")
    assert resolve.unreachable() == "the name no-such-host.invalid does not resolve (no DNS)"


def test_unreachable_timeout(endpoint):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:  # a full backlog: further connections hang, as behind a dropping firewall
            for _ in range(64):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", port))
                fillers.append(c)
            endpoint(f"http://127.0.0.1:{port}")
            why = resolve.unreachable(timeout=0.3)
        finally:
            for c in fillers:
                c.close()
    if why is None:
        pytest.skip("this kernel accepts connections beyond the backlog")
    assert why == f"127.0.0.1:{port} did not answer within 0.3 s"


def test_reachable(endpoint):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)  # any answer means the server is there
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        endpoint(f"http://127.0.0.1:{server.server_address[1]}")
        assert resolve.unreachable() is None
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_accepts_and_never_answers(endpoint):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)  # the kernel completes the handshake; nobody ever reads the request
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        endpoint(url)
        assert resolve.unreachable(timeout=0.5) == f"{url} accepted the connection but did not answer within 0.5 s"


@pytest.mark.parametrize("url", ["not a url", "ftp://example.com", "http://"])
def test_an_endpoint_that_is_not_a_url(endpoint, url):
    endpoint(url)
    assert resolve.unreachable() == f"HF_ENDPOINT {url!r} is not an http(s) URL"


def test_unreachable_through_a_proxy(endpoint, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    endpoint("https://huggingface.co")
    assert resolve.unreachable() == f"127.0.0.1:{port} refused the connection through the proxy 127.0.0.1:{port}"


def test_the_nan_hint_names_a_lora_strength_too():
    # Before: a LoRA at strength 1e308 made NaN images and the hint spoke of --guidance only.
    from spo_cli.render import nan_hint

    assert "--guidance" in nan_hint("float32") and "LoRA strength" in nan_hint("float32")

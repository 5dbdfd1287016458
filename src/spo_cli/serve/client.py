"""`spo generate/batch --server URL`: the render loop with a running `spo serve` as its engine.

`RemoteEngine` and `RemoteModel` answer what the render loop and `spo batch` ask of a loaded
engine and its resolved model (run a call, the facts for the sidecar, the model's identity for
resume), from the server's /spo/v1 endpoints. So the files on disk are written by the same code as
a local run, from the server's pixels, and nothing here imports torch. Standard library HTTP only.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass

from spo_cli.errors import GenerationError, ModelError, UsageError
from spo_cli.request import ImageRequest

TIMEOUT_S = 24 * 3600  # a queued call on a busy server may wait long
HELLO_TIMEOUT_S = 30.0  # the first question answers at once from a live server

# Model options that choose weights or how they run: on a server those are the server's.
SERVER_SIDE = ("--revision", "--lora", "--lora-file", "--lora-scale", "--vae", "--device", "--dtype", "--fast",
               "--offload", "--vae-tiling", "--vae-slicing")


@dataclass(frozen=True)
class Result:  # what engine.Result holds, without importing torch
    image: object
    request: ImageRequest
    nan: bool


def check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {url!r} is not an http(s) URL.", "E.g. --server http://gpu-box:7860.")
    return url.rstrip("/")


def refuse_local_options(given: dict[str, object]) -> None:
    """--server with options that only a local model can honour: say which, before anything runs."""
    named = [name for name, value in given.items() if value]
    if named:
        raise UsageError(f"{', '.join(named)} cannot be used with --server: the server chose its model and how it "
                         "runs when it started.", "Drop them, or start the server with them (spo serve --help).")


class Client:
    def __init__(self, url: str, token: str | None = None):
        self.url = check_url(url)
        self.token = token if token is not None else (os.environ.get("SPO_TOKEN", "").strip() or None)

    def call(self, path: str, body: dict | None = None, timeout: float = TIMEOUT_S) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="GET" if data is None else "POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                answer = json.loads(r.read())
            if not isinstance(answer, dict):
                raise ValueError("not a JSON object")
            return answer
        except ValueError:  # JSON that is not spo's, or no JSON at all
            raise ModelError(f"{self.url} answered, but not as `spo serve` does.",
                             "Check the --server address: it should be the URL `spo serve` printed.") from None
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            if e.code == 401:
                raise UsageError(f"The server at {self.url} needs a token: {message}",
                                 "Set SPO_TOKEN to the token the server was started with.") from None
            if e.code in (400, 404, 413):
                raise UsageError(f"The server at {self.url} refused the request: {message}") from None
            raise GenerationError(f"The server at {self.url} answered {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                reason = f"no answer within {timeout:g} s"
            raise ModelError(f"The server at {self.url} cannot be reached: {reason}.",
                             "Check that `spo serve` runs there, and the address and port.") from None


class RemoteModel:
    """The resolved model as the server loaded it: what sidecars and resume hashes record."""

    def __init__(self, info: dict):
        self.info = info
        self.dtype = info["dtype"]

    def describe(self) -> dict:
        return self.info["describe"]

    def identity(self) -> dict:
        return self.info["identity"]


class RemoteEngine:
    def __init__(self, client: Client, label: str, info: dict):
        self.client, self.label, self.info = client, label, info
        self.dtype = info["dtype"]
        self._last: dict = {}

    def facts(self) -> dict:
        return self.info["facts"]

    def default_size(self) -> tuple[int, int]:
        return tuple(self.info["default_size"])

    def call_key(self, request: ImageRequest) -> tuple:
        return request.group_key()  # the server regroups by its own engine's key

    def scheduler_facts(self, name: str) -> dict:
        return self._last["scheduler"]

    def encoding_facts(self, request: ImageRequest) -> dict:
        return self._last["encoding"]

    def run(self, batch: list[ImageRequest], on_step=None) -> list[Result]:
        from PIL import Image

        answer = self.client.call("/spo/v1/run", {"model": self.label, "images": [asdict(r) for r in batch]})
        results = []
        self._last = self._last or {"scheduler": {"name": batch[0].scheduler, "class": None, "a1111": "",
                                                  "config": {}}, "encoding": {"prompt_syntax": "plain"}}
        for request, item in zip(batch, answer["images"]):
            if item.get("error") and not item.get("nan"):
                raise GenerationError(f"The server could not make the image: {item['error']}")
            image = None
            if not item.get("nan"):
                with Image.open(io.BytesIO(base64.b64decode(item["png"]))) as im:
                    image = im.convert("RGB")
                self._last = {"scheduler": item["meta"]["scheduler"], "encoding": _encoding(item["meta"])}
            results.append(Result(image, request, bool(item.get("nan"))))
        if on_step:
            on_step(batch[0].steps, batch[0].steps)
        return results


def _encoding(meta: dict) -> dict:
    keys = ("prompt_syntax", "emphasis", "prompt_windows")
    return {k: meta[k] for k in keys if k in meta} if meta.get("prompt_syntax") == "a1111" else {"prompt_syntax": "plain"}


def connect(url: str, label: str, ui=None) -> tuple[RemoteEngine, RemoteModel]:
    """The server's loaded model `label`, as an engine and a resolved model."""
    client = Client(url)
    models = client.call("/spo/v1/models", timeout=HELLO_TIMEOUT_S)
    if not isinstance(models.get("models"), dict) or any(
            not isinstance(m, dict) or not {"describe", "identity", "facts", "dtype", "default_size"} <= set(m)
            for m in models["models"].values()):
        raise ModelError(f"{client.url} answered, but not as `spo serve` does.",
                         "Check the --server address: it should be the URL `spo serve` printed.")
    if not models.get("ready"):
        raise ModelError(f"The server at {client.url} has not finished loading its models.",
                         "Try again when its /health says ready.")
    if label not in models["models"]:
        raise UsageError(f"The server at {client.url} has no model '{label}' loaded "
                         f"(it has {', '.join(models['models'])}).", "Pick one with --model.")
    info = models["models"][label]
    if ui is not None:
        ui.info(f"[green]✓[/] Using {label} ({info['describe']['model']['id']}) on the server at {client.url} "
                f"({info['facts']['device']}, {info['dtype']})")
    return RemoteEngine(client, label, info), RemoteModel(info)

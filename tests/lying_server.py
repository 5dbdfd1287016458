"""A loopback HTTP server that answers whatever a test tells it to: the `--server` client's adversary.

`LyingServer` runs `http.server` in a thread. Out of the box it answers /spo/v1/models and
/spo/v1/run as `spo serve` does (the answers are built by spo's own metadata code, with solid-colour
PNGs of the size each request asks), so a test changes one thing and watches the client. An answer
is a callable `(handler, body) -> None` that writes the whole response; `json_answer`, `raw_answer`,
`stream_answer`, `redirect` and `models_lie` / `run_lie` (the honest answer, then one change) build
the usual ones. Every request is recorded in `seen` (method, path, headers).

No pipeline and no torch: the pixels are not what a model would make, only what the client checks.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone

from spo_cli import __version__, presets
from spo_cli.outputs import metadata
from spo_cli.request import Hires, ImageRequest, InputImage, ModelRequest, RunOptions

Answer = Callable[[http.server.BaseHTTPRequestHandler, object], None]
LABEL = "spo"


def describe() -> dict:
    request = asdict(ModelRequest(model=LABEL, dtype="float16"))
    request.pop("device")
    return {
        "model_request": request,
        "model": {"id": presets.PRESETS[LABEL].repo_id, "source": "hub", "revision": "main", "commit": "0" * 40,
                  "preset": LABEL},
        "lora": None,
        "vae": {"id": "madebyollin/sdxl-vae-fp16-fix", "source": "hub", "revision": "main", "commit": "1" * 40},
    }


def facts() -> dict:
    return {"device": "cuda:0", "dtype": "float16", "gpu": "A test GPU", "run_options": asdict(RunOptions()),
            "versions": {"spo-cli": __version__, "torch": "2.0", "diffusers": "0.30"}}


def honest_models() -> dict:
    """What `spo serve` answers on /spo/v1/models, with one model loaded."""
    d = describe()
    identity = {"model": {"id": d["model"]["id"], "commit": d["model"]["commit"], "variant": None, "file": None,
                          "subfolder": None}, "lora": None, "lora_scale": None, "vae": None, "dtype": "float16"}
    return {"ready": True, "models": {LABEL: {"describe": d, "identity": identity, "facts": facts(),
                                              "dtype": "float16", "default_size": [1024, 1024]}}}


def png(width: int, height: int, mode: str = "RGB", meta: dict | None = None) -> bytes:
    import io

    from PIL import Image

    image = Image.new(mode, (width, height), "teal")
    if meta is not None:
        return metadata.encode_image(image, "png", meta)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def honest_run(body) -> dict:
    """What `spo serve` answers on /spo/v1/run for `body`: one PNG per image asked, with its sidecar."""
    scheduler = {"name": "default", "class": "EulerDiscreteScheduler", "a1111": "Euler", "config": {}}
    images = []
    for item in body["images"]:
        r = ImageRequest(**_edit_fields(item, body.get("inputs") or {}))
        w, h = r.width or 1024, r.height or 1024
        if r.image is not None:
            from spo_cli import inputs

            w, h = inputs.output_size(r.image, r.width, r.height)[:2]
        meta = metadata.build(r, describe(), facts(), dict(scheduler, name=r.scheduler), width=w, height=h,
                              batch_size=len(body["images"]), elapsed_s=0.5, created=datetime.now(timezone.utc))
        if r.hires is not None:  # the sidecar records the first pass's size
            from spo_cli.validate import hires_size

            w, h = hires_size(w, h, r.hires.scale)
        images.append({"png": base64.b64encode(png(w, h, meta=meta)).decode(), "meta": meta})
    return {"images": images, "warnings": []}


def _edit_fields(item: dict, sent: dict) -> dict:
    """An image of a /spo/v1/run body as ImageRequest fields: its inputs (named by SHA-256, their
    bytes in the body's `inputs`) as the server keeps them, its hires settings as Hires."""
    import io

    from PIL import Image

    item = dict(item)
    for key in ("image", "mask"):
        if item.get(key) is not None:
            data = base64.b64decode(sent[item[key]])
            with Image.open(io.BytesIO(data)) as im:
                item[key] = InputImage(f"/srv/inputs/{item[key]}.png", item[key], im.width, im.height, len(data))
    if item.get("hires") is not None:
        item["hires"] = Hires(**item["hires"])
    return item


# ---------------------------------------------------------------------------------------------
# Answers


def raw_answer(data: bytes, status: int = 200, headers: dict | None = None, *, length: int | None = None) -> Answer:
    """`data` as the body; Content-Length is its length unless `length` says otherwise (-1: none)."""
    def answer(handler, body):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        n = len(data) if length is None else length
        if n >= 0:
            handler.send_header("Content-Length", str(n))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def json_answer(obj, status: int = 200, headers: dict | None = None) -> Answer:
    return raw_answer(json.dumps(obj).encode(), status, headers)


def wire(data: bytes) -> Answer:
    """Bytes on the socket, no HTTP around them (not even a status line)."""
    def answer(handler, body):
        handler.wfile.write(data)
        handler.close_connection = True
    return answer


def drip_answer(every_s: float, most: int) -> Answer:
    """A 200 whose headers come one byte every `every_s` seconds, at most `most` of them, then the
    connection closes: inside any per-read timeout longer than `every_s`, never a whole answer. How
    many bytes went out before the client hung up is in `answer.dripped`."""
    def answer(handler, body):
        handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
        handler.wfile.flush()
        try:
            for _ in range(most):
                time.sleep(every_s)
                handler.wfile.write(b"X")
                handler.wfile.flush()
                answer.dripped += 1
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: what it should do
        handler.close_connection = True
    answer.dripped = 0
    return answer


def stream_answer(total: int, chunk: int = 1 << 20) -> Answer:
    """A 200 with no Content-Length and `total` bytes of JSON-ish filler, until the client hangs up.
    How many bytes got out is in `answer.sent`."""
    def answer(handler, body):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        sent, piece = 0, b"[" + b"0," * (chunk // 2 - 1)
        try:
            while sent < total:
                handler.wfile.write(piece)
                sent += len(piece)
                answer.sent = sent
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading: what it should do
    answer.sent = 0
    return answer


def redirect(location: str, status: int = 307) -> Answer:
    return raw_answer(b"", status, {"Location": location})


def models_lie(change: Callable[[dict], object]) -> Answer:
    """The honest /spo/v1/models answer after `change(answer)` (which edits it in place)."""
    def answer(handler, body):
        a = honest_models()
        change(a)
        json_answer(a)(handler, body)
    return answer


def run_lie(change: Callable[[dict], object]) -> Answer:
    """The honest /spo/v1/run answer for the request after `change(answer)`."""
    def answer(handler, body):
        a = honest_run(body)
        change(a)
        json_answer(a)(handler, body)
    return answer


# ---------------------------------------------------------------------------------------------
# The server


class LyingServer:
    def __init__(self):
        self.answers: dict[str, Answer] = {
            "/spo/v1/models": lambda h, b: json_answer(honest_models())(h, b),
            "/spo/v1/run": lambda h, b: json_answer(honest_run(b))(h, b),
        }
        self.seen: list[tuple[str, str, dict]] = []
        lying = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                lying.seen.append((self.command, self.path, dict(self.headers)))
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                body = json.loads(raw) if raw else None
                answer = lying.answers.get(self.path.split("?")[0])
                if answer is None:
                    json_answer({"error": {"message": "not found"}}, 404)(self, body)
                else:
                    answer(self, body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> LyingServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


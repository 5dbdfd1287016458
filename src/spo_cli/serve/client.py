"""`spo generate/batch --server URL`: the render loop with a running `spo serve` as its engine.

`RemoteEngine` and `RemoteModel` answer what the render loop and `spo batch` ask of a loaded
engine and its resolved model (run a call, the facts for the sidecar, the model's identity for
resume), from the server's /spo/v1 endpoints. So the files on disk are written by the same code as
a local run, from the server's pixels, and nothing here imports torch. Standard library HTTP only.

The server is not trusted. Whatever it answers is read with a size bound and a nesting bound, and
checked whole (shapes, types, every image decoded at the size asked, one image per image asked)
before anything is written; an answer that is not what `spo serve` sends is one paragraph ("answered,
but not as `spo serve` does") naming what was wrong. Text from the server is shown inert: control
characters escaped, never read as Rich markup. Redirects are never followed, so the token goes to
the address the user gave and nowhere else.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import math
import os
import re
import socket
import struct
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict
from datetime import datetime, timezone

from spo_cli import validate
from spo_cli.errors import GenerationError, ModelError, UsageError
from spo_cli.request import Generated, ImageRequest

TIMEOUT_S = 24 * 3600  # a queued call on a busy server may wait long
HELLO_TIMEOUT_S = 30.0  # the first question answers at once from a live server

# What an answer may hold. /spo/v1/models is a few kB per model; an error body is a message.
SMALL_ANSWER_BYTES = 4 << 20
ERROR_BODY_BYTES = 64 << 10
# Per image of /spo/v1/run: the worst case of a PNG (raw RGB rows, each with its filter byte, plus
# zlib's 5 bytes per 16 kB stored block) in base64, and room for the image's metadata.
_PNG_SLACK = 1.01
_PNG_FRAMING = 1 << 12  # signature, IHDR, IEND, each chunk's length and CRC
_META_BYTES = 1 << 20
JSON_DEPTH_MAX = 32  # spo's answers nest 5 deep; json's C parser recurses on each level
JSON_BRACKETS_MAX = 100_000  # objects and arrays in one answer: a real one has hundreds
SHOWN_CHARS = 200  # server text quoted in a message is cut here
DTYPES = ("float16", "bfloat16", "float32")


class Lie(Exception):
    """The server answered, but not as `spo serve` does; the message says where and how."""


# ---------------------------------------------------------------------------------------------
# The address


def check_url(url: str) -> str:
    """--server's URL, checked before anything is sent; the message never repeats a password."""
    shown = inert(url) if "@" not in url else "(the URL given)"
    hint = "E.g. --server http://gpu-box:7860, the address `spo serve` printed."
    if any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url):
        raise UsageError(f"--server {shown} holds spaces or control characters; a URL has none.", hint)
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # ValueError for a port that is not a number from 0 to 65535
    except ValueError as e:
        reason = "its port is not a number from 1 to 65,535" if "port" in str(e).lower() else "it is not a valid URL"
        raise UsageError(f"--server {shown}: {reason}.", hint) from None
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        # Said without the URL: it would print the password in logs and terminals.
        raise UsageError("--server holds a user name or password (user:password@host); spo never sends those, "
                         "and a token does not belong in a URL.",
                         "Give the address alone, and the token that `spo serve --token-file` was started with in "
                         "the SPO_TOKEN environment variable.")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--server {shown} is not an http(s) URL.", hint)
    if port == 0:
        raise UsageError(f"--server {shown}: port 0 is not an address to connect to.", hint)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise UsageError(f"--server {shown} has a query or fragment (after '?' or '#'); spo adds the paths itself.",
                         "Give the server's address alone, e.g. http://gpu-box:7860.")
    return url.rstrip("/")


def refuse_local_options(given: dict[str, object]) -> None:
    """--server with options that only a local model can honour: say which, before anything runs."""
    named = [name for name, value in given.items() if value]
    if named:
        raise UsageError(f"{', '.join(named)} cannot be used with --server: the server chose its model and how it "
                         "runs when it started.", "Drop them, or start the server with them (spo serve --help).")


def inert(value: object, limit: int = SHOWN_CHARS) -> str:
    """Text from elsewhere, safe to print on one line: control, format and separator characters
    (terminal escapes, bidi overrides, newlines) shown as escapes, and cut at `limit`."""
    text = str(value)
    cut = len(text) > limit
    text = "".join(c if unicodedata.category(c)[0] not in "CZ" or c == " " else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text[:limit])
    return text + ("…" if cut else "")


# ---------------------------------------------------------------------------------------------
# Reading answers: bounded, then parsed


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx code


class _Watchdog:
    """Shuts the connections of a call still open at its deadline. Each socket read has a timeout of
    its own, but a server that sends its headers or its body a byte at a time stays inside every one of
    them, and would hold the call for ever; this bounds the whole answer."""

    _current = threading.local()  # the watchdog of the call in flight on this thread, for its connections

    def __init__(self, seconds: float):
        self.sockets: list = []
        self.fired = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def __enter__(self):
        _Watchdog._current.value = self
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        _Watchdog._current.value = None
        return False

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self.sockets:
                _shut(sock)

    @classmethod
    def watch(cls, sock) -> None:
        dog = getattr(cls._current, "value", None)
        if dog is not None:
            with dog._lock:
                dog.sockets.append(sock)
                if dog.fired:
                    _shut(sock)


def _shut(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns at once; close() would not wake it
    except OSError:
        pass


class _WatchedHTTP(http.client.HTTPConnection):
    def connect(self):
        super().connect()
        _Watchdog.watch(self.sock)


class _WatchedHTTPS(http.client.HTTPSConnection):
    def connect(self):
        super().connect()
        _Watchdog.watch(self.sock)


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req):
        return self.do_open(_WatchedHTTP, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req):
        return self.do_open(_WatchedHTTPS, req, context=self._context)


_OPENER = urllib.request.build_opener(_NoRedirect, _HTTPHandler, _HTTPSHandler)


def _read(response, limit: int, deadline: float, what: str) -> bytes:
    """At most `limit` bytes of a body, whatever Content-Length claims and however it is sent."""
    declared = response.headers.get("Content-Length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Lie(f"its Content-Length is {inert(declared, 40)!r}, not a number of bytes")
        if int(declared) > limit:
            raise Lie(f"it announced {int(declared):,} bytes for {what}, more than the {limit:,} it can take")
    chunks, size = [], 0
    while size <= limit:
        if time.monotonic() > deadline:
            raise TimeoutError
        chunk = response.read(min(1 << 20, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise Lie(f"it sent more than {limit:,} bytes for {what}")
    if declared is not None and size != int(declared):
        raise Lie(f"it announced {int(declared):,} bytes for {what} but sent {size:,}")
    return b"".join(chunks)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def parse_json(data: bytes) -> object:
    """JSON from the server, refused (Lie) when invalid, nested too deep or holding NaN/Infinity.

    The depth is measured before json.loads, whose parser recurses once per level."""
    brackets = _STRING.sub(b'""', data).translate(None, _NOT_BRACKET)
    depth = 0
    for b in brackets[:2 * JSON_BRACKETS_MAX]:
        depth += 1 if b in b"[{" else -1
        if depth > JSON_DEPTH_MAX:
            raise Lie(f"its JSON is nested more than {JSON_DEPTH_MAX} deep")
    if len(brackets) > 2 * JSON_BRACKETS_MAX:
        raise Lie(f"its JSON holds more than {JSON_BRACKETS_MAX:,} objects and arrays")

    def constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data, parse_constant=constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text" \
            if isinstance(e, UnicodeDecodeError) else str(e)
        raise Lie(f"its answer is not JSON ({inert(reason, 80)})") from None


# ---------------------------------------------------------------------------------------------
# Checking answers


def _kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _get(obj: dict, key: str, kind, where: str, *, optional: bool = False):
    """obj[key], of JSON type `kind` (a type or a tuple of types; None allowed when `optional`)."""
    if key not in obj:
        if optional:
            return None
        raise Lie(f"{where}.{key} is missing")
    value = obj[key]
    if value is None and optional:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(dict.fromkeys(_kind(k()) if k is not type(None) else "null" for k in kinds))
        raise Lie(f"{where}.{key} is {_kind(value)}, not {wanted}")
    return value


def _size(value, where: str) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
            and all(8 <= v <= 1 << 16 and v % 8 == 0 for v in value)):
        raise Lie(f"{where} is {inert(json.dumps(value), 60)}, not [width, height] in pixels (multiples of 8)")
    return value[0], value[1]


def check_model(label: str, info: dict, where: str) -> dict:
    """One model of /spo/v1/models, checked as far as the sidecars written from it rely on: a sidecar
    built from these facts must be one that `spo replay` accepts."""
    from spo_cli.outputs import metadata

    if not isinstance(info, dict):
        raise Lie(f"{where} is {_kind(info)}, not an object")
    describe = _get(info, "describe", dict, where)
    _get(info, "identity", dict, where)
    facts = _get(info, "facts", dict, where)
    dtype = _get(info, "dtype", str, where)
    if dtype not in DTYPES:
        raise Lie(f"{where}.dtype is {inert(dtype, 40)!r}, not one of {', '.join(DTYPES)}")
    width, height = _size(info.get("default_size"), f"{where}.default_size")
    unknown = sorted(set(describe) - {"model_request", "model", "lora", "vae"})
    if unknown:  # the sidecar takes these keys as they are: one named "seed" would replace the image's
        raise Lie(f"{where}.describe has {', '.join(repr(inert(k, 40)) for k in unknown[:5])}, which spo serve "
                  "never sends")
    model = _get(describe, "model", dict, f"{where}.describe")
    _get(model, "id", str, f"{where}.describe.model")
    _get(model, "source", str, f"{where}.describe.model")
    _get(model, "commit", str, f"{where}.describe.model", optional=True)
    lora = _get(describe, "lora", dict, f"{where}.describe", optional=True)
    if lora is not None:
        _get(lora, "id", str, f"{where}.describe.lora")
        _get(lora, "file", str, f"{where}.describe.lora", optional=True)
        _get(lora, "scale", (int, float), f"{where}.describe.lora")
    vae = _get(describe, "vae", dict, f"{where}.describe")
    _get(vae, "id", str, f"{where}.describe.vae", optional=True)
    _get(facts, "device", str, f"{where}.facts")
    _get(facts, "gpu", str, f"{where}.facts", optional=True)
    _get(facts, "run_options", dict, f"{where}.facts", optional=True)
    if _get(facts, "dtype", str, f"{where}.facts") != dtype:
        raise Lie(f"{where}.facts.dtype is {inert(facts['dtype'], 40)!r}, but {where}.dtype is {dtype!r}")
    _get(_get(facts, "versions", dict, f"{where}.facts"), "spo-cli", str, f"{where}.facts.versions")
    # What replay will read back from every sidecar written from this model.
    probe = metadata.build(ImageRequest("probe", 0), describe, facts,
                           {"name": "default", "class": None, "a1111": "", "config": {}}, width=width,
                           height=height, batch_size=1, elapsed_s=0.0, created=datetime.now(timezone.utc))
    try:
        metadata.recorded_requests(probe, f"{where}.describe")
        metadata.dumps(probe)
    except UsageError as e:
        raise Lie(f"its sidecars would record what `spo replay` refuses: {e.message.rstrip('.')}") from None
    except ValueError as e:
        raise Lie(f"{where} holds values a sidecar cannot record ({inert(e, 80)})") from None
    return info


def check_image(item, request: ImageRequest, size: tuple[int, int], n: int, recorded: tuple[int, int] | None = None):
    """images[n] of a /spo/v1/run answer → (PIL image or None for NaN, meta or None). The PNG is
    decoded only once its header says it has the size asked, so a decompression bomb stays a header.
    `recorded`: the size its metadata must give (the hires fix records its first pass's), else `size`."""
    from PIL import Image

    where = f"images[{n}]"
    if not isinstance(item, dict):
        raise Lie(f"{where} is {_kind(item)}, not an object")
    if "error" in item:
        error = _get(item, "error", str, where)
        if _get(item, "nan", bool, where, optional=True):
            return None, None
        raise GenerationError(f"The server could not make image {n + 1} (seed {request.seed}): {inert(error, 2000)}")
    text = _get(item, "png", str, where)
    meta = _get(item, "meta", dict, where)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Lie(f"{where}.png is not base64") from None
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR" or len(data) < 24:
        raise Lie(f"{where}.png is not a PNG")
    header = struct.unpack(">II", data[16:24])  # the size, read before PIL sees a byte
    if header != size:
        raise Lie(f"{where} is a {header[0]}×{header[1]} image, but {size[0]}×{size[1]} was asked")
    try:
        with warnings.catch_warnings():
            # Only the header is read before the size check below: a bomb never gets decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
                if im.mode != "RGB":
                    raise Lie(f"{where} is a {inert(im.mode, 20)} image, not RGB")
                im.load()
                image = im.copy()
    except Lie:
        raise
    except Exception as e:  # PIL raises many kinds of error for a broken file
        raise Lie(f"{where}.png does not decode ({type(e).__name__}: {inert(e, 80)})") from None
    recorded = recorded or size
    asked = {"seed": request.seed, "steps": request.steps, "guidance": request.guidance, "width": recorded[0],
             "height": recorded[1]}
    for key, value in asked.items():
        got = meta.get(key)
        if isinstance(got, bool) or not isinstance(got, (int, float)) or got != value:
            raise Lie(f"{where}.meta.{key} is {inert(json.dumps(got), 40)}, but {value} was asked")
    marked = _get(meta, "watermark", bool, f"{where}.meta", optional=True) or False
    if marked != request.watermark:
        raise Lie(f"{where}.meta.watermark is {json.dumps(marked)}, but {json.dumps(request.watermark)} was asked")
    scheduler = _get(meta, "scheduler", dict, f"{where}.meta")
    if _get(scheduler, "name", str, f"{where}.meta.scheduler") != request.scheduler:
        raise Lie(f"{where}.meta.scheduler.name is {inert(scheduler['name'], 40)!r}, "
                  f"but {request.scheduler!r} was asked")
    _get(scheduler, "class", str, f"{where}.meta.scheduler", optional=True)
    _get(scheduler, "a1111", str, f"{where}.meta.scheduler")
    _get(scheduler, "config", dict, f"{where}.meta.scheduler")
    for key, given in (("init_image", request.image), ("mask_image", request.mask)):
        if given is not None:  # the input the server started from is the file sent
            got = _get(_get(meta, key, dict, f"{where}.meta"), "sha256", str, f"{where}.meta.{key}")
            if got != given.sha256:
                raise Lie(f"{where}.meta.{key}.sha256 is {inert(got, 70)!r}, not the file sent ({given.sha256})")
    # How the input was re-drawn, as the sidecar will say it was: the server's account must be the request's.
    edits = {"strength": request.strength} if request.image is not None else {}
    if request.mask is not None:
        edits |= {"mask_blur": request.mask_blur, "mask_crop": request.mask_crop}
    _same(meta, edits, f"{where}.meta")
    if request.hires is not None:
        _same(_get(meta, "hires", dict, f"{where}.meta"), asdict(request.hires), f"{where}.meta.hires")
    syntax = _get(meta, "prompt_syntax", str, f"{where}.meta")
    if syntax not in ("plain", "a1111") or (request.prompt_syntax != "auto" and syntax != request.prompt_syntax):
        raise Lie(f"{where}.meta.prompt_syntax is {inert(syntax, 40)!r}, but {request.prompt_syntax!r} was asked")
    if syntax == "a1111":
        if _get(meta, "emphasis", str, f"{where}.meta") != request.emphasis:
            raise Lie(f"{where}.meta.emphasis is {inert(meta['emphasis'], 40)!r}, but {request.emphasis!r} was asked")
        windows = _get(meta, "prompt_windows", int, f"{where}.meta")
        if not 1 <= windows <= validate.PROMPT_MAX_CHARS:
            raise Lie(f"{where}.meta.prompt_windows is {windows}")
    return image, meta


def _same(got: dict, asked: dict, where: str) -> None:
    for key, value in asked.items():
        seen = got.get(key)
        if seen != value or isinstance(seen, bool) != isinstance(value, bool):  # True == 1 in Python
            raise Lie(f"{where}.{key} is {inert(json.dumps(seen), 40)}, but {json.dumps(value)} was asked")


def _encoding(meta: dict) -> dict:
    keys = ("prompt_syntax", "emphasis", "prompt_windows")
    return {k: meta[k] for k in keys if k in meta} if meta.get("prompt_syntax") == "a1111" else {"prompt_syntax": "plain"}


# ---------------------------------------------------------------------------------------------
# The client


class Client:
    def __init__(self, url: str, token: str | None = None):
        self.url = check_url(url)
        self.token = token if token is not None else (os.environ.get("SPO_TOKEN", "").strip() or None)
        if self.token is not None and not all(" " < c < "\x7f" for c in self.token):
            # A header holds ASCII; `spo serve` takes only printable ASCII tokens. Not shown: it is a secret.
            raise UsageError("SPO_TOKEN holds spaces or characters that are not printable ASCII; a token of spo "
                             "serve has none.", "Set it to the token the server was started with.")

    def not_spo(self, what: str) -> ModelError:
        return ModelError(f"The server at {self.url} answered, but not as `spo serve` does: {what}.",
                          "Check the --server address: it should be the URL `spo serve` printed, of the same "
                          "spo-cli version.")

    def call(self, path: str, body: dict | None = None, timeout: float = TIMEOUT_S,
             limit: int = SMALL_ANSWER_BYTES) -> dict:
        """The server's JSON object for `path`, read with at most `limit` bytes."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="GET" if data is None else "POST")
        deadline = time.monotonic() + timeout
        watchdog = _Watchdog(timeout)
        try:
            with watchdog:  # an error answer's body is read inside it too
                try:
                    with _OPENER.open(req, timeout=timeout) as r:
                        answer = parse_json(_read(r, limit, deadline, path))
                except urllib.error.HTTPError as e:
                    with e:
                        raise self._refused(e, deadline) from None
            if not isinstance(answer, dict):
                raise Lie(f"{path} answered {_kind(answer)}, not a JSON object")
            return answer
        except Lie as e:
            raise self.not_spo(str(e)) from None
        except http.client.HTTPException as e:  # a status line or headers that are not HTTP, a body cut short
            if watchdog.fired:
                raise self._unreachable(f"no answer within {timeout:g} s") from None
            raise self.not_spo(f"its answer is not HTTP as spo serve speaks it ({type(e).__name__})") from None
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: http.client.InvalidURL
            reason = getattr(e, "reason", e)
            if watchdog.fired or isinstance(e, TimeoutError) or isinstance(reason, TimeoutError) or \
                    "timed out" in str(reason):
                reason = f"no answer within {timeout:g} s"
            raise self._unreachable(reason) from None

    def _unreachable(self, reason) -> ModelError:
        return ModelError(f"The server at {self.url} cannot be reached: {inert(reason)}.",
                          "Check that `spo serve` runs there, and the address and port.")

    def _refused(self, e: urllib.error.HTTPError, deadline: float) -> Exception:
        """An HTTP error answer as a SpoError, its message (the server's text) inert."""
        if 300 <= e.code < 400:
            location = e.headers.get("Location", "") if e.headers else ""
            target = urllib.parse.urljoin(self.url + "/", location.strip()) if location else ""
            elsewhere = target and _origin(target) != _origin(self.url)
            return ModelError(
                f"The server at {self.url} redirected the request ({e.code}) to "
                + (f"{inert(target)}" if target else "nowhere") + "; spo does not follow redirects"
                + (", so the token was not sent to that other address." if elsewhere and self.token else "."),
                "If the server moved, give its new address with --server." if target else
                "Check the --server address: it should be the URL `spo serve` printed.")
        try:
            message = parse_json(_read(e, ERROR_BODY_BYTES, deadline, "an error"))["error"]["message"]
            if not isinstance(message, str):
                raise TypeError
        except (Lie, OSError, KeyError, TypeError):
            message = e.reason
        message = inert(message, 2000)
        if e.code == 401:
            return UsageError(f"The server at {self.url} needs a token: {message}",
                              "Set SPO_TOKEN to the token the server was started with.")
        if e.code in (400, 404, 413):
            return UsageError(f"The server at {self.url} refused the request: {message}")
        return GenerationError(f"The server at {self.url} answered {e.code}: {message}")


def _origin(url: str) -> tuple:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(parts.scheme)


def output_size(request: ImageRequest, default: tuple[int, int]) -> tuple[int, int]:
    """The size of the image `request` makes, as the engine computes it (Engine.output_size)."""
    if request.image is not None:
        from spo_cli import inputs

        return inputs.output_size(request.image, request.width, request.height)[:2]
    w, h = request.width or default[0], request.height or default[1]
    return validate.hires_size(w, h, request.hires.scale) if request.hires is not None else (w, h)


def recorded_size(request: ImageRequest, default: tuple[int, int]) -> tuple[int, int]:
    """The sidecar's size (Engine.recorded_size): the hires fix records its first pass's."""
    if request.hires is not None:
        return request.width or default[0], request.height or default[1]
    return output_size(request, default)


def run_answer_limit(batch: list[ImageRequest], size: tuple[int, int]) -> int:
    """The most bytes a /spo/v1/run answer for `batch` can hold: each PNG at its worst, in base64."""
    total = 0
    for r in batch:
        w, h = output_size(r, size)
        png = math.ceil((w * 3 + 1) * h * _PNG_SLACK) + _PNG_FRAMING
        total += 4 * math.ceil(png / 3) + _META_BYTES
    return total + _META_BYTES


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

    def output_size(self, request: ImageRequest) -> tuple[int, int]:
        return output_size(request, self.default_size())

    def recorded_size(self, request: ImageRequest) -> dict:
        w, h = recorded_size(request, self.default_size())
        return {"width": w, "height": h}

    def call_key(self, request: ImageRequest) -> tuple:
        return request.group_key()  # the server regroups by its own engine's key

    def scheduler_facts(self, name: str) -> dict:
        return self._last["scheduler"]

    def encoding_facts(self, request: ImageRequest) -> dict:
        return self._last["encoding"]

    def run(self, batch: list[ImageRequest], on_step=None) -> list[Generated]:
        default = self.default_size()
        images, files = [], {}
        for r in batch:
            images.append(_sent(r))
            for given in (r.image, r.mask):
                if given is not None and given.sha256 not in files:
                    files[given.sha256] = base64.b64encode(_input_bytes(given)).decode()
        body = {"model": self.label, "images": images}
        if files:
            body["inputs"] = files
        answer = self.client.call("/spo/v1/run", body, limit=run_answer_limit(batch, default))
        self._last = self._last or {"scheduler": {"name": batch[0].scheduler, "class": None, "a1111": "",
                                                  "config": {}}, "encoding": {"prompt_syntax": "plain"}}
        try:
            images = _get(answer, "images", list, "the answer")
            if len(images) != len(batch):
                raise Lie(f"it sent {len(images)} image(s) for the {len(batch)} asked")
            checked = [check_image(item, r, output_size(r, default), n, recorded_size(r, default))
                       for n, (r, item) in enumerate(zip(batch, images))]
        except Lie as e:
            raise self.client.not_spo(str(e)) from None
        results = []
        for request, (image, meta) in zip(batch, checked):
            if meta is not None:
                self._last = {"scheduler": meta["scheduler"], "encoding": _encoding(meta)}
            results.append(Generated(image, request, image is None))
        if on_step:
            on_step(batch[0].denoising_steps, batch[0].denoising_steps)
        return results


def _sent(request: ImageRequest) -> dict:
    """An ImageRequest as /spo/v1/run takes it: its inputs by SHA-256 (their bytes go once, in `inputs`),
    the mask's settings only with a mask."""
    sent = asdict(request)
    sent["image"] = request.image.sha256 if request.image else None
    sent["mask"] = request.mask.sha256 if request.mask else None
    if request.mask is None:
        sent["mask_blur"] = None
    # Unset, they are not sent: a text-to-image request stays what servers before image to image take.
    for key in ("image", "mask", "strength", "mask_blur", "mask_crop", "hires"):
        if sent[key] is None:
            del sent[key]
    return sent


def _input_bytes(given) -> bytes:
    """An input file's bytes, read again as the engine reads it: refused if it changed since checked."""
    import hashlib

    from spo_cli import inputs

    try:
        data = inputs.read_bytes(given.path)[1]
    except UsageError as e:
        raise GenerationError(f"The input {given.path} could not be read again: {e.message}") from None
    if hashlib.sha256(data).hexdigest() != given.sha256:
        raise GenerationError(f"The input {given.path} changed while spo was running.",
                              "Leave input files alone while a run reads them, then run again.")
    return data


def connect(url: str, label: str, ui=None) -> tuple[RemoteEngine, RemoteModel]:
    """The server's loaded model `label`, as an engine and a resolved model."""
    client = Client(url)
    models = client.call("/spo/v1/models", timeout=HELLO_TIMEOUT_S)
    try:
        loaded = _get(models, "models", dict, "/spo/v1/models")
        ready = _get(models, "ready", bool, "/spo/v1/models")
        if label in loaded:
            info = check_model(label, loaded[label], f"/spo/v1/models: models[{json.dumps(label)}]")
    except Lie as e:
        raise client.not_spo(str(e)) from None
    if not ready:
        raise ModelError(f"The server at {client.url} has not finished loading its models.",
                         "Try again when its /health says ready.")
    if label not in loaded:
        names = [inert(n, 60) for n in list(loaded)[:10]]
        have = ", ".join(names) + (", …" if len(loaded) > 10 else "") if names else "none"
        raise UsageError(f"The server at {client.url} has no model '{inert(label)}' loaded (it has {have}).",
                         "Pick one with --model.")
    if ui is not None:
        from rich.text import Text

        # A Text is printed as it is: no markup, no emoji codes, whatever the server named things.
        ui.info(Text.assemble(("✓", "green"), f" Using {inert(label)} ({inert(info['describe']['model']['id'])}) on "
                              f"the server at {client.url} ({inert(info['facts']['device'])}, {info['dtype']})"))
    return RemoteEngine(client, label, info), RemoteModel(info)


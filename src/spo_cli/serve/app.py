"""The FastAPI app: the OpenAI images API, AUTOMATIC1111's /sdapi/v1, health, metrics, files and the page.

Bodies are read here with a size limit and handed to `api` (which checks every field with the
CLI's own rules); images come from the `worker`. Every refusal is a JSON error naming the field.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.requests import ClientDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response

from spo_cli import __version__, presets
from spo_cli.errors import UsageError
from spo_cli.outputs import metadata, naming
from spo_cli.serve import api
from spo_cli.serve.worker import QueueFull, ShuttingDown, Ticket, Worker

OPEN_PATHS = {"/", "/health", "/favicon.ico"}  # the page holds no data; it asks for the token itself
SERVED_SUFFIXES = {".png", ".jpg", ".webp", ".json"}
CLIENT_GONE = 499  # nginx's code for a client that closed the connection: nobody reads the answer
DRAIN_FACTOR = 4  # bodies up to this many times the limit are read to the end before the 413


@dataclass
class Settings:
    out: Path
    context: api.Context
    token: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    max_body: int = api.MAX_BODY_BYTES
    poll_s: float = 0.25  # how often a waiting request checks that its client is still there


def error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(api.BadRequest(message, field, status).body(), status_code=status, headers=headers)


def create_app(worker: Worker, settings: Settings) -> FastAPI:
    app = FastAPI(title="spo serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    requests_total: dict[tuple[str, int], int] = {}

    def count(path: str, status: int) -> None:
        key = (path if path in KNOWN_PATHS else "other", status)
        requests_total[key] = requests_total.get(key, 0) + 1

    class Guard:
        """The token check and the request count, as plain ASGI: a function middleware would wrap
        `receive` and hide a client's disconnect from the handler waiting for its images."""

        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            path = scope["path"]
            if settings.token and path not in OPEN_PATHS and scope["method"] != "OPTIONS":
                given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
                scheme, _, token = given.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                         settings.token.encode()):
                    count(path, 401)
                    return await error(401, "This server needs a token: send 'Authorization: Bearer <token>'.",
                                       "Authorization", {"WWW-Authenticate": "Bearer"})(scope, receive, send)
            status = [500]

            async def sending(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await self.inner(scope, receive, sending)
            finally:
                count(path, status[0])

    app.add_middleware(Guard)
    if settings.cors_origins:  # added last: outermost, so that preflights are answered before the token check
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug of ours: JSON all the same, no traceback
        return error(500, f"Internal error ({type(exc).__name__}); see the server's log.")

    async def body_of(request: Request):
        too_big = api.BadRequest(f"The request body is over {settings.max_body:,} bytes.", None, 413)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > DRAIN_FACTOR * settings.max_body):
            raise too_big  # not even read: the client may see the connection close before the answer
        data, seen = bytearray(), 0
        try:
            async for chunk in request.stream():
                seen += len(chunk)
                if seen <= settings.max_body:
                    data += chunk
                elif seen > DRAIN_FACTOR * settings.max_body:
                    raise too_big
        except ClientDisconnect:
            raise api.BadRequest("The client closed the connection before its request was complete.", None,
                                 CLIENT_GONE) from None
        # A body somewhat over the limit is read to its end (and dropped), so that the client, still
        # sending, gets the 413 rather than a reset connection.
        if seen > settings.max_body:
            raise too_big
        return api.parse_json(bytes(data))

    async def run(request: Request, job: api.Job) -> Ticket:
        loop = asyncio.get_running_loop()
        finished = loop.create_future()

        def on_done():
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))

        try:
            ticket = worker.submit(job, on_done)
        except QueueFull as e:
            raise api.BadRequest(f"The server is busy: {e}. Try again shortly.", None, 429) from None
        except ShuttingDown as e:
            raise api.BadRequest(f"The server cannot take work: {str(e).rstrip('.')}.", None,
                                 500 if worker.load_error else 503) from None
        while True:
            done, _ = await asyncio.wait({finished}, timeout=settings.poll_s)
            if done:
                return ticket
            if await request.is_disconnected():
                worker.cancel(ticket)
                raise api.BadRequest("The client closed the connection; its queued images were dropped.", None,
                                     CLIENT_GONE)

    def refuse(e: api.BadRequest) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status in (429, 503) else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def take(request: Request, parse) -> tuple[object, Ticket] | JSONResponse:
        """Read and check the body with `parse` (→ a job, or a job and more), queue it, wait for it."""
        try:
            parsed = parse(await body_of(request), settings.context)
            job = parsed[0] if isinstance(parsed, tuple) else parsed
            return parsed, await run(request, job)
        except api.BadRequest as e:
            return refuse(e)

    def outcome(ticket: Ticket) -> JSONResponse | None:
        if ticket.status == 503:
            return error(503, "The server stopped before these images were made.", headers={"Retry-After": "5"})
        if all(img.error for img in ticket.images):
            first = ticket.images[0]
            return error(first.status, f"No image was made: {first.error}", first.field)
        return None

    # -- OpenAI ------------------------------------------------------------------------------------

    @app.post("/v1/images/generations")
    async def openai_generations(request: Request):
        if isinstance(taken := await take(request, api.openai_job), JSONResponse):
            return taken
        job, ticket = taken
        if (bad := outcome(ticket)) is not None:
            return bad
        made = [img for img in ticket.images if not img.error]
        base = str(request.base_url).rstrip("/")
        data = []
        for img in made:
            if job.response_format == "url":
                data.append({"url": f"{base}/outputs/{Path(img.written['image']).name}", "revised_prompt": None})
            else:
                data.append({"b64_json": base64.b64encode(img.data).decode(), "revised_prompt": None})
        return {"created": int(time.time()), "data": data, "spo": {
            "model": job.model, "seeds": [img.request.seed for img in made],
            "infotexts": [metadata.a1111_parameters(img.meta) for img in made],
            "files": [Path(img.written["image"]).name for img in made if img.written],
            "errors": [{"seed": img.request.seed, "error": img.error} for img in ticket.images if img.error],
            "warnings": list(job.warnings)}}

    # -- AUTOMATIC1111 -------------------------------------------------------------------------------

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request):
        if isinstance(taken := await take(request, api.a1111_job), JSONResponse):
            return taken
        (job, parameters), ticket = taken
        if (bad := outcome(ticket)) is not None:
            return bad
        made = [img for img in ticket.images if not img.error]
        infotexts = [metadata.a1111_parameters(img.meta) for img in made]
        info = api.a1111_info(job, [img.meta for img in made], infotexts, job.model)
        info["all_seeds"] = [img.request.seed for img in made]
        if len(made) < len(ticket.images):
            info["warnings"] = info["warnings"] + [f"seed {img.request.seed}: {img.error}"
                                                   for img in ticket.images if img.error]
        return {"images": [base64.b64encode(img.data).decode() for img in made], "parameters": parameters,
                "info": json.dumps(info)}

    @app.get("/sdapi/v1/sd-models")
    async def sd_models():
        return [{"title": label, "model_name": label, "hash": None, "sha256": None,
                 "filename": m.describe["model"]["id"], "config": None} for label, m in worker.models.items()]

    @app.get("/sdapi/v1/samplers")
    async def samplers():
        return [{"name": c.a1111, "aliases": [c.name], "options": {}}
                for c in presets.SCHEDULERS.values() if c.a1111]

    @app.get("/sdapi/v1/options")
    async def options():
        return {"sd_model_checkpoint": settings.context.models[0], "samples_format": "png",
                "outdir_txt2img_samples": str(settings.out), "samples_save": settings.context.save}

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request):
        try:
            body = api.checked_body(await body_of(request))
        except api.BadRequest as e:
            return refuse(e)
        ignored = sorted(body)
        return {"warnings": [f"'{k}' cannot be changed on a running spo server and was ignored." for k in ignored]}

    @app.get("/sdapi/v1/progress")
    async def progress():
        return api.a1111_progress(worker.progress())

    @app.post("/sdapi/v1/interrupt")
    async def interrupt():
        worker.interrupt()
        return {}

    # -- spo ---------------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        if worker.load_error:
            return JSONResponse({"status": "failed", "error": worker.load_error}, status_code=503)
        if not worker.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "models": list(worker.models), "queued": worker.queued}

    @app.get("/metrics")
    async def metrics():
        s = worker.stats
        lines = [
            "# HELP spo_ready 1 once every model is loaded.", "# TYPE spo_ready gauge", f"spo_ready {int(worker.ready)}",
            "# HELP spo_queue_depth Images waiting for the GPU.", "# TYPE spo_queue_depth gauge",
            f"spo_queue_depth {worker.queued}",
            "# HELP spo_images_total Images made.", "# TYPE spo_images_total counter", f"spo_images_total {s.images}",
            "# HELP spo_image_failures_total Images that failed.", "# TYPE spo_image_failures_total counter",
            f"spo_image_failures_total {s.failures}",
            "# HELP spo_image_seconds Pipeline seconds per image made.", "# TYPE spo_image_seconds summary",
            f"spo_image_seconds_sum {s.seconds:.6f}", f"spo_image_seconds_count {s.images}",
            "# HELP spo_pipeline_calls_total Pipeline calls.", "# TYPE spo_pipeline_calls_total counter",
            f"spo_pipeline_calls_total {s.calls}",
            "# HELP spo_batched_images_total Images that shared a call with another request's.",
            "# TYPE spo_batched_images_total counter", f"spo_batched_images_total {s.batched}",
            "# HELP spo_http_requests_total HTTP requests by path and status.",
            "# TYPE spo_http_requests_total counter",
        ]
        lines += [f'spo_http_requests_total{{path="{p}",code="{c}"}} {n}' for (p, c), n in sorted(requests_total.items())]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    @app.get("/spo/v1/models")
    async def loaded_models():
        """What `--server` clients record: each model's description, identity and run facts."""
        return {"ready": worker.ready, "models": {label: {
            "describe": m.describe, "identity": m.resolved.identity(), "facts": m.facts, "dtype": m.engine.dtype,
            "default_size": list(m.engine.default_size())} for label, m in worker.models.items()}}

    @app.post("/spo/v1/run")
    async def run_images(request: Request):
        if isinstance(taken := await take(request, api.run_job), JSONResponse):
            return taken
        job, ticket = taken
        if ticket.status == 503:
            return error(503, "The server stopped before these images were made.", headers={"Retry-After": "5"})
        return {"images": [{"png": base64.b64encode(img.data).decode(), "meta": img.meta} if not img.error else
                           {"error": img.error, "nan": img.error.startswith("NaN output")} for img in ticket.images],
                "warnings": list(job.warnings)}

    @app.get("/spo/v1/info")
    async def info():
        return {"version": __version__, "models": list(settings.context.models), "ready": worker.ready,
                "out": str(settings.out) if settings.context.save else None,
                "save": settings.context.save, "max_images": settings.context.max_images,
                "schedulers": list(presets.SCHEDULERS), "defaults": {
                    "steps": presets.DEFAULT_STEPS, "guidance": presets.DEFAULT_GUIDANCE,
                    "width": presets.DEFAULT_SIZE, "height": presets.DEFAULT_SIZE}}

    @app.get("/spo/v1/gallery")
    async def gallery(limit: int = 48):
        limit = max(1, min(limit, 500))
        return {"images": await asyncio.to_thread(list_outputs, settings.out, limit)}

    @app.get("/outputs/{name:path}")
    async def outputs(name: str):
        try:
            path = naming.inside(settings.out, name)
        except UsageError:
            return error(404, "No such output.", "path")
        if path.suffix.lower() not in SERVED_SUFFIXES or not path.is_file():
            return error(404, "No such output.", "path")
        return FileResponse(path)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("spo_cli.serve").joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    KNOWN_PATHS = {r.path for r in app.routes if hasattr(r, "path")}

    # Unknown routes and methods: JSON, like every other refusal.
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        field = str(first.get("loc", ["", None])[-1])
        return error(400, f"request: '{field}' {first.get('msg', 'is not valid').lower()}.", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    return app


def list_outputs(out: Path, limit: int) -> list[dict]:
    """The newest images under `out` that spo wrote (those with a sidecar), with their settings. A
    file that is not such a pair (a broken link, another program's JSON, a name pointing out of
    `out`) is passed over."""
    if not out.is_dir():
        return []
    dated = []
    for sidecar in out.glob("*.json"):
        if sidecar.name.startswith("."):
            continue
        try:
            dated.append((sidecar.stat().st_mtime, sidecar))
        except OSError:  # a broken link
            continue
    items = []
    for _, sidecar in sorted(dated, key=lambda d: d[0], reverse=True):
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            name = meta["file"]
            image = naming.inside(out, name)
            if image.suffix.lower() not in SERVED_SUFFIXES - {".json"} or not image.is_file():
                continue
        except (OSError, ValueError, KeyError, TypeError, UsageError):
            continue
        scheduler, model = meta.get("scheduler"), meta.get("model")
        items.append({"url": f"/outputs/{name}", "file": name, "prompt": _text(meta.get("prompt")),
                      "negative_prompt": _text(meta.get("negative_prompt")), "seed": _number(meta.get("seed")),
                      "steps": _number(meta.get("steps")), "guidance": _number(meta.get("guidance")),
                      "width": _number(meta.get("width")), "height": _number(meta.get("height")),
                      "scheduler": _text(scheduler.get("name")) if isinstance(scheduler, dict) else None,
                      "model": _text(model.get("id")) if isinstance(model, dict) else None,
                      "created": _text(meta.get("created"))})
        if len(items) >= limit:
            break
    return items


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def _number(value) -> float | int | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

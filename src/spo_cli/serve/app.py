"""The FastAPI app: the three dialects' routers behind one guard, and JSON for every refusal.

Who may call is decided in `guard` (Host, Origin, token, Content-Type); bodies are read and jobs
queued in `plumbing`; each dialect's routes are in `routes/`; bodies are checked in `api` with the
CLI's own rules; images come from the `worker`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spo_cli import __version__
from spo_cli.serve import docs
from spo_cli.serve.guard import Guard
from spo_cli.serve.metrics import Metrics
from spo_cli.serve.plumbing import Settings, State, error
from spo_cli.serve.routes import a1111, openai, spo
from spo_cli.serve.worker import Worker

__all__ = ["Settings", "create_app"]


def create_app(worker: Worker, settings: Settings) -> FastAPI:
    # FastAPI's own /docs loads Swagger UI from a CDN: `docs` serves the document and a page of its own.
    app = FastAPI(title="spo serve", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.openapi = lambda: docs.document(app)
    routers = (openai.router, a1111.router, spo.router, docs.router)
    for router in routers:
        app.include_router(router)
    # One Metrics per worker: a second app on the same worker (the tests run several) shares it.
    if not isinstance(getattr(worker, "metrics", None), Metrics):
        worker.metrics = Metrics(worker)
        worker.metrics.known(settings.context.models, (lane.name for lane in getattr(worker, "lanes", ())))
    metrics = worker.metrics
    metrics.paths.update(route.path for router in routers for route in router.routes)
    app.state.spo = State(worker, settings, metrics)

    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(Guard, settings=settings, metrics=metrics)  # added last: outermost, before CORS too

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug of ours: JSON all the same, no traceback
        return error(500, f"Internal error ({type(exc).__name__}); see the server's log.", path=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def bad_parameter(request: Request, exc: RequestValidationError):
        first = (exc.errors() or [{}])[0]
        field = str(first.get("loc", ["", None])[-1])
        return error(400, f"request: '{field}' {first.get('msg', 'is not valid').lower()}.", field,
                     path=request.url.path)

    @app.exception_handler(StarletteHTTPException)  # unknown routes and methods: JSON, like every refusal
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None), path=request.url.path)

    return app

"""spo's own endpoints: the page and its gallery, health, metrics, the files under --out, and
/spo/v1/run for the CLI's `--server` client."""

from __future__ import annotations

import asyncio
import base64
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from spo_cli import __version__, presets
from spo_cli.serve import api, gallery
from spo_cli.serve.plumbing import Spo, error, stopped, take

router = APIRouter()


@router.get("/health")
async def health(spo: Spo):
    """What a load balancer asks: 200 while requests can be served (ready; or degraded: a device failed
    to load and the others serve), 503 while loading or once every device has failed. Each device is
    listed with its state, so that an operator sees which one to look at."""
    worker = spo.worker
    devices = [{"device": lane.name, "state": lane.state, "busy": lane.busy, "images": lane.images,
                "failures": lane.failures, **({"error": lane.error} if lane.error else {})} for lane in worker.lanes]
    status = worker.status
    if status == "failed":
        return JSONResponse({"status": "failed", "error": worker.load_error or next(
            (lane.error for lane in worker.lanes if lane.error), ""), "devices": devices}, status_code=503)
    if status == "loading":
        return JSONResponse({"status": "loading", "devices": devices}, status_code=503)
    loaded = worker.loaded()
    quantized = {label: m.engine.quantize for label, m in loaded.items() if getattr(m.engine, "quantize", None)}
    return {"status": status, "models": list(loaded), "queued": worker.queued, "devices": devices,
            **({"quantize": quantized} if quantized else {})}  # --quantize fp8: other pixels than the model's own


@router.get("/metrics")
async def metrics(spo: Spo):
    body, kind = spo.metrics.exposition()
    return Response(body, media_type=kind)


@router.get("/spo/v1/models")
async def loaded_models(spo: Spo):
    """What `--server` clients record: each model's description, identity and run facts."""
    return {"ready": spo.worker.ready, "models": {label: {
        "describe": m.describe, "identity": m.resolved.identity(), "facts": m.facts, "dtype": m.engine.dtype,
        "default_size": list(m.engine.default_size())} for label, m in spo.worker.loaded().items()}}


@router.post("/spo/v1/run")
async def run(request: Request, spo: Spo):
    if isinstance(taken := await take(request, spo, api.run_job), JSONResponse):
        return taken
    job, ticket = taken
    if ticket.status == 503:
        return stopped()
    return {"images": [{"png": base64.b64encode(img.data).decode(), "meta": img.meta} if not img.error else
                       {"error": img.error, "nan": img.error.startswith("NaN output")} for img in ticket.images],
            "warnings": list(job.warnings)}


@router.get("/spo/v1/info")
async def info(spo: Spo):
    s = spo.settings
    return {"version": __version__, "models": list(s.context.models), "ready": spo.worker.ready,
            "out": str(s.out) if s.context.save else None, "save": s.context.save,
            "max_images": s.context.max_images, "schedulers": list(presets.SCHEDULERS), "defaults": {
                "steps": presets.DEFAULT_STEPS, "guidance": presets.DEFAULT_GUIDANCE,
                "width": presets.DEFAULT_SIZE, "height": presets.DEFAULT_SIZE}}


@router.get("/spo/v1/gallery")
async def listing(spo: Spo, limit: int = 48):
    limit = max(1, min(limit, 500))
    return {"images": await asyncio.to_thread(gallery.list_outputs, spo.settings.out, limit)}


@router.get("/outputs/{name:path}")
async def outputs(name: str, spo: Spo):
    path = gallery.regular_inside(spo.settings.out, name)
    if path is None or path.suffix.lower() not in gallery.SERVED_SUFFIXES:
        return error(404, "No such output.", "path")
    return FileResponse(path)


@router.get("/", response_class=HTMLResponse)
async def page():
    return HTMLResponse(resources.files("spo_cli.serve").joinpath("page.html").read_text(encoding="utf-8"))


@router.get("/favicon.ico")
async def favicon():
    return Response(status_code=204)

"""AUTOMATIC1111's API (`--api`): txt2img, img2img and the few endpoints its clients read around them."""

from __future__ import annotations

import base64
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from spo_cli import presets, validate
from spo_cli.outputs import metadata
from spo_cli.serve import api
from spo_cli.serve.plumbing import Spo, outcome, read_body, refuse, take

router = APIRouter(prefix="/sdapi/v1")


@router.post("/txt2img")
async def txt2img(request: Request, spo: Spo):
    return await _answer(request, spo, api.a1111_job)


@router.post("/img2img")
async def img2img(request: Request, spo: Spo):
    return await _answer(request, spo, api.a1111_img2img_job)


async def _answer(request: Request, spo, parse):
    """A1111's TextToImageResponse / ImageToImageResponse: images, parameters, info (a JSON string)."""
    if isinstance(taken := await take(request, spo, parse), JSONResponse):
        return taken
    (job, parameters), ticket = taken
    if (bad := outcome(ticket, request.url.path)) is not None:
        return bad
    made = [img for img in ticket.images if not img.error]
    infotexts = [metadata.a1111_parameters(img.meta) for img in made]
    info = api.a1111_info(job, [img.meta for img in made], infotexts, job.model)
    info["all_seeds"] = [img.request.seed for img in made]
    info["files"] = [img.meta["file"] for img in made if img.written]  # spo's: under --out, for the page
    if len(made) < len(ticket.images):
        info["warnings"] = info["warnings"] + [f"seed {img.request.seed}: {img.error}"
                                               for img in ticket.images if img.error]
    return {"images": [base64.b64encode(img.data).decode() for img in made], "parameters": parameters,
            "info": json.dumps(info)}


@router.get("/sd-models")
async def sd_models(spo: Spo):
    return api.a1111_sd_models({label: m.describe for label, m in spo.worker.loaded().items()})


@router.get("/samplers")
async def samplers():
    return [{"name": c.a1111, "aliases": [c.name], "options": {}} for c in presets.SCHEDULERS.values() if c.a1111]


@router.get("/schedulers")
async def schedulers():
    return api.a1111_schedulers()


@router.get("/loras")
async def loras(spo: Spo):
    # dict(): one copy under the GIL, as the worker thread may be adding the models it has loaded
    return api.a1111_loras(m.describe for m in spo.worker.loaded().values())


@router.get("/upscalers")
async def upscalers():
    return api.A1111_UPSCALERS


@router.get("/options")
async def options(spo: Spo):
    s = spo.settings
    return {"sd_model_checkpoint": s.context.models[0], "samples_format": "png",
            "outdir_txt2img_samples": str(s.out), "samples_save": s.context.save}


@router.post("/options")
async def set_options(request: Request, spo: Spo):
    try:
        body = api.checked_body(await read_body(request, spo.settings.max_body))
    except api.BadRequest as e:
        return refuse(e, path=request.url.path)
    keys = sorted(body)  # echoed: each by its start, and past api.IGNORED_SHOWN only counted
    warnings = [f"{validate.shown(k)} cannot be changed on a running spo server and was ignored."
                for k in keys[:api.IGNORED_SHOWN]]
    if len(keys) > api.IGNORED_SHOWN:
        warnings.append(f"{len(keys) - api.IGNORED_SHOWN:,} more settings cannot be changed on a running spo server "
                        "and were ignored.")
    return {"warnings": warnings}


@router.get("/progress")
async def progress(spo: Spo):
    return api.a1111_progress(spo.worker.progress())


@router.post("/interrupt")
async def interrupt(spo: Spo):
    spo.worker.interrupt()
    return {}

"""OpenAI's images API: POST /v1/images/generations and /v1/images/edits, and GET /v1/models."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from spo_cli.outputs import metadata
from spo_cli.serve import api
from spo_cli.serve.plumbing import Spo, outcome, refuse, take

router = APIRouter()


@router.post("/v1/images/generations")
async def generations(request: Request, spo: Spo):
    return await _answer(request, spo, api.openai_job)


@router.post("/v1/images/edits")
async def edits(request: Request, spo: Spo):
    return await _answer(request, spo, api.openai_edit_job, form=True)


async def _answer(request: Request, spo, parse, form: bool = False):
    if isinstance(taken := await take(request, spo, parse, form=form), JSONResponse):
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


@router.get("/v1/models")
async def models(spo: Spo):
    return api.openai_models(spo.settings.context, _describes(spo), spo.started)


@router.get("/v1/models/{model:path}")
async def model(model: str, spo: Spo):
    listed = {m["id"]: m for m in api.openai_models(spo.settings.context, _describes(spo), spo.started)["data"]}
    if model not in listed:
        return refuse(api.BadRequest(f"The model '{model[:200]}' is not served here (served: "
                                     f"{', '.join(listed)}).", None, 404, "model_not_found"))
    return listed[model]


def _describes(spo) -> dict[str, dict]:
    return {label: m.describe for label, m in spo.worker.loaded().items()}

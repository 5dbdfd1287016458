"""`GET /openapi.json` and `GET /docs`: what each endpoint takes and answers, for clients and people.

The bodies are described by pydantic models used only for the schema, never to parse: the routes
read raw JSON through `api`, whose checks are stricter than a model's (a key given twice, NaN,
nesting depth, lone surrogates, pydantic's lax coercion of "5" to 5) and whose messages name the
client's own field. So each model is a description of what `api` accepts, kept beside the table
that attaches it to its route (`OPERATIONS`); a test validates real accepted bodies against it.

/docs is a page rendered here from the same document, with no script and nothing from a CDN:
FastAPI's Swagger UI loads its JavaScript from jsdelivr, which a server with no network (or a
careful user) cannot, and a third-party script on this origin could read what the page keeps.
"""

from __future__ import annotations

import html
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from spo_cli import inputs, presets, validate
from spo_cli.serve import api, guard, uploads

router = APIRouter()

_Prompt = Field(min_length=1, max_length=validate.PROMPT_MAX_CHARS, description="The prompt.")
_SCHEDULER = ("A scheduler: one of spo's names (" + ", ".join(presets.SCHEDULERS) + "); `spo serve`'s "
              "/spo/v1/info lists them.")


class _Open(BaseModel):
    """Fields not listed are accepted and ignored, with a warning unless left at their usual default."""

    model_config = ConfigDict(extra="allow")


class SpoImageFields(_Open):
    negative_prompt: str | None = Field(None, max_length=validate.PROMPT_MAX_CHARS)
    steps: int | None = Field(None, ge=1, le=validate.STEPS_MAX, description=f"Default {presets.DEFAULT_STEPS}.")
    guidance: float | None = Field(None, ge=0, le=validate.GUIDANCE_MAX,
                                   description=f"Classifier-free guidance; default {presets.DEFAULT_GUIDANCE}.")
    scheduler: str | None = Field(None, description=_SCHEDULER)
    prompt_syntax: Literal[validate.PROMPT_SYNTAXES] | None = None  # type: ignore[valid-type]
    emphasis: Literal[validate.EMPHASES] | None = None  # type: ignore[valid-type]
    generator_device: str | None = Field(None, description="Where the noise is drawn: cpu (the default; the "
                                         "same noise on any machine), cuda, cuda:N or mps.")
    width: int | None = Field(None, ge=8, multiple_of=8, description="Instead of `size`.")
    height: int | None = Field(None, ge=8, multiple_of=8, description="Instead of `size`.")
    watermark: bool | None = Field(None, description="SDXL's invisible watermark (images at least 256 px wide); "
                                   "on a server started with --watermark, every image has it.")


class OpenAIImageRequest(SpoImageFields):
    """OpenAI's images API body, with spo's own fields beside it."""

    prompt: str = _Prompt
    n: int | None = Field(1, ge=1, description="Images to make (at most the server's --max-queue).")
    size: str | None = Field(None, pattern=r"^(auto|[0-9]{1,6}x[0-9]{1,6})$", examples=["1024x1024"],
                             description="WIDTHxHEIGHT, multiples of 8; auto or absent: 1024x1024.")
    response_format: Literal["b64_json", "url"] | None = Field(
        "b64_json", description="url: a link under /outputs/ (not with --no-save).")
    model: str | None = Field(None, description="A loaded model's label; any other name (dall-e-3) is served "
                              "by the default model, with a warning.")
    seed: int | None = Field(None, ge=0, le=validate.SEED_MAX,
                             description="The first image's seed (the next ones count up); absent: random.")


class OpenAIImage(BaseModel):
    b64_json: str | None = Field(None, description="The PNG, its metadata embedded, in base64.")
    url: str | None = None
    revised_prompt: None = None


class OpenAISpo(BaseModel):
    model: str
    seeds: list[int]
    infotexts: list[str] = Field(description="Each image's A1111 'parameters' text.")
    files: list[str] = Field(description="The files written under --out (none with --no-save).")
    errors: list[dict[str, Any]] = Field(description="Images not made: {seed, error}.")
    warnings: list[str]


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    spo: OpenAISpo


class A1111Txt2Img(_Open):
    """AUTOMATIC1111's StableDiffusionProcessingTxt2Img body. Absent fields take spo's defaults (the SPO
    authors' settings), not A1111's."""

    prompt: str = _Prompt
    negative_prompt: str | None = Field(None, max_length=validate.PROMPT_MAX_CHARS)
    steps: int | None = Field(None, ge=1, le=validate.STEPS_MAX, description=f"Default {presets.DEFAULT_STEPS}.")
    cfg_scale: float | None = Field(None, ge=0, le=validate.GUIDANCE_MAX,
                                    description=f"Default {presets.DEFAULT_GUIDANCE}.")
    width: int | None = Field(None, ge=8, multiple_of=8, description=f"Default {presets.DEFAULT_SIZE}.")
    height: int | None = Field(None, ge=8, multiple_of=8, description=f"Default {presets.DEFAULT_SIZE}.")
    seed: int | None = Field(-1, ge=-1, le=validate.SEED_MAX, description="-1: random.")
    sampler_name: str | None = Field(None, examples=["DPM++ 2M"], description="An A1111 sampler name "
                                     "(/sdapi/v1/samplers); absent: the checkpoint's own scheduler.")
    scheduler: str | None = Field(None, examples=["Karras"], description="A1111's schedule type, with sampler_name.")
    sampler_index: str | None = Field(None, description="The sampler's name before A1111 1.6.")
    batch_size: int | None = Field(1, ge=1, le=validate.BATCH_SIZE_MAX)
    n_iter: int | None = Field(1, ge=1, description="batch_size × n_iter is at most the server's --max-queue.")
    spo_model: str | None = Field(None, description="A loaded model's label (spo's own field).")
    override_settings: dict[str, Any] | None = Field(None, description="Only sd_model_checkpoint is read: a "
                                                     "loaded model's label.")
    prompt_syntax: Literal[validate.PROMPT_SYNTAXES] | None = None  # type: ignore[valid-type]
    emphasis: Literal[validate.EMPHASES] | None = None  # type: ignore[valid-type]
    enable_hr: bool | None = Field(False, description="A1111's hires fix: the image at width × height, upscaled "
                                   "by hr_scale, then re-drawn at denoising_strength.")
    hr_scale: float | None = Field(api.A1111_HR_SCALE, gt=1, le=validate.HIRES_SCALE_MAX)
    hr_upscaler: Literal["Latent", "Lanczos"] | None = Field(None, description="Absent: Latent (A1111's default); "
                                                            "A1111's other upscalers are refused.")
    hr_second_pass_steps: int | None = Field(0, ge=0, le=validate.STEPS_MAX, description="0: the same as steps. All "
                                        "of them run, as A1111 runs them (of a schedule of steps / denoising_strength).")
    hr_resize_x: int | None = Field(0, ge=0, description="Instead of hr_scale, where the size is the image scaled.")
    hr_resize_y: int | None = Field(0, ge=0)
    denoising_strength: float | None = Field(None, gt=0, le=1, description="With enable_hr: the second pass's "
                                             f"strength; absent: {api.A1111_HIRES_STRENGTH} (A1111's API default).")


_MASK_RULE = ("spo's and A1111's convention: white = repaint, black = keep (grey above half counts as white); a "
              "mask with transparency is read by its alpha instead (opaque = repaint).")


class A1111Img2Img(A1111Txt2Img):
    """AUTOMATIC1111's StableDiffusionProcessingImg2Img body. Absent width and height: the image's own size
    (sides down to multiples of 8). Absent fields take spo's defaults, not A1111's."""

    init_images: list[str] = Field(min_length=1, max_length=1, description="One image, base64 (a data: URL too).")
    mask: str | None = Field(None, description="Inpainting: a base64 image. " + _MASK_RULE)
    denoising_strength: float | None = Field(None, gt=0, le=1, description=f"Default {inputs.DEFAULT_STRENGTH}; "
                                             "int(steps × strength) must be at least 1.")
    mask_blur: int | None = Field(None, ge=0, le=inputs.MASK_BLUR_MAX,
                                  description=f"Blur of the mask, in pixels; default {inputs.DEFAULT_MASK_BLUR}. The "
                                  "pipeline repaints its over-half part; only with inpaint_full_res is the result "
                                  "pasted back through it, with a soft edge.")
    mask_blur_x: int | None = Field(None, description="Equal to mask_blur_y, or refused.")
    mask_blur_y: int | None = None
    inpainting_fill: int | None = Field(None, description="Only 1 (original) is what spo does; others are warned of.")
    inpaint_full_res: bool | None = Field(None, description="Only masked: a crop around the mask, made at full "
                                          "size (diffusers' padding_mask_crop). Absent: the whole picture.")
    inpaint_full_res_padding: int | None = Field(None, ge=0, le=inputs.MASK_CROP_MAX)
    inpainting_mask_invert: int | None = Field(0, ge=0, le=1, description="1: repaint the black part.")
    resize_mode: int | None = Field(0, description="Only 0 (Just resize) when width × height differs from the image.")
    include_init_images: bool | None = Field(False, description="Echo the images in `parameters`.")


class OpenAIImageEdit(BaseModel):
    """OpenAI's image edits, multipart/form-data: text fields as text, the images as file parts. The mask
    follows OpenAI's convention: fully transparent (alpha 0) = repaint, opaque = keep; without a mask, the
    image's own fully transparent area is repainted, and an image without one is re-drawn whole."""

    model_config = ConfigDict(extra="allow")
    image: bytes = Field(description="The image to edit (one file).", json_schema_extra={"format": "binary"})
    mask: bytes | None = Field(None, description="OpenAI's mask: fully transparent = repaint.",
                               json_schema_extra={"format": "binary"})
    prompt: str = _Prompt
    n: int | None = Field(1, ge=1)
    size: str | None = Field(None, description="WIDTHxHEIGHT; absent or auto: the image's own size.")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    model: str | None = None
    seed: int | None = Field(None, ge=0, le=validate.SEED_MAX)
    strength: float | None = Field(None, gt=0, le=1, description=f"spo's: {api.OPENAI_MASKED_STRENGTH} with a "
                                   f"mask (the area drawn anew), {inputs.DEFAULT_STRENGTH} without.")
    steps: int | None = Field(None, ge=1, le=validate.STEPS_MAX)
    guidance: float | None = None
    negative_prompt: str | None = None
    scheduler: str | None = Field(None, description=_SCHEDULER)


class A1111Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="PNGs, their metadata embedded, in base64.")
    parameters: dict[str, Any] = Field(description="The request, with defaults filled in.")
    info: str = Field(description="A JSON object as a string: seeds, infotexts, warnings.")


class A1111Options(_Open):
    """Any settings: none can be changed on a running spo server; each is answered with a warning."""


class SpoImage(BaseModel):
    """One image, as `spo generate --server` sends it: ImageRequest's fields, nothing else."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = _Prompt
    seed: int = Field(ge=0, le=validate.SEED_MAX)
    negative_prompt: str | None = Field(None, max_length=validate.PROMPT_MAX_CHARS)
    steps: int | None = Field(None, ge=1, le=validate.STEPS_MAX)
    guidance: float | None = Field(None, ge=0, le=validate.GUIDANCE_MAX)
    width: int | None = Field(None, ge=8, multiple_of=8)
    height: int | None = Field(None, ge=8, multiple_of=8)
    scheduler: str | None = Field(None, description=_SCHEDULER)
    generator_device: str | None = None
    prompt_syntax: Literal[validate.PROMPT_SYNTAXES] | None = None  # type: ignore[valid-type]
    emphasis: Literal[validate.EMPHASES] | None = None  # type: ignore[valid-type]
    watermark: bool | None = None
    image: str | None = Field(None, description="Image to image: the SHA-256 of an entry of `inputs`.")
    mask: str | None = Field(None, description="Inpainting: the SHA-256 of an entry of `inputs`. " + _MASK_RULE)
    strength: float | None = Field(None, gt=0, le=1)
    mask_blur: int | None = Field(None, ge=0, le=inputs.MASK_BLUR_MAX)
    mask_crop: int | None = Field(None, ge=0, le=inputs.MASK_CROP_MAX)
    hires: dict[str, Any] | None = Field(None, description="The hires fix: {scale, upscaler, steps, strength}.")


class SpoRun(_Open):
    model: str | None = Field(None, description="A loaded model's label; absent: the first.")
    images: list[SpoImage] = Field(min_length=1)
    inputs: dict[str, str] | None = Field(None, description="The input files, base64, by their SHA-256.")


class SpoRunImage(BaseModel):
    png: str | None = Field(None, description="The PNG in base64.")
    meta: dict[str, Any] | None = Field(None, description="The image's sidecar metadata.")
    error: str | None = None
    nan: bool | None = None


class SpoRunResponse(BaseModel):
    images: list[SpoRunImage]
    warnings: list[str]


class HealthDevice(BaseModel):
    device: str = Field(description="The device as asked (cuda:1; cpu#0 and cpu#1 for cpu asked twice).")
    state: Literal["loading", "ready", "failed"]
    busy: int = Field(description="Images in its call in flight (0: idle).")
    images: int
    failures: int
    error: str | None = Field(None, description="Why it failed: to load, or later (it stopped serving).")


class Health(BaseModel):
    status: Literal["ready", "degraded", "loading", "failed"] = Field(
        description="200: ready (every device loaded) or degraded (some failed, the others serve); 503: loading "
        "or failed (none could load).")
    models: list[str] | None = None
    queued: int | None = Field(None, description="Images waiting for a device (one queue for them all).")
    error: str | None = None
    devices: list[HealthDevice] = []
    quantize: dict[str, str] | None = Field(None, description="The models served with --quantize (fp8), by label: "
                                            "their images differ from the model's own.")


class A1111Progress(BaseModel):
    progress: float
    eta_relative: float
    state: dict[str, Any]
    current_image: None = None
    textinfo: None = None


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(examples=["invalid_request_error", "requests", "server_error"])
    param: str | None = Field(description="The request field at fault (the client's name); null: the body.")
    code: str | None = Field(examples=["invalid_value", "missing_required_parameter", "invalid_api_key",
                                       "model_not_found", "rate_limit_exceeded"])


class ErrorBody(BaseModel):
    """A refusal or failure outside /sdapi/: OpenAI's error shape (the openai SDK's e.param, e.code)."""

    error: ErrorDetail


class A1111Error(BaseModel):
    """A refusal or failure under /sdapi/: A1111's (its API's handle_exception)."""

    error: str = Field(examples=["HTTPException"])
    detail: str = Field(description="The message.")
    body: str
    errors: str = Field(description="The status and the message.")


# (method, path) → (body model or None, {status: answer model}). Every POST that reads a body must be here:
# a test checks it against the app's routes.
OPERATIONS: dict[tuple[str, str], tuple[type[BaseModel] | None, dict[int, type[BaseModel]]]] = {
    ("post", "/v1/images/generations"): (OpenAIImageRequest, {200: OpenAIImagesResponse}),
    ("post", "/v1/images/edits"): (OpenAIImageEdit, {200: OpenAIImagesResponse}),
    ("post", "/sdapi/v1/txt2img"): (A1111Txt2Img, {200: A1111Txt2ImgResponse}),
    ("post", "/sdapi/v1/img2img"): (A1111Img2Img, {200: A1111Txt2ImgResponse}),
    ("post", "/sdapi/v1/options"): (A1111Options, {}),
    ("get", "/sdapi/v1/progress"): (None, {200: A1111Progress}),
    ("post", "/spo/v1/run"): (SpoRun, {200: SpoRunResponse}),
    ("get", "/health"): (None, {200: Health, 503: Health}),
}
BODYLESS_POSTS = {"/sdapi/v1/interrupt"}  # A1111 clients send it with no body: no schema to give
REFUSALS = {400: "Bad request: the message names the field", 401: "Credentials are needed",
            403: "A page of another site", 404: "No such route or file", 413: "The body is too large",
            415: "The body is not sent as application/json (multipart/form-data for /v1/images/edits)", 421: "A Host this server does not answer to",
            429: "The queue is full (Retry-After)", 500: "Internal error", 503: "Stopped or not loaded (Retry-After)"}
DESCRIPTION = ("SPO-SDXL behind OpenAI's images API, AUTOMATIC1111's /sdapi/v1 and spo's own endpoints. "
               "Bodies are JSON sent as 'Content-Type: application/json' (OpenAI's /v1/images/edits: multipart/form-data); "
               "images in JSON are base64, at most " f"{uploads.UPLOAD_BYTES_MAX >> 20} MB each, in bodies of at most "
               f"{uploads.EDIT_BODY_BYTES >> 20} MB. Masks: white = repaint on /sdapi/v1/img2img and /spo/v1/run "
               "(A1111's convention); fully transparent = repaint on /v1/images/edits (OpenAI's). With a token, send "
               "'Authorization: Bearer <token>' (or, with --api-auth-file, HTTP Basic). Every refusal is JSON: "
               "{\"error\": {\"message\", \"type\", \"param\", \"code\"}} as OpenAI writes it, and under "
               "/sdapi/ {\"error\", \"detail\", \"body\", \"errors\"} as A1111 does.")


def document(app) -> dict:
    """The app's OpenAPI document, built once: FastAPI's, with the bodies and answers described."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=DESCRIPTION, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    # The credentials this server takes, so that generated clients ask for them (none: none asked).
    settings = app.state.spo.settings
    schemes = {name: scheme for name, scheme, on in (
        ("bearer", {"type": "http", "scheme": "bearer", "description": "The server's token (--token-file, SPO_TOKEN)."},
         settings.token is not None),
        ("basic", {"type": "http", "scheme": "basic", "description": "A user of --api-auth-file or SPO_API_AUTH."},
         bool(settings.api_auth))) if on}
    if schemes:
        doc["components"]["securitySchemes"] = schemes
    requirements = [{name: []} for name in schemes]  # either one lets a request in
    # FastAPI's 422 for a bad query or path parameter is answered 400 with ErrorBody here (app.py).
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, operations in doc["paths"].items():
        error = {"content": {"application/json": {"schema": _ref(
            A1111Error if path.startswith(api.A1111_PREFIX) else ErrorBody, schemas)}}}
        for method, op in operations.items():
            body, answers = OPERATIONS.get((method, path), (None, {}))
            if body is not None:
                kind = "multipart/form-data" if path in api.MULTIPART_PATHS else "application/json"
                op["requestBody"] = {"required": True, "content": {kind: {"schema": _ref(body, schemas)}}}
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            for status, model in answers.items():
                described = {"description": responses.get(str(status), {}).get("description") or REFUSALS[status]}
                content = {"application/json": {"schema": _ref(model, schemas)}}
                responses[str(status)] = {**described, "content": content}
            refusals = [403, 421] + ([] if path in guard.OPEN_PATHS else [401])
            if body is not None:
                refusals += [400, 413, 415] + ([429, 503] if answers else [])  # those that queue images answer
            elif op.get("parameters"):
                refusals.append(400)  # a parameter of the wrong type (FastAPI's 422, answered 400 in app.py)
            if "{" in path:
                refusals.append(404)  # no such model or file
            for status in refusals:
                responses.setdefault(str(status), {"description": REFUSALS[status], **error})
            if requirements and path not in guard.OPEN_PATHS:
                op["security"] = requirements
    app.openapi_schema = doc
    return doc


def _ref(model: type[BaseModel], schemas: dict) -> dict:
    if model.__name__ not in schemas:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@router.get("/openapi.json")
async def openapi(request: Request):
    """This document."""
    return JSONResponse(document(request.app))


@router.get("/docs", response_class=HTMLResponse)
async def docs(request: Request):
    """The same, as a page with no script."""
    return HTMLResponse(page(document(request.app)), headers={
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"})


def page(doc: dict) -> str:
    """The document as HTML: each operation, its body's fields and its answers. Every text is escaped."""
    e = html.escape
    schemas = doc.get("components", {}).get("schemas", {})
    parts = [f"<!doctype html><html lang=en><meta charset=utf-8><title>{e(doc['info']['title'])} API</title>",
             "<style>body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
             "code,td:first-child{font-family:ui-monospace,monospace}table{border-collapse:collapse;margin:.4rem 0}"
             "td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}"
             "h2{font-size:1.05rem;margin-top:1.6rem}.m{font-weight:bold;color:#2a6}</style>",
             f"<h1>{e(doc['info']['title'])} {e(doc['info']['version'])}</h1>",
             f"<p>{e(doc['info'].get('description', ''))}</p>"
             "<p>The machine-readable document: <a href=/openapi.json>/openapi.json</a>.</p>"]
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            parts.append(f"<h2><span class=m>{e(method.upper())}</span> <code>{e(path)}</code></h2>")
            if op.get("description") or op.get("summary"):
                parts.append(f"<p>{e(op.get('description') or op.get('summary'))}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<p>Parameters: " + ", ".join(f"<code>{e(p['name'])}</code> ({e(p['in'])})"
                                                             for p in params) + "</p>")
            content = op.get("requestBody", {}).get("content", {})
            body = next(iter(content.values()), {}).get("schema")
            if body:
                parts.append(_fields(_resolve(body, schemas), schemas))
            answers = ", ".join(f"{e(code)} {e(answer.get('description', ''))}"
                                for code, answer in op.get("responses", {}).items())
            parts.append(f"<p>Answers: {answers}</p>")
    return "".join(parts) + "</html>"


def _resolve(schema: dict, schemas: dict) -> dict:
    ref = schema.get("$ref", "")
    return schemas.get(ref.rpartition("/")[2], {}) if ref else schema


def _kind(schema: dict, schemas: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rpartition("/")[2]
    if "anyOf" in schema:
        return " | ".join(_kind(s, schemas) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    if schema.get("type") == "array":
        return f"list of {_kind(schema.get('items', {}), schemas)}"
    return str(schema.get("type", "any"))


def _fields(schema: dict, schemas: dict) -> str:
    e = html.escape
    required = set(schema.get("required", []))
    rows = []
    # Required fields first: a model lists the fields it inherits before its own.
    for name, prop in sorted(schema.get("properties", {}).items(), key=lambda item: item[0] not in required):
        limits = [f"{k} {prop[k]}" for k in ("minimum", "maximum", "multipleOf", "maxLength", "pattern") if k in prop]
        for option in prop.get("anyOf", []):
            limits += [f"{k} {option[k]}" for k in ("minimum", "maximum", "multipleOf", "maxLength", "pattern")
                       if k in option]
        note = " ".join(filter(None, [prop.get("description", ""), "; ".join(limits)]))
        rows.append(f"<tr><td>{e(name)}{' *' if name in required else ''}</td><td>{e(_kind(prop, schemas))}</td>"
                    f"<td>{e(note)}</td></tr>")
    extra = "" if schema.get("additionalProperties") is False else "<p>Other fields are accepted and ignored, " \
        "with a warning unless left at their usual default.</p>"
    return (f"<p>Body (JSON){': ' + e(schema['description']) if schema.get('description') else ''}</p>"
            f"<table><tr><th>field (* required)</th><th>type</th><th>notes</th></tr>{''.join(rows)}</table>{extra}")

"""Request bodies of the server's APIs → checked image requests, with no torch and no web framework.

Three dialects, one path: each body is read field by field into the same `ImageRequest` fields the
command line builds, through the same `validate` functions and limits, so a request fails the way
`spo generate` would, naming the client's own field. Fields spo does not implement are ignored
with a warning in the answer (never an error), unless their value would not change the image (A1111's
default, or a field A1111 reads only in a mode that is off). Errors are written in the dialect of the
endpoint: OpenAI's body (message, type, param, code), or A1111's under /sdapi/.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from spo_cli import infotext, inputs, presets, validate
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest, random_seed
from spo_cli.serve import uploads

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a prompt is at most validate.PROMPT_MAX_CHARS characters
# The routes whose bodies carry images (base64 or multipart): a larger limit, uploads.EDIT_BODY_BYTES.
EDIT_PATHS = frozenset({"/sdapi/v1/img2img", "/v1/images/edits", "/spo/v1/run"})
MULTIPART_PATHS = frozenset({"/v1/images/edits"})  # OpenAI's edits are multipart/form-data, not JSON


A1111_PREFIX = "/sdapi/"  # answers under it speak A1111's dialect, errors included

# OpenAI's `code` for a refusal that names none of its own, by status (its API's codes: the openai SDK
# exposes them as e.code).
_OPENAI_CODES = {401: "invalid_api_key", 404: None, 429: "rate_limit_exceeded"}


class BadRequest(Exception):
    """A request the server refuses: `field` names the client's field (None: the body as a whole);
    `code` is OpenAI's machine-readable reason (None: derived from the status)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.message, self.field, self.status, self.code = message, field, status, code

    def body(self, path: str = "") -> dict:
        """The answer's body as the dialect of `path` writes errors: A1111's under /sdapi/ (its
        modules/api/api.py handle_exception), OpenAI's everywhere else (spo's own clients read it too)."""
        if path.startswith(A1111_PREFIX):
            return {"error": "HTTPException", "detail": self.message, "body": "",
                    "errors": f"{self.status}: {self.message}"}
        if self.status >= 500:
            kind = "server_error"
        elif self.status == 429:
            kind = "requests"  # OpenAI's type for a rate limit on requests
        else:
            kind = "invalid_request_error"
        code = self.code
        if code is None:
            code = "invalid_value" if self.status == 400 and self.field else _OPENAI_CODES.get(self.status)
        return {"error": {"message": self.message, "type": kind, "param": self.field, "code": code}}


@dataclass(frozen=True)
class Job:
    """What one HTTP request asks for: the images (one request each, seeds already chosen), the
    model they run on, and what the answer should look like."""

    images: tuple[ImageRequest, ...]
    model: str  # a label of a loaded model
    warnings: tuple[str, ...] = ()
    response_format: str = "b64_json"  # OpenAI: b64_json or url
    save: bool = True


@dataclass(frozen=True)
class Context:
    """What the server was started with, that decides which requests are acceptable."""

    models: tuple[str, ...]  # labels of the loaded models; the first is the default
    size_limit: bool = True
    max_images: int = 64  # per request: at most the queue's capacity
    save: bool = True
    watermark: bool = False  # spo serve --watermark: every image gets SDXL's invisible watermark
    uploads: Path | None = None  # where uploaded images are kept (None: a private temporary folder)


class _Names(validate.Where):
    """validate's messages with the client's field names ('cfg_scale', not 'guidance')."""

    def __init__(self, names: dict[str, str]):
        super().__init__("request")
        object.__setattr__(self, "_names", names)

    def name(self, key: str) -> str:
        return f"'{self._names.get(key, key)}'"

    def error(self, key: str, problem: str, hint: str | None = None) -> UsageError:
        e = super().error(key, problem, hint)
        e.field = self._names.get(key, key)  # for `_edit`: the field a refusal names
        return e


@contextmanager
def _field(name: str | None) -> Iterator[None]:
    """validate's refusals (UsageError) as the client's: a 400 naming its field `name`."""
    try:
        yield
    except UsageError as e:
        raise BadRequest(e.paragraph(), name) from None


def _edit(base: ImageRequest, values: dict, names: dict[str, str], ctx: Context, folder: Path | None = None
          ) -> tuple[ImageRequest, list[str]]:
    """`base` with image-to-image or hires settings, through the one function every source uses
    (inputs.edit_request); its refusals name the client's field."""
    # Kept uploads go in by their names in `folder`, so that a message quotes a file name, not the
    # server's folders; the request still records the real (absolute) path.
    given = {k: v.name if isinstance(v, Path) else v for k, v in values.items() if v is not None}
    try:
        return inputs.edit_request(base, given, _Names(names), within=folder, size_limit=ctx.size_limit)
    except UsageError as e:
        raise BadRequest(e.paragraph(), getattr(e, "field", None)) from None


def _uploads(ctx: Context) -> Path:
    return ctx.uploads if ctx.uploads is not None else uploads.folder(Path(), save=False)


@contextmanager
def _upload() -> Iterator[None]:
    try:
        yield
    except uploads.BadUpload as e:
        raise BadRequest(e.message, e.field, e.status) from None


def _kept(text, field: str, folder: Path) -> tuple[Path, object]:
    """A base64 image field, checked and kept: its file and its decoded image."""
    with _upload():
        data = uploads.from_base64(text, field)
        image = uploads.decoded(data, field)
        return uploads.store(data, folder, field, image), image


MAX_DEPTH = 16  # objects and lists in a body: the APIs need three levels at most


def parse_json(data: bytes):
    """A request body's JSON (UTF-8, no NaN or Infinity literals); `checked_body` then checks it."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels.") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise BadRequest(f"The request body is not valid JSON ({e}).") from None


def checked_body(body) -> dict:
    """A body as every endpoint takes it: an object whose every key and string is valid text and every
    number finite (1e999 reads as infinity), at most MAX_DEPTH deep. Checked before any field is
    read, since parts of a body are echoed back in answers (A1111's `parameters`) and warnings (an
    unknown key)."""
    _check_tree(_object(body), "", 0)
    return body


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    # A key given twice means what the last one says to Python and what the first says to some proxies
    # and validators in front of a server: refuse it rather than pick one.
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"the key {validate.shown(key)} is given twice")
        obj[key] = value
    return obj


def _constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _check_tree(value, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"The request body nests deeper than {MAX_DEPTH} levels.", path or None)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"request: '{path}' is not valid text (a lone surrogate).", path or None) from None
    elif isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"request: '{path}' must be a finite number.", path or None)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{path}.{key}" if path else key
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("request: a key is not valid text (a lone surrogate).") from None
            _check_tree(item, name, depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_tree(item, f"{path}[{n}]", depth + 1)


def _object(body, field: str | None = None) -> dict:
    if not isinstance(body, dict):
        what = f"request: '{field}' must be" if field else "The request body must be"
        raise BadRequest(f"{what} a JSON object, not {type(body).__name__}.", field)
    return body


def _integer(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    with _field(name):
        return validate.integer(value, name, _Names({}), low=low, high=high)


def _seed(value) -> int | None:
    """A body's seed; None (random) when absent."""
    if value is None:
        return None
    with _field("seed"):
        return validate.seed(value, "seed", _Names({}))


def _image_fields(values: dict, names: dict[str, str], ctx: Context) -> tuple[ImageRequest, list[str]]:
    """Checked ImageRequest fields (seed included) → the request and its warnings."""
    where = _Names(names)
    checked = {}
    prompts = ("prompt", "negative_prompt", "prompt_syntax")
    for key, value in values.items():  # one at a time, so that the error names the field that failed
        with _field(names.get(key, key)):
            checked.update(validate.image_values({key: value}, where) if key not in prompts else {key: value})
    for key in prompts:
        if key in checked:
            with _field(names.get(key, key)):
                checked.update(validate.image_values({key: checked[key]}, where))
    with _field(names.get("prompt", "prompt")):  # the syntax as a whole: unbalanced brackets read as a1111
        validate.readable_prompts(checked.get("prompt"), checked.get("negative_prompt"),
                                  checked.get("prompt_syntax", "auto"), where)
    with _field(names.get("width", "width")):
        warnings = validate.size(checked.get("width"), checked.get("height"), where, size_limit=ctx.size_limit)
    if ctx.watermark:
        if checked.get("watermark") is False:
            raise BadRequest(f"request: {where.name('watermark')} is false, but this server marks every image it "
                             "makes with SDXL's invisible watermark (it was started with --watermark). Leave the "
                             "field out, or set it true (spo generate and spo batch: --watermark).",
                             names.get("watermark", "watermark"))
        checked["watermark"] = True
    if checked.get("watermark"):
        with _field(names.get("watermark", "watermark")):
            if not ctx.watermark:  # started with --watermark, the server checked the extra then
                from spo_cli import watermark

                watermark.require(f"request: {where.name('watermark')}")
            validate.watermark_size(checked.get("width"), checked.get("height"), where)
    request = ImageRequest(**checked)
    return request, warnings + validate.unsupported_syntax(request, where)


def _model(value, ctx: Context, name: str, warnings: list[str]) -> str:
    if value is None or value == "":
        return ctx.models[0]
    if not isinstance(value, str):
        raise BadRequest(f"request: '{name}' must be a string, not {type(value).__name__}.", name)
    if value in ctx.models:
        return value
    # OpenAI clients always name a model of their own ("dall-e-3", "gpt-image-1"): serve the default.
    warnings.append(f"'{name}' {validate.shown(value)} is not loaded here (loaded: {', '.join(ctx.models)}); "
                    f"used {ctx.models[0]}.")
    return ctx.models[0]


def _seeds(first: int | None, count: int) -> list[int]:
    start = random_seed() if first is None else first
    with _field("seed"):
        validate.seed_range(start, count, _Names({}))
    return [start + i for i in range(count)]


IGNORED_SHOWN = 20  # warnings for ignored fields, one by one; the rest are counted (a body may hold thousands)


def _ignored(body: dict, known: set[str], unchanged, warnings: list[str]) -> None:
    """A warning for each field spo does not read, unless `unchanged(key, value)`: clients send every
    field, and one at a value that would not change the image is nothing to warn about."""
    keys = [key for key in sorted(body) if key not in known and not unchanged(key, body[key])]
    warnings += [f"{validate.shown(key)} is not supported by spo and was ignored." for key in keys[:IGNORED_SHOWN]]
    if len(keys) > IGNORED_SHOWN:
        more = len(keys) - IGNORED_SHOWN
        fields = "field spo does not support was" if more == 1 else "fields spo does not support were"
        warnings.append(f"{more:,} more {fields} ignored.")


# --------------------------------------------------------------------------------------------
# spo's own fields (OpenAI extras and the CLI client)

SPO_FIELDS = {"seed": "seed", "negative_prompt": "negative_prompt", "steps": "steps", "guidance": "guidance",
              "scheduler": "scheduler", "prompt_syntax": "prompt_syntax", "emphasis": "emphasis",
              "generator_device": "generator_device", "width": "width", "height": "height", "watermark": "watermark"}


def _size(value, name: str = "size") -> tuple[int | None, int | None]:
    if value is None or value == "auto":
        return None, None
    parsed = validate.parse_dimensions(value)  # the one WxH grammar (ASCII digits), as infotext reads it
    if parsed is None:
        raise BadRequest(f"request: '{name}' must be WIDTHxHEIGHT such as 1024x1024, not {validate.shown(value)}.",
                         name)
    return parsed


# OpenAI's images API fields that spo reads, and those it accepts and ignores at their defaults.
_OPENAI_KNOWN = {"prompt", "n", "size", "response_format", "model", *SPO_FIELDS}
_OPENAI_DEFAULTS = {"quality": "auto", "style": "vivid", "user": None, "background": "auto", "moderation": "auto",
                    "output_format": "png", "output_compression": 100, "stream": False, "partial_images": 0}
# …and those that change no pixel at any value: an end user's id, the moderation level, a JPEG's compression.
_OPENAI_NO_EFFECT = {"user", "moderation", "output_compression"}


def openai_job(body, ctx: Context) -> Job:
    """POST /v1/images/generations: OpenAI's fields, plus spo's (seed, negative_prompt, steps, …)."""
    body = checked_body(body)
    base, seeds, model, warnings, fmt = _openai_common(body, ctx, _OPENAI_KNOWN)
    return Job(tuple(replace(base, seed=s) for s in seeds), model, tuple(warnings), fmt, ctx.save)


def _openai_common(body: dict, ctx: Context, known: set[str]):
    """What generations and edits share: (base request, seeds, model, warnings, response_format)."""
    warnings: list[str] = []
    if "prompt" not in body:
        raise BadRequest("request: 'prompt' is required.", "prompt", code="missing_required_parameter")
    n = _integer(body, "n", 1, 1, ctx.max_images)
    fmt = body.get("response_format") or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise BadRequest(f"request: 'response_format' must be b64_json or url, not {validate.shown(fmt)}.",
                         "response_format")
    if fmt == "url" and not ctx.save:
        raise BadRequest("request: 'response_format' url needs saved images; this server runs with --no-save.",
                         "response_format")
    if body.get("output_format", "png") not in ("png", None):
        warnings.append(f"'output_format' {validate.shown(body['output_format'])} is not supported; "
                        "the images are PNG.")
    width, height = _size(body.get("size"))
    values = {"prompt": body["prompt"]}
    if width is not None:
        values.update(width=width, height=height)
    names = {"width": "size", "height": "size"}
    for key, spo_key in SPO_FIELDS.items():
        if key in body and body[key] is not None and key != "seed":
            if key in ("width", "height") and "size" in body and body.get("size") not in (None, "auto"):
                raise BadRequest("request: give 'size' or 'width'/'height', not both.", key)
            values[spo_key] = body[key]
            names[spo_key] = key
    base, more = _image_fields({**values, "seed": 0}, names, ctx)
    model = _model(body.get("model"), ctx, "model", warnings)
    _ignored({k: v for k, v in body.items() if k != "output_format"}, known,
             lambda key, value: key in _OPENAI_NO_EFFECT or key in _OPENAI_DEFAULTS and value == _OPENAI_DEFAULTS[key],
             warnings)
    return base, _seeds(_seed(body.get("seed")), n), model, warnings + more, fmt


# /v1/images/edits: multipart form fields are text; these are read as numbers (OpenAI's `n`, spo's extras).
_FORM_NUMBERS = {"n", "seed", "steps", "guidance", "width", "height", "strength", "mask_blur"}
# …and these as true or false, written as the openai SDK and curl users write a boolean in a form.
_FORM_FLAGS = {"watermark"}
_FORM_BOOLEANS = {"true": True, "false": False}
_OPENAI_EDIT_KNOWN = _OPENAI_KNOWN | {"image", "image[]", "mask", "strength", "mask_blur", "input_fidelity"}
OPENAI_MASKED_STRENGTH = 1.0  # OpenAI's edit draws the transparent area anew: all noise there, as strength 1


def form_value(key: str, text: str):
    """A multipart text field as the JSON value it stands for: numbers for the numeric fields, true or
    false for the flags, "" as absent."""
    if text == "":
        return None
    if key in _FORM_FLAGS:
        return _FORM_BOOLEANS.get(text.lower(), text)  # anything else: refused by the field's own check
    if key in _FORM_NUMBERS:
        try:
            return int(text) if text.lstrip("-").isdigit() and text.isascii() else float(text)
        except ValueError:
            return text  # refused by the field's own check, which names it
    return text


def openai_edit_job(fields: dict, files: dict[str, list[bytes]], ctx: Context) -> Job:
    """POST /v1/images/edits: multipart `image` (one), optional `mask` (OpenAI's: fully transparent =
    repaint; without one, the image's own fully transparent area is), `prompt`, `n`, `size`,
    `response_format`, `model`, and spo's extras (seed, steps, strength, …). `size` absent or "auto":
    the image's own size (sides down to multiples of 8)."""
    body = checked_body({k: form_value(k, v) for k, v in fields.items()})
    given = [(name, data) for name in ("image", "image[]") for data in files.get(name, [])]
    if not given:
        raise BadRequest("request: 'image' is required: the image to edit, as a file part.", "image",
                         code="missing_required_parameter")
    if len(given) > 1:
        raise BadRequest(f"request: {len(given)} images were sent; spo edits one image per request.", given[1][0])
    if len(files.get("mask", [])) > 1:
        raise BadRequest("request: send at most one 'mask'.", "mask")
    unknown_files = sorted(set(files) - {"image", "image[]", "mask"})
    if unknown_files:
        raise BadRequest(f"request: the file part {validate.shown(unknown_files[0])} is not one spo reads "
                         "(it reads 'image' and 'mask').", unknown_files[0])
    for key in set(files) & set(fields):
        raise BadRequest(f"request: '{key}' is given as a file and as a text field.", key)
    base, seeds, model, warnings, fmt = _openai_common(body, ctx, _OPENAI_EDIT_KNOWN)
    folder = _uploads(ctx)
    name, data = given[0]
    with _upload():
        data = uploads.checked_size(data, name)
        image = uploads.decoded(data, name)
        path = uploads.store(data, folder, name, image)
        mask = None
        if files.get("mask"):
            mask_data = uploads.checked_size(files["mask"][0], "mask")
            mask = uploads.openai_mask(uploads.decoded(mask_data, "mask"))
            if mask is None:
                raise BadRequest("request: 'mask' has no fully transparent pixel, so it marks nothing to repaint "
                                 "(OpenAI's mask: fully transparent = repaint, opaque = keep). Make the area to "
                                 "repaint transparent (alpha 0) in a PNG with an alpha channel.", "mask")
        else:
            mask = uploads.openai_mask(image)  # None: no transparent area, the whole image is re-drawn
        values = {"image": path, "strength": body.get("strength")}
        if mask is not None:
            values["mask"] = uploads.store_png(mask, folder)
            values["mask_blur"] = body.get("mask_blur")
            if values["strength"] is None:
                values["strength"] = OPENAI_MASKED_STRENGTH
    names = {"image": name, "mask": "mask", "strength": "strength", "mask_blur": "mask_blur", "width": "size",
             "height": "size", "steps": "steps"}
    request, more = _edit(base, values, names, ctx, folder)
    return Job(tuple(replace(request, seed=s) for s in seeds), model, tuple(warnings + more), fmt, ctx.save)


# --------------------------------------------------------------------------------------------
# AUTOMATIC1111's /sdapi/v1/txt2img

A1111_NAMES = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "guidance": "cfg_scale",
               "width": "width", "height": "height", "seed": "seed", "scheduler": "sampler_name"}
# StableDiffusionProcessingTxt2Img's API fields that spo does not implement, at A1111's defaults (the
# `parameters` echo fills them in; `_a1111_unchanged` decides which values are worth a warning).
A1111_DEFAULTS = {
    "styles": [], "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "eta": None, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": None, "s_tmin": 0,
    "s_noise": 1, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None, "refiner_switch_at": None, "disable_extra_networks": False, "comments": {},
    "enable_hr": False, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": None,
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None,
    "hr_sampler_name": None, "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "",
    "force_task_id": None, "sampler_index": "Euler", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {}, "infotext": None,
}
_A1111_KNOWN = {"prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "seed", "sampler_name",
                "sampler_index", "scheduler", "batch_size", "n_iter", "spo_model", "prompt_syntax", "emphasis"}
# Fields A1111 reads only while another is set (hires fix, variation seeds, churn, a script, a
# refiner): at any value they change nothing while it is not.
_READ_ONLY_WITH = {"denoising_strength": "enable_hr", "firstphase_width": "enable_hr",
                   "firstphase_height": "enable_hr", "subseed": "subseed_strength", "s_tmin": "s_churn",
                   "s_tmax": "s_churn", "script_args": "script_name", "refiner_switch_at": "refiner_checkpoint"}
# Fields that change neither the image nor the answer here: spo makes no grid and has no settings to restore.
_NO_EFFECT = {"do_not_save_grid", "override_settings_restore_afterwards", "force_task_id"}


# Values of img2img fields that leave the image as it is: noise at its strength, no latent mask.
_UNCHANGED_AT = {"initial_noise_multiplier": 1, "latent_mask": ""}


def _a1111_unchanged(body: dict, scheduler: str, size: tuple[int, int], defaults: dict | None = None):
    """Whether an A1111 field spo does not implement would leave the image as spo makes it, given the
    rest of `body`: at A1111's default, or read by A1111 only in a mode that is off. None is A1111's
    "the server's default" for every field."""

    def unchanged(key: str, value) -> bool:
        if value is None or key in _NO_EFFECT:
            return True
        on = "enable_hr" if key.startswith("hr_") else _READ_ONLY_WITH.get(key)
        if on is not None and not body.get(on):
            return True
        if key == "eta":
            return _eta_unchanged(value, scheduler)
        if key in ("seed_resize_from_w", "seed_resize_from_h"):
            return _resize_unchanged(body, size)
        if key in _UNCHANGED_AT and value == _UNCHANGED_AT[key]:
            return True
        table = A1111_DEFAULTS if defaults is None else defaults
        return key in table and value == table[key]

    return unchanged


def _eta_unchanged(eta, scheduler: str) -> bool:
    """A1111 gives eta to the samplers that add noise (ancestral 'a' and SDE ones, whose noise spo's
    diffusers schedulers add at eta 1) and to DDIM (which diffusers runs at eta 0); the others
    never read it."""
    words = sampler_label(scheduler).split()
    if "DDIM" in words:
        return eta == 0
    if "a" in words or "SDE" in words:
        return eta == 1
    return True


def _resize_unchanged(body: dict, size: tuple[int, int]) -> bool:
    """A1111 resizes the seed's noise only when both sizes are positive and differ from the image's."""
    wanted = (body.get("seed_resize_from_w"), body.get("seed_resize_from_h"))
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in wanted):
        return False  # not a size: the client meant something spo cannot tell
    w, h = (-1 if v is None else v for v in wanted)
    return w <= 0 or h <= 0 or (w, h) == size


@dataclass
class _A1111:
    """What txt2img and img2img share, read from a body: the base request (seed 0), the seeds, the
    model, the warnings and the `parameters` echo so far."""

    base: ImageRequest
    seeds: list[int]
    model: str
    warnings: list[str]
    parameters: dict


def _a1111_common(body: dict, ctx: Context, known: set[str], defaults: dict) -> _A1111:
    warnings: list[str] = []
    batch_size = _integer(body, "batch_size", 1, 1, validate.BATCH_SIZE_MAX)
    n_iter = _integer(body, "n_iter", 1, 1, ctx.max_images)
    if batch_size * n_iter > ctx.max_images:
        raise BadRequest(f"request: 'batch_size' × 'n_iter' is {batch_size * n_iter}; this server takes at most "
                         f"{ctx.max_images} images per request.", "n_iter")
    # Absent fields take spo's defaults (the authors' settings: 50 steps, guidance 5, 1024²), not
    # A1111's 512² at CFG 7, which suit SD 1.5 rather than SDXL.
    values = {"prompt": body.get("prompt", "")}
    if values["prompt"] in ("", None):
        raise BadRequest("request: 'prompt' is empty.", "prompt")
    for key, spo_key in (("steps", "steps"), ("cfg_scale", "guidance"), ("negative_prompt", "negative_prompt"),
                         ("width", "width"), ("height", "height"), ("prompt_syntax", "prompt_syntax"),
                         ("emphasis", "emphasis")):
        if body.get(key) is not None:
            values[spo_key] = body[key]
    schedule = body.get("scheduler")
    if isinstance(schedule, str) and not schedule.strip():
        schedule = None  # unset, as a client writes it: A1111 reads a type it lacks as Automatic
    automatic = schedule is None or isinstance(schedule, str) and schedule.strip().lower() == "automatic"
    # A1111 reads `sampler_name or sampler_index` (the name before 1.6); its model's default
    # sampler_index, Euler, is SDXL's own scheduler, which spo's default keeps (with another schedule
    # type, it is Euler with that type).
    sampler, sampler_field = body.get("sampler_name"), "sampler_name"
    if sampler in (None, ""):
        sampler, sampler_field = body.get("sampler_index"), "sampler_index"
        if sampler == "" or sampler == A1111_DEFAULTS["sampler_index"] and automatic:
            sampler = None
    if sampler is None and automatic:
        schedule = None  # the default sampler's own schedule: what spo's default runs
    if sampler is None and schedule is not None:
        raise BadRequest("request: 'scheduler' (a schedule type such as Karras) needs a 'sampler_name'.", "scheduler")
    if sampler is not None:
        if not isinstance(sampler, str) or not sampler.strip():
            raise BadRequest(f"request: '{sampler_field}' must be a sampler's name such as 'DPM++ 2M', not "
                             f"{validate.shown(sampler)}.", sampler_field)
        if schedule is not None and not isinstance(schedule, str):
            raise BadRequest("request: 'scheduler' must be a string such as Karras.", "scheduler")
        try:  # spo's own names too, as everywhere else spo takes a scheduler
            values["scheduler"] = (sampler if sampler in presets.SCHEDULERS and schedule is None
                                   else infotext.scheduler_name(sampler, schedule))
        except infotext.UnknownSampler as e:
            raise BadRequest(f"request: '{sampler_field}': {e}", sampler_field) from None
        except infotext.InfotextError as e:  # the schedule type is not one A1111 has
            raise BadRequest(f"request: 'scheduler': {e}", "scheduler") from None
        if values["scheduler"] == "default":  # read from a diffusers class name, as infotexts may hold
            known_names = ", ".join(c.a1111 for c in presets.SCHEDULERS.values() if c.a1111)
            raise BadRequest(f"request: '{sampler_field}' {validate.shown(sampler)} is not an A1111 sampler; spo knows "
                             f"{known_names}. "
                             "Leave it out for the checkpoint's own scheduler.", sampler_field)
    base, more = _image_fields({**values, "seed": 0}, dict(A1111_NAMES), ctx)
    seed = body.get("seed", -1)
    seed = _seed(None if seed == -1 else seed)  # -1: A1111's random
    model = _model(body.get("spo_model"), ctx, "spo_model", warnings)
    override = body.get("override_settings")
    if isinstance(override, dict) and override.get("sd_model_checkpoint"):
        model = _model(override["sd_model_checkpoint"], ctx, "override_settings.sd_model_checkpoint", warnings)
        override = {k: v for k, v in override.items() if k != "sd_model_checkpoint"}
        body = {**body, "override_settings": override}
    size = (base.width or presets.DEFAULT_SIZE, base.height or presets.DEFAULT_SIZE)
    _ignored(body, known, _a1111_unchanged(body, base.scheduler, size, defaults), warnings)
    seeds = _seeds(seed, batch_size * n_iter)
    parameters = {**defaults, **body, "batch_size": batch_size, "n_iter": n_iter,
                  "seed": seeds[0], "steps": base.steps, "cfg_scale": base.guidance,
                  "width": base.width or presets.DEFAULT_SIZE, "height": base.height or presets.DEFAULT_SIZE,
                  "sampler_name": sampler_label(base.scheduler)}
    return _A1111(base, seeds, model, warnings + more, parameters)


# The hires fix's fields (read only with enable_hr), by spo's names in inputs.edit_request.
_HIRES_NAMES = {"hires": "hr_scale", "hires_upscaler": "hr_upscaler", "hires_steps": "hr_second_pass_steps",
                "hires_strength": "denoising_strength"}
_HIRES_KNOWN = {"enable_hr", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "denoising_strength",
                "hr_resize_x", "hr_resize_y"}
A1111_HIRES_STRENGTH = 0.75  # StableDiffusionProcessingTxt2Img's denoising_strength, what its API runs unless told
A1111_HR_SCALE = 2.0  # its hr_scale


def _flag(body: dict, key: str) -> bool:
    value = body.get(key)
    if value in (None, False, 0, True, 1):
        return bool(value)
    raise BadRequest(f"request: '{key}' must be true or false, not {validate.shown(value)}.", key)


def a1111_job(body, ctx: Context) -> tuple[Job, dict]:
    """POST /sdapi/v1/txt2img → the job, and A1111's `parameters` echo (the request with defaults).
    With `enable_hr`, A1111's hires fix: hr_scale (or hr_resize_x/y where they are a scale), hr_upscaler
    Latent or Lanczos, hr_second_pass_steps, denoising_strength."""
    body = checked_body(body)
    hires = _flag(body, "enable_hr")
    common = _a1111_common(body, ctx, _A1111_KNOWN | (_HIRES_KNOWN if hires else {"enable_hr"}), A1111_DEFAULTS)
    request, more = common.base, []
    if hires:
        request, more = _a1111_hires(body, common.base, ctx)
        common.parameters.update(hr_scale=request.hires.scale, denoising_strength=request.hires.strength,
                                 hr_upscaler=A1111_UPSCALER_NAMES[request.hires.upscaler])
    images = tuple(replace(request, seed=s) for s in common.seeds)
    return Job(images, common.model, tuple(common.warnings + more), "b64_json", ctx.save), common.parameters


A1111_UPSCALER_NAMES = {"latent": "Latent", "lanczos": "Lanczos"}  # A1111's names of spo's hires upscalers


def _a1111_hires(body: dict, base: ImageRequest, ctx: Context) -> tuple[ImageRequest, list[str]]:
    upscaler = body.get("hr_upscaler")
    if upscaler in (None, ""):
        upscaler = "latent"  # A1111's default, its "Latent"
    elif isinstance(upscaler, str) and upscaler.strip().lower() in A1111_UPSCALER_NAMES:
        upscaler = upscaler.strip().lower()
    else:
        raise BadRequest(f"request: 'hr_upscaler' {validate.shown(upscaler)} is not one spo has; it has "
                         f"{' and '.join(A1111_UPSCALER_NAMES.values())} (A1111's default is Latent).", "hr_upscaler")
    scale = body.get("hr_scale")
    scale = A1111_HR_SCALE if scale is None else scale
    resize = (_integer(body, "hr_resize_x", 0, 0, validate.SIDE_MAX * 4),
              _integer(body, "hr_resize_y", 0, 0, validate.SIDE_MAX * 4))
    if any(resize):
        scale = _scale_of_resize(base, resize)
    steps = body.get("hr_second_pass_steps")
    strength = body.get("denoising_strength")
    values = {"hires": scale, "hires_upscaler": upscaler, "hires_steps": steps,
              "hires_strength": A1111_HIRES_STRENGTH if strength is None else strength}
    return _edit(base, values, {**A1111_NAMES, **_HIRES_NAMES}, ctx)


def _scale_of_resize(base: ImageRequest, resize: tuple[int, int]) -> float:
    """hr_resize_x/y as the scale that makes that size (as A1111 computes its target: a side left 0 keeps
    the shape); refused when no scale does (A1111 would crop to another shape)."""
    w, h = base.width or presets.DEFAULT_SIZE, base.height or presets.DEFAULT_SIZE
    rx, ry = resize
    scale = validate.hires_scale_of_resize(w, h, rx, ry)
    if scale is not None:
        return scale
    field = "hr_resize_x" if rx else "hr_resize_y"
    raise BadRequest(f"request: 'hr_resize_x' × 'hr_resize_y' {rx}×{ry} is not the {w}×{h} image scaled (A1111 "
                     "would crop it to that shape; spo's hires fix only scales). Give 'hr_scale', or a size of the "
                     "same shape.", field)


# StableDiffusionProcessingImg2Img's API fields beyond txt2img's, at A1111's defaults (modules/api/models.py).
A1111_IMG2IMG_DEFAULTS = {
    **{k: v for k, v in A1111_DEFAULTS.items() if k not in _HIRES_KNOWN and not k.startswith(("hr_", "firstphase_"))},
    "init_images": None, "resize_mode": 0, "denoising_strength": 0.75, "image_cfg_scale": None, "mask": None,
    "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": None, "mask_round": True, "inpainting_fill": 0,
    "inpaint_full_res": True, "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None, "latent_mask": None, "include_init_images": False,
}
_A1111_IMG2IMG_KNOWN = _A1111_KNOWN | {
    "init_images", "mask", "denoising_strength", "mask_blur", "mask_blur_x", "mask_blur_y", "inpainting_fill",
    "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "resize_mode", "include_init_images",
    "image_cfg_scale",  # read only by instruct-pix2pix models: no SDXL checkpoint
}
_IMG2IMG_NAMES = {**A1111_NAMES, "image": "init_images[0]", "mask": "mask", "strength": "denoising_strength",
                  "mask_blur": "mask_blur", "mask_crop": "inpaint_full_res_padding"}
A1111_FILLS = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
A1111_RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill", 3: "Just resize (latent upscale)"}


def a1111_img2img_job(body, ctx: Context) -> tuple[Job, dict]:
    """POST /sdapi/v1/img2img: one base64 `init_images` image, an optional `mask` (A1111's: white =
    repaint, or its alpha when it has transparency), `denoising_strength`, `mask_blur`,
    `inpaint_full_res` (+ padding: diffusers' padding_mask_crop), `inpainting_mask_invert`, and every
    txt2img field; width and height absent: the image's own size."""
    body = checked_body(body)
    init = body.get("init_images")
    if not isinstance(init, list) or not init:
        raise BadRequest("request: 'init_images' must be a list holding one base64-encoded image.", "init_images")
    if len(init) > 1:
        # A1111 gives each image of a batch its own init image; spo makes one input's images per call.
        raise BadRequest(f"request: 'init_images' holds {len(init)} images; spo takes one per request (send one "
                         "request per image).", "init_images")
    common = _a1111_common(body, ctx, _A1111_IMG2IMG_KNOWN, A1111_IMG2IMG_DEFAULTS)
    warnings = common.warnings
    folder = _uploads(ctx)
    path, image = _kept(init[0], "init_images[0]", folder)
    values = {"image": path, "strength": body.get("denoising_strength")}
    if body.get("mask") not in (None, ""):
        invert = _integer(body, "inpainting_mask_invert", 0, 0, 1)
        if invert:
            with _upload():
                data = uploads.from_base64(body["mask"], "mask")
                mask = uploads.decoded(data, "mask")
                values["mask"] = uploads.store_png(uploads.inverted_mask(mask, mask.size), folder)
        else:
            values["mask"] = _kept(body["mask"], "mask", folder)[0]
        values["mask_blur"] = _a1111_mask_blur(body)
        if _flag(body, "inpaint_full_res"):  # absent: spo's whole picture (A1111's UI default)
            values["mask_crop"] = body.get("inpaint_full_res_padding") or 0
        fill = body.get("inpainting_fill")
        if fill is not None and fill != 1:
            what = A1111_FILLS.get(fill) if isinstance(fill, int) and not isinstance(fill, bool) else None
            warnings.append(f"'inpainting_fill' {validate.shown(fill)}{f' ({what})' if what else ''} is not "
                            "supported; spo starts the masked area from the image (1, 'original'), as diffusers' "
                            "inpainting does.")
    mode = body.get("resize_mode")
    if mode not in (None, 0) and (body.get("width") or body.get("height")):
        size = (body.get("width") or image.width, body.get("height") or image.height)
        if size != image.size:
            what = A1111_RESIZE_MODES.get(mode) if isinstance(mode, int) else None
            raise BadRequest(f"request: 'resize_mode' {validate.shown(mode)}{f' ({what})' if what else ''} is not "
                             "supported; spo resizes the whole image to width × height (0, 'Just resize'). Use 0, or "
                             "leave width and height out to keep the image's size.", "resize_mode")
    request, more = _edit(common.base, values, _IMG2IMG_NAMES, ctx, folder)
    width, height, _ = inputs.output_size(request.image, request.width, request.height)
    parameters = {**common.parameters, "denoising_strength": request.strength, "width": width, "height": height}
    if not _flag(body, "include_init_images"):  # A1111 echoes the images only when asked to
        parameters.update(init_images=None, mask=None)
    images = tuple(replace(request, seed=s) for s in common.seeds)
    return Job(images, common.model, tuple(warnings + more), "b64_json", ctx.save), parameters


def _a1111_mask_blur(body: dict):
    """A1111's mask_blur sets both directions; alone, mask_blur_x and mask_blur_y (4 each) must agree."""
    if body.get("mask_blur") is not None:
        return body["mask_blur"]
    x, y = body.get("mask_blur_x"), body.get("mask_blur_y")
    if x is None and y is None:
        return None  # spo's default, A1111's 4
    x, y = (4 if v is None else v for v in (x, y))
    if x != y:
        raise BadRequest(f"request: 'mask_blur_x' {validate.shown(x)} and 'mask_blur_y' {validate.shown(y)} differ; "
                         "spo blurs the mask's edge by one amount. Give 'mask_blur'.", "mask_blur_x")
    return x


# A1111's schedule types (modules/sd_schedulers.py), as its /sdapi/v1/schedulers lists them:
# label → (name, default_rho, need_inner_model, aliases).
_A1111_SCHEDULES = {
    "Automatic": ("automatic", -1.0, False, None), "Uniform": ("uniform", -1.0, True, None),
    "Karras": ("karras", 7.0, False, None), "Exponential": ("exponential", -1.0, False, None),
    "Polyexponential": ("polyexponential", 1.0, False, None),
    "SGM Uniform": ("sgm_uniform", -1.0, True, ["SGMUniform"]), "KL Optimal": ("kl_optimal", -1.0, False, None),
    "Align Your Steps": ("align_your_steps", -1.0, False, None), "Simple": ("simple", -1.0, True, None),
    "Normal": ("normal", -1.0, True, None), "DDIM": ("ddim", -1.0, True, None), "Beta": ("beta", -1.0, True, None),
}


def a1111_schedulers() -> list[dict]:
    """GET /sdapi/v1/schedulers: the schedule types a txt2img `scheduler` may name here. Automatic
    (each sampler's own) and Uniform (its plain sigmas) always; the others only where one of spo's
    samplers runs them (its A1111 name ends with the type: 'DPM++ 2M Karras'), since a type spo
    has for no sampler would only be refused."""
    names = [c.a1111 for c in presets.SCHEDULERS.values() if c.a1111]
    offered = {"Automatic", "Uniform"}
    for name in names:
        for label in sorted(_A1111_SCHEDULES, key=len, reverse=True):  # 'SGM Uniform' before 'Uniform'
            if name.endswith(" " + label):
                offered.add(label)
                break
    return [{"name": name, "label": label, "aliases": aliases, "default_rho": rho, "need_inner_model": inner}
            for label, (name, rho, inner, aliases) in _A1111_SCHEDULES.items() if label in offered]


def a1111_loras(describes) -> list[dict]:
    """GET /sdapi/v1/loras: A1111's entries (name, alias, path, metadata) for the LoRAs the loaded
    models carry, from each model's `describe` ('lora': one, or 'loras': a list). A1111 names a LoRA
    by its file's stem, as `<lora:name:1>` calls it."""
    seen: dict[str, dict] = {}
    for describe in describes:
        found = describe.get("loras") or ([describe["lora"]] if describe.get("lora") else [])
        for lora in found:
            file = lora.get("file") or ""
            ident = str(lora.get("id") or file)
            path = ident if not file or ident.endswith(file) else f"{ident}/{file}"
            name = str(lora.get("name") or PurePosixPath(path.replace("\\", "/")).stem)
            seen.setdefault(path, {"name": name, "alias": name, "path": path, "metadata": {}})
    return list(seen.values())


def a1111_sd_models(describes: dict[str, dict]) -> list[dict]:
    """GET /sdapi/v1/sd-models: A1111's entries for the served models. A single-file checkpoint has a
    SHA-256, given as A1111 gives it: `sha256` whole, `hash` its first 10 characters (the `Model hash`
    of its infotext), and the title "name [hash]"; a diffusers folder or repo has none."""
    listed = []
    for label, describe in describes.items():
        model = describe.get("model") or {}
        sha256 = model.get("sha256")
        short = sha256[:10] if isinstance(sha256, str) else None
        listed.append({"title": f"{label} [{short}]" if short else label, "model_name": label, "hash": short,
                       "sha256": sha256 if short else None, "filename": model.get("id"), "config": None})
    return listed


# spo has no upscaler: A1111's "None" entry (modules/upscaler.py UpscalerNone) is the whole list.
A1111_UPSCALERS = [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}]


def openai_models(ctx: Context, describes: dict[str, dict], created: int) -> dict:
    """GET /v1/models: OpenAI's list of the served models, by the labels requests name them with.
    `owned_by`: the Hub organisation of a loaded model's weights; "local" for a folder on this
    machine; "spo" while it is still loading."""
    def owner(label: str) -> str:
        model = describes.get(label, {}).get("model") or {}
        ident = str(model.get("id") or "")
        if model.get("source") == "hub" and "/" in ident:
            return ident.split("/")[0]
        return "local" if model.get("source") == "local" else "spo"

    return {"object": "list", "data": [{"id": label, "object": "model", "created": created, "owned_by": owner(label)}
                                       for label in ctx.models]}


def sampler_label(scheduler: str) -> str:
    """The A1111 sampler name of spo's scheduler ('default': the checkpoint's own, SDXL's Euler)."""
    return presets.SCHEDULERS[scheduler].a1111 or "Euler"


def a1111_info(job: Job, metas: list[dict], infotexts: list[str], model_name: str) -> dict:
    """A1111's `info` object (sent as a JSON string) for a finished txt2img."""
    first = job.images[0]
    width = metas[0]["width"] if metas else first.width or presets.DEFAULT_SIZE
    height = metas[0]["height"] if metas else first.height or presets.DEFAULT_SIZE
    sha256 = (metas[0].get("model") or {}).get("sha256") if metas else None  # a single-file checkpoint's
    return {
        "prompt": first.prompt, "all_prompts": [r.prompt for r in job.images],
        "negative_prompt": first.negative_prompt or "", "all_negative_prompts": [r.negative_prompt or ""
                                                                                   for r in job.images],
        "seed": first.seed, "all_seeds": [r.seed for r in job.images], "subseed": -1,
        "all_subseeds": [-1] * len(job.images), "subseed_strength": 0, "width": width, "height": height,
        "sampler_name": sampler_label(first.scheduler), "cfg_scale": first.guidance, "steps": first.steps,
        "batch_size": len(job.images), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model_name, "sd_model_hash": sha256[:10] if sha256 else None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1,
        "denoising_strength": first.strength or (first.hires.strength if first.hires else 0),
        "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [], "job_timestamp": None, "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": "spo-cli",
        "warnings": list(job.warnings),
    }


# --------------------------------------------------------------------------------------------
# spo's own: the CLI's --server client sends checked ImageRequests as they are

_REQUEST_FIELDS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "width", "height", "scheduler",
                   "generator_device", "prompt_syntax", "emphasis", "watermark")
# Image to image: `image` and `mask` name an entry of the body's `inputs` ({sha256: base64 bytes}), sent
# once however many images of the call start from it; `hires` is request.Hires's fields.
_EDIT_FIELDS = ("image", "mask", "strength", "mask_blur", "mask_crop", "hires")
_HIRES_FIELDS = {"scale": "hires", "upscaler": "hires_upscaler", "steps": "hires_steps", "strength": "hires_strength"}
MAX_INPUTS = 8  # distinct input files in one /spo/v1/run body: a call's images share one image and mask


def _run_inputs(body: dict, folder: Path) -> dict[str, Path]:
    """/spo/v1/run's `inputs`, each checked (its sha256 is its bytes') and kept: {sha256: file}."""
    given = body.get("inputs") or {}
    given = _object(given, "inputs")
    if len(given) > MAX_INPUTS:
        raise BadRequest(f"request: 'inputs' holds {len(given)} files; at most {MAX_INPUTS}.", "inputs")
    kept = {}
    for sha, text in given.items():
        field = f"inputs[{validate.shown(sha, 70)}]"
        with _upload():
            data = uploads.from_base64(text, field)
            if hashlib.sha256(data).hexdigest() != sha:
                raise BadRequest(f"request: {field}: the bytes sent are not the file of that SHA-256.", "inputs")
            kept[sha] = uploads.store(data, folder, field)
    return kept


def _run_edit(item: dict, n: int, kept: dict[str, Path]) -> dict:
    values = {}
    for key in ("image", "mask"):
        if item.get(key) is not None:
            if item[key] not in kept:
                raise BadRequest(f"request: images[{n}].{key} names no entry of 'inputs'.", f"images[{n}].{key}")
            values[key] = kept[item[key]]
    for key in ("strength", "mask_blur", "mask_crop"):
        values[key] = item.get(key)
    if values.get("mask") is None:
        values.update(mask_blur=None, mask_crop=None)  # 0 and None: a request's values without a mask
    hires = item.get("hires")
    if hires is not None:
        hires = _object(hires, f"images[{n}].hires")
        unknown = sorted(set(hires) - set(_HIRES_FIELDS))
        if unknown:
            raise BadRequest(f"request: images[{n}].hires takes only {', '.join(_HIRES_FIELDS)}.", f"images[{n}].hires")
        values.update({spo: hires.get(key) for key, spo in _HIRES_FIELDS.items()})
    return values


def run_job(body, ctx: Context) -> Job:
    """POST /spo/v1/run: {"model": label, "images": [ImageRequest fields, …]}; nothing saved here."""
    body = checked_body(body)
    images = body.get("images")
    if not isinstance(images, list) or not images:
        raise BadRequest("request: 'images' must be a non-empty list of image requests.", "images")
    if len(images) > ctx.max_images:
        raise BadRequest(f"request: 'images' holds {len(images)}; this server takes at most {ctx.max_images}.",
                         "images")
    model = body.get("model")
    model = ctx.models[0] if model is None else model
    if model not in ctx.models:
        raise BadRequest(f"request: 'model' {model!r} is not loaded here (loaded: {', '.join(ctx.models)}).", "model")
    requests, warnings = [], []
    folder = _uploads(ctx)
    kept = _run_inputs(body, folder)
    for n, item in enumerate(images):
        item = dict(_object(item, f"images[{n}]"))  # a copy: the edit fields are taken out of it
        edit = {k: item.pop(k) for k in _EDIT_FIELDS if k in item}
        unknown = sorted(set(item) - set(_REQUEST_FIELDS))
        if unknown or item.get("prompt") is None or item.get("seed") is None:
            raise BadRequest(f"request: images[{n}] needs 'prompt' and 'seed' and takes only "
                             f"{', '.join(_REQUEST_FIELDS + _EDIT_FIELDS)}" + (f" (not {', '.join(unknown)})" if unknown else "") + ".",
                             f"images[{n}]")
        names = {k: f"images[{n}].{k}" for k in _REQUEST_FIELDS}
        request, more = _image_fields({k: v for k, v in item.items() if v is not None or k == "negative_prompt"},
                                      names, ctx)
        if any(v is not None for v in edit.values()):
            request, edited = _edit(request, _run_edit(edit, n, kept),
                                    {k: f"images[{n}].{k}" for k in (*_EDIT_FIELDS, *_HIRES_FIELDS.values())}, ctx,
                                    folder)
            more = more + edited
        requests.append(request)
        warnings += more
    return Job(tuple(requests), model, tuple(dict.fromkeys(warnings)), "b64_json", save=False)


def a1111_progress(p) -> dict:
    """A1111's /sdapi/v1/progress answer from the worker's `Progress` snapshot. The ETA is the
    worker's, from the steps done (`eta.Eta`); a snapshot without one is scaled by the steps left. With
    calls in flight on several devices, the progress is the oldest call's and job_count counts every
    call in flight and every request waiting."""
    state = {"skipped": False, "interrupted": p.interrupted, "stopping_generation": False, "job": "",
             "job_count": p.waiting + max(p.calls, 1 if p.running else 0), "job_timestamp": "0", "job_no": 0,
             "sampling_step": 0, "sampling_steps": 0}
    if not p.running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    done = p.step / p.steps if p.steps else 0.0
    eta = p.eta_s if p.eta_s is not None else p.elapsed_s / done - p.elapsed_s if done > 0 else p.estimate_s
    state.update(job=f"{p.images} image(s)", job_timestamp=p.started, sampling_step=p.step, sampling_steps=p.steps)
    return {"progress": round(done, 4), "eta_relative": round(max(eta, 0.0), 3), "state": state,
            "current_image": None, "textinfo": None}

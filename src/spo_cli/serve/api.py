"""Request bodies of the server's APIs → checked image requests, with no torch and no web framework.

Three dialects, one path: each body is read field by field into the same `ImageRequest` fields the
command line builds, through the same `validate` functions and limits, so a request fails the way
`spo generate` would, naming the client's own field. Fields spo does not implement are ignored
with a warning in the answer (never an error), unless they are left at their usual default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from spo_cli import infotext, presets, validate
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest, random_seed

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a prompt is at most validate.PROMPT_MAX_CHARS characters


class BadRequest(Exception):
    """A request the server refuses: `field` names the client's field (None: the body as a whole)."""

    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.field, self.status = message, field, status

    def body(self) -> dict:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"  # OpenAI's error types
        return {"error": {"message": self.message, "field": self.field, "type": kind}}


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


class _Names(validate.Where):
    """validate's messages with the client's field names ('cfg_scale', not 'guidance')."""

    def __init__(self, names: dict[str, str]):
        super().__init__("request")
        object.__setattr__(self, "_names", names)

    def name(self, key: str) -> str:
        return f"'{self._names.get(key, key)}'"


@contextmanager
def _field(name: str | None) -> Iterator[None]:
    """validate's refusals (UsageError) as the client's: a 400 naming its field `name`."""
    try:
        yield
    except UsageError as e:
        raise BadRequest(e.paragraph(), name) from None


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
    warnings.append(f"'{name}' {value!r} is not loaded here (loaded: {', '.join(ctx.models)}); "
                    f"used {ctx.models[0]}.")
    return ctx.models[0]


def _seeds(first: int | None, count: int) -> list[int]:
    start = random_seed() if first is None else first
    with _field("seed"):
        validate.seed_range(start, count, _Names({}))
    return [start + i for i in range(count)]


def _ignored(body: dict, known: set[str], defaults: dict, warnings: list[str]) -> None:
    for key in sorted(body):
        if key in known:
            continue
        if key in defaults and body[key] == defaults[key]:
            continue  # clients send every field; one left at its default changes nothing
        warnings.append(f"'{key}' is not supported by spo and was ignored.")


# --------------------------------------------------------------------------------------------
# spo's own fields (OpenAI extras and the CLI client)

SPO_FIELDS = {"seed": "seed", "negative_prompt": "negative_prompt", "steps": "steps", "guidance": "guidance",
              "scheduler": "scheduler", "prompt_syntax": "prompt_syntax", "emphasis": "emphasis",
              "generator_device": "generator_device", "width": "width", "height": "height"}


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


def openai_job(body, ctx: Context) -> Job:
    """POST /v1/images/generations: OpenAI's fields, plus spo's (seed, negative_prompt, steps, …)."""
    body = checked_body(body)
    warnings: list[str] = []
    if "prompt" not in body:
        raise BadRequest("request: 'prompt' is required.", "prompt")
    n = _integer(body, "n", 1, 1, ctx.max_images)
    fmt = body.get("response_format") or "b64_json"
    if fmt not in ("b64_json", "url"):
        raise BadRequest(f"request: 'response_format' must be b64_json or url, not {fmt!r}.", "response_format")
    if fmt == "url" and not ctx.save:
        raise BadRequest("request: 'response_format' url needs saved images; this server runs with --no-save.",
                         "response_format")
    if body.get("output_format", "png") not in ("png", None):
        warnings.append(f"'output_format' {body['output_format']!r} is not supported; the images are PNG.")
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
    _ignored({k: v for k, v in body.items() if k != "output_format"}, _OPENAI_KNOWN, _OPENAI_DEFAULTS, warnings)
    images = tuple(replace(base, seed=s) for s in _seeds(_seed(body.get("seed")), n))
    return Job(images, model, tuple(warnings + more), fmt, ctx.save)


# --------------------------------------------------------------------------------------------
# AUTOMATIC1111's /sdapi/v1/txt2img

A1111_NAMES = {"prompt": "prompt", "negative_prompt": "negative_prompt", "steps": "steps", "guidance": "cfg_scale",
               "width": "width", "height": "height", "seed": "seed", "scheduler": "sampler_name"}
# StableDiffusionProcessingTxt2Img's API fields that spo does not implement, with the values at
# which they change nothing (A1111's defaults): a client that sends them so is not warned.
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
                "scheduler", "batch_size", "n_iter", "spo_model", "prompt_syntax", "emphasis"}


def a1111_job(body, ctx: Context) -> tuple[Job, dict]:
    """POST /sdapi/v1/txt2img → the job, and A1111's `parameters` echo (the request with defaults)."""
    body = checked_body(body)
    warnings: list[str] = []
    batch_size = _integer(body, "batch_size", 1, 1, validate.BATCH_SIZE_MAX)
    n_iter = _integer(body, "n_iter", 1, 1, ctx.max_images)
    if batch_size * n_iter > ctx.max_images:
        raise BadRequest(f"request: batch_size × n_iter is {batch_size * n_iter}; this server takes at most "
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
    sampler = body.get("sampler_name")
    if sampler is None and body.get("sampler_index") != A1111_DEFAULTS["sampler_index"]:
        sampler = body.get("sampler_index")  # the name before A1111 1.6
    if sampler is None and body.get("scheduler") is not None:
        raise BadRequest("request: 'scheduler' (a schedule type such as Karras) needs a 'sampler_name'.", "scheduler")
    if sampler is not None:
        if not isinstance(sampler, str) or not sampler.strip():
            raise BadRequest(f"request: 'sampler_name' must be a sampler's name such as 'DPM++ 2M', not {sampler!r}.",
                             "sampler_name")
        schedule = body.get("scheduler")
        if schedule is not None and not isinstance(schedule, str):
            raise BadRequest("request: 'scheduler' must be a string such as Karras.", "scheduler")
        try:  # spo's own names too, as everywhere else spo takes a scheduler
            values["scheduler"] = (sampler if sampler in presets.SCHEDULERS and schedule is None
                                   else infotext.scheduler_name(sampler, schedule))
        except infotext.InfotextError as e:
            raise BadRequest(f"request: 'sampler_name': {e}", "sampler_name") from None
        if values["scheduler"] == "default":  # read from a diffusers class name, as infotexts may hold
            known = ", ".join(c.a1111 for c in presets.SCHEDULERS.values() if c.a1111)
            raise BadRequest(f"request: 'sampler_name' {sampler!r} is not an A1111 sampler; spo knows {known}. "
                             "Leave it out for the checkpoint's own scheduler.", "sampler_name")
    names = dict(A1111_NAMES)
    base, more = _image_fields({**values, "seed": 0}, {k: v for k, v in names.items()}, ctx)
    seed = body.get("seed", -1)
    seed = _seed(None if seed == -1 else seed)  # -1: A1111's random
    model = _model(body.get("spo_model"), ctx, "spo_model", warnings)
    override = body.get("override_settings")
    if isinstance(override, dict) and override.get("sd_model_checkpoint"):
        model = _model(override["sd_model_checkpoint"], ctx, "override_settings.sd_model_checkpoint", warnings)
        override = {k: v for k, v in override.items() if k != "sd_model_checkpoint"}
        body = {**body, "override_settings": override}
    _ignored(body, _A1111_KNOWN, A1111_DEFAULTS, warnings)
    images = tuple(replace(base, seed=s) for s in _seeds(seed, batch_size * n_iter))
    parameters = {**{k: v for k, v in A1111_DEFAULTS.items()}, **body, "batch_size": batch_size, "n_iter": n_iter,
                  "seed": images[0].seed, "steps": base.steps, "cfg_scale": base.guidance,
                  "width": base.width or presets.DEFAULT_SIZE, "height": base.height or presets.DEFAULT_SIZE,
                  "sampler_name": sampler_label(base.scheduler)}
    return Job(images, model, tuple(warnings + more), "b64_json", ctx.save), parameters


def sampler_label(scheduler: str) -> str:
    """The A1111 sampler name of spo's scheduler ('default': the checkpoint's own, SDXL's Euler)."""
    return presets.SCHEDULERS[scheduler].a1111 or "Euler"


def a1111_info(job: Job, metas: list[dict], infotexts: list[str], model_name: str) -> dict:
    """A1111's `info` object (sent as a JSON string) for a finished txt2img."""
    first = job.images[0]
    width = metas[0]["width"] if metas else first.width or presets.DEFAULT_SIZE
    height = metas[0]["height"] if metas else first.height or presets.DEFAULT_SIZE
    return {
        "prompt": first.prompt, "all_prompts": [r.prompt for r in job.images],
        "negative_prompt": first.negative_prompt or "", "all_negative_prompts": [r.negative_prompt or ""
                                                                                   for r in job.images],
        "seed": first.seed, "all_seeds": [r.seed for r in job.images], "subseed": -1,
        "all_subseeds": [-1] * len(job.images), "subseed_strength": 0, "width": width, "height": height,
        "sampler_name": sampler_label(first.scheduler), "cfg_scale": first.guidance, "steps": first.steps,
        "batch_size": len(job.images), "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model_name, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": 0, "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [], "job_timestamp": None, "clip_skip": 1,
        "is_using_inpainting_conditioning": False, "version": "spo-cli",
        "warnings": list(job.warnings),
    }


# --------------------------------------------------------------------------------------------
# spo's own: the CLI's --server client sends checked ImageRequests as they are

_REQUEST_FIELDS = ("prompt", "seed", "negative_prompt", "steps", "guidance", "width", "height", "scheduler",
                   "generator_device", "prompt_syntax", "emphasis")


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
    for n, item in enumerate(images):
        item = _object(item, f"images[{n}]")
        unknown = sorted(set(item) - set(_REQUEST_FIELDS))
        if unknown or item.get("prompt") is None or item.get("seed") is None:
            raise BadRequest(f"request: images[{n}] needs 'prompt' and 'seed' and takes only "
                             f"{', '.join(_REQUEST_FIELDS)}" + (f" (not {', '.join(unknown)})" if unknown else "") + ".",
                             f"images[{n}]")
        names = {k: f"images[{n}].{k}" for k in _REQUEST_FIELDS}
        request, more = _image_fields({k: v for k, v in item.items() if v is not None or k == "negative_prompt"},
                                      names, ctx)
        requests.append(request)
        warnings += more
    return Job(tuple(requests), model, tuple(dict.fromkeys(warnings)), "b64_json", save=False)


def a1111_progress(p) -> dict:
    """A1111's /sdapi/v1/progress answer from the worker's `Progress` snapshot. Before the first step
    the ETA is the worker's estimate; after it, the time so far scaled by the steps left."""
    state = {"skipped": False, "interrupted": p.interrupted, "stopping_generation": False, "job": "",
             "job_count": p.waiting + (1 if p.running else 0), "job_timestamp": "0", "job_no": 0,
             "sampling_step": 0, "sampling_steps": 0}
    if not p.running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
    done = p.step / p.steps if p.steps else 0.0
    eta = p.elapsed_s / done - p.elapsed_s if done > 0 else p.estimate_s
    state.update(job=f"{p.images} image(s)", job_timestamp=p.started, sampling_step=p.step, sampling_steps=p.steps)
    return {"progress": round(done, 4), "eta_relative": round(max(eta, 0.0), 3), "state": state,
            "current_image": None, "textinfo": None}

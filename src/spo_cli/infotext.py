"""Reading AUTOMATIC1111 "parameters" text (infotext) into spo's request fields.

The text is laid out as A1111's `parse_generation_parameters` (modules/infotext_utils.py) reads
it: prompt lines, then lines from `Negative prompt:` on, then one line of `Key: value, …` pairs.
Pure: stdlib only. Range checks are left to `validate`; this module only refuses what it cannot
read (a bad number, a sampler spo has no equivalent of), naming the key and the value.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from spo_cli import presets, validate

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_KEY_LINE = re.compile(r"\s*(\w[\w \-/]+):")
_RESIZE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")  # A1111's Hires resize: a side may be 0 (the same shape)
_CLASS_NAME = re.compile(r"[A-Z]\w*Scheduler")  # spo writes the class when A1111 has no name for it
_NEGATIVE = "Negative prompt:"


class InfotextError(ValueError):
    """The text is no infotext, or holds a value spo cannot take over."""


class UnknownSampler(InfotextError):
    """A sampler (or sampler and schedule type) spo has no equivalent of: --scheduler can stand in."""


@dataclass(frozen=True)
class Infotext:
    prompt: str
    negative: str
    params: dict[str, str]  # in the order written, quoted values unquoted
    extra: tuple[str, ...] = field(default=())  # lines after the parameters line (kept, not read)


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)  # a JSON text that starts and ends with '"' can only be a string
    except ValueError:
        return value


# A1111 reads `Key: value` pairs with re_param, r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)',
# a key of 2+ word/space/-/ characters, then a JSON-quoted value (which may hold commas) or anything up
# to the next comma. Run with findall, that regex is quadratic: a long run of key characters with no
# ':' is rescanned from each of its characters, and an unclosed quote is scanned to the end of the
# line from every value that opens one. `_pairs` finds the same pairs in one pass (tests check it
# against the regex): a match that fails in a run of key characters fails from every start inside
# it, and where a quoted value ends is worked out once, from the end of the line backwards.


def _is_word(c: str) -> bool:  # the regex's \w on str
    return c.isalnum() or c == "_"


def _closing_quotes(line: str) -> list[int]:
    """For each position p: where a quoted value's body starting at p ends (the index of its
    closing quote), or -1. The body is escapes (a backslash and any character) and characters other
    than a quote or backslash, so from p on there is one way to read it."""
    n = len(line)
    end = [-1] * (n + 2)
    for p in range(n - 1, -1, -1):
        c = line[p]
        if c == '"':
            end[p] = p
        elif c == "\\":
            end[p] = end[p + 2] if p + 1 < n else -1
        else:
            end[p] = end[p + 1]
    return end


def _pairs(line: str) -> list[tuple[str, str]]:
    """`re_param.findall(line)` in linear time, for a line without newlines."""
    n = len(line)
    out = []
    quotes = None
    i = 0
    while i < n:
        j = i
        while j < n and line[j].isspace():
            j += 1
        if j >= n or not _is_word(line[j]):
            i = j + 1
            continue
        k = j + 1
        while k < n and (_is_word(line[k]) or line[k] in " -/"):
            k += 1
        if k == j + 1 or k >= n or line[k] != ":":
            i = k  # every start before k meets the same run, and fails the same way
            continue
        m = k + 1
        while m < n and line[m].isspace():
            m += 1
        end = -1
        if m + 1 < n and line[m] == '"':
            if quotes is None:
                quotes = _closing_quotes(line)
            q = quotes[m + 1]
            if q > m + 1 and (q + 1 == n or line[q + 1] == ","):  # a body of 1+ characters, then ',' or the end
                end = q + 1
        if end < 0:
            comma = line.find(",", m)
            end = n if comma < 0 else comma
        out.append((line[j:k], line[m:end]))
        i = end + 1 if end < n else n  # past the ',' that ended the value
    return out


def _params_line(lines: list[str]) -> tuple[int, list[tuple[str, str]]] | None:
    """Which line holds the parameters, and its pairs: the last, if it has 3+ pairs (A1111's rule).
    Failing that, the last `Steps: …` line with 3+ pairs, so that a line appended after it by hand or
    by another tool (a note, a template) does not turn the parameters into prompt text, as it does in
    A1111."""
    pairs = _pairs(lines[-1])
    if len(pairs) >= 3:
        return len(lines) - 1, pairs
    for i in range(len(lines) - 2, -1, -1):
        if lines[i].lstrip().startswith("Steps:"):
            pairs = _pairs(lines[i])
            if len(pairs) >= 3:
                return i, pairs
    return None


def parse(text: str) -> Infotext:
    """Prompt, negative prompt and parameters of an A1111 infotext. Linear in the text's length,
    and text longer than `validate.INFOTEXT_MAX_CHARS` is refused before it is read."""
    if len(text) > validate.INFOTEXT_MAX_CHARS:
        raise InfotextError(f"The text is {len(text):,} characters long; an A1111 infotext spo reads is at most "
                            f"{validate.INFOTEXT_MAX_CHARS:,} (the prompt and negative prompt are "
                            f"{validate.PROMPT_MAX_CHARS:,} characters at most).")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    found = _params_line(lines)
    at, pairs = found if found is not None else (len(lines), [])
    prompt: list[str] = []
    negative: list[str] = []
    part = prompt
    for line in lines[:at]:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            part = negative
            line = line[len(_NEGATIVE):].strip()
        # A1111 joins with "\n" only once the text is non-empty: blank first lines vanish.
        if part or line:
            part.append(line)
    params = {key.strip(): _unquote(value) for key, value in pairs}
    if not prompt:
        raise InfotextError("The text has no prompt: an A1111 infotext starts with the prompt, "
                            "then `Negative prompt: …`, then `Steps: …, Sampler: …` on the last line.")
    return Infotext("\n".join(prompt), "\n".join(negative), params, tuple(lines[at + 1:]))


# --------------------------------------------------------------------------------------------
# Sampler names

# A1111's schedule types (modules/sd_schedulers.py): label, then the name and aliases it also takes.
_SCHEDULES = {
    "Automatic": ("automatic",), "Uniform": ("uniform",), "Karras": ("karras",),
    "Exponential": ("exponential",), "Polyexponential": ("polyexponential",),
    "SGM Uniform": ("sgm_uniform", "SGMUniform"), "KL Optimal": ("kl_optimal",),
    "Align Your Steps": ("align_your_steps",), "Simple": ("simple",), "Normal": ("normal",),
    "DDIM": ("ddim",), "Beta": ("beta",),
}
_SCHEDULE_BY_NAME = {n.lower(): label for label, names in _SCHEDULES.items() for n in (label, *names)}
# Since 1.9 a sampler names its default schedule ("Automatic"): sd_samplers_kdiffusion.py options.
_AUTOMATIC = {"dpm++ 2m": "Karras", "dpm++ sde": "Karras", "dpm++ 2s a": "Karras", "dpm2": "Karras",
              "dpm2 a": "Karras", "restart": "Karras", "dpm++ 2m sde": "Exponential",
              "dpm++ 2m sde heun": "Exponential", "dpm++ 3m sde": "Exponential"}
# Timestep samplers (sd_samplers_timesteps.py) lay out their own steps and ignore the schedule type.
_TIMESTEP_SAMPLERS = {"ddim", "plms", "unipc"}


def _split_schedule(sampler: str) -> tuple[str, str | None]:
    """'DPM++ 2M Karras' -> ('DPM++ 2M', 'Karras'): names from before 1.9 carry the schedule.
    Longest suffix first (A1111 tries 'Uniform' before 'SGM Uniform', and misreads the latter)."""
    for name in sorted(_SCHEDULE_BY_NAME, key=len, reverse=True):
        if sampler.lower().endswith(" " + name):
            return sampler[:-len(name) - 1], _SCHEDULE_BY_NAME[name]
    return sampler, None


def _spo_by_sampler() -> dict[tuple[str, str], str]:
    """spo's schedulers by (A1111 sampler, schedule), "" being the sampler's plain sigmas."""
    table = {}
    for choice in presets.SCHEDULERS.values():
        if choice.a1111:
            base, schedule = _split_schedule(choice.a1111)
            table[(base.lower(), schedule or "")] = choice.name
    return table


_SPO = _spo_by_sampler()


def scheduler_name(sampler: str, schedule_type: str | None = None, *, name_only: bool = False) -> str:
    """spo's --scheduler for an A1111 `Sampler` and `Schedule type` (its API's `scheduler`).

    As A1111 1.9 on reads them (sd_samplers.get_sampler_and_scheduler): a schedule at the end of the
    sampler's name ('DPM++ 2M Karras', the names before 1.9) wins; otherwise the schedule type, which
    is 'Automatic' when none is given: the sampler's own default, Karras for 'DPM++ 2M', plain sigmas
    ('Uniform') for most others. `name_only`, with no schedule type: the sampler's name says it all,
    as in spo's own texts from before it wrote `Schedule type`."""
    sampler = sampler.strip()
    if _CLASS_NAME.fullmatch(sampler):
        return "default"
    base, schedule = _split_schedule(sampler)
    given = schedule_type.strip() if schedule_type is not None else None
    if given is None and not name_only:
        given = "Automatic"
    if schedule is None and given is not None:
        schedule = _SCHEDULE_BY_NAME.get(given.lower())
        if schedule is None:
            raise InfotextError(f"Schedule type {validate.shown(given)} is not one A1111 knows "
                                f"({', '.join(_SCHEDULES)}).")
    key = base.lower()
    resolved = schedule
    if key in _TIMESTEP_SAMPLERS or schedule in (None, "Uniform"):
        resolved = ""
    elif schedule == "Automatic":
        resolved = _AUTOMATIC.get(key, "")
    name = _SPO.get((key, resolved))
    if name is None:
        what = sampler if schedule_type is None or given is None else f"{sampler}, Schedule type: {given}"
        why = f" (its Automatic schedule is {resolved})" if schedule == "Automatic" and resolved else ""
        raise UnknownSampler(f"spo has no equivalent of the A1111 sampler {validate.shown(what)}{why}; "
                             f"spo knows these A1111 samplers: {', '.join(a1111_names())}.")
    return name


def _a1111_split(sampler: str) -> tuple[str, str | None]:
    """How A1111 1.9 on splits a sampler name (sd_samplers.get_sampler_and_scheduler): schedule types in
    its list's order, label then name then aliases, case as written, the first one found at the end
    taken off; then the next types, on what is left."""
    found = None
    for label, names in _SCHEDULES.items():
        for option in (label, *names):
            if sampler.endswith(" " + option):
                sampler, found = sampler[:-len(option) - 1], label
                break
    return sampler, found


def sampler_fields(sampler: str, schedule: str = "") -> dict[str, str]:
    """`Sampler`, and `Schedule type` where needed, for `sampler`, a name spo writes, so that A1111
    reads the schedule spo used whatever its version. A name that carries its schedule ('DPM++ 2M
    Karras') is written as it is: A1111 before 1.9 knows the names it had, 1.9 on takes the schedule off
    the end. Except where 1.9 would take off the wrong one ('Euler SGM Uniform' ends with 'Uniform'):
    then the sampler and the schedule type apart, as 1.9 writes them. A name without a schedule means
    `schedule` (the checkpoint's own scheduler's: '' for plain sigmas, 'Karras', 'Exponential'), but to
    A1111 1.9 the sampler's Automatic: 'DPM++ 2M' alone is DPM++ 2M Karras to it."""
    base, named = _split_schedule(sampler)
    key = base.lower()
    if named is not None:
        return {"Sampler": sampler} if _a1111_split(sampler) == (base, named) else {
            "Sampler": base, "Schedule type": named}
    if key in _TIMESTEP_SAMPLERS or _AUTOMATIC.get(key, "") == schedule:
        return {"Sampler": sampler}
    return {"Sampler": sampler, "Schedule type": schedule or "Uniform"}


def a1111_scheduler(name: str) -> str | None:
    """spo's scheduler for an A1111 sampler name given where spo's own names are taken (--scheduler, a
    jsonl `scheduler`): as A1111 spells it, in any case, with the schedule type at the end as A1111
    before 1.9 named them ('DPM++ 2M Karras'); a sampler's name alone is its plain schedule, as spo
    writes it. None when it names nothing spo has."""
    if _CLASS_NAME.fullmatch(name.strip()):
        return None
    try:
        return scheduler_name(name, name_only=True)
    except InfotextError:
        return None


def a1111_names() -> list[str]:
    """The A1111 names of spo's schedulers, in spo's order."""
    return [c.a1111 for c in presets.SCHEDULERS.values() if c.a1111]


# --------------------------------------------------------------------------------------------
# Request fields

# A1111's sd_emphasis.py options. It writes `Emphasis` only when not Original: absent means Original.
# A1111's names of the hires fix's two main upscalers (its `Hires upscaler`), by spo's names.
HIRES_UPSCALER_NAMES = {"latent": "Latent", "lanczos": "Lanczos"}
# A1111's other hires upscalers (its `Hires upscaler`) are read as the nearest of spo's two, with a
# warning: "Latent (bicubic)" and the other latent modes as Latent; an image upscaler (ESRGAN_4x,
# R-ESRGAN 4x+, SwinIR, LDSR, Nearest, …) as Lanczos, the image upscale spo has. The image has the
# same settings otherwise; the upscale, and so its pixels, differ.
HIRES_UPSCALER_BY_NAME = {v.lower(): k for k, v in HIRES_UPSCALER_NAMES.items()}
# A1111's names of the edit values `to_request_fields` reads (validate.Where.fields), for messages.
EDIT_NAMES = (("strength", "Denoising strength"), ("hires_strength", "Denoising strength"), ("mask_blur", "Mask blur"),
              ("hires", "Hires upscale"), ("hires_steps", "Hires steps"), ("hires_upscaler", "Hires upscaler"))

_EMPHASIS = {"Original": "original", "No norm": "none-norm", "Ignore": "ignore", "None": "none"}
# spo's own key for --watermark (A1111 has none): the scheme's name, written only when the image has it.
WATERMARK_KEY, WATERMARK_SDXL = "Watermark", "SDXL"
_WATERMARK = {WATERMARK_SDXL: True}
_READ = ("Steps", "CFG scale", "Seed", "Size", "Sampler", "Schedule type", "Emphasis", "Prompt syntax", WATERMARK_KEY,
         "Denoising strength", "Mask blur", "Inpaint area", "Masked area padding", "Hires upscale", "Hires resize",
         "Hires steps", "Hires upscaler")
# A1111's inpaint area (its `Inpaint area`, written only for Only masked, with `Masked area padding`):
# spo's --mask-crop PADDING is its Only masked. A1111's parser takes a missing padding as 32.
INPAINT_ONLY_MASKED, INPAINT_WHOLE = "Only masked", "Whole picture"
A1111_PADDING_DEFAULT = 32
# spo's own key, written when brackets in a prompt were read as text (--prompt-syntax plain).
_SYNTAX = {"plain": "plain", "a1111": "a1111"}


def _number(key: str, value: str, pattern: re.Pattern, kind: str, convert):
    try:  # int() refuses more than 4300 digits
        if pattern.fullmatch(value.strip()):
            return convert(value.strip())
    except ValueError:
        pass
    raise InfotextError(f"{key} {validate.shown(value)} is not {kind}.")


def _written_by_spo(params: dict[str, str]) -> bool:
    return params.get("Version", "").startswith("spo-cli ")


def _one_of(p: dict, key: str, names: dict, writer: str):
    """The spo value of a field that takes one of a few names (Emphasis, Prompt syntax)."""
    value = names.get(p[key].strip())
    if value is None:
        raise InfotextError(f"{key} {validate.shown(p[key])} is not one {writer} writes ({', '.join(names)}).")
    return value


def hires_upscaler(name: str, notes: list[str]) -> str:
    """spo's hires upscaler for A1111's `Hires upscaler` (see HIRES_UPSCALER_BY_NAME); a name spo
    reads as the nearest of its two is said in `notes`."""
    name = name.strip()
    if not name:
        raise InfotextError("Hires upscaler is empty.")
    upscaler = HIRES_UPSCALER_BY_NAME.get(name.lower())
    if upscaler is None:
        upscaler = "latent" if name.lower().startswith("latent") else "lanczos"
        notes.append(f"A1111's hires upscaler {validate.shown(name)} is not one spo has; spo upscales with "
                     f"{HIRES_UPSCALER_NAMES[upscaler]} instead (the nearest of its two, Latent and Lanczos), so "
                     "the image will differ.")
    return upscaler


def _resize_scale(value: str, width: int | None, height: int | None) -> float:
    """The hires scale of A1111's `Hires resize: WxH` (0 for a side: the same shape) from the text's Size."""
    m = _RESIZE.fullmatch(value.strip())
    size = (int(m.group(1)), int(m.group(2))) if m else None
    if not size or not any(size) or width is None or height is None:
        raise InfotextError(f"Hires resize {validate.shown(value)} is not WIDTHxHEIGHT with the text's Size beside it.")
    scale = validate.hires_scale_of_resize(width, height, *size)
    if scale is None:
        raise InfotextError(f"Hires resize {validate.shown(value)} is not the {width}x{height} image scaled (A1111 "
                            "crops it to that shape; spo's hires fix only scales).")
    return scale


def to_request_fields(info: Infotext, *, sampler: bool = True, notes: list[str] | None = None) -> tuple[dict, list[str]]:
    """spo's request fields from an infotext, and the keys it had that spo does not take over.

    Always `prompt` and `negative` (None when there is none); the others only when the text has
    them: `steps`, `guidance`, `seed`, `width`, `height`, `scheduler`, `emphasis`, `prompt_syntax`,
    `watermark`; image to image's (`inputs.EDIT_KEYS`): with `Hires upscale`, `hires`, `hires_upscaler`,
    `hires_steps` and `hires_strength` (A1111's `Denoising strength` is then the hires pass's);
    without, `strength` (img2img's: the caller needs the image), `mask_blur`, and `mask_crop` (A1111's
    `Inpaint area: Only masked` with its `Masked area padding`).
    `Seed: -1` is A1111's "a random seed": no `seed`, so the caller draws one (and records it).
    `sampler` False: `Sampler` and `Schedule type` are left unread (the caller has its own scheduler).
    `notes` collects what was read approximately (a hires upscaler spo lacks)."""
    notes = [] if notes is None else notes
    p = info.params
    out: dict = {"prompt": info.prompt, "negative": info.negative or None}
    if "Steps" in p:
        out["steps"] = _number("Steps", p["Steps"], _INT, "a whole number", int)
    if "CFG scale" in p:
        out["guidance"] = _number("CFG scale", p["CFG scale"], _FLOAT, "a number", float)
    if "Seed" in p:
        seed = _number("Seed", p["Seed"], _INT, "a whole number", int)
        if seed != validate.SEED_RANDOM:
            out["seed"] = seed
    if "Size" in p:
        size = validate.parse_dimensions(p["Size"].strip())
        if size is None:
            raise InfotextError(f"Size {validate.shown(p['Size'])} is not WIDTHxHEIGHT, such as 1024x1024.")
        out["width"], out["height"] = size
    if "Sampler" in p and sampler:
        # A missing Schedule type is A1111's Automatic, except in spo's own texts from before spo wrote
        # one, whose sampler names carry their schedule.
        out["scheduler"] = scheduler_name(p["Sampler"], p.get("Schedule type"), name_only=_written_by_spo(p))
    if "Emphasis" in p:
        out["emphasis"] = _one_of(p, "Emphasis", _EMPHASIS, "A1111")
    if "Prompt syntax" in p:
        out["prompt_syntax"] = _one_of(p, "Prompt syntax", _SYNTAX, "spo")
    if WATERMARK_KEY in p:
        out["watermark"] = _one_of(p, WATERMARK_KEY, _WATERMARK, "spo")
    strength = (_number("Denoising strength", p["Denoising strength"], _FLOAT, "a number", float)
                if "Denoising strength" in p else None)
    ignored = [k for k in p if k not in _READ]
    if "Hires upscale" in p or "Hires resize" in p:
        # A1111 writes Hires resize (a size) instead of Hires upscale when hr_resize_x/y were given.
        out["hires"] = (_number("Hires upscale", p["Hires upscale"], _FLOAT, "a number", float) if "Hires upscale" in p
                        else _resize_scale(p["Hires resize"], out.get("width"), out.get("height")))
        if "Hires steps" in p:
            out["hires_steps"] = _number("Hires steps", p["Hires steps"], _INT, "a whole number", int)
        if "Hires upscaler" in p:
            out["hires_upscaler"] = hires_upscaler(p["Hires upscaler"], notes)
        if strength is not None:
            out["hires_strength"] = strength
        ignored += [k for k in ("Mask blur", "Inpaint area", "Masked area padding") if k in p]
    else:
        if strength is not None:
            out["strength"] = strength
        if "Mask blur" in p:
            out["mask_blur"] = _number("Mask blur", p["Mask blur"], _INT, "a whole number", int)
        area = _one_of(p, "Inpaint area", {INPAINT_ONLY_MASKED: True, INPAINT_WHOLE: False}, "A1111") \
            if "Inpaint area" in p else False
        if area:
            out["mask_crop"] = (_number("Masked area padding", p["Masked area padding"], _INT, "a whole number", int)
                                if "Masked area padding" in p else A1111_PADDING_DEFAULT)
        elif "Masked area padding" in p:
            ignored.append("Masked area padding")
        ignored += [k for k in ("Hires steps", "Hires upscaler") if k in p]
    if "Schedule type" in p and "Sampler" not in p and sampler:
        ignored.append("Schedule type")
    for line in info.extra:
        m = _KEY_LINE.match(line)
        ignored.append(m.group(1).strip() if m else line.strip()[:40])
    return out, ignored

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

from spo_cli import presets

# A1111's re_param: a key of 2+ word/space/-/ characters, then a JSON-quoted value (which may hold
# commas) or anything up to the next comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"(\d+)x(\d+)")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_KEY_LINE = re.compile(r"\s*(\w[\w \-/]+):")
_CLASS_NAME = re.compile(r"[A-Z]\w*Scheduler")  # spo writes the class when A1111 has no name for it
_NEGATIVE = "Negative prompt:"


class InfotextError(ValueError):
    """The text is no infotext, or holds a value spo cannot take over."""


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
        out = json.loads(value)
    except ValueError:
        return value
    return out if isinstance(out, str) else value


def _params_line(lines: list[str]) -> int | None:
    """Which line holds the parameters: the last, if it has 3+ pairs (A1111's rule). Failing that,
    the last `Steps: …` line with 3+ pairs, so that a line appended after it by hand or by another
    tool (a note, a template) does not turn the parameters into prompt text, as it does in A1111."""
    if len(_PARAM.findall(lines[-1])) >= 3:
        return len(lines) - 1
    for i in range(len(lines) - 2, -1, -1):
        if lines[i].lstrip().startswith("Steps:") and len(_PARAM.findall(lines[i])) >= 3:
            return i
    return None


def parse(text: str) -> Infotext:
    """Prompt, negative prompt and parameters of an A1111 infotext."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip().split("\n")
    at = _params_line(lines)
    prompt_lines = lines if at is None else lines[:at]
    prompt = negative = ""
    in_negative = False
    for line in prompt_lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            in_negative = True
            line = line[len(_NEGATIVE):].strip()
        # A1111 joins with "\n" only once the text is non-empty: a blank first line vanishes.
        if in_negative:
            negative += ("\n" if negative else "") + line
        else:
            prompt += ("\n" if prompt else "") + line
    params: dict[str, str] = {}
    if at is not None:
        for key, value in _PARAM.findall(lines[at]):
            params[key.strip()] = _unquote(value)
    if not prompt:
        raise InfotextError("The text has no prompt: an A1111 infotext starts with the prompt, "
                            "then `Negative prompt: …`, then `Steps: …, Sampler: …` on the last line.")
    return Infotext(prompt, negative, params, tuple(lines[at + 1:]) if at is not None else ())


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
_KNOWN = ", ".join(c.a1111 for c in presets.SCHEDULERS.values() if c.a1111)


def scheduler_name(sampler: str, schedule_type: str | None = None) -> str:
    """spo's --scheduler for an A1111 `Sampler` and optional `Schedule type`.

    No `Schedule type` (A1111 before 1.9, and spo itself): the sampler name says it all, plain
    sigmas unless it ends in ' Karras'. `Schedule type: Automatic` (1.9 on) means that sampler's
    own default, which for 'DPM++ 2M' is Karras."""
    sampler = sampler.strip()
    if _CLASS_NAME.fullmatch(sampler):
        return "default"
    base, schedule = _split_schedule(sampler)
    given = schedule_type.strip() if schedule_type is not None else None
    if schedule is None and given is not None:
        schedule = _SCHEDULE_BY_NAME.get(given.lower())
        if schedule is None:
            raise InfotextError(f"Schedule type {given!r} is not one A1111 knows "
                                f"({', '.join(_SCHEDULES)}).")
    key = base.lower()
    resolved = schedule
    if key in _TIMESTEP_SAMPLERS or schedule in (None, "Uniform"):
        resolved = ""
    elif schedule == "Automatic":
        resolved = _AUTOMATIC.get(key, "")
    name = _SPO.get((key, resolved))
    if name is None:
        what = sampler if given is None else f"{sampler}, Schedule type: {given}"
        why = f" (its Automatic schedule is {resolved})" if schedule == "Automatic" and resolved else ""
        raise InfotextError(f"spo has no equivalent of the A1111 sampler {what!r}{why}; "
                            f"spo knows these A1111 samplers: {_KNOWN}.")
    return name


# --------------------------------------------------------------------------------------------
# Request fields

# A1111's sd_emphasis.py options. It writes `Emphasis` only when not Original: absent means Original.
_EMPHASIS = {"Original": "original", "No norm": "none-norm", "Ignore": "ignore", "None": "none"}
_READ = ("Steps", "CFG scale", "Seed", "Size", "Sampler", "Schedule type", "Emphasis", "Prompt syntax")
# spo's own key, written when brackets in a prompt were read as text (--prompt-syntax plain).
_SYNTAX = {"plain": "plain", "a1111": "a1111"}


def _number(key: str, value: str, pattern: re.Pattern, kind: str, convert):
    try:  # int() refuses more than 4300 digits
        if pattern.fullmatch(value.strip()):
            return convert(value.strip())
    except ValueError:
        pass
    raise InfotextError(f"{key} {value!r} is not {kind}.")


def to_request_fields(info: Infotext) -> tuple[dict, list[str]]:
    """spo's request fields from an infotext, and the keys it had that spo does not take over.

    Always `prompt` and `negative` (None when there is none); the others only when the text has
    them: `steps`, `guidance`, `seed`, `width`, `height`, `scheduler`, `emphasis`, `prompt_syntax`."""
    p = info.params
    out: dict = {"prompt": info.prompt, "negative": info.negative or None}
    if "Steps" in p:
        out["steps"] = _number("Steps", p["Steps"], _INT, "a whole number", int)
    if "CFG scale" in p:
        out["guidance"] = _number("CFG scale", p["CFG scale"], _FLOAT, "a number", float)
    if "Seed" in p:
        out["seed"] = _number("Seed", p["Seed"], _INT, "a whole number", int)
    if "Size" in p:
        m = _SIZE.fullmatch(p["Size"].strip())
        try:
            out["width"], out["height"] = int(m.group(1)), int(m.group(2))  # type: ignore[union-attr]
        except (AttributeError, ValueError):  # no match; more digits than int() takes
            raise InfotextError(f"Size {p['Size']!r} is not WIDTHxHEIGHT, such as 1024x1024.") from None
    if "Sampler" in p:
        out["scheduler"] = scheduler_name(p["Sampler"], p.get("Schedule type"))
    if "Emphasis" in p:
        emphasis = _EMPHASIS.get(p["Emphasis"].strip())
        if emphasis is None:
            raise InfotextError(f"Emphasis {p['Emphasis']!r} is not one A1111 writes ({', '.join(_EMPHASIS)}).")
        out["emphasis"] = emphasis
    if "Prompt syntax" in p:
        chosen = _SYNTAX.get(p["Prompt syntax"].strip())
        if chosen is None:
            raise InfotextError(f"Prompt syntax {p['Prompt syntax']!r} is not one spo writes ({', '.join(_SYNTAX)}).")
        out["prompt_syntax"] = chosen
    ignored = [k for k in p if k not in _READ]
    if "Schedule type" in p and "Sampler" not in p:
        ignored.append("Schedule type")
    for line in info.extra:
        m = _KEY_LINE.match(line)
        ignored.append(m.group(1).strip() if m else line.strip()[:40])
    return out, ignored

"""Prompt files (txt, jsonl, stdin) → validated lines, every problem reported as file:line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from spo_cli import jobs, outputs, presets
from spo_cli.errors import UsageError

# jsonl keys and the ImageRequest field each one sets (None: handled separately).
KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "num_images": None,
    "steps": "steps",
    "guidance": "guidance",
    "width": "width",
    "height": "height",
    "scheduler": "scheduler",
    "name": None,
}
FORMATS = ("txt", "jsonl")


@dataclass(frozen=True)
class PromptLine:
    """One runnable line: the prompt and whatever settings the line itself sets."""

    line: int
    prompt: str
    settings: dict = field(default_factory=dict)  # ImageRequest fields the line overrides
    num_images: int | None = None
    name: str | None = None


@dataclass
class ParsedFile:
    source: str
    lines: list[PromptLine]
    problems: list[str]  # "file:line: what is wrong"


def _split_lines(text: str) -> list[str]:
    """Lines as an editor counts them: split on \\n, \\r\\n or \\r only (not str.splitlines()'s
    \\x0b \\x0c \\x1c-\\x1e \\x85 U+2028 U+2029, which are legal inside a prompt or a JSON string)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def detect_format(text: str, source: str, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise UsageError(f"Unknown prompt file format '{fmt}'.", "Use txt or jsonl.")
        return fmt
    if source.lower().endswith(".jsonl"):
        return "jsonl"
    if source.lower().endswith(".txt"):
        return "txt"
    # stdin or an unknown suffix: JSON lines if every meaningful line is a JSON object.
    body = [ln.strip() for ln in _split_lines(text) if ln.strip() and not ln.lstrip().startswith("#")]
    return "jsonl" if body and all(ln.startswith("{") for ln in body) else "txt"


def _check_int(value, key: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"'{key}' must be a whole number, not {json.dumps(value)}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"'{key}' must be between {low} and {high}" if high is not None
                         else f"'{key}' must be at least {low}, not {value}")
    return value


def _check_line(obj: dict) -> PromptLine:
    """Validate one jsonl object; raise ValueError with what is wrong."""
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                         f"(valid: {', '.join(KEYS)})")
    if "prompt" not in obj:
        raise ValueError("no 'prompt'")
    prompt = obj["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("'prompt' must be a non-empty string")
    settings: dict = {}
    if "negative_prompt" in obj:
        neg = obj["negative_prompt"]
        if neg is not None and not isinstance(neg, str):
            raise ValueError("'negative_prompt' must be a string")
        settings["negative_prompt"] = neg or None
    if "seed" in obj:
        settings["seed"] = _check_int(obj["seed"], "seed", 0, jobs.SEED_MAX)
    if "steps" in obj:
        settings["steps"] = _check_int(obj["steps"], "steps", 1, 1000)
    if "guidance" in obj:
        g = obj["guidance"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ValueError(f"'guidance' must be a number, not {json.dumps(g)}")
        settings["guidance"] = float(g)
    for key in ("width", "height"):
        if key in obj:
            value = _check_int(obj[key], key, 8)
            if value % 8:
                raise ValueError(f"'{key}' must be a multiple of 8, not {value}")
            settings[key] = value
    if "scheduler" in obj:
        if obj["scheduler"] not in presets.SCHEDULERS:
            raise ValueError(f"unknown scheduler {json.dumps(obj['scheduler'])} "
                             f"(valid: {', '.join(presets.SCHEDULERS)})")
        settings["scheduler"] = obj["scheduler"]
    num = _check_int(obj["num_images"], "num_images", 1, 10_000) if "num_images" in obj else None
    name = obj.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise ValueError("'name' must be a string")
        try:
            outputs.check_stem(name)
        except UsageError:
            raise ValueError(f"'name' {json.dumps(name)} is not a plain file name (no folders, no leading "
                             "dot, no '/', '\\' or ':')") from None
    return PromptLine(0, prompt, settings, num, name)


def parse(text: str, source: str, fmt: str | None = None) -> ParsedFile:
    """Every line of a prompt file, checked; problems are collected, not raised."""
    text = text.removeprefix("\ufeff")
    fmt = detect_format(text, source, fmt)
    lines: list[PromptLine] = []
    problems: list[str] = []
    for number, raw in enumerate(_split_lines(text), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if fmt == "txt":
            lines.append(PromptLine(number, stripped))
            continue
        try:
            obj = json.loads(stripped)
            if not isinstance(obj, dict):
                raise ValueError("expected a JSON object like {\"prompt\": \"…\"}")
            parsed = _check_line(obj)
        except json.JSONDecodeError as e:
            problems.append(f"{source}:{number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        except ValueError as e:
            problems.append(f"{source}:{number}: {e}")
            continue
        lines.append(PromptLine(number, parsed.prompt, parsed.settings, parsed.num_images, parsed.name))
    seen: dict[str, int] = {}
    bad: set[int] = set()
    for pl in lines:
        if pl.name is not None and pl.name in seen:
            problems.append(f"{source}:{pl.line}: name {json.dumps(pl.name)} is already used on line {seen[pl.name]}")
            bad.add(pl.line)
        elif pl.name is not None:
            seen[pl.name] = pl.line
    return ParsedFile(source, [pl for pl in lines if pl.line not in bad], problems)


def read(path: str, fmt: str | None = None, stdin=None) -> ParsedFile:
    """Read a prompt file, or standard input for '-'."""
    import sys
    from pathlib import Path

    if path == "-":
        data = (stdin or sys.stdin.buffer).read()
        source = "<stdin>"
    else:
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"Prompt file {path} does not exist." if not p.exists() else f"{path} is not a file.")
        data = p.read_bytes()
        source = path
    if isinstance(data, str):
        data = data.encode()
    body = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise UsageError(f"{source}:{line}: not UTF-8 text (byte {e.start + len(data) - len(body)}).",
                         "Save the prompt file as UTF-8.") from None
    parsed = parse(text, source, fmt)
    if not parsed.lines and not parsed.problems:
        raise UsageError(f"{source} holds no prompts.", "One prompt per line; blank and '#' lines are skipped.")
    return parsed


@dataclass(frozen=True)
class Job:
    """One image of a batch: its request, where it came from, and its deterministic file stem."""

    request: jobs.ImageRequest
    line: int
    index: int  # which image of its line
    stem: str


def expand(parsed: ParsedFile, defaults: jobs.ImageRequest, num_images: int) -> list[Job]:
    """Lines → images. Image k of the file (counting every image of every line, in file order)
    gets seed `defaults.seed + k` unless its line sets a seed (then that seed, +1 per image): so a
    seed never depends on batch size, run order, resume or how many processes share the work."""
    out: list[Job] = []
    k = 0
    for pl in parsed.lines:
        n = pl.num_images or num_images
        base = jobs.ImageRequest(**{**defaults.__dict__, "prompt": pl.prompt, **pl.settings})
        for i in range(n):
            seed = (pl.settings["seed"] + i) if "seed" in pl.settings else defaults.seed + k
            jobs.check_seed(seed)
            req = jobs.ImageRequest(**{**base.__dict__, "seed": seed})
            if pl.name:
                stem = pl.name if n == 1 else f"{pl.name}-{i}"
            else:
                stem = f"{pl.line:05d}-{outputs.slugify(pl.prompt)}-s{seed}"
            try:
                outputs.check_stem(stem)
            except UsageError:
                raise UsageError(f"{parsed.source}:{pl.line}: the file name '{stem}' is too long.",
                                 "Use a shorter 'name'.") from None
            out.append(Job(req, pl.line, i, stem))
            k += 1
    taken: dict[str, Job] = {}
    for job in out:
        if job.stem in taken:
            raise UsageError(f"{parsed.source}:{job.line}: the file name '{job.stem}' is also made by line "
                             f"{taken[job.stem].line}.", "Give the lines distinct 'name's.")
        taken[job.stem] = job
    return out

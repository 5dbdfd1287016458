"""Prompt files (txt, jsonl, stdin) → checked lines → image tasks, every problem named as file:line.

Values on a jsonl line are checked by `validate`, as the same options on the command line are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from spo_cli import validate
from spo_cli.errors import UsageError
from spo_cli.outputs import naming
from spo_cli.request import ImageRequest, ImageTask

# jsonl keys: the ImageRequest fields a line may set, two of its own, and image to image's (the
# command line's --image … options, read by `inputs.edit_request` once the line's steps are known).
EDIT_KEYS = ("image", "mask", "strength", "mask_blur", "mask_crop", "hires", "hires_upscaler", "hires_steps",
             "hires_strength")  # = inputs.EDIT_KEYS (inputs imports PIL lazily; this list is checked equal by a test)
FILE_KEYS = ("image", "mask")
KEYS = ("prompt", "negative_prompt", "seed", "num_images", "steps", "guidance", "width", "height", "scheduler",
        "generator_device", "prompt_syntax", "emphasis", "watermark", "name", *EDIT_KEYS)
SETTINGS = tuple(k for k in KEYS if k in validate.IMAGE_KEYS and k != "prompt")
# The request fields an edit sets: a line that has one replaces all of them, so that nothing of the
# command line's edit is left half applied.
EDIT_FIELDS = ("image", "mask", "strength", "mask_blur", "mask_crop", "hires")
# A name becomes a file name, and file names end up in shell commands (the page's "copy replay
# command", a user's own scripts): characters a shell acts on are refused where the name is made.
SHELL_CHARACTERS = frozenset("`$;|&'\"<>(){}[]*?!#~^\\")
# `<stem>.scores.json` is the scores file of `<stem>.png` (spo score): a stem of its own ending in
# `.scores` would have its sidecar overwritten by them.
RESERVED_SUFFIXES = (".scores",)


def name_problem(name: str) -> str | None:
    """Why a batch line's 'name' would surprise a shell or collide with spo's own files, or None."""
    shown = json.dumps(name)
    odd = sorted({c for c in name if c in SHELL_CHARACTERS or not c.isprintable()})
    if odd:
        listed = ", ".join(json.dumps(c) for c in odd)
        return (f"'name' {shown} has characters a shell would act on ({listed}); use letters, digits, spaces and "
                "- _ . , + = @ %")
    if name.startswith("-"):
        return f"'name' {shown} starts with '-', which a command reads as an option; start it with a letter or digit"
    for suffix in RESERVED_SUFFIXES:
        if name.lower().endswith(suffix):
            return (f"'name' {shown} ends in '{suffix}', which spo keeps for scores files ({name}.json would be "
                    f"the scores of {name.removesuffix(name[-len(suffix):])}.png); choose another name")
    return None


@dataclass(frozen=True)
class PromptLine:
    """One runnable line: the prompt and whatever settings the line itself sets."""

    line: int
    prompt: str
    settings: dict = field(default_factory=dict)  # ImageRequest fields the line overrides
    num_images: int | None = None
    name: str | None = None
    edits: dict = field(default_factory=dict)  # the line's own image-to-image values (EDIT_KEYS), unchecked
    notes: tuple[str, ...] = ()  # what checking its edit said (an input resized)


@dataclass
class ParsedFile:
    source: str
    lines: list[PromptLine]
    bad_lines: list[tuple[int, str]]  # (line number, what is wrong with it)

    @property
    def problems(self) -> list[str]:
        """The bad lines as messages: 'file:line: what is wrong'."""
        return [f"{self.source}:{n}: {text}" for n, text in self.bad_lines]


def _split_lines(text: str) -> list[str]:
    """Lines as an editor counts them: split on \\n, \\r\\n or \\r only (not str.splitlines()'s
    \\x0b \\x0c \\x1c-\\x1e \\x85 U+2028 U+2029, which are legal inside a prompt or a JSON string)."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def detect_format(text: str, source: str, fmt: str | None) -> str:
    if fmt:
        return validate.choice(fmt, "prompt_format", validate.PROMPT_FORMATS)
    if source.lower().endswith(".jsonl"):
        return "jsonl"
    if source.lower().endswith(".txt"):
        return "txt"
    # stdin or an unknown suffix: JSON lines if every meaningful line is a JSON object.
    body = [ln.strip() for ln in _split_lines(text) if ln.strip() and not ln.lstrip().startswith("#")]
    return "jsonl" if body and all(ln.startswith("{") for ln in body) else "txt"


class _LineWhere(validate.Where):
    """Messages for a value on a line: the line number is added by `parse`."""

    def at(self) -> str:
        return ""

    def error(self, key: str, problem: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{self.name(key)} {problem}", hint)


_LINE = _LineWhere("line")


def _check_line(obj: dict, prompt_syntax: str = "auto") -> PromptLine:
    """Check one jsonl object; raise UsageError saying what is wrong (without the file:line)."""
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise UsageError(f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(repr(k) for k in unknown)} "
                         f"(valid: {', '.join(KEYS)})")
    if "prompt" not in obj:
        raise UsageError("no 'prompt'")
    # seed -1: a random seed, as on the command line (drawn once per line, recorded in its sidecars)
    settings = validate.image_values({k: obj[k] for k in ("prompt", *SETTINGS) if k in obj}, _LINE,
                                     default_syntax=prompt_syntax, random_seed_ok=True)
    prompt = settings.pop("prompt")
    num = validate.num_images(obj["num_images"], _LINE) if "num_images" in obj else None
    name = obj.get("name")
    if name is not None:
        validate.text(name, "name", _LINE, limit=naming.STEM_MAX_BYTES)
        try:
            naming.check_stem(name)
        except UsageError:
            raise UsageError(f"'name' {json.dumps(name)} is not a plain file name (no folders, no leading "
                             "dot, no '/', '\\' or ':')") from None
        problem = name_problem(name)
        if problem:
            raise UsageError(problem)
    edits = {k: obj[k] for k in EDIT_KEYS if k in obj and obj[k] is not None}
    for key in FILE_KEYS:  # a path: a number or an object would otherwise be read as a file of that name
        if key in edits:
            validate.text(edits[key], key, _LINE, limit=validate.PATH_MAX_CHARS)
    return PromptLine(0, prompt, settings, num, name, edits)


def _lower_first(sentence: str) -> str:
    """'Use a …' → 'use a …', but 'SDXL works …' stays: only a capitalised word is lowered."""
    word = sentence.split(" ", 1)[0]
    return sentence[0].lower() + sentence[1:] if word[1:].islower() else sentence


def parse(text: str, source: str, fmt: str | None = None, prompt_syntax: str = "auto") -> ParsedFile:
    """Every line of a prompt file, checked; problems are collected, not raised. A line's prompts
    are read with its own "prompt_syntax", else with `prompt_syntax` (the command line's)."""
    text = text.removeprefix("\ufeff")
    fmt = detect_format(text, source, fmt)
    lines: list[PromptLine] = []
    problems: list[tuple[int, str]] = []
    for number, raw in enumerate(_split_lines(text), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if fmt == "txt":
                prompt = validate.text(stripped, "prompt", _LINE)
                validate.readable_prompts(prompt, None, prompt_syntax, _LINE)
                lines.append(PromptLine(number, prompt))
                continue
            try:
                obj = json.loads(stripped)
            except json.JSONDecodeError as e:
                raise UsageError(f"not valid JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise UsageError("not valid JSON (nested too deeply)") from None
            if not isinstance(obj, dict):
                raise UsageError("expected a JSON object like {\"prompt\": \"…\"}")
            lines.append(replace(_check_line(obj, prompt_syntax), line=number))
        except UsageError as e:
            hint = f"; {_lower_first(e.hint).rstrip('.')}" if e.hint else ""
            problems.append((number, e.message.rstrip(".") + hint))
    seen: dict[str, int] = {}
    bad: set[int] = set()
    for pl in lines:
        if pl.name is not None and pl.name in seen:
            problems.append((pl.line, f"name {json.dumps(pl.name)} is already used on line {seen[pl.name]}"))
            bad.add(pl.line)
        elif pl.name is not None:
            seen[pl.name] = pl.line
    problems.sort(key=lambda p: p[0])
    return ParsedFile(source, [pl for pl in lines if pl.line not in bad], problems)


def read(path: str, fmt: str | None = None, stdin=None, prompt_syntax: str = "auto") -> ParsedFile:
    """Read a prompt file, or standard input for '-'."""
    import sys
    from pathlib import Path

    if path == "-":
        validate.stdin_not_shared()
        data = (stdin or sys.stdin.buffer).read()
        source = "<stdin>"
    else:
        validate.text(path, "file", limit=validate.PATH_MAX_CHARS)
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"Prompt file {path} does not exist." if not p.exists() else f"{path} is not a file.")
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UsageError(f"Prompt file {path} cannot be read ({e.strerror or e}).") from None
        source = path
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    body = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body[: e.start].count(b"\n") + 1
        raise UsageError(f"{source}:{line}: not UTF-8 text (byte {e.start + len(data) - len(body)}).",
                         "Save the prompt file as UTF-8.") from None
    parsed = parse(text, source, fmt, prompt_syntax)
    if not parsed.lines and not parsed.problems:
        raise UsageError(f"{source} holds no prompts.", "One prompt per line; blank and '#' lines are skipped.")
    return parsed


def apply_edits(parsed: ParsedFile, defaults: ImageRequest, options: dict, folder, *,
                size_limit: bool = True) -> ParsedFile:
    """Each line's image-to-image settings checked, its files read: the command line's values
    (`options`, EDIT_KEYS, paths as given there) with the line's own over them, key by key.

    A line's paths are relative to `folder` (the prompt file's; stdin's: the current folder) and
    must not lead out of it, as the command line's may. A line whose edit is wrong becomes a bad
    line, as any other wrong value (--skip-invalid skips it). Lines with no edit are left alone."""
    from pathlib import Path

    from spo_cli import inputs

    folder = Path(folder).resolve()
    options = {k: v for k, v in options.items() if v is not None}
    lines, bad = [], list(parsed.bad_lines)
    for pl in parsed.lines:
        values = options | pl.edits
        if not values:
            lines.append(pl)
            continue
        base = replace(defaults, prompt=pl.prompt, **pl.settings)
        from_line = [k for k in FILE_KEYS if k in pl.edits]
        within = None
        try:
            if from_line and len(from_line) == len([k for k in FILE_KEYS if k in values]):
                within = folder  # every file from the line: read within its folder
            elif from_line:
                # One file from the line, one from the command line: the line's is placed in its
                # folder here, and both are then read as given.
                for k in from_line:
                    values[k] = str(inputs.read_bytes(values[k], k, _LINE, within=folder)[0])
            edited, notes = inputs.edit_request(base, values, _LINE, within=within, size_limit=size_limit)
        except UsageError as e:
            hint = f"; {_lower_first(e.hint).rstrip('.')}" if e.hint else ""
            bad.append((pl.line, e.message.rstrip(".") + hint))
            continue
        settings = pl.settings | {k: getattr(edited, k) for k in EDIT_FIELDS}
        lines.append(replace(pl, settings=settings, notes=tuple(f"{parsed.source}:{pl.line}: {n}" for n in notes)))
    bad.sort(key=lambda p: p[0])
    return ParsedFile(parsed.source, lines, bad)


def line_request(pl: PromptLine, defaults: ImageRequest, where: validate.Where, *,
                 size_limit: bool = True, lora_tags: str = "not here") -> tuple[ImageRequest, list[str]]:
    """A line's request: the command line's defaults with the line's own settings over them, and
    the warnings for a size set half by each."""
    base = replace(defaults, prompt=pl.prompt, **pl.settings)
    warnings = []
    if "width" in pl.settings or "height" in pl.settings:
        warnings = validate.size(base.width, base.height, where, size_limit=size_limit)
    if base.watermark:
        validate.watermark_size(base.width, base.height, where)
    return base, warnings + list(pl.notes) + validate.unsupported_syntax(base, where, lora_tags=lora_tags)


def tasks(parsed: ParsedFile, defaults: ImageRequest, num_images: int, *, size_limit: bool = True,
          extra: dict | None = None, lora_tags: str = "not here") -> tuple[list[ImageTask], list[str]]:
    """Lines → image tasks (with their stems), and size warnings.

    Image k of the file (counting every image of every line, in file order) gets seed
    `defaults.seed + k` unless its line sets a seed (then that seed, +1 per image): so a seed never
    depends on batch size, run order, resume or how many processes share the work."""
    out: list[ImageTask] = []
    warnings: list[str] = []
    k = 0
    for pl in parsed.lines:
        where = validate.Where(f"{parsed.source}:{pl.line}")
        n = pl.num_images or num_images
        base, more = line_request(pl, defaults, where, size_limit=size_limit, lora_tags=lora_tags)
        warnings += more
        first = pl.settings.get("seed", defaults.seed + k)
        if "seed" in pl.settings:
            validate.seed_range(first, n, where)
        elif first + n - 1 > validate.SEED_MAX:
            raise UsageError(f"{where.source}: --seed {defaults.seed} makes this line's seeds run to "
                             f"{first + n - 1:,}, past the largest, {validate.SEED_MAX:,}.", "Use a smaller --seed.")
        for i in range(n):
            request = replace(base, seed=first + i)
            if pl.name:
                stem = pl.name if n == 1 else f"{pl.name}-{i}"
            else:
                stem = naming.batch_stem(pl.line, pl.prompt, request.seed)
            try:
                naming.check_stem(stem)
            except UsageError:
                raise where.error("name", f"gives the file name '{stem}', which is too long",
                                  "Use a shorter 'name'.") from None
            out.append(ImageTask(request, stem, extra={"batch": {"source": parsed.source, "line": pl.line,
                                                                 "index": i, **(extra or {})}}))
            k += 1
    taken: dict[str, ImageTask] = {}
    for task in out:
        if task.stem in taken:
            line, other = task.extra["batch"]["line"], taken[task.stem].extra["batch"]["line"]
            raise UsageError(f"{parsed.source}:{line}: the file name '{task.stem}' is also made by line {other}.",
                             "Give the lines distinct 'name's.")
        taken[task.stem] = task
    return out, sorted(set(warnings))

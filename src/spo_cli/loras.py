"""LoRAs as people name them: `--lora SPEC[:SCALE]` (repeatable), and AUTOMATIC1111's
`<lora:name:te_weight[:unet_weight]>` prompt tags, looked up in a LoRA folder (--lora-dir, SPO_LORA_DIR).

Pure: no torch. Reading a folder's entries and hashing a file are the only disk access. A tag's
grammar is A1111's (modules/extra_networks.py `ExtraNetworkParams`, extensions-builtin/Lora
`extra_networks_lora.py`): the arguments split on `:`, an argument holding `=` is named (`te=`,
`unet=`, `dyn=`), the first positional is the name, the second the text encoders' weight (default 1),
the third the UNet's (default the text encoders').
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

from spo_cli import syntax, validate
from spo_cli.errors import UsageError
from spo_cli.request import ImageRequest, LoraRequest, ModelRequest

LORAS_MAX = validate.LORAS_MAX
NAME_MAX_CHARS = validate.LORA_NAME_MAX_CHARS
ENV_DIR = "SPO_LORA_DIR"
SUFFIX = ".safetensors"
# A weight after the last ':' of --lora: a number as A1111 and Python write one (no inf/nan: float()
# would take those).
_SCALE = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?\s*")


# ---------------------------------------------------------------------------------------------
# --lora SPEC[:SCALE]


def split_spec(value: str) -> tuple[str, float | None]:
    """'style.safetensors:0.7' → ('style.safetensors', 0.7); a spec with no number after its last ':'
    is all spec (a Windows path 'C:\\x.safetensors', a file named 'a:b.safetensors')."""
    value = validate.text(value, "lora", limit=validate.PATH_MAX_CHARS)
    head, sep, tail = value.rpartition(":")
    if sep and head and _SCALE.fullmatch(tail):
        if not math.isfinite(float(tail)):
            raise UsageError(f"--lora {validate.shown(value)}: the strength after the last ':' is not a finite "
                             "number.", "Write --lora FILE:0.8.")
        return head, float(tail)
    if sep and head and _no_strength(tail) and not _exists(value):
        # 'a.safetensors:nan' or 'a.safetensors:' meant a strength; only a file of that very name is a spec
        # (otherwise the message was that it is no Hub repo id, which sent people the wrong way).
        raise UsageError(f"--lora {validate.shown(value)}: "
                         + ("no strength after the last ':'." if not tail.strip() else
                            f"the strength after the last ':', {validate.shown(tail)}, is not a finite number."),
                         "Write --lora FILE:0.8, or leave out the ':' for strength 1.")
    return value, None


def _no_strength(tail: str) -> bool:
    """An empty strength, or one float() reads but is not finite (nan, inf, infinity)."""
    if not tail.strip():
        return True
    try:
        return not math.isfinite(float(tail))
    except ValueError:
        return False


def same_file(spec: str) -> str:
    """What identifies a LoRA: an existing file by its real path ('./a' and 'a', a link and its target are
    one file, which stacked twice would load as two adapters); anything else (a Hub repo) as written."""
    return os.path.realpath(os.path.expanduser(spec)) if _exists(spec) else spec


def _exists(value: str) -> bool:
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the file system, or with a NUL
        return False


def from_options(loras: list[str] | None, lora_file: str | None, lora_scale: float | None
                 ) -> tuple[str | None, float | None, tuple[LoraRequest, ...]]:
    """The --lora values (each SPEC or SPEC:SCALE), --lora-file and --lora-scale → the first LoRA and
    its scale (ModelRequest.lora, .lora_scale: one LoRA is what it was before stacking, to the
    pixel and the spec hash) and the ones stacked after it. Refuses what could mean two things."""
    specs = [split_spec(v) for v in loras or []]
    if not specs:
        return None, lora_scale, ()
    if len(specs) > LORAS_MAX:
        raise UsageError(f"--lora is given {len(specs)} times; at most {LORAS_MAX} LoRAs can be stacked.")
    (first, first_scale), rest = specs[0], specs[1:]
    if first_scale is not None and lora_scale is not None:
        raise UsageError(f"--lora {first}:{first_scale:g} and --lora-scale {lora_scale:g} both set the LoRA's "
                         "strength.", "Give it once: --lora FILE:SCALE, or --lora FILE --lora-scale SCALE.")
    if rest and lora_scale is not None:
        raise UsageError(f"--lora-scale {lora_scale:g} with {len(specs)} LoRAs: it is not clear which it is for.",
                         "Give each LoRA its own strength: --lora a.safetensors:0.8 --lora b.safetensors:0.5.")
    if rest and lora_file is not None:
        raise UsageError(f"--lora-file {lora_file!r} with {len(specs)} LoRAs: it is not clear which repo it is in.",
                         "With several LoRAs, give each as a local .safetensors file, or a Hub repo that holds "
                         "only one .safetensors file (or the SPO LoRA's repo).")
    seen = set()
    for spec, _ in specs:
        if same_file(spec) in seen:
            raise UsageError(f"--lora {spec} is given twice.", "Give each LoRA once, with the strength you want.")
        seen.add(same_file(spec))
    extras = tuple(LoraRequest(spec, 1.0 if s is None else s) for spec, s in rest)
    return first, (lora_scale if first_scale is None else first_scale), extras


def scale_warnings(scale: float | None, extras: tuple[LoraRequest, ...]) -> list[str]:
    out = validate.lora_scale(scale)[1]
    for lr in extras:
        for s in {lr.scale, lr.unet_scale if lr.unet_scale is not None else lr.scale}:
            if abs(s) > validate.LORA_SCALE_USUAL:
                what = f"<lora:{lr.name}>" if lr.name else f"--lora {lr.spec}"
                out.append(f"{what}: strength {s:g} is outside ±{validate.LORA_SCALE_USUAL:g}, where LoRAs usually "
                           "break the image.")
    return out


# ---------------------------------------------------------------------------------------------
# <lora:name:te[:unet]> tags


def folder(value: str | None, option: str = "--lora-dir") -> str | None:
    """The LoRA folder, checked now (before any model loads): absolute, existing, a folder."""
    if value is None or value == "":
        return None
    value = validate.text(value, "lora_dir", limit=validate.PATH_MAX_CHARS)
    path = Path(value).expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"{option} {value}: {'not a folder' if path.exists() else 'no such folder'}.",
                         f"Give the folder that holds your LoRA .safetensors files (or unset {ENV_DIR}).")
    return str(path)


def _weight(text: str, tag: str, where: validate.Where) -> float:
    if not _SCALE.fullmatch(text) or not math.isfinite(float(text)):  # 1e999 is a number float() makes inf
        raise UsageError(f"{where.source + ': ' if where.source else ''}{validate.shown(tag)} has the weight "
                         f"{validate.shown(text)}, which is not a number.",
                         "Write a LoRA tag as <lora:name:0.8>, or <lora:name:0.8:0.6> for the text encoders' "
                         "and the UNet's weights.")
    return float(text)


def tags(prompt: str, where: validate.Where = validate.ARGV) -> list[tuple[str, float, float]]:
    """The `<lora:…>` tags of a prompt as A1111 reads them: (name, te weight, unet weight), in order."""
    out = []
    for tag in syntax.extra_networks(prompt):
        kind, _, args = tag[1:-1].partition(":")
        if kind != "lora":
            continue
        positional, named = [], {}
        for item in args.split(":"):
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        name = positional[0] if positional else ""
        te = _weight(positional[1], tag, where) if len(positional) > 1 else 1.0
        te = _weight(named["te"], tag, where) if "te" in named else te
        unet = _weight(positional[2], tag, where) if len(positional) > 2 else te
        unet = _weight(named["unet"], tag, where) if "unet" in named else unet
        out.append((name, te, unet))
    return out


def _check_name(name: str, tag: str, where: validate.Where) -> None:
    at = f"{where.source}: " if where.source else ""
    bad = (not name.strip() or len(name) > NAME_MAX_CHARS or name in (".", "..") or "/" in name or "\\" in name
           or "\0" in name)
    if bad:
        raise UsageError(f"{at}{validate.shown(tag)} does not name a file of the LoRA folder: a LoRA tag's name is "
                         f"a file name without {SUFFIX} (no folders, at most {NAME_MAX_CHARS} characters).",
                         "Put the LoRA in the LoRA folder and write <lora:its_file_name:0.8>.")


def _available(lora_dir: Path, limit: int = 8) -> list[str]:
    names = []
    for i, entry in enumerate(lora_dir.iterdir()):  # bounded: a folder may hold anything
        if i >= validate.LORA_FOLDER_SCAN_MAX or len(names) >= limit:
            break
        # Names go into a message; only what a tag can load is listed (not a FIFO, a folder, a broken link).
        if entry.name.endswith(SUFFIX) and entry.name.isprintable() and entry.is_file():
            names.append(entry.name[: -len(SUFFIX)])
    return sorted(names)


def from_tags(prompt: str, lora_dir: str, where: validate.Where = validate.ARGV) -> tuple[LoraRequest, ...]:
    """A prompt's `<lora:name:…>` tags → LoRAs, each `lora_dir/name.safetensors` (which must exist)."""
    found = tags(prompt, where)
    if len(found) > LORAS_MAX:
        raise UsageError(f"{where.source + ': ' if where.source else ''}the prompt has {len(found)} LoRA tags; "
                         f"at most {LORAS_MAX} LoRAs can be stacked.")
    base = Path(lora_dir)
    out, seen = [], set()
    for (name, te, unet), tag in zip(found, [t for t in syntax.extra_networks(prompt) if t.startswith("<lora:")]):
        _check_name(name, tag, where)
        if name in seen:
            raise UsageError(f"{where.source + ': ' if where.source else ''}the prompt names the LoRA "
                             f"{validate.shown(name)} twice.",
                             "Give each LoRA one tag, with the weight you want.")
        seen.add(name)
        path = base / (name + SUFFIX)
        # The name has no separator, so the file is in the folder; a link there is the user's own choice.
        if path.parent != base or not path.is_file():
            shown = ", ".join(_available(base))
            there = os.path.lexists(path) and path.parent == base
            raise UsageError(f"{where.source + ': ' if where.source else ''}{validate.shown(tag)}: "
                             + (f"in the LoRA folder {base}, {validate.shown(name + SUFFIX)} is not a file (a folder, "
                                "a FIFO or a link to nothing)." if there else
                                f"the LoRA folder {base} has no {validate.shown(name + SUFFIX)}."),
                             f"LoRAs there: {shown}." if shown else "The folder holds no .safetensors file.")
        out.append(LoraRequest(str(path), te, None if unet == te else unet, name=name))
    return tuple(out)


def with_prompt_loras(request: ModelRequest, images: list[ImageRequest], where=lambda image: validate.ARGV
                      ) -> ModelRequest:
    """`request` with the LoRAs its images' prompts name in tags, when it has a LoRA folder.

    One model serves the whole run (and fast mode folds the LoRAs into its weights), so every image
    must name the same LoRAs at the same weights: a prompt file that mixes them is refused, with the
    lines that differ, rather than run with LoRAs that some of its lines did not ask for. Prompts read
    as plain text keep their tags as text (`--prompt-syntax plain` means the text as it is)."""
    if request.lora_dir is None:
        return request
    chosen, first, seen = None, None, {}
    for image in images:
        key = (image.prompt, image.prompt_syntax)  # a line's images share a prompt: looked up once
        if key not in seen:
            seen[key] = () if image.prompt_syntax == "plain" else from_tags(image.prompt, request.lora_dir,
                                                                           where(image))
        lora_set = seen[key]
        if chosen is None:
            chosen, first = lora_set, image
        elif lora_set != chosen:
            def shown(s):
                return validate.shown(" ".join(
                    f"<lora:{lr.name}:{lr.scale:g}{'' if lr.unet_scale is None else f':{lr.unet_scale:g}'}>"
                    for lr in s), 120)[1:-1] if s else "no LoRA tag"
            a, b = where(first).source, where(image).source
            raise UsageError(
                f"{b + ': ' if b else ''}the prompt asks for {shown(lora_set)}, but "
                f"{(a + ': ') if a else 'an earlier prompt: '}{shown(chosen)}; one run loads one set of LoRAs.",
                "Put the lines of each LoRA set in a prompt file of their own (one `spo batch` each).")
    if not chosen:
        return request
    given = {same_file(spec) for spec in [request.lora, *(lr.spec for lr in request.loras)] if spec}
    for lr in chosen:
        if same_file(lr.spec) in given:
            at = where(first).source
            raise UsageError(f"{at + ': ' if at else ''}{validate.shown(_tag_text(lr))} names the file that --lora loads already "
                             f"({lr.spec}).", "Give each LoRA once: the tag, or --lora with the strength you want.")
    if len(request.loras) + len(chosen) + 1 > LORAS_MAX:
        raise UsageError(f"--lora and the prompt's tags make more than {LORAS_MAX} LoRAs; that is the most stacked.")
    return _replace(request, loras=request.loras + chosen)


def _tag_text(lr: LoraRequest) -> str:
    return f"<lora:{lr.name}:{lr.scale:g}{'' if lr.unet_scale is None else f':{lr.unet_scale:g}'}>"


def _replace(request, **changes):
    from dataclasses import replace

    return replace(request, **changes)


def from_command_line(request: ModelRequest) -> ModelRequest:
    """`request` less the LoRAs that came from prompt tags (what a sidecar records as asked for:
    replay finds them again in the prompt)."""
    return _replace(request, loras=tuple(lr for lr in request.loras if lr.name is None))


# ---------------------------------------------------------------------------------------------
# Hashes


def file_hashes(path: Path) -> tuple[str, str | None]:
    """(SHA-256 of the file, A1111's LoRA hash): A1111 hashes a .safetensors LoRA without its header
    (sd-webui-additional-networks' `addnet_hash_safetensors`), so that editing its metadata keeps the
    hash; `Lora hashes` in its infotext is the first 12 hex digits of that. None when the header's
    length is not a header's."""
    whole, body = hashlib.sha256(), hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        whole.update(head)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        body_ok = 0 <= n <= size - 8
        done = 8
        for chunk in iter(lambda: f.read(1 << 20), b""):
            whole.update(chunk)
            if body_ok:
                start = max(0, 8 + n - done)
                if start < len(chunk):
                    body.update(chunk[start:])
            done += len(chunk)
    return whole.hexdigest(), body.hexdigest() if body_ok else None


def hash_name(name: str) -> str:
    """A LoRA's name as A1111 writes it in `Lora hashes` (its ':' and ',' removed)."""
    return name.replace(":", "").replace(",", "")

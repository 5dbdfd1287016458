"""What an image records about how it was made, in each place readers look, and reading it back.

- the sidecar JSON (`"schema": "spo-cli/1"`): everything needed to make the same image again;
- in a PNG, the same JSON in an `spo-cli` iTXt chunk, and the AUTOMATIC1111 `parameters` text
  that A1111, ComfyUI, Civitai and other "PNG info" readers show;
- in a JPEG or WebP, the A1111 text in EXIF UserComment;
- in every image (unless --no-provenance), an XMP packet saying a model made it (`xmp`), where
  each format keeps XMP: a PNG iTXt chunk, a JPEG APP1 segment, a WebP `XMP ` chunk.

Reading back accepts any of these files and checks every value through `validate`, so a damaged
or foreign file fails with the field named, never with a stack trace.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from spo_cli import infotext, loras, syntax, validate
from spo_cli.errors import UsageError
from spo_cli.outputs import xmp
from spo_cli.request import ImageRequest, ModelRequest

SCHEMA = "spo-cli/1"
GRID_SCHEMA = "spo-cli-grid/1"
PNG_JSON_KEY = "spo-cli"  # the PNG iTXt key that carries the sidecar JSON
PNG_GRID_KEY = "spo-cli-grid"  # on compare's grid pages: which cells they show
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def dumps(data, *, indent: int | None = 2) -> str:
    """JSON as spo writes it everywhere: UTF-8 text, and never NaN/Infinity (not JSON at all)."""
    return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False)


def build(request: ImageRequest, model: dict, run: dict, scheduler: dict, *, width: int, height: int,
          batch_size: int, elapsed_s: float, created: datetime, spec_hash: str | None = None,
          encoding: dict | None = None, extra: dict | None = None, provenance: bool = True) -> dict:
    """The sidecar: everything needed to make the same image again, and nothing secret.

    `model` is what `ResolvedModel.describe()` returns, `run` the engine's facts (device, dtype,
    versions), `scheduler` the engine's scheduler facts, `encoding` how the prompts were read
    (`prompt_syntax`, and for a1111 `emphasis` and `prompt_windows`; plain when absent).
    `provenance` False (--no-provenance): the image gets no XMP, and `"provenance"` says so.
    """
    meta = {
        "schema": SCHEMA,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "generator_device": request.generator_device,
        "steps": request.steps,
        "guidance": request.guidance,
        "width": width,
        "height": height,
        "scheduler": scheduler,
        **(encoding or {"prompt_syntax": "plain"}),
        "watermark": request.watermark,  # SDXL's invisible watermark: part of the recipe, it changes pixels
        **model,
        "dtype": run["dtype"],
        "device": run["device"],
        "gpu": run.get("gpu"),
        "run_options": run.get("run_options"),
        "batch_size": batch_size,
        "versions": run["versions"],
        "elapsed_s": round(elapsed_s, 3),
        "created": created.isoformat(timespec="seconds"),
    }
    meta.update(edit_fields(request, width, height))
    if spec_hash:
        meta["spec_hash"] = spec_hash
    for key, value in (extra or {}).items():  # an input's kept copy joins its record (init_image: {…, copy})
        meta[key] = meta[key] | value if isinstance(value, dict) and isinstance(meta.get(key), dict) else value
    # Last: an image-to-image input (`init_image`, above) makes the image a composite.
    meta["provenance"] = xmp.record(meta, provenance)
    return meta


INPUT_FIELDS = {"image": "init_image", "mask": "mask_image"}  # request field → sidecar field
# The sidecar's names of the edit values `recorded_edits` reads (validate.Where.fields): a message
# about a hand-edited hires.steps names hires.steps, which the file has, not hires_steps.
EDIT_NAMES = tuple(INPUT_FIELDS.items()) + (("hires", "hires.scale"), ("hires_upscaler", "hires.upscaler"),
                                            ("hires_steps", "hires.steps"), ("hires_strength", "hires.strength"))


def kept_fields(request: ImageRequest, kept: dict, sidecar_dir: Path) -> dict:
    """The sidecar's record of --keep-inputs' copies (`kept`: files.keep_inputs), each as a path
    relative to the sidecar's folder, so that the folder can be moved and replayed anywhere."""
    out = {}
    for key, field in INPUT_FIELDS.items():
        image = getattr(request, key)
        if image is not None and image.sha256 in kept:
            out[field] = {"copy": Path(os.path.relpath(kept[image.sha256], sidecar_dir)).as_posix()}
    return out


def edit_fields(request: ImageRequest, width: int, height: int) -> dict:
    """Image to image and the hires fix, in the sidecar: each input file (path, SHA-256, size), the
    strength, the mask's blur and crop; the hires pass's settings and the size it makes."""
    out = {}
    if request.image is not None:
        out |= {"init_image": request.image.describe(), "strength": request.strength}
    if request.mask is not None:
        out |= {"mask_image": request.mask.describe(), "mask_blur": request.mask_blur, "mask_crop": request.mask_crop}
    if request.hires is not None:
        from dataclasses import asdict

        from spo_cli.validate import hires_size

        out["hires"] = asdict(request.hires) | dict(zip(("width", "height"), hires_size(width, height,
                                                                                          request.hires.scale)))
    return out


# ---------------------------------------------------------------------------------------------
# A1111 parameters and embedding


def _a1111_quote(value: str) -> str:
    # AUTOMATIC1111's infotext quote(): JSON-quote only when needed.
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def a1111_parameters(meta: dict) -> str:
    """The `parameters` text that AUTOMATIC1111, ComfyUI and other "PNG info" readers show.

    `Model hash` only for a single-file checkpoint: A1111 means the first 10 hex digits of the
    file's SHA-256 by it (and its name without extension by `Model`); a diffusers model has no one
    file to hash, and the commit it came from is in the spo-cli JSON instead."""
    lines = [meta["prompt"]]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = {"Steps": meta["steps"], "Sampler": meta["scheduler"]["class"]}
    if meta["scheduler"]["a1111"]:
        config = meta["scheduler"].get("config") or {}
        schedule = ("Karras" if config.get("use_karras_sigmas") else
                    "Exponential" if config.get("use_exponential_sigmas") else "")
        fields |= infotext.sampler_fields(meta["scheduler"]["a1111"], schedule)
    fields |= {
        "CFG scale": meta["guidance"],
        "Seed": meta["seed"],
        "Size": f"{meta['width']}x{meta['height']}",
        "Model": meta["model"]["id"].rstrip("/").split("/")[-1],
    }
    if meta["model"].get("sha256"):
        fields.pop("Model")
        fields |= {"Model hash": meta["model"]["sha256"][:10],
                   "Model": Path(meta["model"].get("file") or meta["model"]["id"]).stem}
    if meta.get("prompt_syntax") == "a1111" and meta.get("emphasis") == "none-norm":
        fields["Emphasis"] = "No norm"  # A1111 writes the mode only when it is not its default, Original
    elif meta.get("prompt_syntax", "plain") == "plain" and any(
            syntax.has_syntax(t or "") for t in (meta["prompt"], meta.get("negative_prompt"))):
        fields["Prompt syntax"] = "plain"  # brackets that were read as text, not as A1111 emphasis
    if meta.get("lora"):
        fields["Lora"] = f"{Path(meta['lora']['file'] or meta['lora']['id']).stem}:{meta['lora']['scale']}"
    hashed = [r for r in meta.get("loras") or [] if r.get("a1111_hash")]
    if hashed:  # stacked LoRAs, as A1111 writes them: name and its hash of the file (loras.file_hashes)
        fields["Lora hashes"] = ", ".join(f"{loras.hash_name(r['name'])}: {r['a1111_hash']}" for r in hashed)
    if meta.get("strength") is not None:
        fields["Denoising strength"] = meta["strength"]
    if meta.get("mask_image"):
        fields["Mask blur"] = meta.get("mask_blur", 0)
        if meta.get("mask_crop") is not None:  # A1111's Only masked: without these its paste reads Whole picture
            fields |= {"Inpaint area": infotext.INPAINT_ONLY_MASKED, "Masked area padding": meta["mask_crop"]}
    if meta.get("hires"):
        hr = meta["hires"]
        fields |= {"Denoising strength": hr["strength"], "Hires upscale": hr["scale"]}
        if hr.get("steps"):  # A1111 writes it only when it is not the first pass's count
            fields["Hires steps"] = hr["steps"]
        fields["Hires upscaler"] = infotext.HIRES_UPSCALER_NAMES[hr["upscaler"]]
    if meta.get("vae") and meta["vae"].get("id"):
        fields["VAE"] = meta["vae"]["id"].rstrip("/").split("/")[-1]
    if (meta.get("model_request") or {}).get("quantize") == "fp8":
        # A1111's own key for its fp8 weights (its "FP8 weight" setting, which writes it only when on). Its
        # fp8 stores weights and computes in 16 bits; spo's computes the transformer GEMMs in float8.
        # Either way an SDXL image made with fp8 weights, which a reader of the text should know.
        fields["FP8 weight"] = "Enable for SDXL"
    if meta.get("watermark") is True:
        fields[infotext.WATERMARK_KEY] = infotext.WATERMARK_SDXL  # spo's key: A1111 writes no watermark
    fields["Version"] = f"spo-cli {meta['versions']['spo-cli']}"
    lines.append(", ".join(f"{k}: {_a1111_quote(str(v))}" for k, v in fields.items()))
    return "\n".join(lines)


def encode_image(image, fmt: str, meta: dict) -> bytes:
    """Encode a PIL image with its metadata embedded the way each format's readers expect; the XMP
    packet when `meta["provenance"]` says one is written."""
    from PIL import Image, PngImagePlugin

    params = a1111_parameters(meta)
    packet = xmp.for_image(meta)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", params)
        info.add_itxt(PNG_JSON_KEY, dumps(meta, indent=None))
        if packet:  # uncompressed, as XMP's spec asks, so readers that do not inflate find it
            info.add_itxt(xmp.PNG_KEY, packet.decode("utf-8"), zip=False)
        image.save(buf, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        # EXIF UserComment: an 8-byte charset prefix, then the text (UCS-2 big-endian, as piexif
        # and AUTOMATIC1111 write it).
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + params.encode("utf-16-be")
        kwargs = {"quality": 95} if fmt == "jpg" else {"quality": 95, "method": 4}
        if fmt == "jpg" and meta.get("watermark") is True:
            # SDXL's watermark is in the chroma (invisible-watermark's dwtDct marks YUV's U and V only): PIL's
            # default 4:2:0 subsampling halves it, and on a grainy 512² image left 33 of 48 bits (Stability's
            # "undecided") where 4:4:4 keeps 48. A marked image keeps full chroma; others are written as before.
            kwargs["subsampling"] = 0
        if packet:  # PIL writes a JPEG's APP1 XMP segment, and a WebP's XMP chunk with its VP8X flag
            kwargs["xmp"] = packet
        image.save(buf, format=PIL_FORMATS[fmt], exif=exif.tobytes(), **kwargs)
    return buf.getvalue()


def grid_record(index_name: str, cells: list[str]) -> dict:
    """What a grid page embeds: its index file and the cells it shows."""
    return {"schema": GRID_SCHEMA, "index": index_name, "cells": cells}


def encode_grid(image, index_name: str, cells: list[str], *, provenance: bool = True) -> bytes:
    """A grid page as PNG, with the cells it shows (so `replay` can point at them); with
    `provenance`, XMP that calls it a composite (model-made cells, spo's labels)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_GRID_KEY, dumps(grid_record(index_name, cells), indent=None))
    if provenance:
        info.add_itxt(xmp.PNG_KEY, xmp.packet(xmp.COMPOSITE).decode("utf-8"), zip=False)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_user_comment(path: Path) -> str | None:
    from PIL import Image

    with Image.open(path) as im:
        return _user_comment(im.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT))


def _user_comment(raw) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    prefix, body = raw[:8], raw[8:]
    return body.decode("utf-16-be") if prefix.startswith(b"UNICODE") else body.decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Reading back


def _loads(text: str, path: Path) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else f"{e.msg} at line {e.lineno}"
        raise UsageError(f"{path} is damaged or not from spo: its metadata is not valid JSON ({what}).") from None


def read(path: Path) -> dict:
    """Recorded settings from a sidecar, a PNG written by spo, or an image beside its sidecar."""
    meta, _ = load(path)
    if meta is None:
        raise _no_metadata(Path(path), None)
    return meta


def load(path: Path) -> tuple[dict | None, str | None]:
    """What a file records, reading it once (it may be a pipe): (spo-cli metadata, None) from a
    sidecar, a PNG written by spo or the sidecar beside an image; else (None, A1111 `parameters`
    text) from an image written by A1111, Forge or SD.Next (PNG text, or EXIF UserComment in a
    JPEG/WebP), or a JPEG/WebP from spo whose sidecar is gone. Anything else is a UsageError.

    The file's content decides how it is read, not its name."""
    from spo_cli.outputs import reader

    path = Path(path)
    with reader.Source(path) as src:
        head = src.head(12)
        kind = reader.sniff(head)
        if src.pipe and not head:
            raise UsageError(f"{path} is a pipe that holds nothing (nothing was writing to it).",
                             "Replay takes one image or sidecar .json file.")
        if kind is None:
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"):
                raise UsageError(f"{path} could not be read as an image{reader.misnamed(path, None)}.")
            data = src.read_all(reader.JSON_MAX_BYTES, "sidecar")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                raise UsageError(f"{path} is not a spo-cli sidecar (not UTF-8 text).") from None
            return _checked(_loads(text, path), path), None
        if kind == "png":
            try:
                chunks = reader.png_text(src)
            except reader.NotPNG as e:
                raise UsageError(f"{path} could not be read as an image (a damaged PNG: {e}).") from None
        else:
            chunks = _exif_text(src, path)
    grid = chunks.get(PNG_GRID_KEY)
    if grid is not None:
        g = _loads(grid, path)
        _refuse_grid(path, g if isinstance(g, dict) else {})
    own = chunks.get(PNG_JSON_KEY)
    if own:
        return _checked(_loads(own, path), path), None
    beside = path.with_suffix(".json")
    if beside != path and beside.is_file():
        return read(beside), None
    params = chunks.get("parameters")
    if isinstance(params, str) and params.strip():
        return None, params
    raise _no_metadata(path, kind)


class NoMetadata(UsageError):
    """A file that records no settings at all (as opposed to damaged or foreign ones)."""


def _no_metadata(path: Path, kind: str | None) -> UsageError:
    from spo_cli.outputs import reader

    return NoMetadata(f"{path} carries no spo-cli metadata and has no sidecar next to it"
                      f"{reader.misnamed(path, kind)}.", "Replay needs the .json sidecar, or a PNG written by spo.")


def _exif_text(src, path: Path) -> dict:
    """{"parameters": EXIF UserComment} of a JPEG or WebP, read from its header (no pixels)."""
    import warnings

    from PIL import Image

    from spo_cli.outputs import reader

    try:
        if src.pipe:
            f = io.BytesIO(src.read_all(reader.PIPE_MAX_BYTES, "image"))
        else:
            f = os.fdopen(os.dup(src.fd), "rb")
            f.seek(0)
        with f, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # no pixel is decoded here
            with Image.open(f) as im:
                exif = im.getexif().get_ifd(EXIF_IFD)
    except UsageError:
        raise
    except Exception as e:  # PIL raises many kinds of error for a broken file
        raise UsageError(f"{path} could not be read as an image ({type(e).__name__}: {e}).") from None
    try:
        text = _user_comment(exif.get(EXIF_USER_COMMENT))
    except (UnicodeDecodeError, TypeError):  # damaged EXIF: as if there were none
        text = None
    return {} if text is None else {"parameters": text}


def _checked(meta, path: Path) -> dict:
    if not isinstance(meta, dict) or not isinstance(meta.get("schema"), str) or \
            not meta["schema"].startswith("spo-cli/"):
        if isinstance(meta, dict) and meta.get("schema") == GRID_SCHEMA:
            _refuse_grid(path, meta)
        raise UsageError(f"{path} is not spo-cli metadata (no 'schema': 'spo-cli/…' field).")
    if meta["schema"] != SCHEMA:
        raise UsageError(f"{path} was written as {meta['schema']!r}, which this spo-cli (reading {SCHEMA!r}) "
                         "does not know.", "Replay it with the spo-cli version that made it, or a newer one.")
    return meta


def _refuse_grid(path: Path, grid: dict) -> None:
    # A grid page's chunk lists cell paths; the grid's index file lists rows of {"image": …} entries.
    raw = grid.get("cells", []) if isinstance(grid, dict) else []
    flat = [c for row in raw for c in (row if isinstance(row, list) else [row])] if isinstance(raw, list) else []
    cells = [c.get("image") if isinstance(c, dict) else c for c in flat]
    cells = [c for c in cells if isinstance(c, str)]
    shown = ", ".join(str(path.parent / c) for c in cells[:3]) + (", …" if len(cells) > 3 else "")
    raise UsageError(f"{path} is a comparison grid from `spo compare`, not one image.",
                     f"Replay one of its cells instead: {shown}." if cells else "Replay one of its cells instead.")


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false"}


def recorded_requests(meta: dict, path: Path) -> tuple[ImageRequest, ModelRequest]:
    """The requests that made a recorded image, pinned to the commits it was made from.

    Every value goes through the same checks as the command line's, named as the file's fields."""
    where = validate.Where(str(path))

    def field(obj, key, kind, name=None):
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind):
            raise where.error(name or key, "is missing or damaged" if value is None else
                              f"should be {_JSON_TYPES[kind]}, not {_JSON_TYPES.get(type(value), type(value).__name__)}")
        return value

    values = {k: meta.get(k) for k in validate.IMAGE_KEYS if k in meta}
    values.setdefault("prompt_syntax", "plain")  # before 0.2 every prompt was read as plain text
    for key in ("prompt", "seed", "steps", "guidance", "width", "height"):
        if key not in meta:
            raise where.error(key, "is missing")
    values["scheduler"] = field(field(meta, "scheduler", dict), "name", str, "scheduler.name")
    image = ImageRequest(**validate.image_values(values, where))
    asked = field(meta, "model_request", dict)
    known = {k: asked[k] for k in ("model", "revision", "lora", "lora_file", "lora_scale", "vae", "loras", "lora_dir",
                                   "quantize") if k in asked}
    model = field(meta, "model", dict)
    if "model" not in known:
        raise where.error("model_request.model", "is missing")
    if model.get("source") == "hub" and isinstance(model.get("commit"), str):
        known["revision"] = model["commit"]  # the exact weights, even if the branch moved
    if model.get("sha256") and isinstance(model.get("id"), str):
        known["model"] = model["id"]  # a single file, by the absolute path it was read from
    known["dtype"] = field(meta, "dtype", str)  # what actually ran, not "auto"
    lora = meta.get("lora")
    if not lora:
        known["lora_scale"] = None  # files from before 0.2 recorded 1.0 for models without a LoRA
    return image, ModelRequest(**validate.model_values(known, where))


_SHA256 = re.compile(r"[0-9a-f]{64}")
# A --keep-inputs copy as spo records it: OUT/inputs/<sha256[:16]>.<ext>, from the sidecar's folder
# (a compare cell's is two folders down). Nothing else is read: a sidecar is a file from anywhere.
_KEPT_COPY = re.compile(r"(?:\.\./){0,2}inputs/[0-9a-f]{16}\.[a-z]{2,4}")


@dataclass(frozen=True)
class RecordedInput:
    """An input file a sidecar records: where it was, what its bytes were, and a kept copy."""

    key: str  # "image" or "mask" (the request field)
    path: str  # as recorded: absolute, on the machine that made the image
    sha256: str
    copy: Path | None  # --keep-inputs' copy, resolved against the sidecar's folder

    @property
    def field(self) -> str:
        return INPUT_FIELDS[self.key]


def recorded_edits(meta: dict, path: Path) -> tuple[dict, list[RecordedInput]]:
    """Image to image and hires settings a sidecar records, as `inputs.edit_request` values (checked
    there, named as the file's fields), and its input files (checked here: a path, a SHA-256, a copy
    of the shape spo writes). The caller decides which file to read (`RecordedInput`)."""
    where = validate.Where(str(path))
    values: dict = {}
    found: list[RecordedInput] = []

    def needed(obj: dict, key: str, name: str):
        # null is missing too: spo always writes these, and a None here would be read as "use the default"
        if obj.get(key) is None:
            raise where.error(name, "is missing" if key not in obj else "is null")
        return obj[key]

    for key, name in INPUT_FIELDS.items():
        rec = meta.get(name)
        if rec is None:
            continue
        if not isinstance(rec, dict):
            raise where.error(name, f"should be an object, not {_JSON_TYPES.get(type(rec), type(rec).__name__)}")
        recorded = validate.text(needed(rec, "path", f"{name}.path"), f"{name}.path", where,
                                 limit=validate.PATH_MAX_CHARS)
        sha = needed(rec, "sha256", f"{name}.sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise where.error(f"{name}.sha256", f"is not a SHA-256 (64 hex digits): {validate.shown(sha)}")
        copy = rec.get("copy")
        if copy is not None and (not isinstance(copy, str) or not _KEPT_COPY.fullmatch(copy)):
            raise where.error(f"{name}.copy", f"is not a copy spo keeps ({validate.shown(copy)}; spo writes "
                                              "inputs/<16 hex digits>.<ext>, beside the sidecar)")
        found.append(RecordedInput(key, recorded, sha, None if copy is None else Path(path).parent / copy))
        values[key] = recorded
    if "init_image" in meta:
        values["strength"] = needed(meta, "strength", "strength")
    if "mask_image" in meta:
        values["mask_blur"] = needed(meta, "mask_blur", "mask_blur")
        values["mask_crop"] = meta.get("mask_crop")
    hires = meta.get("hires")
    if hires is not None:
        if not isinstance(hires, dict):
            raise where.error("hires", f"should be an object, not {_JSON_TYPES.get(type(hires), type(hires).__name__)}")
        values |= {"hires": needed(hires, "scale", "hires.scale"), "hires_upscaler": needed(hires, "upscaler", "hires.upscaler"),
                   "hires_steps": hires.get("steps"), "hires_strength": needed(hires, "strength", "hires.strength")}
    return values, found

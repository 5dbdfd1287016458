"""Files on disk: names, atomic writes, sidecars, PNG text chunks, EXIF. Never touches the model."""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import unicodedata
from datetime import datetime
from pathlib import Path

from spo_cli.errors import OutputError, UsageError

SCHEMA = "spo-cli/1"
FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
PNG_JSON_KEY = "spo-cli"  # the PNG tEXt/iTXt key that carries the sidecar JSON
EXIF_USER_COMMENT = 0x9286
EXIF_IFD = 0x8769
SLUG_MAX = 40
# mkstemp creates files 0600; finished outputs should get the usual umask-derived mode. The umask
# can only be read by setting it, so read it once, at import.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def slugify(text: str, max_len: int = SLUG_MAX) -> str:
    """A lowercase ASCII file-name fragment: letters, digits and single dashes, cut at a word."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        slug = cut[: cut.rfind("-")] if "-" in cut[: max_len + 1] else slug[:max_len]
        slug = slug[:max_len].strip("-")
    return slug or "image"


def default_stem(prompt: str, seed: int, when: datetime) -> str:
    return f"{when:%Y%m%d-%H%M%S}-{slugify(prompt)}-s{seed}"


def check_stem(stem: str) -> str:
    """A stem must name a file inside the output folder, never a path out of it."""
    if (
        not stem
        or stem in (".", "..")
        or stem.startswith(".")
        or any(c in stem for c in "/\\\0:")
        or stem != stem.strip()
        or len(stem.encode()) > 200
    ):
        raise UsageError(f"'{stem}' is not a usable file name.", "Use letters, digits, '-', '_' and '.'.")
    return stem


def inside(out_dir: Path, name: str) -> Path:
    """`out_dir/name`, refusing anything that would resolve outside `out_dir`."""
    check_stem(name)
    root = out_dir.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise UsageError(f"'{name}' would be written outside {out_dir}.")
    return path


def claim_stem(out_dir: Path, stem: str, ext: str) -> str:
    """The first of stem, stem-1, stem-2 … whose image and sidecar are both free: never overwrite."""
    n = 0
    while True:
        candidate = stem if n == 0 else f"{stem}-{n}"
        if not (out_dir / f"{candidate}.{ext}").exists() and not (out_dir / f"{candidate}.json").exists():
            return candidate
        n += 1


def atomic_write(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write `data` to `path` so that `path` is either absent or complete, never partial.

    The bytes go to a temporary file in the same folder, are flushed to disk, then linked (no
    overwrite) or renamed (overwrite) into place: a crash or a full disk leaves no partial file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails with FileExistsError instead of replacing
            except FileExistsError:
                raise OutputError(f"{path} already exists; it was left untouched.") from None
            except OSError:
                # Filesystems without hard links (some network and FAT mounts).
                if path.exists():
                    raise OutputError(f"{path} already exists; it was left untouched.") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _a1111_quote(value: str) -> str:
    # AUTOMATIC1111's generation_parameters_copypaste.quote(): JSON-quote only when needed.
    if "," not in value and "\n" not in value and ":" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)


def a1111_parameters(meta: dict) -> str:
    """The `parameters` text that AUTOMATIC1111, ComfyUI and other "PNG info" readers show."""
    lines = [meta["prompt"]]
    if meta.get("negative_prompt"):
        lines.append(f"Negative prompt: {meta['negative_prompt']}")
    fields = {
        "Steps": meta["steps"],
        "Sampler": meta["scheduler"]["a1111"] or meta["scheduler"]["class"],
        "CFG scale": meta["guidance"],
        "Seed": meta["seed"],
        "Size": f"{meta['width']}x{meta['height']}",
        "Model": meta["model"]["id"].rstrip("/").split("/")[-1],
    }
    if meta["model"].get("commit"):
        fields["Model hash"] = meta["model"]["commit"][:10]
    if meta.get("lora"):
        fields["Lora"] = f"{Path(meta['lora']['file'] or meta['lora']['id']).stem}:{meta['lora']['scale']}"
    if meta.get("vae") and meta["vae"].get("id"):
        fields["VAE"] = meta["vae"]["id"].rstrip("/").split("/")[-1]
    fields["Version"] = f"spo-cli {meta['versions']['spo-cli']}"
    lines.append(", ".join(f"{k}: {_a1111_quote(str(v))}" for k, v in fields.items()))
    return "\n".join(lines)


def encode_image(image, fmt: str, meta: dict) -> bytes:
    """Encode a PIL image with its metadata embedded the way each format's readers expect."""
    from PIL import Image, PngImagePlugin

    params = a1111_parameters(meta)
    buf = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", params)
        info.add_itxt(PNG_JSON_KEY, json.dumps(meta, ensure_ascii=False))
        image.save(buf, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        # EXIF UserComment: an 8-byte charset prefix, then the text (UCS-2 big-endian, as piexif
        # and AUTOMATIC1111 write it).
        exif.get_ifd(EXIF_IFD)[EXIF_USER_COMMENT] = b"UNICODE\0" + params.encode("utf-16-be")
        kwargs = {"quality": 95} if fmt == "jpg" else {"quality": 95, "method": 4}
        image.save(buf, format=FORMATS[fmt], exif=exif.tobytes(), **kwargs)
    return buf.getvalue()


def read_user_comment(path: Path) -> str | None:
    from PIL import Image

    with Image.open(path) as im:
        raw = im.getexif().get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    prefix, body = raw[:8], raw[8:]
    return body.decode("utf-16-be") if prefix.startswith(b"UNICODE") else body.decode("utf-8", "replace")


def write_result(out_dir: Path, stem: str, fmt: str, image, meta: dict, *, overwrite: bool = False) -> dict:
    """Write `stem.<fmt>` then `stem.json`; the sidecar's presence marks the pair complete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    image_path = inside(out_dir, f"{stem}.{fmt}")
    sidecar_path = inside(out_dir, f"{stem}.json")
    meta = dict(meta, file=image_path.name)
    if overwrite:
        # The sidecar marks a pair complete: drop it first, so a failure below never leaves an old
        # sidecar describing a new (or missing) image.
        sidecar_path.unlink(missing_ok=True)
    atomic_write(image_path, encode_image(image, fmt, meta), overwrite=overwrite)
    try:
        atomic_write(sidecar_path, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode(), overwrite=overwrite)
    except BaseException:
        # An image without its sidecar would be unreproducible and would look finished to a resume.
        image_path.unlink(missing_ok=True)
        raise
    return {"image": str(image_path), "sidecar": str(sidecar_path), "seed": meta["seed"], "prompt": meta["prompt"]}


def read_metadata(path: Path) -> dict:
    """Recorded settings from a sidecar, a PNG written by spo, or an image beside its sidecar."""
    if not path.exists():
        raise UsageError(f"{path} does not exist.")
    if path.suffix.lower() == ".json":
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsageError(f"{path} is not a valid spo-cli sidecar: {e}.") from None
    else:
        meta = None
        if path.suffix.lower() == ".png":
            from PIL import Image

            try:
                with Image.open(path) as im:
                    text = im.text.get(PNG_JSON_KEY)  # type: ignore[attr-defined]
            except Exception as e:  # PIL raises many kinds for a broken file
                raise UsageError(f"{path} could not be read as an image: {e}.") from None
            try:
                meta = json.loads(text) if text else None
            except json.JSONDecodeError as e:
                raise UsageError(f"{path} carries damaged spo-cli metadata: {e}.") from None
        if meta is None and path.with_suffix(".json").exists():
            return read_metadata(path.with_suffix(".json"))
        if meta is None:
            raise UsageError(
                f"{path} carries no spo-cli metadata and has no sidecar next to it.",
                "Replay needs the .json sidecar, or a PNG written by spo.",
            )
    if not isinstance(meta, dict) or not str(meta.get("schema", "")).startswith("spo-cli/"):
        raise UsageError(f"{path} is not spo-cli metadata (no 'schema': 'spo-cli/…' field).")
    return meta


def now() -> datetime:
    return datetime.now().astimezone()


def build_metadata(request, model: dict, run: dict, scheduler: dict, *, width: int, height: int,
                   batch_size: int, elapsed_s: float, created: datetime, spec_hash: str | None = None,
                   extra: dict | None = None) -> dict:
    """The sidecar: everything needed to make the same image again, and nothing secret.

    `request` is the ImageRequest, `model` what `ResolvedModel.describe()` returns, `run` the
    engine's facts (device, dtype, versions), `scheduler` the engine's scheduler facts.
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
    if spec_hash:
        meta["spec_hash"] = spec_hash
    meta.update(extra or {})
    return meta


# ---------------------------------------------------------------------------------------------
# Batches: resume and manifest

MANIFEST = "manifest.jsonl"
FAILURES_GLOB = ".spo-failures-*.json"


def recorded_hash(out_dir: Path, stem: str, fmt: str) -> str | None:
    """The spec hash of a finished image (image and sidecar both present), else None."""
    image, sidecar = out_dir / f"{stem}.{fmt}", out_dir / f"{stem}.json"
    if not (image.is_file() and sidecar.is_file()):
        return None
    try:
        return json.loads(sidecar.read_text(encoding="utf-8")).get("spec_hash")
    except (OSError, ValueError):
        return None  # damaged: make it again


def remove_leftovers(out_dir: Path) -> int:
    """Delete the temporary files and failure records a killed run left behind (call before any
    process of this run starts writing)."""
    n = 0
    for pattern in (".*.part", FAILURES_GLOB):
        for p in out_dir.glob(pattern):
            p.unlink(missing_ok=True)
            n += 1
    return n


def write_failures(out_dir: Path, rank: int, failures: list[dict]) -> None:
    atomic_write(out_dir / f".spo-failures-{rank}.json", json.dumps(failures).encode(), overwrite=True)


def collect_failures(out_dir: Path) -> dict[str, str]:
    """Failures recorded by every process of this run, by file stem; the records are then removed."""
    failures = {}
    for p in sorted(out_dir.glob(FAILURES_GLOB)):
        try:
            failures.update({f["stem"]: f["error"] for f in json.loads(p.read_text())})
        except (OSError, ValueError, KeyError, TypeError):
            pass
        p.unlink(missing_ok=True)
    return failures


def write_manifest(out_dir: Path, rows: list[dict]) -> Path:
    path = out_dir / MANIFEST
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    atomic_write(path, data, overwrite=True)
    return path

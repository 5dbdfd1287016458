"""What `spo inspect` reads from an image, one probe per kind of record.

A probe is `probe(path: Path) -> dict`: `{"present": bool, "summary": str, ...}`, where `summary` is
one line for people and the rest is JSON data (`--json` prints it all). It is called only on a file
`image` has let through (a whole PNG, JPEG or WebP, a regular file), may read the file again in
its own way, and returns what it found; a record that is there but damaged is `present` with an
`error`, not an exception. The probes `spo inspect` runs are listed in `cli/inspect.py`.
"""

from __future__ import annotations

from pathlib import Path

from spo_cli.errors import UsageError
from spo_cli.outputs import reader, xmp as xmp_packet

HINT = "spo inspect takes image files: PNG, JPEG or WebP."
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP"}  # sniff's names, as people write them
# IPTC terms by what they tell a reader (cv.iptc.org/newscodes/digitalsourcetype).
_MEANING = {
    "trainedAlgorithmicMedia": "made by a model",
    "compositeWithTrainedAlgorithmicMedia": "made with a model from other media",
    "algorithmicMedia": "made by an algorithm, without training data",
    "compositeSynthetic": "a composite with synthetic elements",
    "digitalCapture": "a camera's capture",
}


def image(path: Path) -> tuple[str, bytes | None]:
    """(format, raw XMP packet or None) of an image file, or the UsageError that says why `spo
    inspect` cannot read it: not a regular file, not a PNG/JPEG/WebP, damaged or cut short.
    Headers only: a file of any size costs its metadata."""
    with reader.Source(path, HINT) as src:
        if src.pipe:
            # Every probe opens the file again (the C2PA SDK, a watermark decoder): a pipe reads once.
            raise UsageError(f"{path} is a pipe; spo inspect reads each file more than once.", "Give the file itself.")
        kind = reader.sniff(src.head(12))
        if kind is None:
            raise UsageError(f"{path} is not an image: neither a PNG, a JPEG nor a WebP by its content.", HINT)
        try:
            return kind, reader.image_xmp(src, kind)
        except reader.Damaged as e:
            raise UsageError(f"{path} is a damaged {FORMATS[kind]} file ({e}{reader.misnamed(path, kind)}).",
                             "A file still being written or cut off in a copy: copy it again.") from None


def recipe(path: Path) -> dict:
    """What spo (or A1111) recorded about the settings: from the PNG chunk, the sidecar beside the
    image, or the A1111 `parameters` text."""
    from spo_cli.outputs import metadata

    try:
        meta, params = metadata.load(path)
    except metadata.NoMetadata:
        return {"present": False, "summary": "none (no spo-cli metadata, no sidecar, no A1111 parameters)"}
    except UsageError as e:  # damaged, foreign, a grid page: say it, it is what the file holds
        return {"present": False, "error": e.paragraph(), "summary": e.paragraph()}
    if meta is None:
        return {"present": True, "source": "a1111", "parameters": params,
                "summary": "A1111 parameters: " + " ".join(params.split())}
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    found = {"present": True, "source": "spo-cli", "schema": meta.get("schema"), "prompt": meta.get("prompt"),
             "seed": meta.get("seed"), "steps": meta.get("steps"), "model": model.get("id"),
             "commit": model.get("commit"), "spec_hash": meta.get("spec_hash"),
             "provenance": meta.get("provenance"), "created": meta.get("created")}
    words = [f'"{meta.get("prompt")}"', f"seed {meta.get('seed')}", f"{meta.get('steps')} steps", str(model.get("id"))]
    return {**found, "summary": "spo-cli: " + ", ".join(words) + " (replay it with spo replay)"}


def xmp(path: Path) -> dict:
    """The XMP packet's digital source type (IPTC), creator tool and AI properties."""
    _, raw = image(path)
    if raw is None:
        return {"present": False, "summary": "none (no XMP packet: nothing in the file says how it was made)"}
    try:
        found = xmp_packet.parse(raw)
    except xmp_packet.XMPError as e:
        return {"present": True, "error": str(e), "summary": f"unreadable: {e}"}
    source = found.get("digital_source_type")
    term = source.rsplit("/", 1)[-1] if source else None
    if term is None:
        said = "no digital source type"
    else:
        said = term + (f" ({_MEANING[term]})" if term in _MEANING else "")
    tool = found.get("creator_tool")
    return {"present": True, **found, "summary": said + (f", written by {tool}" if tool else "")}

"""The XMP packet every image spo writes carries, saying that a model made it, and reading it back.

EU AI Act Art. 50(2) asks providers of image generators to mark each output as artificially
generated, machine-readably. Platforms and tools (exiftool, Adobe's apps, IPTC's GetPMD; not the
C2PA SDK, which reads only its manifest) read that mark from XMP's `Iptc4xmpExt:DigitalSourceType`,
with a term from IPTC's digital-source-type vocabulary. Beside it: the tool (`xmp:CreatorTool`), when, and the IPTC 2025.1
AI properties for the model and the prompt. The full recipe stays in the sidecar and the PNG chunk.

Pure: no file, no PIL. Every value is written as XML text, escaped, with the characters XML 1.0
cannot hold replaced; a prompt is hostile text and must never end an element or the packet.
Reading takes a packet from any tool, bounded, and refuses DTDs (entity expansion).
"""

from __future__ import annotations

import re
from xml.etree import ElementTree

from spo_cli import __version__

IPTC_CODES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED = IPTC_CODES + "trainedAlgorithmicMedia"  # made by a model, from a prompt
COMPOSITE = IPTC_CODES + "compositeWithTrainedAlgorithmicMedia"  # a model's output combined with other media
PNG_KEY = "XML:com.adobe.xmp"  # the iTXt keyword XMP's spec (part 3) gives PNG
JPEG_NAMESPACE = b"http://ns.adobe.com/xap/1.0/\0"  # how a JPEG APP1 segment says it holds XMP
WEBP_CHUNK = b"XMP "
# A JPEG APP1 segment holds 65,533 bytes after its length, the namespace (29) included; the packet
# also goes into PNG and WebP, and one bound for all three keeps them the same.
PACKET_MAX_BYTES = 65_533 - len(JPEG_NAMESPACE)
READ_MAX_BYTES = 1 << 20  # a packet read from a file: more than any tool writes for one image

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
}
# What `parse` reports, by the property it comes from.
FIELDS = {
    "digital_source_type": ("Iptc4xmpExt", "DigitalSourceType"),
    "creator_tool": ("xmp", "CreatorTool"),
    "create_date": ("xmp", "CreateDate"),
    "ai_system": ("Iptc4xmpExt", "AISystemUsed"),
    "ai_system_version": ("Iptc4xmpExt", "AISystemVersionUsed"),
    "prompt": ("Iptc4xmpExt", "AIPromptInformation"),
}
# XML 1.0's Char production leaves out most C0 controls, lone surrogates and U+FFFE/U+FFFF.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"}
_DTD = re.compile(r"<!(DOCTYPE|ENTITY)", re.I)


class XMPError(ValueError):
    """A packet that is not XMP spo can read: too large, not well-formed XML, or with a DTD."""


def creator_tool() -> str:
    return f"spo-cli {__version__}"


def source_type(meta: dict) -> str:
    """IPTC's term for an image described by `meta`: made from another image (image to image
    records its input as `init_image`) is a composite; from a prompt alone, trained algorithmic media."""
    return COMPOSITE if meta.get("init_image") else TRAINED


def record(meta: dict, on: bool) -> dict:
    """What the sidecar says was written (`"provenance"`), decided once: encode_image writes what it says."""
    return {"xmp": True, "digital_source_type": source_type(meta)} if on else {"xmp": False}


def escape(value: str) -> str:
    """`value` as XML text or attribute content: inert whatever it holds."""
    value = _NOT_XML.sub("\ufffd", value)
    return "".join(_ESCAPES.get(c, c) for c in value)


def packet(source: str, *, created: str | None = None, ai_system: str | None = None,
           ai_system_version: str | None = None, prompt: str | None = None) -> bytes:
    """An XMP packet (UTF-8) with the digital source type, the creator tool and the given values.

    A prompt that would take it past PACKET_MAX_BYTES is left out (the sidecar and the image's
    other metadata hold it in full); nothing else is long enough to."""
    values = [("Iptc4xmpExt", "DigitalSourceType", source), ("xmp", "CreatorTool", creator_tool())]
    values += [(ns, name, v) for ns, name, v in (
        ("xmp", "CreateDate", created), ("Iptc4xmpExt", "AISystemUsed", ai_system),
        ("Iptc4xmpExt", "AISystemVersionUsed", ai_system_version)) if isinstance(v, str) and v]
    if isinstance(prompt, str) and prompt:
        data = _serialise(values + [("Iptc4xmpExt", "AIPromptInformation", prompt)])
        if len(data) <= PACKET_MAX_BYTES:
            return data
    return _serialise(values)


def _serialise(values: list[tuple[str, str, str]]) -> bytes:
    props = "".join(f"\n   <{ns}:{name}>{escape(v)}</{ns}:{name}>" for ns, name, v in values)
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NS["x"]}">\n'
        f' <rdf:RDF xmlns:rdf="{NS["rdf"]}">\n'
        f'  <rdf:Description rdf:about="" xmlns:xmp="{NS["xmp"]}" xmlns:Iptc4xmpExt="{NS["Iptc4xmpExt"]}">'
        f"{props}\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode("utf-8")


def for_image(meta: dict) -> bytes | None:
    """The packet for an image spo made, or None when its sidecar says none is written."""
    prov = meta.get("provenance")
    if not (isinstance(prov, dict) and prov.get("xmp")):
        return None
    model = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    return packet(prov.get("digital_source_type") or source_type(meta), created=meta.get("created"),
                  ai_system=model_name(model), ai_system_version=model.get("commit"), prompt=meta.get("prompt"))


def model_name(model: dict) -> str | None:
    """The model as XMP names it: a Hub repo id as it is, a local folder or file by its name only
    (its path says where a user keeps files, which an image shared with others must not)."""
    ident = model.get("id")
    if not isinstance(ident, str) or not ident:
        return None
    if model.get("source") == "hub" and not model.get("sha256"):
        return ident
    name = ident.rstrip("/").replace("\\", "/").split("/")[-1]
    return name.rsplit(".", 1)[0] if model.get("sha256") and "." in name else name


def parse(data: bytes | str) -> dict:
    """The values of FIELDS that a packet holds, by FIELDS' names; XMPError when it cannot be read.

    Either way XMP writes a simple property is read: as an element, as an attribute of
    rdf:Description, or as an rdf:resource."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if len(data) > READ_MAX_BYTES:
        raise XMPError(f"its XMP packet is larger than {READ_MAX_BYTES:,} bytes")
    # Decoded here, so the DTD check sees the text whatever its encoding (XMP allows UTF-8 and UTF-16).
    try:
        text = data.decode("utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        raise XMPError("its XMP packet is neither UTF-8 nor UTF-16 text") from None
    if _DTD.search(text):
        raise XMPError("its XMP packet declares a DTD or entities, which XMP does not allow")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as e:
        raise XMPError(f"its XMP packet is not well-formed XML ({e})") from None
    wanted = {f"{{{NS[ns]}}}{name}": key for key, (ns, name) in FIELDS.items()}
    resource = f"{{{NS['rdf']}}}resource"
    found: dict[str, str] = {}
    for el in root.iter():
        for attr, value in el.attrib.items():
            if attr in wanted:
                found.setdefault(wanted[attr], value.strip())
        if el.tag in wanted:
            value = el.get(resource) if el.get(resource) is not None else "".join(el.itertext())
            found.setdefault(wanted[el.tag], value.strip())
    return found

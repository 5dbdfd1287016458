"""XMP provenance: the DigitalSourceType mark in every image, --no-provenance, and `spo inspect`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli import __version__
from spo_cli.cli import app
from spo_cli.outputs import files, metadata, reader, xmp
from spo_cli.request import ImageRequest
from tests.conftest import HANG

FORMATS = ["png", "jpg", "webp"]
KIND = {"png": "png", "jpg": "jpeg", "webp": "webp"}
HOSTILE = ('a <b>fox</b> & "cat" \'n\' ]]> </Iptc4xmpExt:AIPromptInformation> <?xpacket end="w"?> <!-- x '
           "[bold]not markup[/]")
TINY = ["--width", "16", "--height", "16", "--steps", "1", "--device", "cpu"]
INIT_IMAGE = {"path": "/in/fox.png", "sha256": "0" * 64, "width": 16, "height": 16, "bytes": 1234}


def invoke(*args: str, **kw):
    return CliRunner().invoke(app, list(args), **kw)


def build(prompt: str = "a fox", *, provenance: bool = True, extra: dict | None = None) -> dict:
    """A sidecar as render builds it, for a model that was never loaded."""
    model = {"model": {"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep", "source": "hub", "commit": "c0ffee"},
             "lora": None}
    run = {"dtype": "float32", "device": "cpu", "versions": {"spo-cli": __version__}}
    scheduler = {"name": "euler", "class": "EulerDiscreteScheduler", "a1111": "Euler", "config": {}}
    return metadata.build(ImageRequest(prompt, 7), model, run, scheduler, width=16, height=16, batch_size=1,
                          elapsed_s=0.1, created=datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc), extra=extra,
                          provenance=provenance)


def write(tmp_path: Path, fmt: str, meta: dict) -> Path:
    written = files.write_pair(tmp_path, "img", fmt, Image.new("RGB", (16, 16), (200, 90, 20)), meta)
    return Path(written["image"])


def packet_of(path: Path) -> bytes | None:
    with reader.Source(path) as src:
        return reader.image_xmp(src, reader.sniff(src.head(12)))


# -- writing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_carries_the_source_type_where_its_readers_look(tmp_path, fmt):
    path = write(tmp_path, fmt, build())
    found = xmp.parse(packet_of(path))
    assert found["digital_source_type"] == xmp.TRAINED
    assert found["creator_tool"] == f"spo-cli {__version__}"
    assert found["ai_system"] == "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep" and found["ai_system_version"] == "c0ffee"
    assert found["prompt"] == "a fox" and found["create_date"] == "2026-12-02T12:00:00+00:00"
    # Where PIL (and so most Python tools) finds it: the iTXt keyword, the APP1 segment, the XMP chunk.
    with Image.open(path) as im:
        raw = im.text[xmp.PNG_KEY].encode() if fmt == "png" else im.info["xmp"]
    assert xmp.parse(raw) == found
    if fmt == "webp":  # VP8X's XMP flag: readers that trust the flags look for the chunk only when it is set
        data = path.read_bytes()
        assert data[12:16] == b"VP8X" and data[20] & 0x04
    if fmt == "png":  # uncompressed iTXt: XMP's spec asks for it, and byte-scanning readers need it
        data = path.read_bytes()
        assert b"iTXtXML:com.adobe.xmp\0\0\0" in data
    # The sidecar says what was written.
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["provenance"] == {"xmp": True, "digital_source_type": xmp.TRAINED}


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_image_made_from_an_image_is_a_composite(tmp_path, fmt):
    meta = build(extra={"init_image": INIT_IMAGE})
    assert meta["provenance"] == {"xmp": True, "digital_source_type": xmp.COMPOSITE}
    assert xmp.parse(packet_of(write(tmp_path, fmt, meta)))["digital_source_type"] == xmp.COMPOSITE


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_provenance_writes_no_xmp_and_says_so(tmp_path, fmt):
    meta = build(provenance=False)
    assert meta["provenance"] == {"xmp": False}
    path = write(tmp_path, fmt, meta)
    assert packet_of(path) is None
    with Image.open(path) as im:
        assert "xmp" not in im.info and xmp.PNG_KEY not in getattr(im, "text", {})
    assert b"ns.adobe.com/xap" not in path.read_bytes()
    # the rest of the metadata is still there
    assert metadata.load(path)[0]["prompt"] == "a fox"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_hostile_prompt_stays_text_in_the_xml(tmp_path, fmt):
    prompt = HOSTILE + "\x01\x1b[2J"  # controls XML cannot hold, even escaped
    raw = packet_of(write(tmp_path, fmt, build(prompt)))
    assert raw.count(b"<?xpacket end=") == 1 and b"]]>" not in raw and b"<b>" not in raw
    root = ElementTree.fromstring(raw)
    [desc] = root.iter(f"{{{xmp.NS['rdf']}}}Description")
    assert len(desc) == 6  # no element of the prompt's became one of the packet's
    assert xmp.parse(raw)["prompt"] == HOSTILE + "\ufffd\ufffd[2J"


def test_a_prompt_too_long_for_a_jpeg_segment_is_left_out_not_the_mark(tmp_path):
    meta = build('"' * 12_000)  # longer than spo's prompts may be: each quote is six bytes escaped
    path = write(tmp_path, "jpg", meta)
    found = xmp.parse(packet_of(path))
    assert found["digital_source_type"] == xmp.TRAINED and "prompt" not in found
    assert len(xmp.for_image(meta)) <= xmp.PACKET_MAX_BYTES
    assert len(xmp.for_image(build('"' * 10_000))) <= xmp.PACKET_MAX_BYTES  # spo's longest prompt keeps it


def test_a_local_model_is_named_without_its_path():
    assert xmp.model_name({"id": "/home/ana/models/my-sdxl/", "source": "local"}) == "my-sdxl"
    assert xmp.model_name({"id": "/home/ana/ckpt/juggernaut.safetensors", "sha256": "ab"}) == "juggernaut"
    assert xmp.model_name({"id": "org/repo", "source": "hub"}) == "org/repo"


def test_grid_pages_are_marked_as_composites(tmp_path):
    image = Image.new("RGB", (16, 16))
    raw = metadata.encode_grid(image, "x-grid.json", ["cells/a/x.png"])
    (tmp_path / "g.png").write_bytes(raw)
    assert xmp.parse(packet_of(tmp_path / "g.png"))["digital_source_type"] == xmp.COMPOSITE
    (tmp_path / "n.png").write_bytes(metadata.encode_grid(image, "x-grid.json", [], provenance=False))
    assert packet_of(tmp_path / "n.png") is None


# -- reading XMP from any tool ----------------------------------------------------------------------


def test_parse_reads_attributes_and_resources_as_other_tools_write_them():
    rdf, ext, x = xmp.NS["rdf"], xmp.NS["Iptc4xmpExt"], xmp.NS["xmp"]
    short = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="{rdf}"><rdf:Description rdf:about="" '
             f'xmlns:Iptc4xmpExt="{ext}" xmlns:xmp="{x}" Iptc4xmpExt:DigitalSourceType="{xmp.COMPOSITE}" '
             'xmp:CreatorTool="Photoshop"/></rdf:RDF></x:xmpmeta>')
    assert xmp.parse(short) == {"digital_source_type": xmp.COMPOSITE, "creator_tool": "Photoshop"}
    resource = (f'<rdf:RDF xmlns:rdf="{rdf}"><rdf:Description xmlns:Iptc4xmpExt="{ext}"><Iptc4xmpExt:DigitalSourceType '
                f'rdf:resource="{xmp.TRAINED}"/></rdf:Description></rdf:RDF>')
    assert xmp.parse(resource) == {"digital_source_type": xmp.TRAINED}
    assert xmp.parse(resource.encode("utf-16")) == {"digital_source_type": xmp.TRAINED}


@pytest.mark.parametrize("packet, words", [
    (b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]><x>&b;</x>', "DTD"),
    ('\ufeff<!DOCTYPE x [<!ENTITY a "a">]><x>&a;</x>'.encode("utf-16"), "DTD"),  # not hidden by another encoding
    (b"<x:xmpmeta><unclosed>", "not well-formed"),
    (b"<x>\xff\xfe\xfa</x>", "neither UTF-8"),
    (b"<x>" + b" " * (xmp.READ_MAX_BYTES + 1) + b"</x>", "larger than"),
])
def test_parse_refuses_what_is_not_xmp(packet, words):
    with pytest.raises(xmp.XMPError, match=words):
        xmp.parse(packet)


# -- spo inspect -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_inspect_json_reports_the_recipe_and_the_mark(tmp_path, fmt):
    path = write(tmp_path, fmt, build(HOSTILE))
    r = invoke("inspect", str(path), "--json")
    assert r.exit_code == 0, r.output
    [report] = json.loads(r.stdout)
    assert report["file"] == str(path) and report["format"] == KIND[fmt]
    assert report["recipe"]["present"] and report["recipe"]["prompt"] == HOSTILE
    assert report["recipe"]["provenance"] == {"xmp": True, "digital_source_type": xmp.TRAINED}
    assert report["xmp"]["present"] and report["xmp"]["digital_source_type"] == xmp.TRAINED
    assert report["xmp"]["creator_tool"] == f"spo-cli {__version__}"
    r = invoke("inspect", str(path), env={"COLUMNS": "400"})  # people see the prompt as it was typed
    assert r.exit_code == 0, r.output
    assert f'"{HOSTILE}"' in r.stdout and f"A1111 parameters: {HOSTILE}" not in r.stdout


def test_inspect_human_output_and_a_file_that_carries_nothing(tmp_path):
    marked = write(tmp_path, "png", build())
    plain = tmp_path / "photo.png"
    Image.new("RGB", (8, 8)).save(plain)
    r = invoke("inspect", str(marked), str(plain), env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    second = next(i for i, line in enumerate(lines) if line.startswith(str(plain)))
    first, rest = lines[:second], lines[second:]
    assert first[0].startswith(str(marked)) and "PNG" in first[0]
    assert "trainedAlgorithmicMedia (made by a model), written by spo-cli" in first[2]
    assert [line.split()[:2] for line in rest[1:3]] == [["recipe", "none"], ["xmp", "none"]]
    assert [line.split()[0] for line in rest[1:]] == ["recipe", "xmp", "c2pa", "watermark"]
    r = invoke("inspect", str(plain), "--json")
    [report] = json.loads(r.stdout)
    assert report["recipe"]["present"] is False and report["xmp"]["present"] is False


def test_inspect_reports_a_damaged_packet_without_failing(tmp_path):
    path = tmp_path / "odd.jpg"
    Image.new("RGB", (8, 8)).save(path, xmp=b"<x:xmpmeta><broken>")
    r = invoke("inspect", str(path), "--json")
    assert r.exit_code == 0, r.output
    section = json.loads(r.stdout)[0]["xmp"]
    assert section["present"] and "not well-formed" in section["error"]


def _hostile(tmp_path: Path, case: str) -> tuple[Path, Path]:
    good = write(tmp_path, {"cut-jpg": "jpg", "cut-webp": "webp", "long-webp": "webp"}.get(case, "png"), build())
    if case == "text":
        path = tmp_path / "notes.png"
        path.write_text("not an image")
    elif case.startswith("cut"):
        path = tmp_path / f"cut{good.suffix}"
        path.write_bytes(good.read_bytes()[: len(good.read_bytes()) - 5])
    elif case == "long-webp":  # bytes after the RIFF: not what the header describes
        path = tmp_path / "long.webp"
        path.write_bytes(good.read_bytes() + b"\0" * 8)
    elif case == "folder":
        path = tmp_path / "folder.png"
        path.mkdir()
    elif case == "fifo":
        path = tmp_path / "pipe.png"
        os.mkfifo(path)
    else:
        path = tmp_path / "missing.png"
    return good, path


@pytest.mark.parametrize("case, words", [
    ("text", "is not an image"), ("cut-png", "damaged PNG"), ("cut-jpg", "damaged JPEG"),
    ("cut-webp", "damaged WebP"), ("long-webp", "file holds"), ("folder", "is a folder"), ("fifo", "is a pipe"), ("missing", "does not exist"),
])
def test_inspect_refuses_a_hostile_file_with_one_paragraph(tmp_path, case, words):
    good, bad = _hostile(tmp_path, case)
    r = invoke("inspect", str(good), str(bad))  # a good file first: still nothing is reported
    assert r.exit_code == 2
    assert r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("error:") == 1 and words in " ".join(r.stderr.split())


# -- third-party readers ----------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess per format
@pytest.mark.skipif(shutil.which("exiftool") is None,
                    reason="exiftool is not installed (Debian: apt-get install libimage-exiftool-perl)")
@pytest.mark.parametrize("fmt", FORMATS)
def test_exiftool_reads_the_source_type_and_the_prompt_as_written(tmp_path, fmt):
    path = write(tmp_path, fmt, build(HOSTILE, extra={"init_image": INIT_IMAGE}))
    proc = subprocess.run(["exiftool", "-j", "-XMP-iptcExt:DigitalSourceType", "-XMP-iptcExt:AIPromptInformation",
                           "-XMP-xmp:CreatorTool", str(path)], capture_output=True, text=True, timeout=HANG)
    assert proc.returncode == 0, proc.stderr
    [tags] = json.loads(proc.stdout)
    assert tags["DigitalSourceType"] == xmp.COMPOSITE
    assert tags["AIPromptInformation"] == HOSTILE and tags["CreatorTool"] == f"spo-cli {__version__}"


# -- end to end on the tiny pipeline ------------------------------------------------------------------


@pytest.mark.slow
def test_generate_marks_its_images_and_inspect_reads_them(hub_cache, tmp_path):
    out = tmp_path / "out"
    r = invoke("generate", "a red fox", "--seed", "3", *TINY, "--out", str(out), "--image-format", "webp",
               "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [w] = json.loads(r.stdout)
    r = invoke("inspect", w["image"], "--json")
    assert r.exit_code == 0, r.output
    [report] = json.loads(r.stdout)
    assert report["xmp"]["digital_source_type"] == xmp.TRAINED
    assert report["xmp"]["ai_system"] == "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep"
    assert report["recipe"]["seed"] == 3 and report["recipe"]["prompt"] == "a red fox"
    r = invoke("inspect", w["image"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "made by a model" in r.stdout and "a red fox" in r.stdout


@pytest.mark.slow
def test_no_provenance_reaches_the_writer_and_a_resume_does_not_redo_the_images(hub_cache, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na cat\n")
    out = tmp_path / "out"
    args = ["batch", str(prompts), *TINY, "--out", str(out), "--json", "--quiet"]
    r = invoke(*args, "--no-provenance")
    assert r.exit_code == 0, r.output
    made = sorted(out.glob("*.png"))
    assert len(made) == 2 and all(packet_of(p) is None for p in made)
    assert all(json.loads(p.with_suffix(".json").read_text())["provenance"] == {"xmp": False} for p in made)
    before = {p: p.stat().st_mtime_ns for p in made}
    r = invoke(*args)  # provenance back on: metadata only, so nothing is made again
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["already_done"] == 2
    assert {p: p.stat().st_mtime_ns for p in made} == before
    r = invoke("generate", "a fox", *TINY, "--out", str(tmp_path / "g"), "--no-provenance", "--json", "--quiet")
    [w] = json.loads(r.stdout)
    assert packet_of(Path(w["image"])) is None


@pytest.mark.slow
def test_serve_no_provenance_reaches_the_images_it_returns_and_writes(hub_cache, tmp_path):
    import threading

    from spo_cli.cli import serve
    from spo_cli.cli.ui import UI
    from spo_cli.serve.api import Job

    def made(server, save: bool):
        done = threading.Event()
        ticket = server.worker.submit(Job((ImageRequest("a fox", 1, steps=1, width=16, height=16),), "spo",
                                          save=save), done.set)
        assert done.wait(300), "the image was never made"
        [image] = ticket.images
        assert image.error is None, image.error
        return image

    for provenance in (True, False):
        server = serve.build(UI(quiet=True), ["spo"], out=str(tmp_path / str(provenance)), device="cpu",
                             provenance=provenance)
        server.sock.close()  # the worker alone: no HTTP
        server.worker.start()
        try:
            returned, saved = made(server, save=False), made(server, save=True)
        finally:
            server.worker.drain()
            server.worker.join(300)
        (tmp_path / "r.png").write_bytes(returned.data)
        for path in (tmp_path / "r.png", Path(saved.written["image"])):
            raw = packet_of(path)
            assert (raw is not None) == provenance
            if provenance:
                assert xmp.parse(raw)["digital_source_type"] == xmp.TRAINED
        assert returned.meta["provenance"]["xmp"] is provenance


@pytest.mark.slow
def test_compare_eval_and_replay_take_no_provenance_too(hub_cache, tmp_path):
    from spo_cli import tiny
    from spo_cli.scores import tiny as score_tiny

    for repo, src in score_tiny.save_repos(tmp_path / "score-repos").items():  # eval scores what it makes
        tiny.add_to_cache(Path(os.environ["HF_HUB_CACHE"]), repo, src)
    out = tmp_path / "cmp"
    r = invoke("compare", "a fox", "--base", "--spo", "--seeds", "1", *TINY, "--out", str(out), "--no-provenance",
               "--json", "--quiet")
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)
    cells = sorted((out / "cells").rglob("*.png"))
    assert len(cells) == 2 and all(packet_of(p) is None for p in [*cells, *map(Path, written["grid"])])

    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    r = invoke("eval", str(prompts), "--out", str(tmp_path / "eval"), "--seeds", "0", *TINY, "--metric", "aesthetic",
               "--no-provenance", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    made = sorted((tmp_path / "eval" / "cells").rglob("*.png"))
    assert len(made) == 2 and all(packet_of(p) is None for p in made)

    r = invoke("replay", str(cells[0]), "--out", str(tmp_path / "again"), "--no-provenance", "--json", "--quiet")
    assert r.exit_code == 0, r.output
    [w] = json.loads(r.stdout)
    assert packet_of(Path(w["image"])) is None
    r = invoke("replay", str(cells[0]), "--out", str(tmp_path / "again"), "--json", "--quiet")
    [w] = json.loads(r.stdout)
    assert xmp.parse(packet_of(Path(w["image"])))["digital_source_type"] == xmp.TRAINED


def _bare_probe(path: Path) -> dict:
    return {"present": path.suffix == ".png", "size": path.stat().st_size}


def test_a_probe_is_one_line_in_the_table(tmp_path, monkeypatch):
    # What prov-c2pa's and prov-wm's sections do: a function path -> dict, named in inspect.PROBES.
    from spo_cli.cli import inspect

    monkeypatch.setattr(inspect, "PROBES", (*inspect.PROBES, ("extra", f"{__name__}:_bare_probe")))
    path = write(tmp_path, "png", build())
    r = invoke("inspect", str(path), "--json")
    assert json.loads(r.stdout)[0]["extra"] == {"present": True, "size": path.stat().st_size}
    r = invoke("inspect", str(path), env={"COLUMNS": "200"})
    [line] = [x for x in r.stdout.splitlines() if x.startswith("  extra ")]
    assert line.split() == ["extra", "present"]  # no summary: present or absent

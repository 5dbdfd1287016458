"""`spo inspect` on what spo writes with every mark on: the four sections agree with what was asked,
and a byte changed afterwards is caught by the C2PA validation (the other marks cannot tell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spo_cli.cli import app

pytestmark = pytest.mark.slow  # a pipeline


def inspect(path: Path) -> dict:
    r = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert r.exit_code == 0, r.output
    [report] = json.loads(r.stdout)
    return report


def test_inspect_reads_every_mark_of_a_generated_image_and_catches_a_changed_byte(hub_cache, tmp_path):
    from spo_cli.outputs import xmp

    # 256²: the smallest image SDXL's watermark takes; one step is enough to make one.
    r = CliRunner().invoke(app, ["generate", "a fox", "--width", "256", "--height", "256", "--steps", "1",
                                 "--device", "cpu", "--seed", "5", "--sign", "--watermark", "--json", "--quiet",
                                 "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    [written] = json.loads(r.stdout)
    path = Path(written["image"])
    report = inspect(path)
    assert report["recipe"]["present"] and report["xmp"]["digital_source_type"] == xmp.TRAINED
    assert report["c2pa"]["state"] == "untrusted" and report["c2pa"]["recipe_matches"] is True
    assert report["watermark"]["present"] is True
    # One byte of the compressed pixels changed: the manifest's hash of the image no longer matches.
    data = bytearray(path.read_bytes())
    data[data.index(b"IDAT") + 12] ^= 0x01
    path.write_bytes(bytes(data))
    report = inspect(path)  # reported, not refused: the file is still a readable PNG
    assert report["c2pa"]["state"] == "invalid"
    assert any(x.startswith("assertion.dataHash.mismatch") for x in report["c2pa"]["reasons"])

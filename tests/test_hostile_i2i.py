"""Image to image driven as a hostile user drives it: option values and files that must be refused
before torch, in one paragraph, named as the user wrote them (an option, a sidecar's field, an A1111
text's key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.conftest import HANG

PROBE = """
import json, sys
from spo_cli.cli import app
for i, args in enumerate(json.loads(sys.argv[1])):
    print(f"CASE:{i}", file=sys.stderr, flush=True)
    code = 0
    try:
        app(args)
    except SystemExit as e:
        code = e.code
    heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
    print(f"EXIT:{code}:HEAVY:{','.join(heavy)}", file=sys.stderr, flush=True)
"""


def invoke(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture(scope="module")
def fox(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pics") / "fox.png"
    Image.new("RGB", (64, 48), (200, 80, 20)).save(path)
    return path


def _cases(fox: Path, out: Path) -> dict[str, list[str]]:
    def generate(*args):
        return ["generate", "a fox", "--steps", "4", *args, "--out", str(out)]

    return {
        # the input's size, not 1024², is the image's: too small for the watermark
        "watermark on a small input": generate("--image", str(fox), "--watermark"),
    }


SAYS = {
    "watermark on a small input": "error: 64×48 is too small for --watermark",
}


@pytest.fixture(scope="module")
def probed(fox, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "out"
    cases = _cases(fox, out)
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(cases.values()))], capture_output=True,
                          text=True, timeout=HANG, input="", env={**os.environ, "COLUMNS": "400"})
    parts = proc.stderr.split("CASE:")[1:]
    assert len(parts) == len(cases), proc.stderr[-2000:]
    return out, {name: part.split("\n", 1)[1] for name, part in zip(cases, parts)}


@pytest.mark.slow  # a subprocess
@pytest.mark.parametrize("name", list(SAYS))
def test_refused_with_exit_2_in_one_paragraph_before_torch(probed, name):
    out, stderrs = probed
    *said, status = stderrs[name].rstrip("\n").split("\n")
    assert status == "EXIT:2:HEAVY:", (status, said)
    assert len(said) == 1 and said[0].startswith(SAYS[name]), said
    assert not out.exists()

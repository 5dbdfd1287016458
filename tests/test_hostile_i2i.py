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


def _sidecar(tmp_path: Path, **fields) -> Path:
    from spo_cli.outputs import metadata

    meta = {"schema": metadata.SCHEMA, "prompt": "x", "seed": 1, "steps": 2, "guidance": 5.0, "width": 64,
            "height": 64, "scheduler": {"name": "default"}, "model_request": {"model": "spo"}, "model": {},
            "dtype": "float32", **fields}
    path = tmp_path / "x.json"
    path.write_text(json.dumps(meta))
    return path


HIRES = {"scale": 1.5, "upscaler": "latent", "steps": None, "strength": 0.7}
INFOTEXT = "a fox\nSteps: 4, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64, "


@pytest.mark.parametrize("source, says", [
    ({"hires": {**HIRES, "steps": -3}}, "x.json: 'hires.steps' must be from 0"),
    ({"hires": {**HIRES, "scale": 100}}, "x.json: 'hires.scale' must be over 1"),
    ({"hires": {**HIRES, "upscaler": "R-ESRGAN 4x+"}}, "x.json: 'hires.upscaler' cannot be"),
    ({"hires": {**HIRES, "strength": 0}}, "x.json: 'hires.strength' must be over 0"),
    ({"init_image": {"path": "/etc/passwd", "sha256": "a" * 64}, "strength": 0.5},
     "x.json: 'init_image' '/etc/passwd' is not an image"),
    ("Denoising strength: 0.7, Hires upscale: 100", "--infotext: 'Hires upscale' must be over 1"),
    ("Denoising strength: 0.7, Hires upscale: 2, Hires steps: -5", "--infotext: 'Hires steps' must be from 0"),
    ("Denoising strength: 2, Hires upscale: 2", "--infotext: 'Denoising strength' must be over 0"),
])
def test_a_recorded_edit_value_is_named_as_its_file_names_it(tmp_path, source, says):
    args = (["--infotext", INFOTEXT + source] if isinstance(source, str) else [_sidecar(tmp_path, **source)])
    code, said = invoke("replay", *args, "--out", tmp_path / "out")
    assert code == 2 and says in said and "Traceback" not in said, said

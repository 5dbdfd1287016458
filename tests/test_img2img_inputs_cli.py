"""The real command line against hostile input files: each is refused with exit 2, in one
paragraph, before torch is imported and before the output folder is made; a mask of another size
is used, said once however many images are made.

One process runs every refused command line in turn (as tests/test_cli.py's start-up probe does)
and says after each which heavy modules are loaded: modules only accumulate, so a case that
imported torch is the first reported with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.conftest import probe_cli
from tests.test_inputs import png_bytes

pytestmark = pytest.mark.slow  # subprocesses and a pipeline: not in the fast tier



def _files(root: Path) -> dict[str, list[str]]:
    """Each hostile input as `spo` arguments (the prompt file cases as `spo batch`)."""
    fox = root / "fox.png"
    Image.new("RGB", (32, 32), (200, 80, 20)).save(fox)
    (root / "text.png").write_text("<html>404 Not Found</html>\n")
    whole = fox.read_bytes()
    (root / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "bomb.png").write_bytes(png_bytes(20000, 20000))
    (root / "folder.png").mkdir()
    os.mkfifo(root / "fifo.png")
    edits = root / "edits"
    edits.mkdir()
    (edits / "fox.png").symlink_to(fox)  # looks local, is not
    (edits / "edits.jsonl").write_text(json.dumps({"prompt": "a fox", "image": "fox.png"}) + "\n")
    out = ["--out", str(root / "out")]

    def generate(*args):
        return ["generate", "a fox", "--steps", "2", *args, *out]

    return {
        "not an image": generate("--image", str(root / "text.png")),
        "truncated": generate("--image", str(root / "cut.png")),
        "bomb": generate("--image", str(root / "bomb.png")),
        "mask a folder": generate("--image", str(fox), "--mask", str(root / "folder.png")),
        "fifo": generate("--image", str(root / "fifo.png")),
        "stdin a pipe": generate("--image", "/dev/stdin"),
        "link out of the folder": ["batch", str(edits / "edits.jsonl"), *out],
        "no step runs": generate("--image", str(fox), "--strength", "0.2"),
        "mask without image": generate("--mask", str(fox)),
        "hires with image": generate("--image", str(fox), "--hires", "1.5"),
    }


# What each refusal says, in its one paragraph.
SAYS = {
    "not an image": "--image '{root}/text.png' is not an image spo can read (it holds text).",
    "truncated": "--image '{root}/cut.png' could not be decoded",
    "bomb": "--image '{root}/bomb.png' declares 400,000,000 pixels; the limit is",
    "mask a folder": "--mask '{root}/folder.png' is a folder, not an image file.",
    "fifo": "--image '{root}/fifo.png' is a pipe (FIFO), not an image file.",
    "stdin a pipe": "--image '/dev/stdin' is a pipe (FIFO), not an image file.",
    "link out of the folder": "edits.jsonl:1: 'image' 'fox.png' leads out of the prompt file's folder",
    "no step runs": "--strength 0.2 with 2 --steps runs 0.40 denoising steps, which is none",
    "mask without image": "--mask has nothing to act on without --image.",
    "hires with image": "--hires cannot be used with an input image",
}
BATCH = {"link out of the folder"}  # spo batch: each bad line, then how many there were


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cases = _files(root)
    return root, probe_cli(cases)


@pytest.mark.parametrize("name", list(SAYS))
def test_hostile_inputs_exit_2_in_one_paragraph_before_torch(probed, name):
    root, stderrs = probed
    stderr = stderrs[name]
    *said, status = stderr.rstrip("\n").split("\n")
    assert status == "EXIT:2:HEAVY:", (status, said)
    # batch may list each bad line, then how many there were
    assert all(ln.startswith("error: ") for ln in said), said
    assert len(said) == 1 or (name in BATCH and len(said) == 2 and "bad line" in said[1]), said
    assert "Traceback" not in stderr
    assert SAYS[name].format(root=root) in said[0], said
    assert not (root / "out").exists()  # refused before the output folder was made


def test_a_mask_of_another_size_is_resized_said_once_for_eight_images(hub_cache, tmp_path):
    fox = tmp_path / "fox.png"
    Image.new("RGB", (16, 16), (200, 80, 20)).save(fox)
    mask = Image.new("L", (8, 8))
    mask.paste(255, (0, 0, 4, 8))
    mask.save(tmp_path / "mask.png")
    r = CliRunner().invoke(app, ["generate", "a fox", "--image", str(fox), "--mask", str(tmp_path / "mask.png"),
                                 "--steps", "2", "-n", "8", "--seed", "1", "--device", "cpu",
                                 "--out", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.stderr.split())
    assert said.count("The mask is 8×8 and the image 16×16: the mask is resized to the image.") == 1, r.stderr
    pngs = sorted((tmp_path / "out").glob("*.png"))
    assert len(pngs) == 8 and all(Image.open(p).size == (16, 16) for p in pngs)

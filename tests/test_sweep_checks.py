"""`spo compare --x/--y/--z` refused before torch: each bad sweep exits 2 with one paragraph, before
the output folder is made and before torch, diffusers or transformers are imported.

The messages are those of spo_cli.sweep.axes (unit-tested in test_sweep_axes.py); here the command
line (cli/compare.py) is held to calling them before anything loads.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import probe_cli


HOSTILE = "steps=" + "1-" * 49_997  # an axis as long as one may be: refused after linear work


def _cases(fox: Path, out: Path) -> dict[str, list[str]]:
    def compare(name, *args):  # each case its own output folder: none may be made
        return ["compare", "a red fox", *args, "--out", str(out / name)]

    return {
        "unknown axis": compare("a", "--x", "colour=red,blue"),
        "bad value": compare("b", "--x", "steps=20,0"),
        "bad range": compare("c", "--x", "steps=50-10 (-10)"),
        "bad decimal": compare("d", "--x", "guidance=3,nan"),
        "one setting on two axes": compare("e", "--x", "steps=1,2", "--y", "sampler=euler,ddim", "--z", "steps=3,4"),
        "axis and option": compare("f", "--x", "steps=1,2", "--steps", "5"),
        "seed axis and --seeds": compare("g", "--x", "seed=1,2", "--seeds", "1-3"),
        "model axis and --spo": compare("h", "--x", "model=base,spo", "--spo"),
        "y without x": compare("i", "--y", "steps=1,2"),
        "over 10,000 images": compare("j", "--x", "seed=0-999", "--y", "steps=1-11"),
        "prompt s/r not in the prompt": compare("k", "--x", "prompt-sr=arctic,fennec"),
        "strength without an image": compare("l", "--x", "strength=0.5,1"),
        "watermark on a small size": compare("m", "--x", "size=256x256,64x64", "--watermark"),
        "steps times strength": compare("n", "--image", str(fox), "--strength", "0.5", "--x", "steps=4,1"),
        "versus an axis not swept": compare("o", "--x", "steps=1,2", "--versus", "guidance"),
        "hostile axis": compare("p", "--x", HOSTILE),
        "duplicate value": compare("q", "--x", "scheduler=euler,Euler"),
        "bad model value": compare("r", "--x", "model=base,spo-lora:half"),
        # click would keep the last --x: refused for the slot, not for the (bad) axis the last one names
        "slot given twice": compare("s", "--x", "steps=1,2", "--x", "colour=red"),
        "grid page too large": compare("t", "--base", "--spo", "--x", "steps=1-200"),
        "score with nothing to pair": compare("u", "--spo", "--x", "steps=1", "--score", "--metric", "pickscore"),
    }


SAYS = {
    "unknown axis": "error: --x: 'colour' is not an axis spo can sweep.",
    "bad value": "error: --x steps value must be from 1 to 1,000, not 0.",
    "bad range": "error: --x steps: '50-10 (-10)' is 50,40,30,20 in A1111",
    "bad decimal": "error: --x guidance: 'nan' is not a number or a range.",
    "one setting on two axes": "error: --x and --z both sweep steps.",
    "axis and option": "error: --x steps sweeps what --steps sets",
    "seed axis and --seeds": "error: --x seed sweeps what --seeds sets",
    "model axis and --spo": "error: --x model sweeps what --spo sets",
    "y without x": "error: --y is given without --x.",
    "over 10,000 images": "error: This sweep renders ",
    "prompt s/r not in the prompt": "error: --x prompt-sr: 'arctic' is not in the prompt of",
    "strength without an image": "error: --x strength sets how much of an input image is re-drawn",
    "watermark on a small size": "error: In the cell size: 64x64 of",
    "steps times strength": "error: In the cell steps: 1 of",
    "versus an axis not swept": "error: --versus",
    "hostile axis": "error: --x steps: '1-1-1-",
    "duplicate value": "error: --x scheduler lists 'euler' and 'Euler', which are the same value.",
    "bad model value": "error: --x model: 'spo-lora:half' needs a number after 'spo-lora:'.",
    "slot given twice": "error: --x is given 2 times ('steps=1,2', 'colour=red'); each slot holds one axis.",
    "grid page too large": "error: A grid page of this sweep would be about 205,312×1,024 pixels",
    "score with nothing to pair": ("error: --score compares the values of an axis, and no axis of this sweep has two "
                                   "(steps: steps: 1; model: SPO-SDXL)."),
}


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-checks")
    fox = root / "fox.png"
    Image.new("RGB", (64, 64), (200, 80, 20)).save(fox)
    cases = _cases(fox, root / "out")
    return root, cases, probe_cli(cases)


@pytest.mark.slow  # one subprocess for every case
@pytest.mark.parametrize("name", list(SAYS))
def test_a_bad_sweep_is_refused_with_exit_2_in_one_paragraph_before_torch(probed, name):
    _, cases, stderrs = probed
    *said, status = stderrs[name].rstrip("\n").split("\n")
    assert status == "EXIT:2:HEAVY:", (status, said)
    assert len(said) == 1 and said[0].startswith(SAYS[name]), said
    assert "Traceback" not in stderrs[name] and len(said[0]) < 1200
    args = cases[name]
    assert not Path(args[args.index("--out") + 1]).exists()  # refused before the output folder was made


def test_every_case_is_checked():
    assert set(SAYS) == set(_cases(Path("fox.png"), Path("out")))

"""Re-make docs/sweep-grid-tiny-random.png, the README's picture of an X/Y sweep: steps across, guidance
down, SDXL base and SPO-SDXL inside each steps value, as `spo compare` draws it.

It runs the tiny random-weight models the tests use (built here, in a temporary Hugging Face cache,
offline), so every cell is noise: the picture shows the layout and the labels, not SPO's quality.

    PYTHONPATH=src python docs/make_sweep_figure.py [OUT.png]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(dest: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="spo-figure-"))
    try:
        os.environ.update(HF_HOME=str(root / "hf-home"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1",
                          HF_HUB_DISABLE_TELEMETRY="1", XDG_CACHE_HOME=str(root / "cache"))
        from spo_cli import tiny

        for repo, src in tiny.save_repos(root / "repos").items():
            tiny.add_to_cache(root / "hub", repo, src)
        from typer.testing import CliRunner

        from spo_cli.cli import app

        r = CliRunner().invoke(app, ["compare", "a fox in snow", "--base", "--spo", "--x", "steps=2,4",
                                     "--y", "guidance=3,7", "--seeds", "1", "--width", "96", "--height", "96",
                                     "--device", "cpu", "--out", str(root / "out"), "--json", "--quiet",
                                     "--no-provenance"])
        if r.exit_code != 0:
            sys.exit(r.output)
        [page] = json.loads(r.stdout)["grid"]
        shutil.copyfile(page, dest)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "sweep-grid-tiny-random.png")

"""Re-make docs/sweep-grid-tiny-random.png, the README's picture of an X/Y sweep: steps across, guidance
down, SDXL base and SPO-SDXL inside each steps value, as `spo compare` draws it.

It runs the tiny random-weight models the tests use (built here, in a temporary Hugging Face cache,
offline), so every cell is noise: the picture shows the layout and the labels, not SPO's quality.

    PYTHONPATH=src python docs/make_sweep_figure.py [OUT.png]
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from figures import tiny_offline_cache

HERE = Path(__file__).resolve().parent


def main(dest: Path) -> None:
    with tiny_offline_cache() as root:
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

if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "sweep-grid-tiny-random.png")

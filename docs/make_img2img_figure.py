"""Re-make docs/img2img-tiny-random.png, the README's picture of image to image: an input, then
img2img, inpainting and the hires fix made from it by `spo generate`, side by side.

It runs the tiny random-weight models the tests use (built here, in a temporary Hugging Face cache,
offline), so the outputs are noise: the picture shows the modes and the layout, not SPO's quality.

    PYTHONPATH=src python docs/make_img2img_figure.py [OUT.png]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from figures import tiny_offline_cache

HERE = Path(__file__).resolve().parent
SIZE = 64  # the tiny models' images; shown at CELL in the figure
CELL = (160, 160)
STEPS = "4"


def main(dest: Path) -> None:
    with tiny_offline_cache() as root:
        picture, mask = inputs(root)
        made = {
            "img2img, strength 0.5": ["--image", picture, "--strength", "0.5"],
            "inpaint (white = repaint)": ["--image", picture, "--mask", mask, "--strength", "1"],
            "hires fix 1.5x (Latent)": ["--hires", "1.5", "--width", str(SIZE), "--height", str(SIZE)],
        }
        images = [_open(picture)]
        for i, args in enumerate(made.values()):
            images.append(_open(generate(root / f"out{i}", args)))
        from spo_cli import grid

        page = grid.render([images], ["input", *made], [("tiny random model: noise", "seed 1, 4 steps")], CELL)
        page.save(dest, optimize=True)
    print(dest)


def inputs(root: Path) -> tuple[str, str]:
    """A simple scene (sky, sun, hills) and a mask over the sun."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    for y in range(SIZE):
        draw.line([(0, y), (SIZE, y)], fill=(70 + y, 120 + y, 230))
    draw.ellipse([38, 8, 56, 26], fill=(255, 210, 60))
    draw.polygon([(0, 48), (20, 36), (40, 50), (64, 40), (64, 64), (0, 64)], fill=(40, 130, 60))
    mask = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask).rectangle([34, 4, 60, 30], fill=255)
    img.save(root / "input.png")
    mask.save(root / "mask.png")
    return str(root / "input.png"), str(root / "mask.png")


def generate(out: Path, args: list[str]) -> str:
    from typer.testing import CliRunner

    from spo_cli.cli import app

    r = CliRunner().invoke(app, ["generate", "a lighthouse on a hill", "--seed", "1", "--steps", STEPS,
                                 "--device", "cpu", "--out", str(out), "--json", "--quiet", *args])
    if r.exit_code != 0:
        sys.exit(r.output)
    return json.loads(r.stdout)[0]["image"]


def _open(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "img2img-tiny-random.png")

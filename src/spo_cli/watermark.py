"""SDXL's invisible watermark (`--watermark`): whether it can be used here, and finding it in a file.

The mark itself is diffusers' `StableDiffusionXLWatermarker` (the engine applies it); this module
reads it back for `spo inspect` with invisible-watermark's DWT-DCT decoder, on the file's pixels,
without torch: the probe of one file should not cost the seconds a torch import takes.

What it proves, and what not (README, "Provenance"): the 48 bits are public and the same for every
SDXL image that carries them, so a match says "made by an SDXL pipeline that marks" and nothing
about who made it; a crop, a resize or strong compression erases them, and anyone can remove or
forge them. No match never proves an image was not generated.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

EXTRA = "watermark"  # pip install "spo-cli[watermark]"
MODULES = ("imwatermark",)  # invisible-watermark's import name

# diffusers' WATERMARK_MESSAGE (pipelines/stable_diffusion_xl/watermark.py, itself copied from
# Stability AI's generative-models): a copy, since importing diffusers' module imports torch; a test
# holds it equal to diffusers' WATERMARK_BITS.
MESSAGE = 0b101100111110110010010000011110111011000110011110
BITS = tuple(int(b) for b in bin(MESSAGE)[2:])
# Stability AI's own detector for this mark (generative-models, scripts/demo/detect.py) reads the
# bits that match as: up to 27 no watermark, 28-33 a partial match that decides nothing, 34-35 likely
# (0.02% of their 10,000 unmarked real images got there) and 36 or more very likely (none of them did).
# `present` is its "very likely"; `verdict` says which band. Bits of an unmarked image agree by chance
# about 24 ± 3.5 times.
VERDICTS = ((27, "no watermark"), (33, "partial match: undecided"), (35, "likely watermarked"),
            (len(BITS), "very likely watermarked"))
MATCH_MIN_BITS = VERDICTS[2][0] + 1
# invisible-watermark reads (and writes) no image of fewer pixels: its own check, made here first.
PIXELS_MIN = 256 * 256
# A file's pixels are decoded only up to this: under PIL's decompression-bomb warning (89 M pixels).
PIXELS_MAX = 8192 * 8192
SCHEME = "SDXL invisible watermark (invisible-watermark DWT-DCT, diffusers' 48 bits)"


def require(what: str = "--watermark") -> None:
    """The extra is installed, or a UsageError with the pip command (exit 2, before any model loads)."""
    from spo_cli import extras

    extras.require(EXTRA, what, *MODULES)


@cache
def _decoder():
    """invisible-watermark's DWT-DCT decoder (EmbedMaxDct, what WatermarkDecoder('bits', 48).decode(image,
    'dwtDct') runs). The package's __init__ imports its RivaGAN module, hence torch; EmbedMaxDct's own
    module needs only numpy, OpenCV and PyWavelets, so it is loaded from the installed package by
    itself. A package laid out otherwise gets the public decoder, torch and all."""
    import importlib.util

    spec = importlib.util.find_spec(MODULES[0])  # locates the package; runs none of its code
    if spec is not None and spec.submodule_search_locations:
        source = Path(next(iter(spec.submodule_search_locations))) / "maxDct.py"
        if source.is_file():
            module_spec = importlib.util.spec_from_file_location("spo_cli._imwatermark_maxdct", source)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return lambda bgr: module.EmbedMaxDct(watermarks=[], wmLen=len(BITS)).decode(bgr)
    from imwatermark import WatermarkDecoder

    decoder = WatermarkDecoder("bits", len(BITS))
    return lambda bgr: decoder.decode(bgr, "dwtDct")


def decode_bits(rgb) -> list[int]:
    """The 48 bits read from an RGB uint8 array (height, width, 3), as diffusers' watermarker wrote them:
    it hands the encoder BGR."""
    return [int(b) for b in _decoder()(rgb[:, :, ::-1])]


def probe(path: Path) -> dict:
    """What `spo inspect` says of the watermark in `path` (its probe contract): {"present": bool,
    "summary": one line for people, "checked": bool, "bits_matching": n, "bits": 48, "threshold": 36,
    "verdict": …, "scheme": …, "note": …}. `checked` False (and `present` False) when the file could
    not be examined (no extra, not an image, too small or too large), with `note` saying why. Never
    raises for what the file holds."""
    out = _probe(path)
    if not out["checked"]:
        out["summary"] = out["note"]
    else:
        found = "SDXL invisible watermark" if out["present"] else "none found"
        out["summary"] = f"{found}: {out['bits_matching']} of {len(BITS)} bits match ({out['verdict']})"
    return out


def _probe(path: Path) -> dict:
    from spo_cli import extras

    out = {"present": False, "checked": False, "bits_matching": None, "bits": len(BITS),
           "threshold": MATCH_MIN_BITS, "verdict": None, "scheme": SCHEME, "note": None}
    if extras.missing(*MODULES):
        out["note"] = f'not checked: invisible-watermark is not installed (pip install "spo-cli[{EXTRA}]")'
        return out
    import warnings

    import numpy as np
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            with Image.open(path) as im:
                w, h = im.size
                if w * h > PIXELS_MAX:
                    out["note"] = f"not checked: {w}×{h} is more than {PIXELS_MAX:,} pixels"
                    return out
                if w * h < PIXELS_MIN:
                    out["note"] = f"not checked: {w}×{h} is under 256×256 pixels, too small to carry the mark"
                    return out
                rgb = np.asarray(im.convert("RGB"))
    except Exception as e:  # PIL raises many kinds of error for a file that is not an image it reads
        out["note"] = f"not checked: not a readable image ({type(e).__name__})"
        return out
    bits = decode_bits(rgb)
    matching = sum(a == b for a, b in zip(bits, BITS))
    verdict = next(text for most, text in VERDICTS if matching <= most)
    out.update(present=matching >= MATCH_MIN_BITS, checked=True, bits_matching=matching, verdict=verdict)
    return out

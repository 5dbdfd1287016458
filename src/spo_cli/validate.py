"""Every limit on what a user can ask for, and the one place each is checked.

Values come from the command line, prompt-file lines, replayed sidecars and PNG chunks, and compare
columns; all of them pass through the functions here, so the same value gets the same limit and
the same message wherever it comes from. A message names the value the way its source does: an
option (`--steps`) or a key of a file (`prompts.jsonl:3: 'steps'`), through a `Where`.

Pure: no torch, no network. `output_folder` alone touches the disk (it must, to know).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spo_cli import presets
from spo_cli.errors import UsageError

SEED_MAX = 2**32 - 1  # what other SD tools accept, so a seed can be typed into any of them
STEPS_MAX = 1000  # the scheduler's training timesteps: more steps than that repeat timesteps
GUIDANCE_MAX = 100.0
SIDE_MAX = 4096  # per side, in pixels (SDXL's VAE has to hold the whole image at once)
PIXELS_MAX = 2048 * 2048  # 4 MP, four times SDXL's training size; --no-size-limit lifts both
NUM_IMAGES_MAX = 10_000  # per prompt, per command
BATCH_SIZE_MAX = 64
PROMPT_MAX_CHARS = 10_000  # A1111-style prompts run to a few thousand characters
# An A1111 infotext holds the prompt and negative (each up to the limit above), and A1111 and its
# extensions can copy them again (hires fix and ADetailer prompts) beside their own keys. Checked
# before the text is read at all: nothing spo accepts is longer.
INFOTEXT_MAX_CHARS = 100_000
# Text-encoder windows (A1111's 75-token chunks) per prompt. Each costs a pass through both encoders
# for every image, and BREAK makes one from a few characters ("BREAK " × 1,666 is 1,667 windows,
# minutes of encoding). A1111 prompts rarely pass 8 windows (600 tokens); 32 (2,400 tokens) is four
# times that, about as many as 10,000 characters of ordinary text take, at a few seconds of encoding.
WINDOWS_MAX = 32
SEED_RANDOM = -1  # A1111's "random seed", on the command line and in infotext
PATH_MAX_CHARS = 4096  # model ids, paths, revisions (Linux's PATH_MAX)
CELL_SIZE_MIN = 16  # compare's grid cells, in pixels
ROWS_PER_PAGE_MAX = 1000
# One sweep grid page, in pixels: PIL's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS,
# 89,478,485), which the contact sheet meets when it reads the pages back (a warning past it, an error
# past twice it), and past which no viewer shows a page whole. A1111 refuses its plots past 200 MP.
GRID_PAGE_PIXELS_MAX = 1024 * 1024 * 1024 // 4 // 3
SWEEP_CELLS_MAX = 10_000  # images one compare sweep renders unless --yes (hours on a GPU past that)
# Even with --yes: the plan lays out every cell in memory before anything renders (about 25 µs a cell:
# a --yes 1000×1000×1000 sweep would plan for hours, in many GB); a million images is weeks on a GPU.
SWEEP_CELLS_HARD_MAX = 1_000_000
AXIS_VALUES_MAX = 1000  # values on one sweep axis, ranges laid out (A1111's plots hold tens)
PORT_MAX = 65535
BATCH_WAIT_MS_MAX = 10_000  # spo serve: longer would only add latency
TOKEN_MIN_CHARS = 16  # spo serve's bearer token: guessing it must not be practical
TOKEN_FILE_MAX_BYTES = 4096  # a token is one line: a longer --token-file (/dev/zero) is not one, and is not read on
WEIGHT_MAX = 65504.0  # float16's largest number: a prompt weight past it cannot be applied in half precision
LORA_SCALE_USUAL = 2.0  # outside ±2 a LoRA mostly breaks the image; allowed, with a warning
LORAS_MAX = 16  # stacked LoRAs per run: each adds adapter layers to every attention block
LORA_NAME_MAX_CHARS = 200  # a <lora:name> tag's name: a file name, with room for ".safetensors"
LORA_FOLDER_SCAN_MAX = 10_000  # entries of a LoRA folder read to list its LoRAs in a message
# SDXL's invisible watermark (--watermark): diffusers' watermarker leaves images under 256 px wide
# unmarked, and invisible-watermark refuses to embed in (or read from) fewer than 256×256 pixels.
WATERMARK_WIDTH_MIN = 256
WATERMARK_PIXELS_MIN = 256 * 256
SDXL_MEGAPIXELS = (0.5, 2.0)  # outside this, warn: SDXL was trained around one megapixel
IMAGE_FORMATS = ("png", "jpg", "webp")
PROMPT_FORMATS = ("txt", "jsonl")
PROMPT_SYNTAXES = ("auto", "a1111", "plain")
EMPHASES = ("original", "none-norm")  # A1111's "Original" and "No norm"
OFFLOAD_MODES = ("model", "sequential")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
# Options whose name is not the field name with dashes.
OPTION_NAMES = {"negative_prompt": "--negative", "num_images": "--num-images"}


@dataclass(frozen=True)
class Where:
    """Where values come from, for messages: the command line, or a file (and line)."""

    source: str | None = None  # None: the command line; else "prompts.jsonl:3" or "x.json"
    arguments: tuple[str, ...] = ()  # on the command line, values given as arguments, not options
    # In a file, the names it gives values that are not its request fields' own ((field, name), …):
    # a sidecar's hires.steps, an A1111 text's Hires steps. A message names what the user can find.
    fields: tuple[tuple[str, str], ...] = ()

    def name(self, key: str) -> str:
        if self.source is None:
            if key in self.arguments:
                return key.upper()  # as --help shows it
            return OPTION_NAMES.get(key, "--" + key.replace("_", "-"))
        return f"'{dict(self.fields).get(key, key)}'"

    def at(self) -> str:
        """What a message about a value from here starts with ("x.json: "; nothing on the command line)."""
        return f"{self.source}: " if self.source else ""

    def error(self, key: str, problem: str, hint: str | None = None) -> UsageError:
        return UsageError(f"{self.at()}{self.name(key)} {problem}.", hint)


ARGV = Where()
PROMPT_ARGUMENT = Where(arguments=("prompt",))  # generate and compare take the prompt as an argument


def shown(value, limit: int = 60, *, commas: bool = True) -> str:
    """`value` for a message, never more than about `limit` characters: a file can hold a
    4,000-digit number or a megabyte of text, and a message quotes only its start and its size."""
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            digits = len(str(abs(value)))
        except ValueError:  # str() refuses more than 4,300 digits
            return f"{'-' if value < 0 else ''}a number of about {int(value.bit_length() * math.log10(2)):,} digits"
        if digits <= 24:
            return f"{value:,}" if commas else str(value)
        return f"{'-' if value < 0 else ''}a {digits:,}-digit number"
    text = repr(value) if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return text
    size = f"{len(value):,} characters" if isinstance(value, str) else f"{len(text):,} characters shown"
    return f"{text[:limit - 20]}… ({size})"


_show = shown


def _clip(text: str, limit: int = 60) -> str:
    """Text quoted from a prompt inside a message, as written, cut at about `limit` characters."""
    return text if len(text) <= limit else f"{text[:limit - 20]}… ({len(text):,} characters)"


# ---------------------------------------------------------------------------------------------
# Single values


def text(value, key: str, where: Where = ARGV, *, empty_ok: bool = False, limit: int = PROMPT_MAX_CHARS) -> str:
    """A string a user wrote: UTF-8 encodable, no NUL, within `limit` characters."""
    if not isinstance(value, str):
        raise where.error(key, f"must be a string, not {type(value).__name__} {_show(value)}")
    if len(value) > limit:
        raise where.error(key, f"is {len(value):,} characters long; the limit is {limit:,}",
                          "Shorten it; a prompt file (spo batch) takes one prompt per line."
                          if key in ("prompt", "negative_prompt") else "Shorten it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise where.error(key, f"is not valid text (character {e.start + 1} is a lone surrogate, often bytes "
                               "that are not UTF-8)", "Pass UTF-8 text.") from None
    if "\0" in value:
        raise where.error(key, "contains a NUL character")
    if not empty_ok and not value.strip():
        raise where.error(key, "is empty")
    return value


def integer(value, key: str, where: Where = ARGV, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(key, f"must be a whole number, not {_show(value)}")
    if not low <= value <= high:
        raise where.error(key, f"must be from {low:,} to {high:,}, not {shown(value)}")
    return value


def _g(value: float) -> str:
    """A float for a message: short (%g), unless that rounds it onto another number (1.0000001 shown
    as 1 beside "at most 1" says the limit refused itself)."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def number(value, key: str, where: Where = ARGV, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(key, f"must be a number, not {_show(value)}")
    if isinstance(value, int) and not low <= value <= high:  # before float(): a huge int overflows it
        raise where.error(key, f"must be from {low:g} to {high:g}, not {shown(value)}")
    if not math.isfinite(value):
        raise where.error(key, f"must be a finite number, not {value}")
    if not low <= value <= high:
        raise where.error(key, f"must be from {low:g} to {high:g}, not {_g(value)}")
    return float(value)


def choice(value, key: str, choices, where: Where = ARGV) -> str:
    if not isinstance(value, str) or value not in choices:
        raise where.error(key, f"cannot be {_show(value)}", "Choose one of: " + ", ".join(choices) + ".")
    return value


def seed(value, key: str = "seed", where: Where = ARGV) -> int:
    return integer(value, key, where, low=0, high=SEED_MAX)


# Under torchrun or accelerate launch every process reads the command line and the prompt file
# itself, and all must build the same list of cells to share out: a seed drawn at random, or standard
# input (one stream, which the processes would split between them), would differ from process to
# process, so cells would be made twice or never and the report would mix two runs. batch, eval and
# compare set how many processes share the run; every command starts at one (cli.command).
_processes = 1
_SHARED_HINT = "A single process takes it as before."


def shared_by(processes: int) -> None:
    global _processes
    _processes = processes


def random_seed() -> int:
    """A random first seed: low enough that the most images a run may make (NUM_IMAGES_MAX, seeds
    seed, seed+1, …) never run past SEED_MAX, so a drawn seed is never refused."""
    import secrets

    if _processes > 1:
        raise UsageError(f"A random seed ({SEED_RANDOM}) cannot be used under torchrun or accelerate launch: each "
                         f"of the {_processes} processes would draw its own, and they would share out different "
                         "images.", f"Give the seed itself, e.g. 1234 (it is recorded either way). {_SHARED_HINT}")

    return secrets.randbelow(SEED_MAX + 2 - NUM_IMAGES_MAX)


def seed_or_random(value, key: str = "seed", where: Where = ARGV) -> int:
    """A seed, or SEED_RANDOM (-1, A1111's "random"): then one drawn now, so the seed used is recorded."""
    if type(value) is int and value == SEED_RANDOM:  # not -1.0 or True: a seed is a whole number
        return random_seed()
    try:
        return seed(value, key, where)
    except UsageError as e:
        if e.hint is None:  # where -1 is taken, the refusal says so
            e.hint = f"{SEED_RANDOM} draws a random seed (recorded with the image)."
        raise


def seed_range(first: int, count: int, where: Where = ARGV) -> None:
    """Seeds first, first+1, … first+count-1 must all be valid."""
    seed(first, "seed", where)
    last = first + count - 1
    if last > SEED_MAX:
        raise where.error("seed", f"{first} with {count:,} images runs to seed {last:,}, past the largest, "
                                  f"{SEED_MAX:,}", "Use a smaller seed.")


# Seeds for every command that takes several (compare, eval): whole numbers and ranges, comma-separated.
_SEED_ITEM = re.compile(r"([0-9]{1,10})(?:-([0-9]{1,10}))?")  # ASCII digits only: int() takes '٣' too


def seeds(value, key: str = "seeds", where: Where = ARGV) -> list[int]:
    """'0-3', '1,2,5' or '0-3,10' → the seeds in order (a repeat counts once), each a valid seed,
    at most NUM_IMAGES_MAX of them (counted before any range is laid out, so that no text expands
    into millions of numbers). -1 is a random seed, as in A1111 ('-1,-1': two)."""
    value = text(value, key, where, limit=PROMPT_MAX_CHARS)
    out: dict[int, None] = {}
    listed = 0
    for part in (p.strip() for p in value.split(",")):
        if part == str(SEED_RANDOM):
            listed += 1
            if listed > NUM_IMAGES_MAX:
                raise where.error(key, f"lists more than {NUM_IMAGES_MAX:,} seeds; the limit is {NUM_IMAGES_MAX:,} per prompt")
            out[random_seed()] = None
            continue
        m = _SEED_ITEM.fullmatch(part)
        if m is None:
            raise where.error(key, f"has {shown(part)}, which is not a seed or a range such as 0-3",
                              "Give seeds and ranges separated by commas, e.g. 0-3, or 1,2,5, or 0-3,10; "
                              f"{SEED_RANDOM} draws a random seed (recorded).")
        low, high = int(m.group(1)), int(m.group(2) or m.group(1))
        seed(low, key, where)
        seed(high, key, where)
        if high < low:
            raise where.error(key, f"has the range {low}-{high}, which runs backwards", f"Write {high}-{low}.")
        listed += high - low + 1
        if listed > NUM_IMAGES_MAX:
            raise where.error(key, f"lists more than {NUM_IMAGES_MAX:,} seeds; the limit is {NUM_IMAGES_MAX:,} per prompt")
        out.update(dict.fromkeys(range(low, high + 1)))
    return list(out)


# Width × height as one text ("1024x768"): A1111's `Size`, OpenAI's `size`. ASCII digits only (int()
# also reads '١٠٢٤'), at most six per side: the sides are then checked as numbers by `side`/`size`.
_DIMENSIONS = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")


def parse_dimensions(value) -> tuple[int, int] | None:
    """'1024x768' → (1024, 768); None for anything else."""
    m = _DIMENSIONS.fullmatch(value) if isinstance(value, str) else None
    return (int(m.group(1)), int(m.group(2))) if m else None


def dimensions(value, key: str = "size", where: Where = ARGV) -> tuple[int, int]:
    """`parse_dimensions`, refusing anything else with a message naming `key` as `where` does."""
    parsed = parse_dimensions(value)
    if parsed is None:
        raise where.error(key, f"must be WIDTHxHEIGHT such as 1024x1024, not {shown(value)}")
    return parsed


def steps(value, where: Where = ARGV) -> int:
    return integer(value, "steps", where, low=1, high=STEPS_MAX)


def guidance(value, where: Where = ARGV) -> float:
    return number(value, "guidance", where, low=0.0, high=GUIDANCE_MAX)


def side(value, key: str, where: Where = ARGV, *, size_limit: bool = True) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.error(key, f"must be a whole number of pixels, not {_show(value)}")
    if value < 8 or value % 8:
        nearest = max(8, (value + 4) // 8 * 8)
        # Never a size the limit refuses next (99999 is not rounded to 100000).
        hint = f"try {nearest}" if nearest <= SIDE_MAX or not size_limit and value < 10**9 else "try 1024"
        raise where.error(key, f"must be a positive multiple of 8, not {shown(value, commas=False)}",
                          f"SDXL works on 8×8-pixel latents; {hint}.")
    if size_limit and value > SIDE_MAX:
        raise where.error(key, f"is {shown(value, commas=False)} pixels; the limit is {SIDE_MAX}",
                          "--no-size-limit lifts it if your GPU has the memory.")
    return value


def size(width: int | None, height: int | None, where: Where = ARGV, *, size_limit: bool = True) -> list[str]:
    """Check a size as a whole; return warnings (SDXL was trained around one megapixel)."""
    w = side(width, "width", where, size_limit=size_limit) or presets.DEFAULT_SIZE
    h = side(height, "height", where, size_limit=size_limit) or presets.DEFAULT_SIZE
    if size_limit and w * h > PIXELS_MAX:
        raise UsageError(f"{where.source + ': ' if where.source else ''}{w}×{h} is {w * h / 1e6:.1f} megapixels; "
                         f"the limit is {PIXELS_MAX / 1e6:.1f}.",
                         "Use a smaller size (SDXL is trained at about 1024×1024), or --no-size-limit if your "
                         "GPU has the memory (with --vae-tiling for the decode).")
    low, high = SDXL_MEGAPIXELS
    if (width or height) and not low * 1024**2 <= w * h <= high * 1024**2:  # no float(): sides can be huge ints
        return [f"{w}×{h} is far from SDXL's training size of about 1024×1024 (e.g. 1024×1024, 1152×896, "
                "1216×832); expect weaker images."]
    return []


HIRES_SCALE_MAX = 4.0  # A1111's slider stops at 4


def above(value, key: str, where: Where = ARGV, *, low: float, high: float, why: str, hint: str) -> float:
    """A number in (low, high]: `low` itself is refused for the reason `why`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise where.error(key, f"must be a number, not {_show(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise where.error(key, f"must be a finite number, not {value}")
    if not low < value <= high:  # compared as given: a huge int would overflow float()
        raise where.error(key, f"must be over {low:g} ({why}) and at most {high:g}, not "
                               f"{shown(value) if isinstance(value, int) else _g(value)}", hint)
    return float(value)


def hires_scale(value, key: str = "hires", where: Where = ARGV) -> float:
    """A1111's "Upscale by": over 1, up to HIRES_SCALE_MAX."""
    return above(value, key, where, low=1.0, high=HIRES_SCALE_MAX, why="1 would re-draw the image at its own size",
                 hint="Use e.g. 1.5 (1024×1024 → 1536×1536) or 2.")


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The hires fix's output size: each side times `scale`, down to a multiple of 8 (A1111 takes
    int(side × scale) and its latents cut the rest)."""
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


def hires_schedule(steps_: int, strength_: float) -> tuple[int, float]:
    """A1111's hires pass as diffusers' img2img arguments (num_inference_steps, strength).

    A1111 gives its sampler the hires steps (or the first pass's), so it runs that many steps: it
    stretches the schedule to int(steps / min(strength, 0.999)) and starts `steps` from its end
    (sd_samplers_common.setup_img2img_steps with steps given; sigmas[steps - t_enc - 1:]). diffusers
    runs the last int(n × strength) steps of n; (steps + 0.5) / n makes that exactly `steps`, from
    the same step of the same schedule."""
    n = int(steps_ / min(strength_, 0.999))
    return n, min((steps_ + 0.5) / n, 1.0)


def hires_steps_run(steps_: int, strength_: float, key: str = "hires_strength", where: Where = ARGV, *,
                    steps_key: str = "steps") -> None:
    """The hires pass's stretched schedule (hires_schedule) must fit the scheduler's training timesteps."""
    n, _ = hires_schedule(steps_, strength_)
    if n > STEPS_MAX:
        low = steps_ / STEPS_MAX
        raise where.error(key, f"{strength_:g} with {steps_} {where.name(steps_key)} stretches the hires pass's "
                               f"schedule to {n} steps (A1111's: steps / strength), over the {STEPS_MAX} the model "
                               "was trained on", f"Raise the strength above {low:.3g}, or lower {where.name(steps_key)}.")


def hires_scale_of_resize(width: int, height: int, rx: int, ry: int) -> float | None:
    """A1111's hires resize (hr_resize_x/y, its infotext's `Hires resize: WxH`) as the scale that makes
    that size from width×height, as A1111 computes its target (a side left 0 keeps the shape); None
    when no scale does (A1111 would crop to another shape)."""
    target = (rx, ry) if rx and ry else (rx, rx * height // width) if rx else (ry * width // height, ry)
    wanted = (target[0] // 8 * 8, target[1] // 8 * 8)
    for scale in (target[0] / width, target[1] / height):
        if hires_size(width, height, scale) == wanted:
            return scale
    return None


def hires_grows(width: int, height: int, scale: float, key: str = "hires", where: Where = ARGV) -> tuple[int, int]:
    """`hires_size`, refused when it is the first pass's own: a factor just over 1 is cut back to
    the same multiple of 8, and a second pass at the same size is what a factor of 1 would make."""
    w, h = hires_size(width, height, scale)
    if (w, h) == (width, height):
        side = max(width, height)  # the long side is the first to reach its next multiple of 8
        least = math.ceil((side + 8) / side * 100) / 100
        raise where.error(key, f"{scale:g} makes no larger image from {width}×{height}: sides are cut to multiples "
                               "of 8, so the second pass would re-draw it at its own size",
                          f"Use at least {least:g}.")
    return w, h


def strength(value, key: str = "strength", where: Where = ARGV) -> float:
    """Img2img's denoising strength: above 0 (0 would return the input unchanged) up to 1 (all new)."""
    return above(value, key, where, low=0.0, high=1.0, why="0 would give back the input unchanged",
                 hint="Use e.g. 0.3 (keep most of the image) to 0.8 (keep its layout).")


def steps_run(steps_: int, strength_: float, key: str = "strength", where: Where = ARGV, *,
              steps_key: str = "steps") -> None:
    """diffusers runs the last int(steps × strength) steps of the schedule, silently none below 1."""
    if int(steps_ * strength_) < 1:
        need = math.ceil(1 / strength_)
        while int(need * strength_) < 1:  # float rounding: 1/s × s can land just under 1
            need += 1
        raise where.error(key, f"{strength_:g} with {steps_} {where.name(steps_key)} runs {steps_ * strength_:.2f} "
                               "denoising steps, which is none (image to image runs int(steps × strength))",
                          f"Raise {where.name(steps_key)} to at least {need}, or the strength.")


def flag(value, key: str, where: Where = ARGV) -> bool:
    """true or false, as a file writes it (not 1, not "true")."""
    if not isinstance(value, bool):
        raise where.error(key, f"must be true or false, not {_show(value)}")
    return value


def watermark_size(width: int | None, height: int | None, where: Where = ARGV) -> None:
    """--watermark on an image too small to carry SDXL's watermark: diffusers would leave it unmarked
    (narrower than 256 px) or fail after denoising (fewer than 256×256 pixels), so refuse it first."""
    w, h = width or presets.DEFAULT_SIZE, height or presets.DEFAULT_SIZE
    if w < WATERMARK_WIDTH_MIN or w * h < WATERMARK_PIXELS_MIN:
        raise UsageError(f"{where.at()}{w}×{h} is too small for {where.name('watermark')}: SDXL's invisible watermark needs "
                         f"images at least {WATERMARK_WIDTH_MIN} px wide and of at least "
                         f"{WATERMARK_WIDTH_MIN}×{WATERMARK_WIDTH_MIN} pixels in all.",
                         f"Make the image larger (e.g. {WATERMARK_WIDTH_MIN}×{WATERMARK_WIDTH_MIN}), or drop "
                         f"{where.name('watermark')}.")


def scheduler(value, where: Where = ARGV) -> str:
    """spo's name of a scheduler, given spo's or A1111's ('DPM++ 2M Karras', any case)."""
    from spo_cli import infotext  # it imports this module

    if isinstance(value, str):
        name = value if value in presets.SCHEDULERS else infotext.a1111_scheduler(value)
        if name is not None:
            return name
    raise where.error("scheduler", f"cannot be {_show(value)}",
                      f"Choose one of spo's names: {', '.join(presets.SCHEDULERS)}; or A1111's, in any case: "
                      f"{', '.join(infotext.a1111_names())} (a sampler's name alone is its plain, Uniform, "
                      "schedule).")


def device(value, key: str = "device", where: Where = ARGV, *, auto: bool = True) -> str:
    """Syntax only: whether the machine has that device is the engine's question."""
    if not isinstance(value, str) or not (_DEVICE.match(value) or (auto and value == "auto")):
        names = ("auto, " if auto else "") + "cpu, cuda, cuda:N or mps"
        raise where.error(key, f"cannot be {_show(value)}", f"Use {names}.")
    return value


def generator_device(value, where: Where = ARGV) -> str:
    return device(value, "generator_device", where, auto=False)


def dtype(value, key: str = "dtype", where: Where = ARGV, *, auto: bool = True) -> str:
    """'fp16'/'float16'/… → the torch name ('float16'), or 'auto'."""
    names = [n for n in presets.DTYPES if auto or n != "auto"]
    if not isinstance(value, str) or value not in names:
        raise where.error(key, f"cannot be {_show(value)}", "Use " + ", ".join(
            n for n in ("auto", "fp16", "bf16", "fp32") if auto or n != "auto") + ".")
    return presets.DTYPES[value]


def quantize(value, key: str = "quantize", where: Where = ARGV) -> str | None:
    """--quantize: fp8, or none (also None: off)."""
    if value is None or value == "none":
        return None
    if value != "fp8":
        raise where.error(key, f"cannot be {_show(value)}", "Use fp8 (or none).")
    return value


def num_images(value, where: Where = ARGV) -> int:
    return integer(value, "num_images", where, low=1, high=NUM_IMAGES_MAX)


def batch_size(value, where: Where = ARGV) -> int:
    return integer(value, "batch_size", where, low=1, high=BATCH_SIZE_MAX)


def offload(value, where: Where = ARGV) -> str | None:
    return None if value is None else choice(value, "offload", OFFLOAD_MODES, where)


def lora_scale(value, where: Where = ARGV) -> tuple[float | None, list[str]]:
    if value is None:
        return None, []
    scale = number(value, "lora_scale", where, low=-math.inf, high=math.inf)
    warnings = []
    if abs(scale) > LORA_SCALE_USUAL:
        warnings.append(f"{where.name('lora_scale')} {scale:g} is outside ±{LORA_SCALE_USUAL:g}, where LoRAs "
                        "usually break the image.")
    return scale, warnings


def image_format(value, where: Where = ARGV) -> str:
    fmt = value.lower().lstrip(".") if isinstance(value, str) else value
    fmt = "jpg" if fmt == "jpeg" else fmt
    return choice(fmt, "image_format", IMAGE_FORMATS, where)


def prompt_format(value, where: Where = ARGV) -> str | None:
    return None if value is None else choice(value, "prompt_format", PROMPT_FORMATS, where)


# ---------------------------------------------------------------------------------------------
# Whole requests, from any source


IMAGE_KEYS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler",
              "generator_device", "prompt_syntax", "emphasis", "watermark")


def image_values(values: Mapping, where: Where = ARGV, *, default_syntax: str = "plain",
                 random_seed_ok: bool = False) -> dict:
    """Check the ImageRequest fields present in `values` (types too: files carry any JSON), and
    return them normalised (an empty negative prompt is None, integer guidance a float). The
    prompts are read with `values`' prompt_syntax, or `default_syntax` when it has none (a
    prompt-file line gets the command line's). With `random_seed_ok` (what a user asks for, not
    what a file records as having made an image), seed -1 is a random seed, drawn here."""
    out = {}
    for key, value in values.items():
        if key == "prompt":
            out[key] = text(value, key, where)
        elif key == "negative_prompt":
            out[key] = None if value is None or value == "" else text(value, key, where, empty_ok=True) or None
        elif key == "seed":
            out[key] = seed_or_random(value, key, where) if random_seed_ok else seed(value, key, where)
        elif key == "steps":
            out[key] = steps(value, where)
        elif key == "guidance":
            out[key] = guidance(value, where)
        elif key in ("width", "height"):
            out[key] = side(value, key, where, size_limit=False)  # the size as a whole: `size()`
        elif key == "scheduler":
            out[key] = scheduler(value, where)
        elif key == "generator_device":
            out[key] = generator_device(value, where)
        elif key == "prompt_syntax":
            out[key] = choice(value, key, PROMPT_SYNTAXES, where)
        elif key == "emphasis":
            out[key] = choice(value, key, EMPHASES, where)
        elif key == "watermark":
            out[key] = flag(value, key, where)
        else:
            raise ValueError(f"not an ImageRequest field: {key}")
    readable_prompts(out.get("prompt"), out.get("negative_prompt"), out.get("prompt_syntax", default_syntax),
                     where)
    return out


# A1111's prompt editing [a:b:step] / [a:step] and alternation [a|b]: brackets holding `:` or `|`.
_SCHEDULING = re.compile(r"(?<!\\)\[[^\[\]]*(?:[:|])[^\[\]]*\]")
# A1111's composable diffusion: prompts joined by AND (modules/prompt_parser.py re_AND), each its own
# conditioning. spo encodes one prompt, so AND is read as a word.
_AND = re.compile(r"\bAND\b")


# What becomes of a prompt's <lora:…> tags, by command: loaded from the LoRA folder; taken out for want
# of one; or taken out because the command loads no LoRA per prompt (serve, compare, eval).
LORA_TAGS = ("loaded", "no folder", "not here")


def unsupported_syntax(request, where: Where = ARGV, *, lora_tags: str = "not here") -> list[str]:
    """Warnings for A1111 syntax that spo does not follow. Prompt editing and alternation change the
    prompt during sampling, and AND (composable diffusion) makes several conditionings, which
    diffusers' pipeline cannot: read as text. Extra-network tags (`<lora:name:0.8>`) are taken out
    of the prompt, as A1111 does; `<lora:>` tags are loaded when `lora_tags` is "loaded" (generate,
    batch and replay with a LoRA folder), the others never."""
    if request.prompt_syntax == "plain":
        return []
    from spo_cli import syntax

    at = f"{where.source}: " if where.source else ""
    out = []
    for key in ("prompt", "negative_prompt"):
        text = getattr(request, key) or ""
        found = _SCHEDULING.search(text)
        if found:
            out.append(f"{at}{where.name(key)} has {_clip(found.group(0))}, A1111's prompt editing or alternation, "
                       "which spo does not support: it is read as text with weight 1/1.1.")
        if key == "prompt" and _AND.search(text):  # A1111 splits the prompt only, never the negative
            out.append(f"{at}{where.name(key)} has AND, A1111's composable diffusion, which spo does not support: "
                       "it is read as the word AND in one prompt.")
    tags = syntax.extra_networks(request.prompt or "")
    lora = [t for t in tags if t.startswith("<lora:")]
    other = [t for t in tags if not t.startswith("<lora:")]

    def listed(found):
        return ", ".join(_clip(t, 40) for t in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")

    if lora and lora_tags == "no folder":
        out.append(f"{at}{where.name('prompt')} has {listed(lora)}: A1111 LoRA tags, taken out of the prompt and not "
                   "loaded, since no LoRA folder is set. Give the folder that holds name.safetensors with --lora-dir "
                   "(or SPO_LORA_DIR), or the file itself with --lora FILE:STRENGTH.")
    elif lora and lora_tags == "not here":
        out.append(f"{at}{where.name('prompt')} has {listed(lora)}: A1111 LoRA tags, taken out of the prompt and not "
                   "loaded: here spo loads no LoRA named in a prompt (spo generate and spo batch do, with --lora-dir).")
    if other:
        out.append(f"{at}{where.name('prompt')} has {listed(other)}: A1111 extra-network tags, taken out of the prompt "
                   "as A1111 does, but spo loads only LoRAs (<lora:name:weight> with --lora-dir), no hypernetwork "
                   "or other network.")
    return out


def readable_prompts(prompt: str | None, negative: str | None, prompt_syntax: str, where: Where = ARGV) -> None:
    """Refuse, before anything loads, a prompt that its syntax cannot read or that costs too much:
    under a1111 (or auto), a weight that is no number, `(word:1.2.3)`, one no half-precision model can
    apply, or more BREAKs than the window limit. Plain text is always readable."""
    if prompt_syntax == "plain":
        return
    from spo_cli import syntax

    for key, value in (("prompt", prompt), ("negative_prompt", negative)):
        try:
            parts = syntax.parse(value or "")
        except syntax.PromptSyntaxError as e:
            raise where.error(key, f"cannot be read as A1111 prompt syntax: {e}",
                              r"Write weights as (word:1.2), escape literal brackets as \( \), or use "
                              "--prompt-syntax plain to take the text as it is.") from None
        if any(not math.isfinite(w) or abs(w) > WEIGHT_MAX for _, w in parts):
            # e.g. hundreds of nested brackets: 1.1 ** 400 is 4e16, and the image would be NaN
            raise where.error(key, f"has an A1111 weight over {WEIGHT_MAX:g} (brackets nested too deep?), which no "
                                   "half-precision model can apply",
                              r"Write the weight as (word:1.5), escape literal brackets as \( \), or use "
                              "--prompt-syntax plain.")
        # The tokens per window are known only to the model's tokenizer (encoding.plan counts them);
        # the windows that BREAK forces are known now, and are what a few characters can multiply.
        forced = syntax.break_windows(parts)
        if forced > WINDOWS_MAX:
            raise where.error(key, f"has BREAKs that make at least {forced:,} text-encoder windows of 75 tokens; "
                                   f"the limit is {WINDOWS_MAX}",
                              f"Use fewer BREAKs (A1111 prompts rarely need more than {WINDOWS_MAX // 4} windows).")


def model_values(values: Mapping, where: Where = ARGV) -> dict:
    """Check the ModelRequest fields present in `values`."""
    out = {}
    for key, value in values.items():
        if key in ("model",):
            out[key] = text(value, key, where, limit=PATH_MAX_CHARS)
        elif key in ("revision", "lora", "lora_file", "vae", "lora_dir"):
            out[key] = None if value is None else text(value, key, where, limit=PATH_MAX_CHARS)
        elif key == "loras":
            out[key] = stacked_loras(value, where)
        elif key == "lora_scale":
            out[key] = lora_scale(value, where)[0]
        elif key == "dtype":
            out[key] = dtype(value, key, where)
        elif key == "device":
            out[key] = device(value, key, where)
        elif key == "quantize":
            out[key] = quantize(value, key, where)
        else:
            raise ValueError(f"not a ModelRequest field: {key}")
    # As --lora refuses it: a sidecar edited to stack one file twice would load it as two adapters.
    specs = [out.get("lora")] + [lr.spec for lr in out.get("loras", ())]
    for i, spec in enumerate(specs):
        if spec is not None and spec in specs[:i]:
            raise where.error("loras", f"names {_clip(spec)} twice", "Give each LoRA once, with the strength you want.")
    return out


def stacked_loras(value, where: Where = ARGV) -> tuple:
    """A sidecar's `model_request.loras`: [{"spec", "scale", "unet_scale"?}, …] → LoraRequests."""
    from spo_cli.request import LoraRequest

    if not isinstance(value, (list, tuple)):
        raise where.error("loras", f"must be a list, not {_show(value)}")
    if len(value) > LORAS_MAX:
        raise where.error("loras", f"lists {len(value):,} LoRAs; at most {LORAS_MAX} can be stacked")
    out = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) - {"spec", "scale", "unet_scale", "name"}:
            raise where.error("loras", "holds an entry that is not {\"spec\", \"scale\"}")
        unet = item.get("unet_scale")
        out.append(LoraRequest(text(item.get("spec"), "loras", where, limit=PATH_MAX_CHARS),
                               number(item.get("scale"), "loras", where, low=-math.inf, high=math.inf),
                               None if unet is None else number(unet, "loras", where, low=-math.inf, high=math.inf)))
    return tuple(out)


def lora_applies(model: str, lora: str | None, scale: float | None, where: Where = ARGV,
                 lora_file: str | None = None) -> None:
    """A LoRA strength or file with no LoRA to apply it to would be recorded but change nothing: refuse."""
    preset = presets.PRESETS.get(model)
    if lora or (preset and preset.lora_repo):
        return
    with_lora = [p.name for p in presets.PRESETS.values() if p.lora_repo]
    for key, value in (("lora_scale", scale), ("lora_file", lora_file)):
        if value is not None:
            shown = f"{value:g}" if isinstance(value, float) else repr(value)
            raise where.error(key, f"{shown} has nothing to act on: the model '{model}' has no LoRA",
                              f"The SPO LoRA comes with --model {with_lora[0]}; add another LoRA with --lora, or "
                              f"drop {where.name(key)}.")


# ---------------------------------------------------------------------------------------------
# The output folder


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """Create `path` if needed and prove it writable with a probe file, before any work starts."""
    path = Path(text(str(path), "out", limit=PATH_MAX_CHARS)) if isinstance(path, str) else path
    try:
        for parent in [path, *path.parents]:
            if parent.exists() and not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder.",
                                 f"Choose another {option}.")
            if parent.exists():
                break
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".spo-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"{option} {path} cannot be written to ({e.strerror or e}).",
                         f"Check its permissions and free space, or choose another {option}.") from None
    return path


def stdin_not_shared() -> None:
    """Refuse '-' (standard input) as the prompt file of a run shared by several processes."""
    if _processes > 1:
        raise UsageError(f"Standard input (-) cannot be the prompt file under torchrun or accelerate launch: the "
                         f"{_processes} processes would split one stream between them, each with other prompts.",
                         f"Save the prompts to a file every process can read and give its path. {_SHARED_HINT}")

"""`spo` and `spo --help`, answered before typer, rich or any command module is imported.

The top-level help needs only the list of commands, and paying half a second of imports for it
is the first impression the tool makes. A test keeps this table equal to the registered
commands and their docstrings."""

from __future__ import annotations

import shutil
import sys
import textwrap

ABOUT = "SPO-SDXL from the terminal: SDXL fine-tuned with Step-aware Preference Optimization."
EXAMPLES = (
    'spo generate "a child and a penguin sitting on the moon"',
    "spo batch examples/prompts.txt --out runs/spo --num-images 4 --batch-size 4",
    'spo compare "a lighthouse in a storm" --base --spo',
    "spo models",
    "spo download spo-lora",
    "spo doctor",
)
# (name, the first sentence of its docstring), in the order the help lists them.
COMMANDS = (
    ("generate", "Generate images from a prompt and write each with a JSON sidecar of its settings."),
    ("batch", "Run a whole prompt file with the model loaded once; resumable, and sharded under torchrun."),
    ("compare", "Render the same prompts and seeds through several models or SPO strengths, side by side."),
    ("replay", "Make a recorded image again, from the same commits; options replace recorded settings."),
    ("score", "Score images with preference models (PickScore, HPSv2, ImageReward, aesthetic, CLIP)."),
    ("eval", "Generate a prompt file with several models and score it: means, paired win rates, a plot, a report."),
    ("serve", "Keep SPO-SDXL loaded and serve it over HTTP: OpenAI- and A1111-compatible APIs, and a page."),
    ("models", "List the model presets, their repos, and whether each is already in the local cache."),
    ("download", "Fetch everything a model needs into the Hugging Face cache, for later offline use."),
    ("doctor", "Check this machine: versions, device and memory, the Hub, cached models and disk, then a "
               "tiny smoke generation; end with the one next step that matters."),
)
OPTIONS = (("--version", "Show the version and exit."), ("-h, --help", "Show this message and exit."))


def top_help(width: int | None = None) -> str:
    width = max(40, min(width or shutil.get_terminal_size().columns, 100))

    def table(rows) -> list[str]:
        left = max(len(name) for name, _ in rows) + 4
        out = []
        for name, text in rows:
            lines = textwrap.wrap(text, width - left) or [""]
            out.append(f"  {name:<{left - 2}}{lines[0]}")
            out += [" " * left + line for line in lines[1:]]
        return out

    lines = ["Usage: spo [OPTIONS] COMMAND [ARGS]...", "", *textwrap.wrap(ABOUT, width), "", "Examples:"]
    lines += [f"  {e}" for e in EXAMPLES]
    lines += ["", "Options:", *table(OPTIONS), "", "Commands:", *table(COMMANDS), ""]
    lines += textwrap.wrap("Run `spo COMMAND --help` for a command's options and examples.", width)
    return "\n".join(lines) + "\n"


def main() -> None:
    args = sys.argv[1:]
    if args in (["--help"], ["-h"], []):
        sys.stdout.write(top_help())
        # Bare `spo` is a usage error (click's exit code for it), asking for help is not.
        raise SystemExit(2 if not args else 0)
    if args == ["--version"]:
        from spo_cli import __version__

        sys.stdout.write(f"spo-cli {__version__}\n")
        return
    from spo_cli.cli import main as cli_main

    cli_main()

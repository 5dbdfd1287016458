"""`spo` and `spo --help`, answered before typer, rich or any command module is imported.

The top-level help needs only the list of commands (`about`), and paying half a second of imports
for it is the first impression the tool makes. The import goes one way: this entry point loads
`cli` only when a command runs, and `cli` never imports this module."""

from __future__ import annotations

import shutil
import sys
import textwrap

from spo_cli.about import ABOUT, COMMANDS, EXAMPLES, OPTIONS


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

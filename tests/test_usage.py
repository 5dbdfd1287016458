"""`spo` / `spo --help` / `spo --version`, answered by spo_cli.usage before typer is imported."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from spo_cli import __version__, about, usage
from spo_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import sys
from spo_cli.usage import main
try:
    main()
finally:
    print("LOADED:" + ",".join(m for m in ("typer", "rich", "click", "torch", "PIL", "numpy") if m in sys.modules), file=sys.stderr)
"""


def spo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)


def test_the_console_script_is_the_fast_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"spo": "spo_cli.usage:main"}


def test_the_table_is_the_registered_commands_and_their_docstrings():
    registered = [(c.name or c.callback.__name__, c.callback.__doc__) for c in app.registered_commands]
    assert [name for name, _ in about.COMMANDS] == [name for name, _ in registered]
    for (name, summary), (_, doc) in zip(about.COMMANDS, registered):
        first_sentence = re.match(r".*?\.(?=\s|$)", " ".join(doc.split())).group(0)
        assert summary == first_sentence, name


def test_help_lists_every_command_without_loading_typer():
    for args in (["--help"], ["-h"]):
        proc = spo(*args)
        assert proc.returncode == 0
        assert proc.stdout == usage.top_help()
        assert "LOADED:\n" in proc.stderr, proc.stderr
    for name, _ in about.COMMANDS:
        assert re.search(rf"^  {name} ", proc.stdout, re.M)


def test_bare_spo_is_a_usage_error_with_the_help():
    proc = spo()
    assert proc.returncode == 2 and proc.stdout == usage.top_help()


def test_version_without_loading_typer():
    proc = spo("--version")
    assert proc.returncode == 0 and proc.stdout == f"spo-cli {__version__}\n"
    assert "LOADED:\n" in proc.stderr


def test_anything_else_goes_to_the_typer_app():
    proc = spo("generate", "--help")
    assert proc.returncode == 0 and "--negative" in proc.stdout and "typer" in proc.stderr
    # image to image's options read files with PIL, imported when one is given, never for --help
    assert "--image" in proc.stdout and not {"PIL", "numpy", "torch"} & set(proc.stderr.split("LOADED:")[1].strip().split(","))
    proc = spo("no-such-command")
    assert proc.returncode == 2 and "No such command" in proc.stderr


def test_help_wraps_to_the_terminal_but_never_breaks_an_example():
    for width in (40, 80, 100):
        lines = usage.top_help(width).splitlines()
        assert max(len(line) for line in lines if not line.startswith("  spo ")) <= width
        assert [line[2:] for line in lines if line.startswith("  spo ")] == list(about.EXAMPLES)


def test_cli_does_not_import_the_entry_point():
    # One-way imports: `usage` loads `cli` for a command; `cli` reads the command table from `about`.
    code = "import sys, spo_cli.cli; print('spo_cli.usage' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_the_cli_starts_without_numpy_or_pil():
    # Every command is registered at start-up; what a command computes with is imported when it runs
    # (eval's report pulled in numpy through the statistics, 35 ms on every `spo` call).
    code = "import sys, spo_cli.cli; print(sorted({'numpy', 'PIL', 'torch'} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"

"""The `spo` command. Imports nothing heavy: torch and diffusers load only when a command runs a model."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.core

from spo_cli import __version__, about

# typer's help shows a `<bool>` type after every flag, as if it took a value; flags take none.
_display_type = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = lambda self, ctx: None if self.is_flag else _display_type(self, ctx)

app = typer.Typer(
    name="spo",
    help=about.ABOUT + "\n\n[bold]Examples[/]\n\n" + "\n\n".join(f"  {e}" for e in about.EXAMPLES),
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"spo-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    pass


# Registering the commands, in the order `spo --help` lists them.
from spo_cli.cli import generate  # noqa: E402,F401,I001
from spo_cli.cli import batch  # noqa: E402,F401
from spo_cli.cli import compare  # noqa: E402,F401
from spo_cli.cli import replay  # noqa: E402,F401
from spo_cli.cli import inspect  # noqa: E402,F401
from spo_cli.cli import score  # noqa: E402,F401
from spo_cli.cli import eval  # noqa: E402,F401
from spo_cli.cli import serve  # noqa: E402,F401
from spo_cli.cli import models  # noqa: E402,F401
from spo_cli.cli import download  # noqa: E402,F401
from spo_cli.cli import doctor  # noqa: E402,F401


def main() -> None:
    app()

"""What every command has in common, in one place: --json, --quiet and --debug, the UI object,
and the error boundary that turns any failure into one paragraph and an exit code."""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
from contextlib import contextmanager
from typing import Annotated

import typer

from spo_cli import validate
from spo_cli.cli.ui import UI
from spo_cli.errors import EXIT_INTERRUPTED, translate

_O = "Output"


@contextmanager
def boundary(ui: UI):
    """Turn every failure into one paragraph on stderr and an exit code; tracebacks only with --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        ui.error("Interrupted. Files already written are complete; nothing half-written was left behind.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # The reader of stdout went away (`spo models --json | head -1`): nobody is left to tell.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(1) from None
    except Exception as e:
        err = translate(e)
        if ui.debug:
            traceback.print_exc()
        if err is None:
            ui.error(
                f"Unexpected {type(e).__name__}: {e}. "
                + ("" if ui.debug else "Run again with --debug for the traceback, and please report it.")
            )
            raise typer.Exit(1) from None
        ui.error(err.paragraph())
        raise typer.Exit(err.exit_code) from None


def command(app: typer.Typer, *, examples: str, json_help: str):
    """Register `fn` as a command of `app`, with --json (printing what `json_help` says), --quiet and
    --debug added, and called as `fn(ui, **options)` inside the error boundary."""

    def decorate(fn):
        extra = {
            "json_": (bool, typer.Option("--json", help=json_help, rich_help_panel=_O)),
            "quiet": (bool, typer.Option("--quiet", "-q", help="No progress or messages: only results and errors.",
                                         rich_help_panel=_O)),
            "debug": (bool, typer.Option("--debug", help="Library logs, and tracebacks on errors.",
                                         rich_help_panel=_O)),
        }
        sig = inspect.signature(fn, eval_str=True)
        params = [p for name, p in sig.parameters.items() if name != "ui"]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=False,
                                     annotation=Annotated[kind, option]) for name, (kind, option) in extra.items()]

        @functools.wraps(fn)
        def wrapper(*args, json_: bool = False, quiet: bool = False, debug: bool = False, **kwargs):
            ui = UI(quiet=quiet, json_mode=json_, debug=debug)
            validate.shared_by(1)  # until a command that shares its run out says otherwise, and after it
            try:
                with boundary(ui):
                    return fn(ui, *args, **kwargs)
            finally:
                validate.shared_by(1)

        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return app.command(epilog=examples)(wrapper)

    return decorate

"""What the user sees, without a model: messages that quote user values, progress, paths."""

from __future__ import annotations

import io

import pytest

from rich.console import Console
from rich.progress import Progress, TextColumn

from spo_cli.cli.ui import UI, _Bars, escape, printable, short


def test_the_eta_shows_after_the_first_call_however_long_it_took():
    # rich's own estimate needs samples inside a 30-second window: with calls of minutes it stays
    # blank for the whole run. Ours comes from the average so far.
    now = [0.0]
    progress = Progress(TextColumn("{task.fields[eta]}"), console=Console(file=io.StringIO()), get_time=lambda: now[0])
    bars = _Bars(progress, total=10, steps=50)
    assert progress.tasks[bars.images].fields["eta"] == "ETA -:--:--"
    now[0] = 300.0  # one call of two images took five minutes
    bars.images_done(2)
    assert progress.tasks[bars.images].fields["eta"] == "ETA 0:20:00"
    assert progress.tasks[bars.images].fields["rate"] == "0.4 img/min"


def test_user_values_are_never_read_as_markup(capsys):
    UI().error("--scheduler cannot be '[/]'. Choose one of: [bold]x[/bold]")
    UI().warn("a prompt with [red]markup[/] and [/nonsense]")
    err = capsys.readouterr().err
    assert "--scheduler cannot be '[/]'. Choose one of: [bold]x[/bold]" in err
    assert "a prompt with [red]markup[/] and [/nonsense]" in err


def test_control_characters_are_shown_not_sent_to_the_terminal(capsys):
    hostile = "a fox\x1b[2J\x1b]0;owned\x07 done"
    assert printable(hostile) == "a fox\\x1b[2J\\x1b]0;owned\\x07 done"
    assert "\x1b" not in short(hostile)
    UI().error(hostile)
    UI(quiet=True).paths([("out/\x1b[2Jx.png", "")])
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err and "\x1b" not in captured.out


def test_a_columns_value_of_zero_does_not_silence_errors(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "0")
    UI().error("--steps must be from 1 to 1,000, not 0.")
    assert "--steps must be from 1 to 1,000, not 0." in capsys.readouterr().err


def test_quiet_still_prints_results(capsys):
    ui = UI(quiet=True)
    ui.info("progress chatter")
    ui.warn("a warning")
    ui.paths([("out/a.png", "seed 1"), ("out/b.png", "seed 2")])
    captured = capsys.readouterr()
    assert captured.out == "out/a.png\nout/b.png\n" and captured.err == ""


def _wait(ui: UI, text: str) -> None:
    with ui.status(text):
        pass


def _shown(capsys, action) -> str:
    action()
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize("action, expected", [
    (lambda ui: ui.info(f"A1111 prompt syntax: {escape('a [cat:dog:5]')}"), "a [cat:dog:5]"),
    (lambda ui: ui.warn("a [cat:dog:5] :smile:"), "a [cat:dog:5] :smile:"),
    (lambda ui: ui.error("'prompt' has :fox_face:"), ":fox_face:"),
    (lambda ui: ui.notice(":thumbs_up: done"), ":thumbs_up: done"),
    (lambda ui: ui.paths([("out/x.png", "seed 1  a [cat:dog:5]")]), "seed 1  a [cat:dog:5]"),
    (lambda ui: ui.table("scores", ["prompt"], [[escape("a :cat: on :fire:")]]), "a :cat: on :fire:"),
    (lambda ui: _wait(ui, f"Loading {escape('./models/:dog:')}"), "Loading ./models/:dog:"),
])
def test_emoji_codes_in_user_text_print_as_typed(capsys, action, expected):
    # rich reads ':dog:' as an emoji as it reads '[b]' as markup: a prompt like 'a [cat:dog:5]'
    # (A1111's prompt editing) must print as typed, on every path a user's text takes.
    ui = UI()
    assert expected in _shown(capsys, lambda: action(ui))


def test_the_spinner_shows_user_text_as_typed():
    ui = UI()
    buf = io.StringIO()
    ui.err = Console(file=buf, force_terminal=True, emoji=False, highlight=False, width=100)
    with ui.status(f"Loading {escape('./models/:dog:[x]')}"):
        pass
    frames = buf.getvalue().split("\r")
    shown = [f for f in frames if "Loading" in f]
    assert len(shown) >= 2 and all("Loading ./models/:dog:[x]" in f for f in shown), shown  # spinner and ✓ line


# -- help text ------------------------------------------------------------------------------------


def _help(*args: str) -> str:
    from typer.testing import CliRunner

    from spo_cli.cli import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def _commands() -> list[str]:
    import typer.main

    from spo_cli.cli import app

    return sorted(typer.main.get_command(app).commands)


@pytest.mark.parametrize("command", _commands())
def test_each_help_panel_shows_once(command):
    # replay had "Sampling (each replaces the recorded value)" and the shared options' "Sampling":
    # two panels of one kind, the options split between them.
    import re

    panels = [title.split(" (")[0] for title in re.findall(r"╭─ (.+?) ─", _help(command))]
    assert len(panels) == len(set(panels)), panels


def test_batch_help_names_every_jsonl_key():
    from spo_cli import prompts

    text = " ".join(_help("batch").split())
    listed = text.split("jsonl keys: ")[1].split(". ")[0]
    assert [k.removesuffix(" (required)") for k in listed.split(", ")] == list(prompts.KEYS)

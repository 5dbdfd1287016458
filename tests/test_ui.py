"""What the user sees, without a model: messages that quote user values, progress, paths."""

from __future__ import annotations

import io
import re

import pytest

from rich.console import Console
from rich.progress import Progress, TextColumn

from spo_cli.cli.ui import UI, _Bars, escape, printable, short


def test_the_eta_shows_after_the_first_call_however_long_it_took():
    # rich's own estimate needs samples inside a 30-second window: with calls of minutes it stays
    # blank for the whole run. Ours comes from the steps done so far.
    now = [0.0]
    progress = Progress(TextColumn("{task.fields[eta]}"), console=Console(file=io.StringIO()), get_time=lambda: now[0])
    bars = _Bars(progress, total=10, steps=50)
    assert str(progress.tasks[bars.images].fields["eta"]) == "ETA -:--:--"
    bars.start_call(2, 50)
    now[0] = 300.0  # one call of two images took five minutes
    bars.step(50, 50)
    bars.images_done(2)
    assert str(progress.tasks[bars.images].fields["eta"]) == "ETA 0:20:00"
    assert str(progress.tasks[bars.images].fields["rate"]) == "0.4 img/min"


def test_the_bars_count_down_between_steps_and_show_seconds_per_step():
    now = [0.0]
    buf = io.StringIO()
    progress = Progress(TextColumn("{task.fields[rate]} {task.fields[eta]}"),
                        console=Console(file=buf, width=100), get_time=lambda: now[0])
    bars = _Bars(progress, total=1, steps=20)
    bars.start_call(1, 20)
    now[0] = 40.0
    bars.step(10, 20)  # -n 1: known from the first steps, not only after the image
    fields = progress.tasks[bars.steps].fields
    assert str(progress.tasks[bars.images].fields["eta"]) == "ETA 0:00:40"
    assert str(fields["rate"]) == "4.00 s/step" and str(fields["eta"]) == "ETA 0:00:40"
    now[0] = 42.0  # no step since: the field is worked out as it is drawn
    assert str(progress.tasks[bars.images].fields["eta"]) == "ETA 0:00:38"
    progress.console.print(progress.make_tasks_table([progress.tasks[bars.steps]]))
    assert "4.00 s/step ETA 0:00:38" in buf.getvalue()
    now[0] = 80.0
    bars.step(20, 20)
    bars.images_done(1)
    assert str(progress.tasks[bars.images].fields["eta"]) == "ETA 0:00:00"
    bars.start_call(1, 10)  # before its first step, the last call's rate stands in
    assert str(progress.tasks[bars.steps].fields["eta"]) == "ETA 0:00:40"


# -- the estimator --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_estimate_counts_down_between_updates():
    from spo_cli.eta import Eta

    clock = FakeClock()
    eta = Eta(50, clock=clock)
    assert eta.remaining() is None and eta.rate() is None  # nothing done, nothing known
    clock.now = 10.0
    eta.update(5)  # 2 s a step
    assert eta.rate() == 2.0 and eta.remaining() == 90.0
    clock.now = 11.5
    assert eta.remaining() == 88.5  # down by the time since
    clock.now = 12.0
    eta.update(6)
    assert eta.remaining() == 88.0
    clock.now = 99.0
    eta.update(50)
    assert eta.remaining() == 0.0
    clock.now = 1000.0
    assert eta.remaining() == 0.0


def test_a_stuck_step_raises_the_estimate_instead_of_freezing_it():
    # serve's /progress kept `eta_relative: 3.7` for 10 minutes at step 0: the last call's rate, forever.
    from spo_cli.eta import Eta

    clock = FakeClock()
    eta = Eta(20, clock=clock, prior=0.185)  # the last call: 3.7 s for 20 steps
    assert eta.remaining() == pytest.approx(3.7)
    clock.now = 0.1
    assert eta.remaining() == pytest.approx(3.6)  # counting down
    clock.now = 600.0
    # step 1 alone has taken 600 s, so the 20 take at least 20 × 600 s
    assert eta.remaining() == pytest.approx(600.0 * 19)
    clock.now = 1200.0
    assert eta.remaining() > 600.0 * 19  # still growing: never 0 while the work is not done
    eta.update(1)
    assert eta.rate() == 1200.0


def test_the_estimate_never_goes_below_zero_nor_jumps_at_the_overrun():
    from spo_cli.eta import Eta

    clock = FakeClock()
    eta = Eta(10, clock=clock)
    clock.now = 4.0
    eta.update(2)  # 2 s a step: 16 s left
    seen = []
    for tenth in range(40, 200):  # step 3 never comes
        clock.now = tenth / 10
        seen.append(eta.remaining())
    assert min(seen) >= 0
    assert max(abs(a - b) for a, b in zip(seen, seen[1:])) < 1.0  # continuous: no jump to 0 or back


@pytest.mark.parametrize("seconds, shown", [(None, "-:--:--"), (0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05")])
def test_clock_time(seconds, shown):
    from spo_cli.eta import clock_time

    assert clock_time(seconds) == shown


@pytest.mark.parametrize("seconds, shown", [(None, ""), (2.3101, "2.31 s/step"), (0.25, "4.00 steps/s")])
def test_step_rate(seconds, shown):
    from spo_cli.eta import step_rate

    assert step_rate(seconds) == shown


# -- progress without a terminal ------------------------------------------------------------------


def _lines(interval: float, total: int = 4, steps=10):
    from spo_cli.cli.ui import _Lines

    clock, written = FakeClock(), []
    return _Lines(written.append, total, steps, clock=clock, interval=interval), clock, written


def test_log_lines_come_at_the_interval_not_at_every_step():
    lines, clock, written = _lines(interval=30)
    lines.start_call(2, 10)
    assert written == ["images 0/4, step 0/10 (×2), elapsed 0:00:00, ETA -:--:--"]
    for step in range(1, 11):  # 2 s a step: one line when 30 s have passed
        clock.now += 2
        lines.step(step, 10)
    assert len(written) == 1
    lines.images_done(2)
    lines.start_call(2, 10)
    for step in range(1, 11):
        clock.now += 2
        lines.step(step, 10)
    assert written[1] == "images 2/4, step 5/10 (×2), 2.00 s/step, 4.0 img/min, elapsed 0:00:30, ETA 0:00:10"
    lines.images_done(2)  # the last image: always a line
    assert written[2:] == ["images 4/4, 6.0 img/min, elapsed 0:00:40"]


def test_a_long_single_image_still_logs_at_the_interval():
    lines, clock, written = _lines(interval=30, total=1, steps=50)
    lines.start_call(1, 50)
    for step in range(1, 51):
        clock.now += 6
        lines.step(step, 50)
    assert len(written) == 1 + 10  # the first line, then one per 30 s of 300 s
    assert all("ETA" in w for w in written[1:])


def test_interval_zero_logs_every_step():
    lines, clock, written = _lines(interval=0, total=1, steps=3)
    lines.start_call(1, 3)
    for step in (1, 2, 3):
        clock.now += 1
        lines.step(step, 3)
    lines.images_done(1)
    assert len(written) == 1 + 3 + 1


def test_the_images_count_in_steps_of_each_image():
    # a jsonl line at 40 steps and one at 10: after the first, 80 % of the work is done
    lines, clock, written = _lines(interval=1000, total=2, steps=[40, 10])
    lines.start_call(1, 40)
    clock.now = 80.0
    lines.step(40, 40)
    lines.images_done(1)
    assert lines.t.eta() == "ETA 0:00:20"


def test_scoring_without_a_terminal_logs_its_count_at_the_interval():
    from spo_cli.cli.ui import _CountLines

    clock, written = FakeClock(), []
    count = _CountLines(written.append, 100, "scoring", clock=clock, interval=30)
    count.describe("pickscore")
    for _ in range(9):  # 10 items every 10 s, then the last 10 in 5 s
        clock.now += 10
        count.advance(10)
    clock.now += 5
    count.advance(10)
    assert written == ["pickscore 10/100, elapsed 0:00:10, ETA 0:01:30", "pickscore 40/100, elapsed 0:00:40, ETA 0:01:00",
                       "pickscore 70/100, elapsed 0:01:10, ETA 0:00:30", "pickscore 100/100, elapsed 0:01:35"]


def test_scoring_progress_goes_to_a_log_as_lines(capsys):
    # capsys's stderr is no terminal, as a log file is not
    with UI().count_progress(3, "scoring") as count:
        count.advance(3)
    # The elapsed time is the real clock's: its format is checked, never its value (a busy machine is slow).
    assert re.fullmatch(r"scoring 3/3, elapsed \d+:\d\d:\d\d\n", capsys.readouterr().err)


@pytest.mark.parametrize("value", ["x", "-1", "inf", "nan"])
def test_a_bad_interval_is_said_and_the_default_used(monkeypatch, capsys, value):
    from spo_cli.cli.ui import PROGRESS_INTERVAL_S

    monkeypatch.setenv("SPO_PROGRESS_INTERVAL", value)
    assert UI()._interval() == PROGRESS_INTERVAL_S
    assert "SPO_PROGRESS_INTERVAL" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_goes_to_a_log_file_as_plain_lines(hub_cache, tmp_path):
    import os
    import subprocess

    from conftest import HANG, SPO_CLI

    log = tmp_path / "log"
    with open(log, "w") as f:
        r = subprocess.run([*SPO_CLI, "generate", "a fox", "--seed", "1", "-n", "2", "--width", "64", "--height", "64",
                            "--steps", "3", "--device", "cpu", "--out", str(tmp_path / "out")],
                           stdout=subprocess.PIPE, stderr=f, text=True, timeout=HANG,
                           env={**os.environ, "SPO_PROGRESS_INTERVAL": "0"})
    text = log.read_text()
    assert r.returncode == 0, text
    assert "\x1b" not in text and "\r" not in text  # no bar drawing in a log
    progress = [ln for ln in text.splitlines() if ln.startswith("images ")]
    assert progress[0].startswith("images 0/2, step 0/3, elapsed ") and progress[0].endswith(", ETA -:--:--")
    step = re.compile(r"images [01]/2, step [123]/3, [0-9.]+ (s/step|steps/s), .*elapsed [0-9:]+, ETA \d+:\d\d:\d\d$")
    assert all(step.match(ln) for ln in progress[1:8]), progress
    assert progress[4].startswith("images 1/2, ")  # an image's end
    assert progress[-1].startswith("images 2/2, ") and "img/min" in progress[-1] and "ETA" not in progress[-1]
    assert len(progress) == 9  # at interval 0: the first, each step, each image's end


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


@pytest.mark.slow
def test_ctrl_c_lists_the_images_already_written(hub_cache, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from conftest import SPO_CLI

    out, stdout, stderr = tmp_path / "out", tmp_path / "stdout", tmp_path / "stderr"
    with open(stdout, "w") as so, open(stderr, "w") as se:
        proc = subprocess.Popen([*SPO_CLI, "generate", "a fox", "--seed", "1", "-n", "200", "--width", "64",
                                 "--height", "64", "--steps", "3", "--device", "cpu", "--out", str(out)],
                                stdout=so, stderr=se, text=True)
        try:
            deadline = time.monotonic() + 300  # a hang guard, not a measure of speed
            while not (out.exists() and any(out.glob("*.json"))):
                assert proc.poll() is None, stderr.read_text()
                assert time.monotonic() < deadline, "no image written in 300 s"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 130, stderr.read_text()
    on_disk = sorted(str(p) for p in out.glob("*.png"))
    listed = [line.split("  ")[0] for line in stdout.read_text().splitlines()]
    assert on_disk and listed == on_disk, (listed, on_disk)
    assert f"Stopped after {len(on_disk)} of 200 image(s)" in stderr.read_text()
    assert all(os.path.exists(p[:-4] + ".json") for p in on_disk)


@pytest.mark.slow
def test_replay_of_a_bare_prompt_says_which_settings_are_defaults(hub_cache, tmp_path):
    import json

    from typer.testing import CliRunner

    from spo_cli.cli import app

    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["replay", "--infotext", "just a prompt", "--steps", "2", "--width", "64",
                                 "--height", "64", "--device", "cpu", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    (written,) = json.loads(r.stdout)
    meta = json.loads(open(written["sidecar"]).read())
    said = " ".join(r.stderr.split())
    # Steps and Size came from the command line: not defaults, not named
    assert (f"--infotext does not set Sampler, CFG scale or Seed, so spo's defaults are used: Sampler the "
            f"checkpoint's own, CFG scale 5, Seed random ({meta['seed']}).") in said, said
    assert meta["guidance"] == 5.0 and meta["steps"] == 2


def test_a_whole_infotext_gets_no_defaults_notice(capsys):
    from spo_cli.cli.replay import from_infotext

    text = "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512"
    assert from_infotext(UI(), text, "--infotext")[2] == []
    # Seed -1 is A1111's "random", asked for: not a default to point out
    assert from_infotext(UI(), "a fox\nSteps: 20, Sampler: Euler, Seed: -1", "--infotext")[2] == ["CFG scale", "Size"]


# -- tables at 80 columns -------------------------------------------------------------------------


def test_models_at_80_columns_keeps_every_repo_id_whole():
    from typer.testing import CliRunner

    from spo_cli import presets
    from spo_cli.cli import app

    r = CliRunner().invoke(app, ["models"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    ids = {p.repo_id for p in presets.PRESETS.values()} | {p.lora_repo for p in presets.PRESETS.values() if p.lora_repo}
    cells = {cell.strip() for line in lines for cell in line.split("│")}
    assert ids <= cells, ids - cells


def test_a_table_narrows_the_column_that_can_wrap_rather_than_break_a_word(capsys, monkeypatch):
    # rich narrows the widest column first, through the middle of its words: here the id column,
    # though narrowing the prose beside it keeps every word whole.
    monkeypatch.setenv("COLUMNS", "70")
    repo = "an-organisation/a-rather-long-repository-name"  # 45 characters
    prose = "a description of some length that can wrap at any of its spaces"
    UI().table("t", ["id", "about"], [[repo, prose]])
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 70
    assert repo in out and "description" in out


def test_a_table_too_narrow_for_its_words_still_fits_the_screen(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    UI().table("t", ["id", "about"], [["an-organisation/a-rather-long-repository-name", "words"]])
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 30  # folded, as before


@pytest.mark.parametrize("value", ["9" * 5000, "\x1b[2J" + "x" * 5000])
def test_a_bad_interval_is_quoted_short(monkeypatch, capsys, value):
    # Before: the whole value went into the warning (5,000 digits float() reads as inf; an escape as is).
    monkeypatch.setenv("SPO_PROGRESS_INTERVAL", value)
    UI()._interval()
    err = capsys.readouterr().err
    assert "SPO_PROGRESS_INTERVAL=" in err and len(err) < 300 and "\x1b" not in err and ",00" in err and "characters)" in err

"""One object for everything the user sees: data on stdout, messages and progress on stderr."""

from __future__ import annotations

import json
import os
import sys
import time
import unicodedata
from contextlib import contextmanager

from rich.console import Console

# rich.progress and rich.table are imported where used: `spo --help` never needs them.

# Without a terminal, a progress line at most this often (SPO_PROGRESS_INTERVAL overrides it): a
# log of a run of hours stays readable, and a run that is stuck shows it within the minute.
PROGRESS_INTERVAL_S = 30.0


def _sane_columns() -> None:
    # rich takes COLUMNS as the width, and COLUMNS=0 (or junk) would make every message vanish.
    columns = os.environ.get("COLUMNS")
    if columns is not None and not (columns.isdigit() and int(columns) > 0):
        del os.environ["COLUMNS"]


def _console(**kwargs) -> Console:
    # emoji=False: rich turns ':dog:' into an emoji as it does markup, and a prompt such as
    # 'a [cat:dog:5]' must print as typed. Markup stays on for spo's own messages, which escape
    # every user value they quote (`escape`).
    return Console(highlight=False, emoji=False, **kwargs)


class UI:
    def __init__(self, *, quiet: bool = False, json_mode: bool = False, debug: bool = False):
        _sane_columns()
        self.quiet = quiet
        self.json_mode = json_mode
        self.debug = debug
        self.err = _console(stderr=True, quiet=quiet)
        self.out = _console(soft_wrap=True)

    # -- messages (stderr) ------------------------------------------------------------------------

    def info(self, text: str) -> None:
        self.err.print(text)

    def warn(self, text: str) -> None:
        """A warning; `text` is plain (values from users are never read as rich markup)."""
        self.err.print(_labelled("warning: ", "yellow", text))

    def silence(self) -> None:
        self.quiet = True
        self.err = _console(stderr=True, quiet=True)

    def notice(self, text: str) -> None:
        """A warning that --quiet does not hide: the result is not what was asked for."""
        _console(stderr=True).print(_labelled("warning: ", "yellow", text))

    def error(self, text: str) -> None:
        # Errors are shown even with --quiet: a silent non-zero exit explains nothing. Plain text:
        # a message quotes what the user typed, and "[/]" in a value must not break the printing.
        _console(stderr=True).print(_labelled("error: ", "bold red", text))

    @contextmanager
    def status(self, text: str):
        """A spinner with elapsed time for a wait of unknown length (imports, loading)."""
        if self.quiet:
            yield
            return
        if not self.err.is_terminal:  # logs and pipes get the outcome line only
            yield
            self.err.print(f"[green]✓[/] {text}")
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from rich.text import Text

        with Progress(
            # the description as plain text: a TextColumn reads markup with emoji codes on
            SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
            console=self.err, transient=True,
        ) as progress:
            progress.add_task(Text.from_markup(text, emoji=False).plain, total=None)
            yield
        self.err.print(f"[green]✓[/] {text}")

    # -- progress ---------------------------------------------------------------------------------

    def download_tqdm(self, label: str):
        """A tqdm class for huggingface_hub that draws its byte counts as a rich bar."""
        from rich.progress import (
            BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn,
        )
        from tqdm.std import tqdm

        ui = self

        class RichTqdm(tqdm):
            # snapshot_download opens "Downloading bytes" (network bytes), a byte bar for the bytes
            # written (the one drawn here, once there is something to fetch) and hf_thread_map's
            # "Fetching N files" count (unit "it"), which it closes last: that close ends the rich bar.
            progress = None
            task = None
            bytes_bar = None
            done = False  # the file count closed: snapshot_download is over

            def __init__(self, *args, **kwargs):
                kwargs.pop("name", None)
                desc = str(kwargs.get("desc", ""))
                self._bytes = kwargs.get("unit") == "B" and not desc.startswith("Downloading bytes")
                self._files = kwargs.get("unit", "it") != "B"
                kwargs["disable"] = False
                kwargs["file"] = _Null()
                super().__init__(*args, **kwargs)
                if self._bytes:
                    RichTqdm.bytes_bar = self

            def display(self, msg=None, pos=None):
                if not self._bytes or ui.quiet or not self.total or RichTqdm.done:
                    return True  # nothing to fetch (yet): no bar, e.g. when all is cached
                if RichTqdm.progress is None:
                    RichTqdm.progress = Progress(
                        TextColumn("Downloading " + label.replace("{", "{{").replace("}", "}}"), markup=False),
                        BarColumn(), DownloadColumn(),
                        TransferSpeedColumn(), TimeRemainingColumn(), console=ui.err, transient=False,
                    )
                    RichTqdm.progress.start()
                    RichTqdm.task = RichTqdm.progress.add_task(label, total=None)
                RichTqdm.progress.update(RichTqdm.task, completed=self.n, total=self.total)
                return True

            def close(self):
                if self._files:
                    if RichTqdm.bytes_bar is not None:
                        RichTqdm.bytes_bar.display()
                    if RichTqdm.progress is not None:
                        RichTqdm.progress.stop()
                        RichTqdm.progress = None
                    RichTqdm.done = True
                super().close()

        return RichTqdm

    @contextmanager
    def images_progress(self, total: int, steps, *, clock=None):
        """An overall bar over images and a denoising bar for the pipeline call in flight; without a
        terminal (a log file, nohup, Slurm, CI), a plain line every SPO_PROGRESS_INTERVAL seconds.
        `steps`: each image's denoising steps, or one count for all (the ETA counts steps)."""
        if self.quiet:
            from spo_cli.render import NoProgress

            yield NoProgress()
            return
        if not (self.err.is_terminal or self.err.is_jupyter):
            # rich draws nothing there until the end; a line at a steady pace, as tqdm writes to files
            yield _Lines(lambda text: self.err.print(text, markup=False, soft_wrap=True), total, steps,
                         clock=clock or time.monotonic, interval=self._interval(), note=self.warn)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
            console=self.err, **({"get_time": clock} if clock else {}),
        )
        with progress:
            yield _Bars(progress, total, steps, note=self.warn)

    def _interval(self) -> float:
        raw = os.environ.get("SPO_PROGRESS_INTERVAL")
        if raw is None:
            return PROGRESS_INTERVAL_S
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < float("inf"):
            from spo_cli.validate import shown  # quoted short: the environment may hold anything

            self.warn(f"SPO_PROGRESS_INTERVAL={shown(raw)} is not a number of seconds; using {PROGRESS_INTERVAL_S:g}.")
            return PROGRESS_INTERVAL_S
        return seconds

    @contextmanager
    def count_progress(self, total: int, label: str, *, clock=None):
        """One bar over a count of items (scoring), with `advance(n)` and `describe(text)`; without a
        terminal, plain lines as for images."""
        if self.quiet:
            yield _Count(None, None)
            return
        if not (self.err.is_terminal or self.err.is_jupyter):
            yield _CountLines(lambda text: self.err.print(text, markup=False, soft_wrap=True), total, label,
                              clock=clock or time.monotonic, interval=self._interval())
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=self.err)
        with progress:
            yield _Count(progress, progress.add_task(label, total=total))

    # -- data (stdout) ----------------------------------------------------------------------------

    def emit_json(self, data, *, one_line: bool = False) -> None:
        """`data` on stdout; `one_line` for a long-running command whose readers take a line at a time."""
        sys.stdout.write(json.dumps(data, indent=None if one_line else 2, ensure_ascii=False, allow_nan=False) + "\n")
        sys.stdout.flush()

    def table(self, title: str, columns: list[str], rows: list[list[str]]) -> None:
        """A small table of words and numbers; paths go through `paths`, never in a cell."""
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c, overflow="fold")  # a word longer than its column, only when nothing else fits
        for r in rows:
            t.add_row(*r)
        _fit(t, self.out, [columns, *rows])
        self.out.print(t)

    def paths(self, lines: list[tuple[str, str]]) -> None:
        """Written files, one a line, each path whole (never wrapped, so it can be copied), with a
        short note after it. With --quiet the paths alone: quiet drops progress, not results."""
        for path, note in lines:
            if self.quiet:
                sys.stdout.write(printable(path) + "\n")
            else:
                self.out.print(f"{escape(printable(path))}[dim]{'  ' + escape(note) if note else ''}[/]",
                               soft_wrap=True)
        sys.stdout.flush()


def _fit(table, console: Console, cells: list[list[str]]) -> None:
    """Column widths that break no word (a repo id, a number with its unit) when the table can fit the
    console that way. rich narrows its widest columns first, down through the middle of their
    words, even when narrowing another column would have kept every word whole."""
    from rich.measure import Measurement

    options = console.options
    measured = [[Measurement.get(console, options, console.render_str(cell)) for cell in column]
                for column in zip(*cells)]
    least = [max(m.minimum for m in column) for column in measured]  # the longest word
    widths = [max(m.maximum for m in column) for column in measured]  # the longest line
    room = options.max_width - (3 * len(widths) + 1)  # a border and a space each side of each column
    if sum(widths) <= room or sum(least) > room:
        return  # fits as it is; or cannot without breaking a word, and rich folds
    while sum(widths) > room:  # narrow the widest column that can still wrap at a space
        i = max((i for i in range(len(widths)) if widths[i] > least[i]), key=lambda i: widths[i])
        widths[i] -= 1
    for column, width in zip(table.columns, widths):
        column.width = width


def _labelled(label: str, style: str, text: str):
    from rich.text import Text

    return Text.assemble((label, style), printable(text))


def printable(text: str) -> str:
    """`text` with control characters shown as escapes: a prompt must not clear a user's terminal."""
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else f"\\x{ord(c):02x}" for c in text)


def short(text: str, limit: int = 60) -> str:
    """One line of at most `limit` characters, for showing a prompt in a summary."""
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def escape(text: str) -> str:
    """A user's text inside a message that has rich markup: shown as typed, control characters escaped."""
    from rich.markup import escape as rich_escape

    return rich_escape(printable(text))


class _Null:
    def write(self, *_):
        pass

    def flush(self):
        pass


class _Count:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int) -> None:
        if self.progress is not None and n:
            self.progress.advance(self.task, n)

    def describe(self, text: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=text)


class _CountLines:
    """_Count as plain lines for a log: the first advance, then at most one per `interval` seconds,
    and the last; each with the count, the time so far and the time left."""

    def __init__(self, write, total: int, label: str, *, clock, interval: float):
        from spo_cli.eta import Eta

        self.write, self.clock, self.interval, self.label = write, clock, interval, label
        self.total, self.done = total, 0
        self.eta = Eta(max(total, 1), clock=clock)
        self.last: float | None = None

    def advance(self, n: int) -> None:
        from spo_cli.eta import clock_time

        if not n:
            return
        self.done += n
        self.eta.update(self.done)
        if self.done >= self.total or self.last is None or self.clock() - self.last >= self.interval:
            self.last = self.clock()
            left = "" if self.done >= self.total else f", ETA {clock_time(self.eta.remaining())}"
            self.write(f"{self.label} {self.done}/{self.total}, elapsed {clock_time(self.eta.elapsed())}{left}")

    def describe(self, text: str) -> None:
        self.label = text


class _Tracker:
    """What the bars and the log lines both show: images done, and the time left, counted in
    denoising steps of images (a call of k images at n steps is k·n), so it is known from the first
    step of the first call, and counts down while a call runs."""

    def __init__(self, total: int, steps, clock):
        from spo_cli.eta import Eta

        per_image = [steps] * total if isinstance(steps, int) else list(steps)
        self.total, self.clock = total, clock
        self.run = Eta(max(sum(per_image), 1), clock=clock)
        self.call = Eta(per_image[0] if per_image else 1, clock=clock)
        self.images = 0
        self.units = 0  # image-steps of the calls that have ended
        self.size = self.steps = self.step = 0

    def start_call(self, size: int, steps: int) -> None:
        from spo_cli.eta import Eta

        self.size, self.steps, self.step = size, steps, 0
        # the last call's rate stands in until this one's first step
        self.call = Eta(max(steps, 1), clock=self.clock, prior=self.call.rate())

    def on_step(self, done: int, total: int) -> None:
        self.step, self.steps = done, total
        self.call.total = max(total, 1)
        self.call.update(done)
        self.run.update(self.units + done * self.size)

    def images_done(self, n: int) -> None:
        self.images += n
        self.units += n * self.steps
        self.run.update(self.units)

    def per_minute(self) -> str:
        elapsed = self.run.elapsed()
        return f"{self.images / elapsed * 60:.1f} img/min" if self.images and elapsed > 0 else ""

    def eta(self) -> str:
        from spo_cli.eta import clock_time

        return "ETA " + clock_time(self.run.remaining())

    def call_eta(self) -> str:
        from spo_cli.eta import clock_time

        return "ETA " + clock_time(self.call.remaining())

    def step_rate(self) -> str:
        from spo_cli.eta import step_rate

        return step_rate(self.call.rate() if self.call.done else None)


class _Live:
    """A rich task field worked out each time the bar is drawn (ten times a second), so an ETA
    counts down between the updates that move the bar."""

    def __init__(self, fn):
        self.fn = fn

    def __format__(self, spec: str) -> str:
        return format(self.fn(), spec)

    def __str__(self) -> str:
        return self.fn()


class _Bars:
    """render.NoProgress's three methods, drawn: images overall, and the call in flight."""

    def __init__(self, progress, total: int, steps, *, note=lambda text: None):
        self.progress, self.note = progress, note  # note: UI.warn, printed above the bars
        self.t = t = _Tracker(total, steps, progress.get_time)
        self.images = progress.add_task("images", total=total, rate=_Live(t.per_minute), eta=_Live(t.eta))
        first = steps if isinstance(steps, int) else (list(steps) or [0])[0]
        self.steps = progress.add_task("denoising", total=first, rate=_Live(t.step_rate), eta=_Live(t.call_eta))

    def start_call(self, size: int, steps: int) -> None:
        self.t.start_call(size, steps)
        self.progress.reset(self.steps, total=steps, description=f"denoising ×{size}")

    def step(self, done: int, total: int) -> None:
        self.t.on_step(done, total)
        self.progress.update(self.steps, completed=done, total=total)

    def images_done(self, n: int) -> None:
        self.t.images_done(n)
        self.progress.advance(self.images, n)


class _Lines:
    """render.NoProgress's three methods as plain lines for a log: one when the first call starts,
    then at most one per `interval` seconds, at a step or an image's end, and one when the last
    image is done. Each says images done of the total, the step of the call in flight, its s/step,
    images per minute, the time so far and the time left."""

    def __init__(self, write, total: int, steps, *, clock, interval: float, note=lambda text: None):
        self.write, self.clock, self.interval, self.note = write, clock, interval, note
        self.t = _Tracker(total, steps, clock)
        self.last: float | None = None  # when the last line was written

    def start_call(self, size: int, steps: int) -> None:
        self.t.start_call(size, steps)
        if self.last is None:
            self._line()

    def step(self, done: int, total: int) -> None:
        self.t.on_step(done, total)
        self._due()

    def images_done(self, n: int) -> None:
        self.t.images_done(n)
        if self.t.images >= self.t.total:
            self._line()
        else:
            self._due()

    def _due(self) -> None:
        if self.last is None or self.clock() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        from spo_cli.eta import clock_time

        t = self.t
        self.last = self.clock()
        parts = [f"images {t.images}/{t.total}"]
        finished = t.images >= t.total
        if not finished:
            parts.append(f"step {t.step}/{t.steps}" + (f" (×{t.size})" if t.size > 1 else ""))
            parts.append(t.step_rate())
        parts += [t.per_minute(), f"elapsed {clock_time(t.run.elapsed())}"]
        if not finished:
            parts.append(t.eta())
        self.write(", ".join(p for p in parts if p))

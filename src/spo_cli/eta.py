"""Time left, from the work done so far: one pure estimator for the progress bars, the plain log
lines and `spo serve`'s /sdapi/v1/progress.

The unit of work is a denoising step (of one image, for a whole run; of the call, for one call): it
is the one thing reported while a call of minutes runs, so an estimate exists from the first step
of the first image, and it counts down between steps instead of standing still until the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Eta:
    """Seconds left for `total` units of work started now.

    The rate is the seconds per unit measured up to the last `update`; before the first one, `prior`
    (an earlier call's rate), if any. Between updates the estimate counts down. When the unit in
    flight has already taken longer than the rate allows, the time spent so far becomes the lower
    bound of the rate, so the estimate grows instead of sitting at zero (or at an old figure) while
    the work is stuck: a slow first step makes the estimate honest, not frozen. On the last unit that
    bound is the time taken, so there the estimate reads zero until the unit ends (as tqdm's does).
    """

    def __init__(self, total: float, *, clock: Callable[[], float] = time.monotonic, prior: float | None = None):
        self.total = total
        self.clock = clock
        self.prior = prior if prior and prior > 0 else None
        self.started = clock()
        self.done = 0.0
        self.at = self.started  # when `done` was last reported

    def update(self, done: float) -> None:
        self.done = done
        self.at = self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self) -> float | None:
        """Seconds per unit measured so far (the prior before the first update); None when unknown."""
        if self.done > 0:
            return (self.at - self.started) / self.done
        return self.prior

    def remaining(self) -> float | None:
        """Seconds left now; None before anything is known (no unit done and no prior). All done is
        0: the rate then times the total is the time taken, and the floor below is less than it."""
        rate = self.rate()
        if rate is None:
            return None
        elapsed = self.elapsed()
        # The unit in flight has taken at least `elapsed - at`; all of them at least elapsed / (done + 1).
        rate = max(rate, elapsed / (self.done + 1))
        return max(0.0, rate * self.total - elapsed)


def clock_time(seconds: float | None) -> str:
    """H:MM:SS, or -:--:-- when unknown."""
    if seconds is None:
        return "-:--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def step_rate(seconds_per_step: float | None) -> str:
    """'2.31 s/step', or 'steps/s' when a step takes under a second (as tqdm turns s/it into it/s)."""
    if not seconds_per_step:
        return ""
    if seconds_per_step >= 1:
        return f"{seconds_per_step:.2f} s/step"
    return f"{1 / seconds_per_step:.2f} steps/s"

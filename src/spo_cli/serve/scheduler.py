"""Which queued images go to the GPU next, and with whom: `spo serve`'s queue, apart from the GPU.

A pipeline call is the oldest queued image and up to `images_per_call - 1` younger ones with the
same call key (what one call must share: `Engine.call_key`, the model label included), oldest
first. A call that is not full waits up to `wait_s` (`--batch-wait-ms`) for company, counted from
the moment the worker, free, finds work; a full call goes at once. The queue is bounded in images,
not requests: a request for 8 images takes 8 places.

Several workers (`spo serve --devices`, one per device) may take calls from the one queue: each
takes the next call when it is free, so calls are in flight on several devices at once. An
interrupt stops every call in flight.

Pure: no thread of its own, no torch, no engine. The clock and the call key are injected, so the
fast tests drive it with a fake clock and a fake key, as TGI tests its `next_batch`. The key is
computed when an image is submitted, or, where the key function cannot tell then (None: `spo serve`'s
worker keys on the devices' own threads), by the worker in `next_call`; never while holding the lock
(it tokenizes prompts, and every web request waits on that lock).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass

Key = Callable[[object, int], Hashable | None]


class QueueFull(Exception):
    """More images than the queue has room for (the server answers 429)."""


class ShuttingDown(Exception):
    """The queue takes nothing more: the server is stopping, or its models failed to load."""


@dataclass(eq=False)
class Queued:
    """Image `index` of `ticket`, waiting for the GPU."""

    ticket: object
    index: int
    key: Hashable | None  # None until the key function can tell (the models are still loading)
    since: float  # clock() when submitted
    number: int  # submission order across all tickets, from 1


@dataclass(eq=False)
class Call:
    """The images of one pipeline call, oldest first."""

    number: int  # calls taken so far, this one included
    images: tuple[Queued, ...]
    taken: float  # clock() when it left the queue
    interrupted: bool = False  # written under the scheduler's lock; read it through `Scheduler.stopping`

    @property
    def tickets(self) -> list:
        """The requests with an image in this call, in queue order."""
        return list(dict.fromkeys(q.ticket for q in self.images))

    @property
    def batched(self) -> int:
        """Images that share this call with another request's: all of them, or none."""
        return len(self.images) if len(self.tickets) > 1 else 0

    @property
    def waits(self) -> list[float]:
        """How long each image waited in the queue, in the clock's seconds."""
        return [self.taken - q.since for q in self.images]


@dataclass(frozen=True)
class QueueState:
    images: int  # queued, not counting the call in flight
    requests: int  # tickets with an image queued
    running: bool  # a call is in flight
    interrupted: bool  # the call in flight, or the next one, will stop at its next step


def _alone() -> Hashable:
    """A key equal to no other: the image goes through a call of its own."""
    return object()


class Scheduler:
    """The bounded queue and the choice of each pipeline call. Any thread may submit, cancel,
    interrupt or drain; the worker threads (one per device) take calls (`next_call`) and say when
    each is finished (`finished`)."""

    def __init__(self, key: Key, *, images_per_call: int = 1, wait_s: float = 0.0, max_images: int = 64,
                 clock: Callable[[], float] = time.monotonic):
        if images_per_call < 1 or max_images < 1 or not wait_s >= 0:
            raise ValueError(f"images_per_call {images_per_call} and max_images {max_images} must be at least 1, "
                             f"wait_s {wait_s} at least 0")
        self.images_per_call = images_per_call
        self.wait_s = wait_s
        self.max_images = max_images
        self._key = key
        self._clock = clock
        # Reentrant: uvicorn's signal handler drains, on the main thread, which may be inside `submit`
        # at that moment. So each change is one step, and `submit` checks again after its step.
        self._cond = threading.Condition(threading.RLock())
        self._queue: deque[Queued] = deque()
        self._submitted = 0  # images ever queued: the next one is numbered _submitted + 1
        self._calls = 0
        self._deadline: float | None = None  # when the call being gathered stops waiting for company
        self._open = True
        self._why_closed = ""
        self._abandoned = False
        self._in_flight: list[Call] = []  # taken and not yet finished, oldest first: one per busy device
        # An interrupt with no call in flight stops the next call taken from the images queued at
        # that moment: those numbered up to this. Cleared by the next call taken, whatever it holds.
        self._interrupt_upto: int | None = None

    # -- any thread ------------------------------------------------------------------------------

    def submit(self, ticket: object, size: int) -> None:
        """Queue images 0 … size−1 of `ticket`, all or none. Raises QueueFull or ShuttingDown."""
        with self._cond:
            self._check_room(size)  # a refusal costs no tokenizing
        keys = [self._key(ticket, i) for i in range(size)]  # outside the lock
        with self._cond:
            self._check_room(size)  # again: others may have queued meanwhile
            now, first = self._clock(), self._submitted + 1
            self._submitted += size
            self._queue.extend(Queued(ticket, i, key, now, first + i) for i, key in enumerate(keys))
            if not self._open:  # drained in between, by a signal handler on this thread
                self._queue = deque(q for q in self._queue if q.ticket is not ticket)
                raise ShuttingDown(self._why_closed)
            self._cond.notify_all()

    def _check_room(self, size: int) -> None:
        if not self._open:
            raise ShuttingDown(self._why_closed)
        if len(self._queue) + size > self.max_images:
            raise QueueFull(f"{len(self._queue)} image(s) are queued and the queue holds {self.max_images}")

    def cancel(self, ticket: object) -> int:
        """Drop `ticket`'s queued images (its client went away); a call in flight finishes. Returns how
        many were dropped."""
        with self._cond:
            kept = deque(q for q in self._queue if q.ticket is not ticket)
            dropped = len(self._queue) - len(kept)
            self._queue = kept
            return dropped

    def interrupt(self) -> bool:
        """A1111's interrupt: every call in flight (one per busy device) stops at its next step; with
        none in flight, the next call taken from the images queued now does (it may be waiting for
        company). Idle, nothing is remembered. Returns whether a call will stop."""
        with self._cond:
            if self._in_flight:
                for call in self._in_flight:
                    call.interrupted = True
            elif self._queue:
                self._interrupt_upto = self._submitted
            else:
                return False
            return True

    def drain(self, why: str = "the server is shutting down") -> list:
        """Take nothing more (`why` is what later submissions are told) and drop every queued image.
        Returns the tickets that had images queued, in queue order, for the caller to answer."""
        with self._cond:
            if self._open:
                self._open, self._why_closed = False, why
            dropped = list(dict.fromkeys(q.ticket for q in self._queue))
            self._queue.clear()
            self._cond.notify_all()
            return dropped

    def abandon(self, why: str = "the server is shutting down") -> list:
        """`drain`, and the call in flight stops at its next step too."""
        with self._cond:
            self._abandoned = True
        return self.drain(why)

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    @property
    def queued(self) -> int:
        """Images waiting (the call in flight not counted)."""
        with self._cond:
            return len(self._queue)

    def state(self) -> QueueState:
        with self._cond:
            pending = self._interrupt_upto is not None and any(q.number <= self._interrupt_upto for q in self._queue)
            return QueueState(images=len(self._queue), requests=len({id(q.ticket) for q in self._queue}),
                              running=bool(self._in_flight),
                              interrupted=any(c.interrupted for c in self._in_flight) or pending)

    # -- the worker thread -----------------------------------------------------------------------

    def next_call(self) -> Call | None:
        """Wait for the next call and take it from the queue; None once drained."""
        while True:
            with self._cond:
                while not (unkeyed := [q for q in self._queue if q.key is None]):
                    if not self._open:
                        return None
                    if (call := self._due()) is not None:
                        return call
                    # _due left a deadline whenever something is queued; otherwise wait for a submit
                    self._cond.wait(None if self._deadline is None else self._deadline - self._clock())
            # Images the key function could not key at submit (the models still loading; `spo serve`
            # keys on the devices' threads): keyed now, outside the lock.
            keys = [self._key(q.ticket, q.index) for q in unkeyed]
            with self._cond:
                for q, key in zip(unkeyed, keys):
                    q.key = _alone() if key is None else key

    def poll(self) -> Call | None:
        """`next_call` without waiting: the call due now by the clock, or None. The first look at a
        queue with work opens the wait for company."""
        with self._cond:
            if not self._open or any(q.key is None for q in self._queue):
                return None
            return self._due()

    def stopping(self, call: Call) -> bool:
        """Whether `call` should stop at its next step (an interrupt, or an abandon at shutdown)."""
        with self._cond:
            return call.interrupted or self._abandoned

    def finished(self, call: Call) -> None:
        """`call` is done with (made, failed or stopped): an interrupt from now on is not its."""
        with self._cond:
            if call in self._in_flight:
                self._in_flight.remove(call)

    def _due(self) -> Call | None:  # under the lock, every queued image keyed
        if not self._queue:
            self._deadline = None
            return None
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self.wait_s
        head = self._queue[0]
        same = [q for q in self._queue if q.key == head.key][: self.images_per_call]
        if len(same) < self.images_per_call and now < self._deadline:
            return None
        taken = {id(q) for q in same}
        self._queue = deque(q for q in self._queue if id(q) not in taken)
        self._deadline = None
        self._calls += 1
        call = Call(self._calls, tuple(same), now,
                    interrupted=self._interrupt_upto is not None and head.number <= self._interrupt_upto)
        self._interrupt_upto = None  # the head is the oldest: if it is younger, no image queued then is left
        self._in_flight.append(call)
        return call

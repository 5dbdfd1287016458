"""The one thread that owns the GPU: loads the models, then takes images from a bounded queue and
runs them in pipeline calls, gathering requests of the same shape into one call (micro-batching).

Every image has its own generator seeded with its seed (the engine's rule), so an image is the same
whether it shared its call or not. Images are built and filed by the render loop's own helpers:
the same sidecar, the same names, the same atomic writes as `spo generate`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from spo_cli import render
from spo_cli.outputs import files, metadata, naming
from spo_cli.request import ImageRequest, ImageTask
from spo_cli.serve.api import Job


class QueueFull(Exception):
    pass


class ShuttingDown(Exception):
    pass


class Interrupted(Exception):
    """Raised from the step callback: /sdapi/v1/interrupt, or a second signal at shutdown."""


class NoMetrics:
    """`Worker.metrics` until the app sets a `serve.metrics.Metrics`: the same calls, recording nothing."""

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def call(self, model: str, images: int, seconds: float, batched: int) -> None: ...

    def image_failed(self, model: str) -> None: ...


@dataclass
class Image:
    """One finished (or failed) image of a ticket."""

    request: ImageRequest
    meta: dict | None = None
    data: bytes | None = None  # the PNG, metadata embedded, as written
    written: dict | None = None  # files.write_pair's answer when saved
    error: str | None = None
    status: int = 200  # for an error: 400 (refused by the loaded model or machine), 409 (interrupted), 500
    field: str | None = None  # for a 400: the request field at fault


@dataclass(eq=False)  # a ticket is itself: hashed by identity
class Ticket:
    job: Job
    images: list[Image | None]
    on_done: Callable[[], None] = lambda: None  # called from the worker thread when every image is in
    cancelled: bool = False
    status: int = 200  # 503 when the server stopped before the images were made
    submitted: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return all(i is not None for i in self.images)


@dataclass
class Stats:
    images: int = 0
    failures: int = 0
    seconds: float = 0.0  # in pipeline calls, for images made
    calls: int = 0
    batched: int = 0  # images that shared a call with another request's


@dataclass
class Model:
    engine: object
    resolved: object
    describe: dict
    facts: dict


class Worker:
    def __init__(self, load: Callable[[], dict[str, tuple]], out: Path, *, batch_size: int = 1,
                 batch_wait_s: float = 0.05, max_queue: int = 64, debug: bool = False):
        self._load = load
        self.on_load_error: Callable[[BaseException], None] = lambda e: None
        self.out = out
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.debug = debug
        self.models: dict[str, Model] = {}
        self.ready = False
        self.load_error: str | None = None
        self.load_exception: BaseException | None = None
        self.stats = Stats()
        self.metrics = NoMetrics()
        self._queue: deque[tuple[Ticket, int]] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._interrupt = False
        self._abandon = False
        self._current: dict | None = None
        self._thread = threading.Thread(target=self._main, name="spo-gpu", daemon=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spo-serve-writer")
        self._pending: deque[Future] = deque()
        self._tickets = threading.Lock()

    # -- from the web threads ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job, on_done: Callable[[], None] = lambda: None) -> Ticket:
        ticket = Ticket(job, [None] * len(job.images), on_done)
        with self._cond:
            if not self._accepting or self.load_error:
                raise ShuttingDown(self.load_error or "the server is shutting down")
            if len(self._queue) + len(job.images) > self.max_queue:
                raise QueueFull(f"{len(self._queue)} image(s) are queued and the queue holds {self.max_queue}")
            self._queue.extend((ticket, i) for i in range(len(job.images)))
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: its images still queued are dropped (a call in flight finishes)."""
        with self._cond:
            ticket.cancelled = True
            kept = [(t, i) for t, i in self._queue if t is not ticket]
            self._queue.clear()
            self._queue.extend(kept)

    def interrupt(self) -> None:
        """A1111's interrupt: the call in flight stops at its next step; with none in flight, the next
        call made from what is queued now does (it may be waiting for company). Idle, it does nothing."""
        with self._cond:
            if self._current is not None or self._queue:
                self._interrupt = True

    def drain(self) -> None:
        """Stop accepting; answer every queued request with 503; let the call in flight finish."""
        with self._cond:
            self._accepting = False
            queued = list(dict.fromkeys(t for t, _ in self._queue))
            self._queue.clear()
            self._cond.notify_all()
        for ticket in queued:
            ticket.status = 503
            self._finish(ticket)

    def abandon(self) -> None:
        """A second signal: the call in flight stops at its next step, and nothing of it is written."""
        self._abandon = True
        self.drain()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def progress(self) -> dict:
        """A1111's /sdapi/v1/progress answer for the call in flight."""
        cur = self._current
        state = {"skipped": False, "interrupted": self._interrupt, "stopping_generation": False,
                 "job": "", "job_count": len({id(t) for t, _ in list(self._queue)}) + (1 if cur else 0),
                 "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if not cur:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}
        step, steps = cur["step"], cur["steps"]
        done = step / steps if steps else 0.0
        elapsed = time.monotonic() - cur["started"]
        eta = elapsed / done - elapsed if done > 0 else cur.get("estimate", 0.0)
        state.update(job=cur["job"], job_timestamp=cur["timestamp"], sampling_step=step, sampling_steps=steps)
        return {"progress": round(done, 4), "eta_relative": round(max(eta, 0.0), 3), "state": state,
                "current_image": None, "textinfo": None}

    # -- the worker thread --------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            for label, (engine, resolved) in self._load().items():
                self.models[label] = Model(engine, resolved, resolved.describe(), engine.facts())
        except BaseException as e:  # the server stays up to say why on /health
            from spo_cli.errors import SpoError

            self.load_error = e.paragraph() if isinstance(e, SpoError) else f"{type(e).__name__}: {e}"
            self.load_exception = e
            self.drain()
            self.on_load_error(e)
            return
        self.ready = True
        try:
            while True:
                call = self._next_call()
                if call is None:
                    return
                if call:
                    try:
                        self._run(call)
                    finally:
                        self._interrupt = False  # an interrupt stops one call, never a later one
        finally:
            self._writer.shutdown(wait=True)  # every image taken is answered

    def _key(self, ticket: Ticket, i: int):
        model = self.models[ticket.job.model]
        try:
            return ticket.job.model, model.engine.call_key(ticket.job.images[i])
        except Exception:  # a call of its own, where engine.run raises the same and fails just this image
            return "unusable", id(ticket), i

    def _next_call(self) -> list[tuple[Ticket, int]] | None:
        """The next pipeline call: the oldest image and up to batch_size − 1 others of its shape,
        waiting up to batch_wait_s for more to arrive. None when the worker should end."""
        with self._cond:
            while not self._queue:
                if not self._accepting:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.batch_wait_s
            while True:
                first_ticket, first_i = self._queue[0]
                key = self._key(first_ticket, first_i)
                same = [item for item in self._queue if self._key(*item) == key][: self.batch_size]
                left = deadline - time.monotonic()
                if len(same) >= self.batch_size or left <= 0 or not self._accepting:
                    break
                self._cond.wait(left)
                if not self._queue:
                    return []
            # the tuples in `same` are the queue's own objects, so identity finds them
            kept = [item for item in self._queue if not any(item is s for s in same)]
            self._queue.clear()
            self._queue.extend(kept)
            return same

    def _refusal(self, engine, request: ImageRequest) -> tuple[str, int, str] | None:
        """(message, 400, field) when the loaded model or this machine cannot make `request`: noise on a
        device it lacks, a step count its scheduler cannot lay out."""
        from spo_cli import devices, engine as engines

        # torch's own view of this machine (how many GPUs), not only what the build can do
        why = devices.refusal(request.generator_device, "generator_device", engines.machine())
        base = request.generator_device.partition(":")[0]
        if why is None and base != "cpu" and not engine.device.startswith(base):
            why = f"generator_device {request.generator_device} was asked for, but this server runs on {engine.device}."
        if why:
            return f"{why} Use cpu (the same noise on any machine).", 400, "generator_device"
        try:
            engine.check_schedule(request.scheduler, request.steps)
        except Exception as e:
            return render.call_error(e, self.debug), 400, "steps"
        return None

    def _on_step(self, done: int, total: int) -> None:
        if self._current is not None:
            self._current["step"] = done
        if self._interrupt or self._abandon:
            raise Interrupted()

    def _run(self, call: list[tuple[Ticket, int]]) -> None:
        ticket0 = call[0][0]
        model = self.models[ticket0.job.model]
        requests = [t.job.images[i] for t, i in call]
        per_step = self.stats.seconds / self.stats.images / max(requests[0].steps, 1) if self.stats.images else 0.0
        self._current = {"step": 0, "steps": requests[0].steps, "started": time.monotonic(),
                         "job": f"{len(call)} image(s)", "timestamp": time.strftime("%Y%m%d%H%M%S"),
                         "estimate": per_step * requests[0].steps}
        t0 = time.perf_counter()
        started = time.monotonic()
        for ticket, _ in call:
            self.metrics.queue_wait(ticket.job.model, started - ticket.submitted)
        refusal = self._refusal(model.engine, requests[0])
        if refusal:  # what only the loaded model and this machine can refuse is still the request's fault
            self._current = None
            self._fail(call, *refusal)
            return
        try:
            results = model.engine.run(requests, on_step=self._on_step)
        except Interrupted:
            self._fail(call, "interrupted" if not self._abandon else "abandoned at shutdown", 409)
            return
        except Exception as e:
            self._fail(call, render.call_error(e, self.debug))
            return
        finally:
            self._current = None
        elapsed = time.perf_counter() - t0
        self.stats.calls += 1
        batched = len(call) if len({id(t) for t, _ in call}) > 1 else 0
        self.stats.batched += batched
        tasks = [ImageTask(r) for r in requests]
        when = naming.now()
        try:
            described = list(render.call_metadata(model.engine, model.describe, model.facts, tasks, results, elapsed))
        except Exception as e:  # the images exist but cannot be described: fail them, keep serving
            self._fail(call, render.call_error(e, self.debug))
            return
        # counted before any image is handed over, so that an answer never precedes its count
        self.metrics.call(ticket0.job.model, sum(meta is not None for *_, meta in described), elapsed, batched)
        for (ticket, i), (task, res, meta) in zip(call, described):
            if meta is None:
                self.stats.failures += 1
                self.metrics.image_failed(ticket.job.model)
                self._deliver(ticket, i, Image(task.request, error=render.nan_error(model.engine.dtype), status=500))
            else:
                self.stats.images += 1
                self.stats.seconds += elapsed / len(call)
                # Encoding and writing overlap the next call, as in the render loop.
                self._pending.append(self._writer.submit(self._file, ticket, i, task.request, res.image, meta, when))
        while len(self._pending) > 2 * self.batch_size:  # bounded: at most two calls' images in memory
            self._pending.popleft().result()

    def _file(self, ticket: Ticket, i: int, request: ImageRequest, image, meta: dict, when) -> None:
        """On the writer thread: encode (and unless --no-save, write) one image, then hand it over."""
        try:
            if not ticket.job.save:
                done = Image(request, meta, metadata.encode_image(image, "png", meta))
            else:
                written = files.write_pair(self.out, None, "png", image, meta,
                                           default_stem=naming.default_stem(request.prompt, request.seed, when))
                path = Path(written["image"])
                done = Image(request, dict(meta, file=path.name), path.read_bytes(), written)
        except Exception as e:  # a full disk fails this image, and says so
            self.stats.images -= 1
            self.stats.failures += 1
            self.metrics.image_failed(ticket.job.model)
            done = Image(request, error=f"The image could not be written: {type(e).__name__}: {e}", status=500)
        self._deliver(ticket, i, done)

    def _deliver(self, ticket: Ticket, i: int, image: Image) -> None:
        with self._tickets:  # the worker and writer threads both hand images over
            ticket.images[i] = image
            finished = ticket.finished
        if finished:
            self._finish(ticket)

    def _fail(self, call, error: str, status: int = 500, field: str | None = None) -> None:
        for ticket, i in call:
            self.stats.failures += 1
            self.metrics.image_failed(ticket.job.model)
            self._deliver(ticket, i, Image(ticket.job.images[i], error=error, status=status, field=field))

    @staticmethod
    def _finish(ticket: Ticket) -> None:
        if not ticket.done.is_set():
            ticket.done.set()
            ticket.on_done()

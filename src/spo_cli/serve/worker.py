"""The threads that own the GPUs in `spo serve`: one per device (`--devices`, else the one --device),
each loading its own copy of the models, then running the pipeline calls it takes from the one
queue and filing their images.

Which images share a call, and when a call goes, is `scheduler.Scheduler`'s; a device's thread takes
the next call whenever it is free, so micro-batching happens per device. A device whose models fail
to load, or whose thread later stops on an exception, is left out and the others serve ("degraded");
only when every device has failed does the worker stop taking requests (`load_error`). Every image has its own
generator seeded with its seed (the engine's rule), so an image is the same whether it shared its
call or not. Images are built and filed by the render loop's own helpers: the same sidecar, the same
names, the same atomic writes as `spo generate`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from spo_cli import render
from spo_cli.errors import UsageError
from spo_cli.eta import Eta
from spo_cli.outputs import files, naming
from spo_cli.request import ImageRequest, ImageTask
from spo_cli.serve.api import Job
from spo_cli.serve.scheduler import Call, QueueFull, Scheduler, ShuttingDown

__all__ = ["Lane", "MadeImage", "Model", "NoMetrics", "Progress", "QueueFull", "ShuttingDown", "Stats", "Ticket",
           "Worker"]


class Interrupted(Exception):
    """Raised from the step callback: /sdapi/v1/interrupt, or a second signal at shutdown."""


@dataclass
class MadeImage:
    """One image of a ticket, made or failed."""

    request: ImageRequest
    meta: dict | None = None
    data: bytes | None = None  # the PNG, metadata embedded, as written
    written: dict | None = None  # files.write_pair's answer when saved
    error: str | None = None
    status: int = 200  # for an error: 400 (refused by the loaded model or machine), 409 (interrupted), 500,
    # 503 (abandoned at shutdown)
    field: str | None = None  # for a 400: the request field at fault


@dataclass(eq=False)  # a ticket is itself: hashed by identity
class Ticket:
    """One request's images, filled in by the worker and writer threads. `on_done` is called once,
    when the request can be answered: by the delivery that fills its last image, or by the drain
    that drops its queued ones (the scheduler hands a ticket to one drain only, and a ticket with
    images dropped is never filled)."""

    job: Job
    images: list[MadeImage | None]
    on_done: Callable[[], None] = lambda: None
    status: int = 200  # 503 when the server stopped before the images were made

    @property
    def finished(self) -> bool:
        return all(i is not None for i in self.images)


@dataclass(frozen=True)
class Stats:
    """Counts since start. Replaced whole under a lock, so a reader gets a consistent set."""

    images: int = 0  # made and handed over (written, unless --no-save)
    failures: int = 0  # images not made: refused, interrupted, failed, NaN, not written
    seconds: float = 0.0  # pipeline seconds of the images made, each its share of its call
    calls: int = 0  # pipeline calls that ran to their end
    batched: int = 0  # images that shared a call with another request's


@dataclass(frozen=True)
class Progress:
    """What the GPUs are doing now, in neutral terms; `api.a1111_progress` makes A1111's answer of it.
    With calls in flight on several devices, the step fields are the oldest call's (the one that
    started first, and so, as a rule, the next to finish); `calls` counts them all."""

    waiting: int  # requests with images queued
    interrupted: bool  # an interrupt will stop, or is stopping, a call
    images: int = 0  # in the (oldest) call in flight; 0 when none is
    step: int = 0  # steps done
    steps: int = 0
    elapsed_s: float = 0.0  # since the call started
    estimate_s: float = 0.0  # the call's expected length, from the last call's seconds per step
    started: str = "0"  # local time the call started, YYYYmmddHHMMSS
    eta_s: float | None = None  # time left, from the steps done (`eta.Eta`); None when nothing is known yet
    calls: int = 0  # calls in flight, one per busy device

    @property
    def running(self) -> bool:
        return self.images > 0


@dataclass
class _InFlight:
    """The call being denoised: `step` is written by the worker thread, read by `progress`."""

    images: int
    steps: int
    started: float  # the worker's clock
    started_at: str
    estimate_s: float
    eta: Eta
    step: int = 0

    def stepped(self, done: int) -> None:
        self.step = done
        self.eta.update(done)


@dataclass
class Model:
    engine: object
    resolved: object
    describe: dict
    facts: dict


LOADING, READY, FAILED = "loading", "ready", "failed"


@dataclass(eq=False)
class Lane:
    """One device: its thread, its own loaded models, and what it is doing. `name` is the device as
    asked (`cuda:1`; `cpu#0`, `cpu#1` when one is asked twice): /health's and /metrics' label."""

    name: str
    load: Callable[[], dict[str, tuple]]
    state: str = LOADING  # LOADING, READY or FAILED; set by its own thread only
    error: str | None = None  # why it failed to load
    exception: BaseException | None = None
    models: dict[str, Model] = field(default_factory=dict)
    current: _InFlight | None = None  # the call being denoised
    call: Call | None = None  # the call its thread holds, from the queue until answered
    step_s: float = 0.0  # its last call's seconds per step, for the estimate before a call's first step
    lost: str | None = None  # why the device can run nothing more (`Engine.device_fault`), set by its thread
    images: int = 0  # made and handed over, on this device
    failures: int = 0  # images not made, on this device
    thread: threading.Thread | None = None
    writer: ThreadPoolExecutor | None = None
    pending: deque = field(default_factory=deque)

    @property
    def busy(self) -> int:
        """Images in its call in flight; 0 when idle."""
        cur = self.current
        return cur.images if cur is not None else 0


def lane_names(devices: list[str]) -> list[str]:
    """Labels for `devices`, distinct: a device asked more than once (cpu,cpu) is numbered, cpu#0, cpu#1."""
    seen: dict[str, int] = {}
    for d in devices:
        seen[d] = seen.get(d, 0) + 1
    counted: dict[str, int] = {}
    names = []
    for d in devices:
        if seen[d] > 1:
            names.append(f"{d}#{counted.setdefault(d, 0)}")
            counted[d] += 1
        else:
            names.append(d)
    return names


class NoMetrics:
    """What the worker reports to; `serve/metrics.py` implements the same three methods for Prometheus.
    Called from the devices' threads, and for `image_failed` also from their writer threads. `device`
    is the lane's name."""

    def queue_wait(self, model: str, device: str, seconds: float) -> None:
        """Once per image, when the call that holds it leaves the queue: how long it waited for the
        GPU. Images dropped from the queue (a client gone, a drain) are not observed."""

    def call(self, model: str, device: str, images: int, seconds: float, batched: int) -> None:
        """Once per pipeline call that ran to its end (its images made, or NaN): its images, its wall
        time, and how many of them shared it with another request's (all or none)."""

    def image_failed(self, model: str, device: str) -> None:
        """Once per image not made: refused by the loaded model, interrupted, a failed call, NaN, or
        not written."""


class Worker:
    def __init__(self, load: Callable[[], dict[str, tuple]] | dict[str, Callable[[], dict[str, tuple]]], out: Path,
                 *, batch_size: int = 1, batch_wait_s: float = 0.05, max_queue: int = 64, debug: bool = False,
                 metrics=None, provenance: bool = True, signer=None):
        """`load`: what loads the models ({label: (engine, resolved)}), or one such per device by lane
        name; each runs in its device's thread."""
        loads = load if isinstance(load, dict) else {"default": load}
        if not loads:
            raise ValueError("a worker needs at least one device")
        self.out = out
        self.provenance = provenance  # XMP in every image it makes, saved or only returned (--no-provenance)
        self.signer = signer  # outputs.credentials.Signer: every image, saved or not, is signed
        self.batch_size = batch_size
        self.debug = debug
        self.metrics = metrics if metrics is not None else NoMetrics()
        self.load_error: str | None = None  # set once every device has failed (to load, or later): nothing can serve
        self.load_exception: BaseException | None = None  # the first device's, then
        self._clock = time.monotonic
        self.scheduler = Scheduler(self._call_key, images_per_call=batch_size, wait_s=batch_wait_s,
                                   max_images=max_queue, clock=self._clock)
        self._stats = Stats()
        self._lock = threading.Lock()  # the stats, and tickets' images (the worker and writer threads fill them)
        self._here = threading.local()  # in a device's thread: its lane
        self.lanes = [Lane(name, fn) for name, fn in loads.items()]
        for lane in self.lanes:
            lane.thread = threading.Thread(target=self._main, args=(lane,), name=f"spo-gpu-{lane.name}", daemon=True)
            # A writer per device: PNG encoding and writing overlap that device's next call, and one
            # device's slow disk write never holds up another's images.
            lane.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"spo-serve-writer-{lane.name}")

    # -- from the web threads ---------------------------------------------------------------------

    def start(self) -> None:
        for lane in self.lanes:
            lane.thread.start()

    def submit(self, job: Job, on_done: Callable[[], None] = lambda: None) -> Ticket:
        """Queue `job`'s images; `on_done` is called (from another thread) once they can be answered.
        Raises QueueFull, or ShuttingDown (with the load error when the models failed to load)."""
        ticket = Ticket(job, [None] * len(job.images), on_done)
        self.scheduler.submit(ticket, len(job.images))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The client went away: its images still queued are dropped (a call in flight finishes)."""
        self.scheduler.cancel(ticket)

    def interrupt(self) -> None:
        """A1111's interrupt (see `Scheduler.interrupt`)."""
        self.scheduler.interrupt()

    def drain(self) -> None:
        """Stop accepting; answer every queued request with 503; let the call in flight finish."""
        self._turn_away(self.scheduler.drain())

    def abandon(self) -> None:
        """A second signal: the call in flight stops at its next step and nothing of it is written; its
        requests are answered 503 now, with the queued ones, so that the server need not wait for it."""
        queued = self.scheduler.abandon()
        running = [t for call in (lane.call for lane in self.lanes) if call is not None
                   for t in call.tickets if not t.finished]
        self._turn_away(list(dict.fromkeys(queued + running)))

    @property
    def abandoned(self) -> bool:
        return self.scheduler.abandoned

    def join(self, timeout: float | None = None) -> bool:
        """Whether every device's thread has ended (within `timeout`, for them all)."""
        deadline = None if timeout is None else time.monotonic() + timeout  # real time, whatever _clock is
        for lane in self.lanes:
            if lane.thread.ident is not None:  # started
                lane.thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        return not any(lane.thread.is_alive() for lane in self.lanes)

    def stop_writing(self) -> None:
        """Let the images being written finish, and take no more: the last step before a hard exit."""
        for lane in self.lanes:
            lane.writer.shutdown(wait=True)

    @property
    def ready(self) -> bool:
        """Every device has finished loading, and at least one serves: /health's 200 (ready or degraded)."""
        return self.status in (READY, "degraded")

    @property
    def status(self) -> str:
        """loading (a device still loading), ready (all loaded), degraded (some failed, the others serve),
        failed (all failed)."""
        states = [lane.state for lane in self.lanes]
        if LOADING in states:
            return LOADING
        if FAILED not in states:
            return READY
        return "degraded" if READY in states else FAILED

    @property
    def models(self) -> dict[str, Model]:
        """The models of the first device that has loaded them (every device loads the same ones)."""
        for lane in self.lanes:
            if lane.state == READY:
                return lane.models
        return {}

    @property
    def queued(self) -> int:
        return self.scheduler.queued

    @property
    def stats(self) -> Stats:
        return self._stats  # frozen, and replaced whole

    def loaded(self) -> dict[str, Model]:
        """The models loaded, by label (a device's models are published whole, once all are loaded):
        a copy, made in one step under the GIL."""
        return dict(self.models)

    def progress(self) -> Progress:
        queue = self.scheduler.state()
        flights = [cur for cur in (lane.current for lane in self.lanes) if cur is not None]
        if not flights:
            return Progress(waiting=queue.requests, interrupted=queue.interrupted)
        cur = min(flights, key=lambda f: f.started)  # the oldest
        return Progress(waiting=queue.requests, interrupted=queue.interrupted, images=cur.images, step=cur.step,
                        steps=cur.steps, elapsed_s=self._clock() - cur.started, estimate_s=cur.estimate_s,
                        started=cur.started_at, eta_s=cur.eta.remaining(), calls=len(flights))

    # -- the worker thread --------------------------------------------------------------------------

    def _main(self, lane: Lane) -> None:
        try:
            models = {label: Model(engine, resolved, resolved.describe(), engine.facts())
                      for label, (engine, resolved) in lane.load().items()}
        except BaseException as e:  # the server stays up to say why on /health
            from spo_cli.errors import SpoError

            lane.error = e.paragraph() if isinstance(e, SpoError) else f"{type(e).__name__}: {e}"
            lane.exception = e
            with self._lock:
                lane.state = FAILED
                everyone = all(other.state == FAILED for other in self.lanes)
            if everyone:
                self._give_up()
            lane.writer.shutdown(wait=False)
            return
        lane.models = models
        self._here.lane = lane  # this thread keys images with this device's engine (`_call_key`)
        lane.state = READY  # after the models: a reader that sees READY finds them
        call = None
        try:
            while (call := self.scheduler.next_call()) is not None:
                lane.call = call
                self._run(lane, call)
                lane.call = None
                self.scheduler.finished(call)
                call = None
                if lane.lost is not None:  # a lost GPU fails each call at once, so it would take most of
                    # the queue and fail it: it takes no more, and the others serve
                    self._retire(lane, None, f"The device failed and can run nothing more: {lane.lost}")
                    return
        except BaseException as e:  # past `_run`'s own net (a BaseException, a bug in the loop itself)
            if self.debug:
                traceback.print_exception(e)
            self._retire(lane, call, f"The device stopped serving: {type(e).__name__}: {e}", e)
        finally:
            lane.writer.shutdown(wait=True)  # every image taken is answered

    def _retire(self, lane: Lane, call: Call | None, why: str, e: BaseException | None = None) -> None:
        """The device's thread is ending after its models loaded (on an exception, or its GPU lost): left
        as it was, /health would call it ready while it takes no more calls, its call's clients would wait
        forever, and with no other device the queue would never drain. So it is failed like a device that
        could not load: its call's unanswered images get a 500, /health says degraded (or failed, and
        `spo serve` ends, for its supervisor to start it again)."""
        from spo_cli.errors import GenerationError

        lane.error = why
        lane.exception = e if e is not None else GenerationError(why, "Check the device (nvidia-smi, the kernel log) "
                                                                    "and start the server again.")
        with self._lock:
            lane.state = FAILED
            everyone = all(other.state == FAILED for other in self.lanes)
        if call is not None:
            lane.writer.shutdown(wait=True)  # the images handed to the writer are answered by it
            label = call.images[0].ticket.job.model
            with self._lock:
                left = [(q.ticket, q.index) for q in call.images if q.ticket.images[q.index] is None]
            self._fail(lane, label, left, f"Internal error ({lane.error}); the server's log has more with --debug.")
            lane.call = None
            self.scheduler.finished(call)
        if everyone:
            self._give_up()

    def _give_up(self) -> None:
        """Every device failed (to load, or later): say why (each distinct reason once, named by its
        devices when there are several) and turn every request away."""
        reasons: dict[str, list[str]] = {}
        for lane in self.lanes:
            reasons.setdefault(lane.error, []).append(lane.name)
        if len(self.lanes) == 1 or len(reasons) == 1:
            error = next(iter(reasons))
        else:
            error = " ".join(f"On {', '.join(names)}: {why}" for why, names in reasons.items())
        self.load_exception = self.lanes[0].exception
        self.load_error = error  # last: `spo serve` ends once it sees it, and raises load_exception
        # No callback: `spo serve` watches load_error from its own loop, which cannot miss it
        # whenever it is set (a callback set after start() could).
        self._turn_away(self.scheduler.drain(self.load_error))

    def _call_key(self, ticket: Ticket, i: int):
        """The scheduler's key: the model and what its engine's calls must share (the same on every
        device: the prompt's windows and the image's shape). Computed by a device's own thread, with its
        own engine, between its calls (`Scheduler.next_call` keys what was queued unkeyed); asked from
        a web thread at submit, it is None. Counting a prompt's windows runs the engine's tokenizers, and
        a fast tokenizer's padding and truncation are settings of the tokenizer object: tokenizing from a
        web thread while the device's thread encodes a call's prompts with the same tokenizer let one
        reset the other's padding, and the call failed ("Expected size 75 but got size 77")."""
        lane = getattr(self._here, "lane", None)
        if lane is None:
            return None  # a web thread; the device's thread keys it before it takes a call
        models = lane.models
        job = ticket.job
        try:
            return job.model, models[job.model].engine.call_key(job.images[i])
        except Exception:  # a call of its own, where engine.run raises the same and fails just this image
            return object()

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
        try:  # a prompt within the character limit can still take more text-encoder windows than allowed
            engine.plan(request)
        except UsageError as e:
            return render.call_error(e, self.debug), 400, getattr(e, "field", "prompt")
        return None

    def _run(self, lane: Lane, call: Call) -> None:
        slots = [(q.ticket, q.index) for q in call.images]
        handed: list[tuple[Ticket, int]] = []  # to the writer thread, which answers them
        try:
            self._make(lane, call, slots, handed)
        except Exception as e:  # a bug of ours: answer the call's other images, and keep serving
            if self.debug:
                traceback.print_exc()
            error = f"Internal error ({type(e).__name__}: {e}); the server's log has more with --debug."
            for ticket, i in slots:
                with self._lock:
                    unanswered = ticket.images[i] is None and (ticket, i) not in handed
                if unanswered:
                    self._deliver(ticket, i, MadeImage(ticket.job.images[i], error=error, status=500))

    def _make(self, lane: Lane, call: Call, slots: list[tuple[Ticket, int]],
              handed: list[tuple[Ticket, int]]) -> None:
        label = slots[0][0].job.model
        model = lane.models[label]
        requests = [t.job.images[i] for t, i in slots]
        for wait in call.waits:
            self.metrics.queue_wait(label, lane.name, wait)
        refusal = self._refusal(model.engine, requests[0])
        if refusal:  # what only the loaded model and this machine can refuse is still the request's fault
            self._fail(lane, label, slots, *refusal)
            return
        steps = requests[0].denoising_steps  # what the engine's on_step counts: an edit runs its share
        flight = lane.current = self._flight(lane, len(slots), steps)
        started = flight.started

        def on_step(done: int, total: int) -> None:
            flight.stepped(done)
            if self.scheduler.stopping(call):
                raise Interrupted()

        failure = None
        try:
            results = model.engine.run(requests, on_step=on_step)
        except Interrupted:
            failure = ("abandoned at shutdown", 503) if self.scheduler.abandoned else ("interrupted", 409)
        except Exception as e:
            failure = render.call_error(e, self.debug), 500
            lane.lost = self._device_fault(model.engine, e)
        finally:
            lane.current = None  # before any answer: a client told 409 then sees nothing running
        if failure is None and self.scheduler.abandoned:  # its last step came before the second signal
            failure = "abandoned at shutdown", 503
        if failure:
            self._fail(lane, label, slots, *failure)
            return
        elapsed = self._clock() - started
        lane.step_s = elapsed / max(steps, 1)
        self._count(calls=1, batched=call.batched)
        self.metrics.call(label, lane.name, len(slots), elapsed, call.batched)
        tasks = [ImageTask(r) for r in requests]
        when = naming.now()
        try:
            described = list(render.call_metadata(model.engine, model.describe, model.facts, tasks, results, elapsed,
                                                  provenance=self.provenance))
        except Exception as e:  # the images exist but cannot be described: fail them, keep serving
            self._fail(lane, label, slots, render.call_error(e, self.debug))
            return
        share = elapsed / len(slots)
        for (ticket, i), (task, res, meta) in zip(slots, described):
            if meta is None:
                self._fail(lane, label, [(ticket, i)], render.nan_error(model.engine.dtype))
            else:
                # Encoding and writing overlap the next call, as in the render loop.
                lane.pending.append(lane.writer.submit(self._file, lane, label, ticket, i, res.image, meta, when,
                                                       share))
                handed.append((ticket, i))
        while len(lane.pending) > 2 * self.batch_size:  # bounded: at most two calls' images in memory
            lane.pending.popleft().result()

    @staticmethod
    def _device_fault(engine, e: Exception) -> str | None:
        try:
            return engine.device_fault(e)
        except Exception:  # a probe that fails to run says nothing of the device
            return None

    def _flight(self, lane: Lane, images: int, steps: int) -> _InFlight:
        """A call about to be denoised: its ETA counts its steps, the device's last call's rate standing
        in until its first step (a rate that a slow first step raises, rather than one kept for minutes)."""
        eta = Eta(steps, clock=self._clock, prior=lane.step_s)
        return _InFlight(images, steps, eta.started, time.strftime("%Y%m%d%H%M%S"), lane.step_s * steps, eta)

    def _file(self, lane: Lane, label: str, ticket: Ticket, i: int, image, meta: dict, when, seconds: float) -> None:
        """On the device's writer thread: encode (and unless --no-save, write) one image, then hand it over."""
        request = ticket.job.images[i]
        if ticket.status == 503:  # abandoned at shutdown and already answered: nothing of it is written
            self._fail(lane, label, [(ticket, i)], "abandoned at shutdown", 503)
            return
        try:
            if not ticket.job.save:
                data, meta = files.encode(image, "png", meta, self.signer)
                done = MadeImage(request, meta, data)
            else:
                written = files.write_pair(self.out, None, "png", image, meta, signer=self.signer,
                                           default_stem=naming.default_stem(request.prompt, request.seed, when))
                path = Path(written["image"])
                signed = {"c2pa": self.signer.record()} if self.signer else {}
                done = MadeImage(request, dict(meta, file=path.name, **signed), path.read_bytes(), written)
        except Exception as e:  # a full disk fails this image, and says so
            self._fail(lane, label, [(ticket, i)], f"The image could not be written: {type(e).__name__}: {e}")
            return
        self._count(lane, images=1, seconds=seconds)
        self._deliver(ticket, i, done)

    def _count(self, lane: Lane | None = None, **add) -> None:
        with self._lock:
            s = self._stats
            self._stats = replace(s, **{name: getattr(s, name) + n for name, n in add.items()})
            if lane is not None:
                lane.images += add.get("images", 0)
                lane.failures += add.get("failures", 0)

    def _fail(self, lane: Lane, label: str, slots, error: str, status: int = 500, field: str | None = None) -> None:
        self._count(lane, failures=len(slots))
        for ticket, i in slots:
            self.metrics.image_failed(label, lane.name)
            self._deliver(ticket, i, MadeImage(ticket.job.images[i], error=error, status=status, field=field))

    def _deliver(self, ticket: Ticket, i: int, image: MadeImage) -> None:
        with self._lock:
            ticket.images[i] = image
            finished = ticket.finished
        if finished:
            ticket.on_done()

    @staticmethod
    def _turn_away(tickets: list[Ticket]) -> None:
        for ticket in tickets:
            ticket.status = 503
            ticket.on_done()

"""spo serve's scheduler alone: a fake clock and a fake engine's call keys, no pipeline, no server.

As TGI tests its `next_batch`, the choices are driven step by step (`poll` takes the call due now by
the clock); the few tests of the blocking `next_call` run it in a thread and wait on events with
generous deadlines, so a bug fails the test rather than hanging it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest

from spo_cli.serve.api import a1111_progress
from spo_cli.serve.scheduler import QueueFull, Scheduler, ShuttingDown
from spo_cli.serve.worker import Progress

DEADLINE = 30.0  # seconds: only a guard against a hang, never a measure of speed


class Clock:
    """A clock that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(eq=False)
class Ticket:
    """A request of some images, each with its shape (what a pipeline call must share)."""

    name: str
    shapes: tuple


class FakeEngine:
    """The one thing the scheduler asks of an engine: the call key of an image. Counts the asks."""

    def __init__(self):
        self.asked = 0

    def call_key(self, shape):
        self.asked += 1
        return "model", shape


def scheduler(*, per_call=1, wait=0.0, room=64, clock=None, engine=None) -> tuple[Scheduler, Clock]:
    clock = clock or Clock()
    engine = engine or FakeEngine()
    return Scheduler(lambda t, i: engine.call_key(t.shapes[i]), images_per_call=per_call, wait_s=wait,
                     max_images=room, clock=clock), clock


def submit(s: Scheduler, name: str, *shapes) -> Ticket:
    ticket = Ticket(name, shapes)
    s.submit(ticket, len(shapes))
    return ticket


def names(call) -> list[str]:
    return [f"{q.ticket.name}{q.index}" for q in call.images]


def take(s: Scheduler):
    """The call due now; the previous one is finished first, as the worker does."""
    call = s.poll()
    assert call is not None, "no call was due"
    s.finished(call)
    return call


def in_thread(fn):
    """Run `fn` in a thread; returns (done event, [what it returned or raised])."""
    done, result = threading.Event(), []

    def run():
        try:
            result.append(fn())
        except BaseException as e:
            result.append(e)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, result


# -- which images, in which order ------------------------------------------------------------------

def test_the_oldest_image_leads_each_call_whatever_its_shape():
    s, _ = scheduler(per_call=1)
    for name, shape in (("a", "x"), ("b", "y"), ("c", "x"), ("d", "z")):
        submit(s, name, shape)
    assert [names(take(s)) for _ in range(4)] == [["a0"], ["b0"], ["c0"], ["d0"]]
    assert s.poll() is None


def test_a_call_gathers_the_oldest_image_and_younger_ones_of_its_key():
    s, _ = scheduler(per_call=2)
    submit(s, "a", "x")
    submit(s, "b", "y")
    submit(s, "c", "x")
    submit(s, "d", "y")
    assert names(take(s)) == ["a0", "c0"]  # b is older than c, but of another shape
    assert names(take(s)) == ["b0", "d0"]


def test_a_call_holds_at_most_images_per_call_in_queue_order():
    s, _ = scheduler(per_call=2)
    submit(s, "a", "x", "x", "x", "x", "x")
    assert [names(take(s)) for _ in range(2)] == [["a0", "a1"], ["a2", "a3"]]
    s2, clock = scheduler(per_call=4, wait=1.0)
    submit(s2, "a", "x", "x", "x")
    submit(s2, "b", "x", "x")
    assert names(take(s2)) == ["a0", "a1", "a2", "b0"]  # full: no wait
    assert s2.poll() is None  # b1 alone waits for company
    clock.advance(1.0)
    assert names(take(s2)) == ["b1"]


def test_a_call_knows_which_requests_share_it_and_how_long_each_image_waited():
    s, clock = scheduler(per_call=3)
    submit(s, "a", "x", "x")
    clock.advance(1.0)
    submit(s, "b", "x")
    clock.advance(2.0)
    call = take(s)
    assert [t.name for t in call.tickets] == ["a", "b"]
    assert call.batched == 3  # every image shared the call with another request's
    assert call.waits == [3.0, 3.0, 2.0]
    submit(s, "c", "x", "x", "x")
    alone = take(s)
    assert alone.batched == 0 and [t.name for t in alone.tickets] == ["c"]  # one request's images only
    assert alone.number == call.number + 1


# -- the wait for company (--batch-wait-ms) --------------------------------------------------------

def test_an_image_arriving_within_the_wait_joins_the_call():
    s, clock = scheduler(per_call=3, wait=0.02)
    submit(s, "a", "x")
    assert s.poll() is None  # the worker looks: the wait opens now
    clock.advance(0.015)
    submit(s, "b", "x")
    submit(s, "other", "y")  # company of another shape does not count
    assert s.poll() is None
    clock.advance(0.005)
    assert names(take(s)) == ["a0", "b0"]


def test_an_image_arriving_after_the_wait_goes_in_the_next_call():
    s, clock = scheduler(per_call=2, wait=0.02)
    submit(s, "a", "x")
    assert s.poll() is None
    clock.advance(0.021)
    first = take(s)
    submit(s, "b", "x")
    assert names(first) == ["a0"]
    assert s.poll() is None  # b waits for company in turn
    clock.advance(0.02)
    assert names(take(s)) == ["b0"]


def test_the_wait_counts_from_when_the_worker_is_free_not_from_the_submit():
    s, clock = scheduler(per_call=2, wait=0.02)
    submit(s, "a", "x")
    clock.advance(5.0)  # the GPU was busy with another call meanwhile
    assert s.poll() is None
    submit(s, "b", "x")
    assert names(take(s)) == ["a0", "b0"]


def test_a_full_call_or_no_wait_goes_at_once():
    s, _ = scheduler(per_call=2, wait=10.0)
    submit(s, "a", "x")
    submit(s, "b", "x")
    assert names(take(s)) == ["a0", "b0"]
    s0, _ = scheduler(per_call=2, wait=0.0)
    submit(s0, "a", "x")
    assert names(take(s0)) == ["a0"]


def test_the_next_call_waits_on_the_condition_and_wakes_for_company():
    s, _ = scheduler(per_call=2, wait=3600.0)
    submit(s, "a", "x")
    done, result = in_thread(s.next_call)
    assert not done.wait(0.05)  # waiting for company (a short look, not a measure: it may only pass)
    submit(s, "b", "x")  # fills the call: the waiting worker wakes at once, an hour early
    assert done.wait(DEADLINE), "next_call did not wake when its call filled"
    assert names(result[0]) == ["a0", "b0"]


def test_the_wait_for_company_ends_at_its_deadline_without_spinning():
    reads = []

    def clock():
        reads.append(None)
        return time.monotonic()

    s = Scheduler(lambda t, i: t.shapes[i], images_per_call=2, wait_s=0.05, clock=clock)
    submit(s, "a", "x")
    done, result = in_thread(s.next_call)
    assert done.wait(DEADLINE), "the wait for company never ended"
    assert names(result[0]) == ["a0"]
    assert len(reads) < 20, f"the clock was read {len(reads)} times: a busy loop"


def test_an_idle_worker_sleeps_until_work_arrives():
    s, _ = scheduler()
    done, result = in_thread(s.next_call)
    assert not done.wait(0.05)
    submit(s, "a", "x")
    assert done.wait(DEADLINE) and names(result[0]) == ["a0"]


# -- room, counted in images ------------------------------------------------------------------------

def test_the_queue_is_bounded_in_images_not_requests():
    engine = FakeEngine()
    s, _ = scheduler(per_call=2, room=4, engine=engine)
    submit(s, "a", "x", "x", "x")
    asked = engine.asked
    with pytest.raises(QueueFull, match=r"3 image\(s\) are queued and the queue holds 4"):
        submit(s, "b", "x", "x")
    assert engine.asked == asked  # refused before any key (a tokenizing) is computed
    submit(s, "c", "y")
    assert s.queued == 4
    with pytest.raises(QueueFull):
        submit(s, "d", "y")
    take(s)  # a0, a1: the call in flight no longer takes room
    submit(s, "e", "y", "y")
    assert s.queued == 4


# -- call keys ------------------------------------------------------------------------------------

def test_keys_are_computed_once_at_submit_and_never_under_the_lock():
    seen = []

    def key(ticket, i):
        seen.append(not s._cond._is_owned())
        return ticket.shapes[i]

    clock = Clock()
    s = Scheduler(key, images_per_call=3, wait_s=1.0, clock=clock)
    submit(s, "a", "x", "y")
    submit(s, "b", "x")
    assert seen == [True, True, True]
    for _ in range(3):
        assert s.poll() is None
    clock.advance(1.0)
    assert names(take(s)) == ["a0", "b0"]
    assert len(seen) == 3  # the worker's looks reuse them


def test_images_queued_before_the_models_load_are_keyed_by_the_worker_outside_the_lock():
    loaded = threading.Event()
    held = []

    def key(ticket, i):
        if not loaded.is_set():
            return None  # the engine cannot tell yet
        held.append(s._cond._is_owned())
        return "odd" if ticket.name == "odd" else ticket.shapes[i]

    s = Scheduler(key, images_per_call=3, wait_s=0.0, clock=Clock())
    submit(s, "a", "x")
    submit(s, "b", "y")
    submit(s, "c", "x")
    assert s.poll() is None  # nothing is taken while any key is unknown
    loaded.set()
    done, result = in_thread(s.next_call)
    assert done.wait(DEADLINE) and names(result[0]) == ["a0", "c0"]
    assert held == [False, False, False]


def test_an_image_whose_key_stays_unknown_goes_alone():
    s = Scheduler(lambda t, i: None, images_per_call=3, wait_s=0.0, clock=Clock())
    submit(s, "a", "x", "x")
    done, result = in_thread(s.next_call)
    assert done.wait(DEADLINE) and names(result[0]) == ["a0"]


# -- cancel, drain, abandon -------------------------------------------------------------------------

def test_cancel_drops_only_that_requests_queued_images():
    s, _ = scheduler(per_call=2)
    a = submit(s, "a", "x", "x", "x")
    submit(s, "b", "x")
    flight = s.poll()  # a0, a1 are in flight: they finish
    assert names(flight) == ["a0", "a1"]
    assert s.cancel(a) == 1 and s.queued == 1
    assert s.cancel(a) == 0
    s.finished(flight)
    assert names(take(s)) == ["b0"]


def test_drain_refuses_new_work_and_gives_back_each_waiting_request_once():
    s, _ = scheduler(per_call=1)
    a = submit(s, "a", "x", "x")
    b = submit(s, "b", "y")
    flight = s.poll()
    assert s.drain("the models failed to load") == [a, b]
    assert s.queued == 0
    assert s.drain() == []
    with pytest.raises(ShuttingDown, match="the models failed to load"):  # the first reason stays
        submit(s, "c", "x")
    assert not s.stopping(flight)  # a drain lets the call in flight finish
    s.finished(flight)
    done, result = in_thread(s.next_call)
    assert done.wait(DEADLINE) and result == [None]  # the worker ends


def test_a_drain_from_a_signal_handler_inside_submit_neither_deadlocks_nor_loses_a_request():
    """uvicorn drains from its signal handler, on the main thread, which may be inside `submit` with
    the lock held: here the clock, read inside submit's critical section, plays that handler."""
    clock = Clock()
    s = Scheduler(lambda t, i: t.shapes[i], images_per_call=1, clock=clock)
    a = submit(s, "a", "x")
    drained = []

    def signal_handler_clock():
        if not drained:
            drained.append(s.drain())
        return clock.now

    s._clock = signal_handler_clock
    done, result = in_thread(lambda: submit(s, "b", "x", "x"))
    assert done.wait(DEADLINE), "the drain deadlocked inside submit"
    assert isinstance(result[0], ShuttingDown), result
    assert drained == [[a]] and s.queued == 0  # a is answered by the drain, b by the refusal
    done, result = in_thread(s.next_call)
    assert done.wait(DEADLINE) and result == [None]


def test_a_drain_wakes_a_worker_waiting_for_work_or_company():
    s, _ = scheduler(per_call=2, wait=3600.0)
    submit(s, "a", "x")
    done, result = in_thread(s.next_call)
    assert not done.wait(0.05)
    s.drain()
    assert done.wait(DEADLINE) and result == [None]


def test_abandon_stops_the_call_in_flight_too():
    s, _ = scheduler()
    a = submit(s, "a", "x", "x")
    flight = s.poll()
    assert not s.stopping(flight) and not s.abandoned
    assert s.abandon() == [a]
    assert s.stopping(flight) and s.abandoned


# -- interrupt ----------------------------------------------------------------------------------------

def test_an_interrupt_stops_the_call_in_flight_and_no_later_one():
    s, _ = scheduler()
    submit(s, "a", "x")
    flight = s.poll()
    submit(s, "b", "x")
    assert s.interrupt()
    assert s.stopping(flight) and s.state().interrupted
    s.finished(flight)
    assert not s.state().interrupted
    later = take(s)
    assert not s.stopping(later)


def test_an_interrupt_with_nothing_in_flight_stops_the_call_being_gathered_only():
    s, clock = scheduler(per_call=2, wait=1.0)
    submit(s, "a", "x")
    assert s.poll() is None  # waiting for company
    assert s.interrupt() and s.state().interrupted
    clock.advance(1.0)
    gathered = take(s)
    assert s.stopping(gathered)
    submit(s, "b", "x")
    clock.advance(1.0)
    s.poll()
    clock.advance(1.0)
    assert not s.stopping(take(s))


def test_an_interrupt_stops_one_call_not_every_image_queued_at_the_time():
    s, _ = scheduler(per_call=1)
    submit(s, "a", "x")
    submit(s, "b", "y")
    assert s.interrupt()
    assert s.stopping(take(s))
    assert not s.state().interrupted
    assert not s.stopping(take(s))  # b was queued then too, but goes in a later call


def test_an_interrupt_whose_images_were_cancelled_reaches_no_later_call():
    s, _ = scheduler()
    a = submit(s, "a", "x")
    assert s.interrupt()
    s.cancel(a)
    assert not s.state().interrupted
    submit(s, "b", "x")
    assert not s.stopping(take(s))


def test_an_interrupt_when_idle_is_not_remembered():
    s, _ = scheduler()
    assert not s.interrupt()
    submit(s, "a", "x")
    assert not s.state().interrupted
    assert not s.stopping(take(s))
    assert not s.interrupt()  # the call is finished: idle again


def test_the_state_counts_images_requests_and_the_call_in_flight():
    s, _ = scheduler(per_call=1)
    submit(s, "a", "x", "x")
    submit(s, "b", "x")
    state = s.state()
    assert (state.images, state.requests, state.running, state.interrupted) == (3, 2, False, False)
    flight = s.poll()
    state = s.state()
    assert (state.images, state.requests, state.running) == (2, 2, True)
    s.finished(flight)
    assert not s.state().running


def test_nonsense_settings_are_a_programming_error():
    for kw in ({"images_per_call": 0}, {"max_images": 0}, {"wait_s": -1.0}, {"wait_s": float("nan")}):
        with pytest.raises(ValueError):
            Scheduler(lambda t, i: 0, **kw)


# -- A1111's progress answer from the worker's snapshot ----------------------------------------------

def test_a1111_progress_when_idle():
    answer = a1111_progress(Progress(waiting=2, interrupted=True))
    assert answer["progress"] == 0.0 and answer["eta_relative"] == 0.0
    assert answer["state"]["job_count"] == 2 and answer["state"]["interrupted"] is True
    assert answer["state"]["sampling_steps"] == 0 and answer["current_image"] is None


def test_a1111_progress_of_a_call_in_flight():
    p = Progress(waiting=1, interrupted=False, images=2, step=5, steps=20, elapsed_s=10.0, estimate_s=99.0,
                 started="20260101120000")
    answer = a1111_progress(p)
    assert answer["progress"] == 0.25 and answer["eta_relative"] == 30.0  # 10 s for a quarter: 30 s left
    state = answer["state"]
    assert (state["job_count"], state["sampling_step"], state["sampling_steps"]) == (2, 5, 20)
    assert state["job"] == "2 image(s)" and state["job_timestamp"] == "20260101120000"
    before = a1111_progress(Progress(waiting=0, interrupted=False, images=1, steps=20, elapsed_s=0.5, estimate_s=7.5))
    assert before["progress"] == 0.0 and before["eta_relative"] == 7.5  # before the first step: the estimate


def test_the_progress_eta_comes_from_steps_done_and_moves(tmp_path):
    # `eta_relative: 3.7` stood for 10 minutes at step 0: the last call's estimate, never revised.
    # The worker's snapshot of a call in flight, driven by a clock that moves only when told.
    from spo_cli.serve.worker import Worker

    clock = Clock()
    worker = Worker(lambda: {}, tmp_path)
    worker._clock = clock
    lane = worker.lanes[0]
    lane.step_s = 0.185  # the last call: 3.7 s for 20 steps
    flight = lane.current = worker._flight(lane, 1, 20)
    assert a1111_progress(worker.progress())["eta_relative"] == 3.7
    clock.now += 0.1
    assert a1111_progress(worker.progress())["eta_relative"] == 3.6  # counts down
    clock.now += 599.9  # 10 minutes at step 0: step 1 alone has taken 600 s
    assert a1111_progress(worker.progress())["eta_relative"] == 600.0 * 19
    flight.stepped(10)  # then the steps come, 60 s each
    clock.now += 30.0
    answer = a1111_progress(worker.progress())
    assert answer["progress"] == 0.5 and answer["eta_relative"] == 570.0
    assert answer["state"]["sampling_step"] == 10


# -- the worker around it, with no pipeline: loading fails, or never finishes --------------------------

def worker_job(n: int = 1):
    from spo_cli.request import ImageRequest
    from spo_cli.serve.api import Job

    return Job(tuple(ImageRequest("a fox", seed) for seed in range(n)), "spo")


def test_a_worker_that_cannot_load_says_why_and_turns_every_request_away(tmp_path):
    from spo_cli.errors import UsageError
    from spo_cli.serve.worker import Worker

    answered = []
    failure = UsageError("Model nobody/nothing is not available offline.")

    def load():
        raise failure

    worker = Worker(load, tmp_path)
    ticket = worker.submit(worker_job(2), lambda: answered.append("queued"))
    worker.start()
    assert worker.join(DEADLINE)
    assert worker.load_exception is failure and not worker.ready
    assert "nobody/nothing" in worker.load_error
    assert answered == ["queued"] and ticket.status == 503
    with pytest.raises(ShuttingDown, match="nobody/nothing"):
        worker.submit(worker_job(), lambda: None)


def test_a_drained_worker_answers_each_queued_request_once_and_ends(tmp_path):
    from spo_cli.serve.worker import Worker

    gate = threading.Event()

    def load():  # loading until the test says: the queue fills meanwhile
        assert gate.wait(DEADLINE)
        return {}

    worker = Worker(load, tmp_path, max_queue=3)
    worker.start()
    answers = []
    first = worker.submit(worker_job(2), lambda: answers.append("first"))
    second = worker.submit(worker_job(1), lambda: answers.append("second"))
    with pytest.raises(QueueFull):
        worker.submit(worker_job(1), lambda: None)
    assert worker.queued == 3 and not worker.stats.images
    worker.drain()
    worker.abandon()  # a second signal: nothing left to answer twice
    assert answers == ["first", "second"] and first.status == second.status == 503
    gate.set()
    assert worker.join(DEADLINE)
    assert worker.progress() == Progress(waiting=0, interrupted=False)

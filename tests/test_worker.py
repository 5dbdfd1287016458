"""spo serve's worker with the tiny pipeline, without HTTP: what it counts, reports and answers.

The worker is driven directly (submit, then wait on each ticket's on_done with a generous deadline);
the server over HTTP is tests/test_serve.py's. One pipeline is loaded for the module and handed to
each test's worker, so a test costs its few tiny calls only.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from spo_cli.request import ImageRequest
from spo_cli.serve.api import Job
from spo_cli.serve.worker import Progress, Worker

pytestmark = [pytest.mark.slow]

DEADLINE = 300.0  # seconds: only a guard against a hang, never a measure of speed


class Recorded:
    """The worker's metrics hooks, written down."""

    def __init__(self, fail_on_call: bool = False):
        self.waits, self.calls, self.failed, self.devices = [], [], [], []
        self.fail_on_call = fail_on_call

    def queue_wait(self, model: str, device: str, seconds: float) -> None:
        self.waits.append((model, seconds))

    def call(self, model: str, device: str, images: int, seconds: float, batched: int) -> None:
        if self.fail_on_call:
            raise RuntimeError("a broken metrics exporter")
        self.calls.append((model, images, seconds, batched))
        self.devices.append(device)

    def image_failed(self, model: str, device: str) -> None:
        self.failed.append(model)


@pytest.fixture(scope="module")
def loaded(hub_cache):
    from spo_cli.cli import loading
    from spo_cli.cli import options as o
    from spo_cli.cli.ui import UI

    ui = UI(quiet=True)
    request, _ = o.model_request(model="spo", device="cpu")
    options = o.run_options(fast=False, offload=None, vae_tiling=False, vae_slicing=False, batch_size=2)
    runtime = loading.start_torch(ui, request, options)
    resolved = loading.find_model(ui, request, runtime.dtype)
    return loading.load(ui, runtime, resolved, options), resolved


def make_worker(loaded, out: Path, metrics=None, **kw) -> Worker:
    kw = {"batch_size": 2, "batch_wait_s": 0.0, **kw}
    return Worker(lambda: {"spo": loaded}, out, metrics=metrics or Recorded(), **kw)


def job(*seeds: int, steps: int = 1, save: bool = True, **fields) -> Job:
    return Job(tuple(ImageRequest("a fox", s, steps=steps, width=64, height=64, **fields) for s in seeds), "spo",
               save=save)


def submit(worker: Worker, j: Job):
    done = threading.Event()
    return worker.submit(j, done.set), done


def answered(*pending) -> list:
    for ticket, done in pending:
        assert done.wait(DEADLINE), "the ticket was never answered"
    return [ticket for ticket, _ in pending]


def stop(worker: Worker) -> None:
    worker.drain()
    assert worker.join(DEADLINE)


def test_two_requests_in_one_call_are_counted_as_batched_and_reported(loaded, tmp_path):
    metrics = Recorded()
    worker = make_worker(loaded, tmp_path / "out", metrics)
    a, b = submit(worker, job(1)), submit(worker, job(2))  # queued before the worker runs: one call
    worker.start()
    try:
        answered(a, b)
        s = worker.stats
        assert (s.images, s.failures, s.calls, s.batched) == (2, 0, 1, 2) and s.seconds > 0
        assert [(m, n, b) for m, n, _, b in metrics.calls] == [("spo", 2, 2)] and metrics.calls[0][2] > 0
        assert [m for m, _ in metrics.waits] == ["spo", "spo"] and all(w >= 0 for _, w in metrics.waits)
        assert metrics.failed == []
        # One request's two images: a call of its own, shared with no other request.
        (c,) = answered(submit(worker, job(3, 4)))
        assert worker.stats.batched == 2 and metrics.calls[-1][1:] == (2, metrics.calls[-1][2], 0)
        assert all(img.error is None and img.data.startswith(b"\x89PNG") for img in c.images)
        assert c.images[0].written and Path(c.images[0].written["image"]).is_file()
    finally:
        stop(worker)


def test_an_image_that_cannot_be_written_fails_and_is_not_counted_as_made(loaded, tmp_path):
    metrics = Recorded()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    worker = make_worker(loaded, blocked, metrics)
    worker.start()
    try:
        (ticket,) = answered(submit(worker, job(5)))
        image = ticket.images[0]
        assert image.status == 500 and image.error.startswith("The image could not be written")
        s = worker.stats
        assert (s.images, s.failures, s.calls, s.seconds) == (0, 1, 1, 0.0)
        assert metrics.failed == ["spo"] and len(metrics.calls) == 1  # the call itself ran
        # --no-save on the same worker: nothing written, the image made all the same.
        (kept,) = answered(submit(worker, job(6, save=False)))
        assert kept.images[0].error is None and kept.images[0].written is None
        assert kept.images[0].data.startswith(b"\x89PNG")
        assert (worker.stats.images, worker.stats.failures) == (1, 1)
    finally:
        stop(worker)


def test_a_signing_worker_signs_saved_and_unsaved_images(loaded, tmp_path):
    c2pa = pytest.importorskip("c2pa")
    import io

    from spo_cli.outputs import credentials

    key, chain = credentials.make_local_pair()
    (tmp_path / "k.pem").write_bytes(key)
    (tmp_path / "c.pem").write_bytes(chain)
    signer = credentials.signer_from_options(True, str(tmp_path / "k.pem"), str(tmp_path / "c.pem"))
    worker = make_worker(loaded, tmp_path / "out", signer=signer)
    worker.start()
    try:
        saved, kept = answered(submit(worker, job(8)), submit(worker, job(9, save=False)))
        for image in (saved.images[0], kept.images[0]):
            assert image.error is None and image.meta["c2pa"]["cert_sha256"] == signer.sha256
            reader = c2pa.Reader("image/png", io.BytesIO(image.data))
            assert reader.get_validation_state() == "Valid"
        assert Path(saved.images[0].written["image"]).read_bytes() == saved.images[0].data
    finally:
        stop(worker)


def test_what_the_machine_cannot_make_is_refused_before_any_call(loaded, tmp_path):
    metrics = Recorded()
    worker = make_worker(loaded, tmp_path / "out", metrics)
    worker.start()
    try:
        (ticket,) = answered(submit(worker, job(7, generator_device="cuda")))
        image = ticket.images[0]
        assert (image.status, image.field) == (400, "generator_device") and "Use cpu" in image.error
        # A prompt under the character limit that takes more text-encoder windows than allowed: a 400
        # naming the field, not a failed call (500).
        (long,) = answered(submit(worker, job(9, negative_prompt="a cat, " * 1200)))
        assert (long.images[0].status, long.images[0].field) == (400, "negative_prompt"), long.images[0].error
        assert "windows" in long.images[0].error
        answered(submit(worker, job(8)))  # the worker is done with the refused calls once this is made
        assert (worker.stats.calls, worker.stats.failures) == (1, 2) and ticket.images[0] is image
        assert len(metrics.calls) == 1 and metrics.failed == ["spo", "spo"] and len(metrics.waits) == 3
    finally:
        stop(worker)


def test_an_interrupt_stops_one_call_and_progress_says_what_runs(loaded, tmp_path):
    metrics = Recorded()
    worker = make_worker(loaded, tmp_path / "out", metrics, batch_size=1)
    worker.start()
    try:
        answered(submit(worker, job(8)))  # a call before: the estimate has a measure
        long = submit(worker, job(9, steps=500))
        seen = worker.progress()
        while not (seen.running and seen.step >= 1):
            assert not long[1].wait(0.01), f"the long call ended before it was seen running: {long[0].images}"
            seen = worker.progress()
        assert isinstance(seen, Progress) and (seen.images, seen.steps, seen.interrupted) == (1, 500, False)
        assert seen.estimate_s > 0 and seen.elapsed_s >= 0 and len(seen.started) == 14
        worker.interrupt()
        (ticket,) = answered(long)
        assert (ticket.images[0].status, ticket.images[0].error) == (409, "interrupted")
        assert metrics.failed == ["spo"] and len(metrics.calls) == 1  # an interrupted call is not a call made
        assert not worker.progress().running
        (after,) = answered(submit(worker, job(10)))
        assert after.images[0].error is None  # the interrupt stopped one call, not a later one
    finally:
        stop(worker)


def test_the_first_call_has_an_eta_from_its_first_step(loaded, tmp_path):
    # No call before it, so no earlier rate: the estimate must come from the steps this call has done.
    worker = make_worker(loaded, tmp_path / "out", batch_size=1)
    worker.start()
    try:
        long = submit(worker, job(9, steps=500))
        seen = worker.progress()
        while not (seen.running and seen.step >= 1):
            assert not long[1].wait(0.01), f"the long call ended before it was seen running: {long[0].images}"
            seen = worker.progress()
        assert seen.eta_s is not None and seen.eta_s > 0
        worker.interrupt()
        answered(long)
    finally:
        stop(worker)


def test_a_bug_in_a_metrics_hook_fails_its_call_and_the_worker_goes_on(loaded, tmp_path):
    metrics = Recorded(fail_on_call=True)
    worker = make_worker(loaded, tmp_path / "out", metrics)
    worker.start()
    try:
        (ticket,) = answered(submit(worker, job(11, 12)))
        assert all(i.status == 500 and "Internal error (RuntimeError" in i.error for i in ticket.images)
        metrics.fail_on_call = False
        (after,) = answered(submit(worker, job(13)))
        assert after.images[0].error is None
    finally:
        stop(worker)


def test_a_second_signal_abandons_the_call_in_flight_and_turns_the_queue_away(loaded, tmp_path):
    metrics = Recorded()
    worker = make_worker(loaded, tmp_path / "out", metrics, batch_size=1)
    worker.start()
    long = submit(worker, job(14, steps=500))
    while not (worker.progress().running and worker.progress().step >= 1):
        assert not long[1].wait(0.01), f"the long call ended before it was seen running: {long[0].images}"
    queued = submit(worker, job(15))
    worker.abandon()
    (ticket, waiting) = answered(long, queued)
    # Both answered at once, the call in flight too: the server need not wait for its next step.
    assert ticket.status == 503 and ticket.images == [None]
    assert waiting.status == 503 and waiting.images == [None]
    assert worker.join(DEADLINE)
    assert not list((tmp_path / "out").glob("*.png"))  # nothing of the abandoned call is written


def test_progress_counts_the_steps_an_edit_or_hires_call_runs(loaded, tmp_path):
    """The hires fix runs its first pass and all its hires steps (A1111's: of a schedule stretched to
    steps / strength): progress counts those, as the engine's on_step does, so that A1111's progress
    reaches 1 at the end and not past it."""
    from spo_cli.request import Hires

    worker = make_worker(loaded, tmp_path / "out", batch_size=1)
    worker.start()
    try:
        long = submit(worker, job(9, steps=400, hires=Hires(2.0, strength=0.5)))
        seen = worker.progress()
        while not (seen.running and seen.step >= 1):
            assert not long[1].wait(0.01), f"the long call ended before it was seen running: {long[0].images}"
            seen = worker.progress()
        assert seen.steps == 400 + 400  # not 400 + 200: A1111 runs all the hires steps
        worker.interrupt()
        answered(long)
    finally:
        stop(worker)

"""`spo serve --devices`: a worker per device, fed from the one queue.

The checks of --devices (pure, and the CLI's refusals before torch), the scheduler with two workers
taking calls, /health and /metrics of a worker whose devices load or fail; then, with the tiny pipeline,
a real server with two CPU workers (`--devices cpu,cpu`, as the tests run it on a machine without GPUs):
16 concurrent requests answered with `spo generate`'s pixels by both devices, an interrupt that stops
both calls in flight, and a device that fails to load while the other serves ("degraded").
"""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from spo_cli import devices
from spo_cli.errors import ModelError, UsageError
from spo_cli.serve import api
from spo_cli.serve.app import Settings, create_app
from spo_cli.serve.scheduler import ShuttingDown
from tests.conftest import base_copy, probe_cli
from tests.test_scheduler import names, scheduler, submit
from tests.test_serve import (
    OPENAI,
    Running,
    invoke,
    metrics,
    png_pixels,
    request,
    wait_for,
)
from tests.test_serve_parts import call

DEADLINE = 300.0  # seconds: only a guard against a hang, never a measure of speed
CPU_ONLY = devices.Machine("2.13.0+cpu", cuda_build=False, cuda_gpus=None, mps=False)
TWO_GPUS = devices.Machine("2.13.0+cu128", cuda_build=True, cuda_gpus=2, mps=False)
CUDA_BUILD = devices.Machine("2.13.0+cu128", cuda_build=True, cuda_gpus=None, mps=False)  # before torch counts


# -- --devices, checked without torch -------------------------------------------------------------------

@pytest.mark.parametrize("value, machine, expected", [
    ("cpu,cpu", CPU_ONLY, ["cpu", "cpu"]),
    (" cpu , cpu , cpu ", CPU_ONLY, ["cpu", "cpu", "cpu"]),
    ("cuda:0,cuda:1", CUDA_BUILD, ["cuda:0", "cuda:1"]),
    ("cuda:1", TWO_GPUS, ["cuda:1"]),
    ("all", CUDA_BUILD, ["all"]),
])
def test_devices_that_may_serve(value, machine, expected):
    assert devices.serve_devices(value, machine) == expected


@pytest.mark.parametrize("value, machine, says", [
    ("all", CPU_ONLY, "--devices all asks for every CUDA GPU, but this PyTorch (2.13.0+cpu) has no CUDA"),
    ("cuda:0,cuda:0", CUDA_BUILD, "--devices names cuda:0 twice"),
    ("mps,mps", devices.Machine("2", False, None, None), "--devices names mps twice"),
    ("cpu,cuda:0", CUDA_BUILD, "mixes cpu and cuda"),
    ("cuda,cuda:1", CUDA_BUILD, "--devices cuda does not say which GPU"),
    ("cpu,,cpu", CPU_ONLY, "has an empty entry"),
    ("", CPU_ONLY, "has an empty entry"),
    ("cpu,gpu0", CPU_ONLY, "'gpu0' is not a device"),
    ("cuda:-1", CUDA_BUILD, "'cuda:-1' is not a device"),
    ("cuda:١", CUDA_BUILD, "is not a device"),  # a digit, but not ASCII
    ("cuda:0,cuda:1", CPU_ONLY, "sees no CUDA GPU (it is a CPU-only build)"),
    ("cuda:2", TWO_GPUS, "this machine has 2 CUDA GPU(s)"),
    (",".join(["cpu"] * (devices.DEVICES_MAX + 1)), CPU_ONLY, f"a server runs at most {devices.DEVICES_MAX}"),
])
def test_devices_refused_before_torch(value, machine, says):
    with pytest.raises(UsageError) as e:
        devices.serve_devices(value, machine)
    assert says in e.value.paragraph()


def test_all_is_every_gpu_torch_counts_and_none_is_said():
    assert devices.count_all(["all"], TWO_GPUS) == ["cuda:0", "cuda:1"]
    assert devices.count_all(["cpu", "cpu"], CPU_ONLY) == ["cpu", "cpu"]
    with pytest.raises(UsageError) as e:
        devices.count_all(["all"], devices.Machine("2.13.0+cu128", True, 0, False))
    assert "sees none" in e.value.paragraph() and "--devices cpu,cpu" in e.value.paragraph()
    with pytest.raises(UsageError) as e:
        devices.count_all(["cuda:0", "cuda:5"], TWO_GPUS)
    assert "cuda:5" in e.value.paragraph() and "has 2 CUDA GPU(s)" in e.value.paragraph()


def test_lane_names_number_a_device_asked_twice():
    from spo_cli.serve.worker import lane_names

    assert lane_names(["cpu", "cpu"]) == ["cpu#0", "cpu#1"]
    assert lane_names(["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert lane_names(["cpu"]) == ["cpu"]


@pytest.mark.slow  # a subprocess
def test_the_cli_refuses_bad_devices_in_one_paragraph_before_torch(tmp_path):
    out = ["--out", str(tmp_path / "out"), "--port", "0"]
    said = probe_cli({
        "all": ["serve", "--devices", "all", *out],
        "twice": ["serve", "--devices", "cuda:0,cuda:0", *out],
        "syntax": ["serve", "--devices", "cpu;cpu", *out],
        "both": ["serve", "--device", "cpu", "--devices", "cpu,cpu", *out],
        "offload": ["serve", "--devices", "cpu,cpu", "--offload", "model", *out],
    })
    expected = {"all": ("--devices all asks for every CUDA GPU", "--devices cpu,cpu runs two CPU workers"),
                "twice": ("--devices names cuda:0 twice",),
                "syntax": ("'cpu;cpu' is not a device",),
                "both": ("--device cpu and --devices cpu,cpu both say where to run",),
                "offload": ("--offload model moves weights between host memory and a GPU",)}
    for case, words in expected.items():
        *lines, status = said[case].rstrip("\n").split("\n")
        assert status == "EXIT:2:HEAVY:", (case, said[case])
        text = " ".join(" ".join(lines).split())
        assert "Traceback" not in text and all(w in text for w in words), (case, text)
    assert not (tmp_path / "out").exists()


# -- the scheduler with two workers -------------------------------------------------------------------

def test_two_workers_hold_a_call_each_and_an_interrupt_stops_both():
    s, _ = scheduler(per_call=1)
    submit(s, "a", "x")
    submit(s, "b", "y")
    submit(s, "c", "x")
    first, second = s.poll(), s.poll()  # two free workers: one call each, oldest first
    assert names(first) == ["a0"] and names(second) == ["b0"]
    state = s.state()
    assert state.running and state.images == 1
    assert s.interrupt()
    assert s.stopping(first) and s.stopping(second)  # every call in flight
    s.finished(first)
    assert s.state().interrupted and s.state().running  # the second is still stopping
    s.finished(second)
    assert not s.state().running and not s.state().interrupted
    third = s.poll()
    assert names(third) == ["c0"] and not s.stopping(third)  # queued then: not in flight, not stopped


def test_a_second_worker_waiting_for_work_wakes_when_the_first_takes_a_call():
    s, _ = scheduler(per_call=1)
    taken: list = []
    both = threading.Barrier(3, timeout=DEADLINE)

    def worker():
        taken.append(s.next_call())
        both.wait()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    submit(s, "a", "x")
    submit(s, "b", "y")
    both.wait()  # both workers got a call, neither waits for the other's to finish
    assert sorted(n for c in taken for n in names(c)) == ["a0", "b0"]
    assert not s.stopping(taken[0]) and s.state().running
    for c in taken:
        s.finished(c)
    s.drain()


def test_progress_is_the_oldest_call_in_flight_and_counts_them_all(tmp_path):
    from spo_cli.serve.api import a1111_progress
    from spo_cli.serve.worker import Worker
    from tests.test_scheduler import Clock

    clock = Clock()
    worker = Worker({"cuda:0": dict, "cuda:1": dict}, tmp_path)
    worker._clock = clock
    zero, one = worker.lanes
    one.current = worker._flight(one, 2, 30)  # the older call, on the second device
    clock.advance(5.0)
    zero.current = worker._flight(zero, 1, 20)
    one.current.stepped(12)
    zero.current.stepped(3)
    p = worker.progress()
    assert (p.images, p.step, p.steps, p.calls, p.elapsed_s) == (2, 12, 30, 2, 5.0)
    assert a1111_progress(p)["state"]["job_count"] == 2 and a1111_progress(p)["progress"] == 0.4
    assert (zero.busy, one.busy) == (1, 2)
    one.current = None  # the older call ends: the other one is reported
    p = worker.progress()
    assert (p.images, p.step, p.steps, p.calls) == (1, 3, 20, 1)


def test_a_second_signal_answers_the_calls_in_flight_on_every_device(tmp_path):
    from spo_cli.serve.scheduler import Call, Queued
    from spo_cli.serve.worker import Ticket as Held
    from spo_cli.serve.worker import Worker
    from tests.test_scheduler import worker_job

    worker = Worker({"cuda:0": dict, "cuda:1": dict}, tmp_path)  # never started
    answered: list[str] = []
    # taken from the queue: each held by its device's thread, as a call in flight
    running = [Held(worker_job(), [None], lambda n=n: answered.append(n)) for n in ("on cuda:0", "on cuda:1")]
    for lane, ticket in zip(worker.lanes, running):
        lane.call = Call(1, (Queued(ticket, 0, None, 0.0, 1),), 0.0)
    queued = worker.submit(worker_job(), lambda: answered.append("queued"))
    worker.abandon()
    assert sorted(answered) == ["on cuda:0", "on cuda:1", "queued"]
    assert all(t.status == 503 for t in (*running, queued))


class KeysOnly:
    """As much of an engine as the worker asks of it before a call: its call key (noting the thread
    that asked) and its facts. It can make nothing, so a call on it fails."""

    def __init__(self, keyed_on: list[str] | None = None):
        self.keyed_on = [] if keyed_on is None else keyed_on

    def call_key(self, request):
        self.keyed_on.append(threading.current_thread().name)
        return "shape"

    def facts(self):
        return {}


class Described:
    def describe(self):
        return {}


def test_images_are_keyed_on_the_devices_threads_never_on_a_web_thread(tmp_path):
    """Keying an image tokenizes its prompt with an engine's tokenizers, whose padding and truncation
    are settings of the tokenizer object: from a web thread, while the device's thread encodes a call
    with them, one reset the other's padding and the call failed (bench_serve, 200 distinct prompts)."""
    from spo_cli.serve.worker import Worker
    from tests.test_scheduler import worker_job

    keyed_on: list[str] = []
    worker = Worker({"cpu#0": lambda: {"spo": (KeysOnly(keyed_on), Described())},
                     "cpu#1": lambda: {"spo": (KeysOnly(keyed_on), Described())}}, tmp_path)
    worker.start()
    wait_for(lambda: worker.status == "ready", "the devices to load")
    done = threading.Event()
    worker.submit(worker_job(3), done.set)  # from this thread, as a web request does
    assert done.wait(DEADLINE)  # answered (500: this engine can make nothing), after being keyed
    assert keyed_on and all(name.startswith("spo-gpu-cpu#") for name in keyed_on), keyed_on
    worker.drain()
    assert worker.join(DEADLINE)


class Fatal(BaseException):
    """What `_run`'s own net (Exception) lets through: a device's thread ends on it."""


def test_a_device_whose_thread_dies_after_loading_is_failed_and_the_queue_still_drains(tmp_path):
    """A device's thread that ends on an exception after its models loaded was still called ready: its
    call's client waited forever, and with no other device the queue never drained. It is now failed
    as a device that could not load: its call answered 500, /health degraded, then failed when none is left."""
    from spo_cli.serve.worker import Worker
    from tests.test_scheduler import worker_job

    class Dies:  # a metrics hook, the first thing a call does: each call's device ends on it, until told not to
        fatal = True

        def queue_wait(self, model, device, seconds):
            if self.fatal:
                raise Fatal(f"{device} fell over")

        def call(self, *a):
            pass

        def image_failed(self, *a):
            pass

    metrics = Dies()
    def load():
        return {"spo": (KeysOnly(), Described())}

    worker = Worker({"cpu#0": load, "cpu#1": load}, tmp_path, metrics=metrics)
    worker.start()
    wait_for(lambda: worker.status == "ready", "the devices to load")
    done = threading.Event()
    first = worker.submit(worker_job(), done.set)
    assert done.wait(DEADLINE), "the call of a device that died was never answered"
    assert first.images[0].status == 500 and "fell over" in first.images[0].error
    (dead,) = [lane for lane in worker.lanes if lane.state == "failed"]
    assert worker.status == "degraded" and "Fatal" in dead.error and dead.failures == 1
    assert worker.load_error is None  # the other device serves
    app = create_app(worker, Settings(tmp_path, api.Context(("spo",), max_images=4), bound="127.0.0.1"))
    worker.metrics = metrics  # the app's Prometheus hooks replaced ours
    status, body, _ = call(app, "GET", "/health")
    assert (status, body["status"]) == (200, "degraded")
    assert "fell over" in next(d["error"] for d in body["devices"] if d["state"] == "failed")
    metrics.fatal = False
    done.clear()
    served = worker.submit(worker_job(), done.set)
    assert done.wait(DEADLINE) and served.images[0].error and "fell over" not in served.images[0].error  # the other's
    metrics.fatal = True
    done.clear()
    last = worker.submit(worker_job(), done.set)
    assert done.wait(DEADLINE) and "fell over" in last.images[0].error
    assert worker.join(DEADLINE)  # no device left: both threads ended, the queue closed
    assert worker.status == "failed" and "fell over" in worker.load_error and isinstance(worker.load_exception, Fatal)
    turned: list = []
    with pytest.raises(ShuttingDown):
        worker.submit(worker_job(), lambda: turned.append(1))
    assert call(app, "GET", "/health")[0] == 503


def test_a_device_whose_gpu_is_lost_takes_no_more_calls_and_the_other_serves(tmp_path):
    """A GPU whose CUDA context is lost (an illegal memory access, an ECC error) fails every later call at
    once, so, free first, it took most of the queue and failed it while /health said ready (vLLM #36960).
    After a call fails and the engine finds its device lost (`Engine.device_fault`), the device takes no
    more; a call that fails on a device that still works (a request's own error) retires nothing."""
    from spo_cli.serve.worker import Worker
    from tests.test_scheduler import worker_job

    class Engine(KeysOnly):  # as much of an engine as a failing call reaches
        device = "cpu"

        def __init__(self, lost: bool):
            super().__init__()
            self.lost = lost

        def check_schedule(self, scheduler, steps):
            pass

        def plan(self, request):
            pass

        def run(self, requests, on_step):
            raise RuntimeError("CUDA error: an illegal memory access was encountered" if self.lost else "its own")

        def device_fault(self, exc):
            return f"{exc}; then nothing ran there" if self.lost else None

    worker = Worker({"cuda:0": lambda: {"spo": (Engine(True), Described())},
                     "cuda:1": lambda: {"spo": (Engine(False), Described())}}, tmp_path)
    worker.start()
    try:
        wait_for(lambda: worker.status == "ready", "the devices to load")
        lost, sound = worker.lanes

        def answered():
            done = threading.Event()
            ticket = worker.submit(worker_job(), done.set)
            assert done.wait(DEADLINE), "never answered"
            return ticket.images[0]

        # One request at a time, until the lost GPU has taken one (the free devices race for each).
        image = wait_for(lambda: (i := answered()) and "illegal memory access" in i.error and i, "cuda:0 to take a call")
        assert image.status == 500
        wait_for(lambda: lost.state == "failed", "cuda:0 to be retired")
        assert "can run nothing more" in lost.error and lost.failures == 1
        assert worker.status == "degraded" and worker.load_error is None
        for _ in range(3):  # every later call goes to the device that works
            assert "its own" in answered().error
        assert lost.failures == 1 and sound.state == "ready" and sound.failures >= 3
    finally:
        worker.drain()
        assert worker.join(DEADLINE)


# -- /health and the load of each device ---------------------------------------------------------------

def damaged_copy(repos, folder: Path) -> Path:
    """A copy of tiny SDXL base whose UNet weights are not a safetensors file: a real model that fails to load."""
    base_copy(repos, folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"<html>proxy error page</html>")
    return folder


def damaged_loader(folder: Path):
    """What `spo serve` runs to load a model, pointed at `folder`."""
    def load():
        from spo_cli.cli import loading
        from spo_cli.cli import options as o
        from spo_cli.cli.ui import UI

        request, _ = o.model_request(model=str(folder), device="cpu")
        return {"spo": (None, loading.find_model(UI(quiet=True), request, "float32"))}

    return load


def test_health_is_degraded_while_one_device_serves_and_failed_when_none_does(repos, tmp_path):
    from spo_cli.serve.worker import Worker

    bad = damaged_copy(repos, tmp_path / "damaged")
    worker = Worker({"cuda:0": dict, "cuda:1": damaged_loader(bad)}, tmp_path)
    app = create_app(worker, Settings(tmp_path, api.Context(("spo",), max_images=4), bound="127.0.0.1"))
    status, body, _ = call(app, "GET", "/health")
    assert (status, body["status"]) == (503, "loading") and [d["state"] for d in body["devices"]] == ["loading"] * 2
    worker.start()
    wait_for(lambda: worker.status != "loading", "both devices to load or fail")
    status, body, _ = call(app, "GET", "/health")
    assert (status, body["status"]) == (200, "degraded"), body
    good, failed = body["devices"]
    assert (good["device"], good["state"], "error" in good) == ("cuda:0", "ready", False)
    assert (failed["device"], failed["state"]) == ("cuda:1", "failed")
    assert "diffusion_pytorch_model.safetensors" in failed["error"] and "not a safetensors file" in failed["error"]
    assert worker.load_error is None  # the server keeps serving
    text = call(app, "GET", "/metrics")[1].decode()
    got = {(s.name, *sorted(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert got[("spo_device_up", ("device", "cuda:0"))] == 1 and got[("spo_device_up", ("device", "cuda:1"))] == 0
    assert got[("spo_ready",)] == 1
    assert got[("spo_images_total", ("device", "cuda:1"), ("model", "spo"))] == 0  # listed, though it never loaded
    for histogram in ("spo_call_seconds_count", "spo_queue_wait_seconds_count"):  # for rate() and quantiles too
        assert got[(histogram, ("device", "cuda:1"), ("model", "spo"))] == 0
    worker.drain()
    assert worker.join(DEADLINE)

    everyone = Worker({"cpu#0": damaged_loader(bad), "cpu#1": damaged_loader(bad)}, tmp_path)
    app = create_app(everyone, Settings(tmp_path, api.Context(("spo",), max_images=4), bound="127.0.0.1"))
    everyone.start()
    assert everyone.join(DEADLINE)
    status, body, _ = call(app, "GET", "/health")
    assert (status, body["status"]) == (503, "failed") and [d["state"] for d in body["devices"]] == ["failed"] * 2
    # The same reason on both devices is said once; the server ends on it (`spo serve` watches load_error).
    assert everyone.load_error == everyone.lanes[0].error == everyone.lanes[1].error  # said once, as one device's
    assert isinstance(everyone.load_exception, ModelError)


def test_every_device_failing_for_its_own_reason_says_each():
    from spo_cli.serve.worker import Worker

    def fails(why):
        def load():
            raise ModelError(why)
        return load

    worker = Worker({"cuda:0": fails("GPU 0 is out of memory."), "cuda:1": fails("GPU 1 fell off the bus.")}, Path("."))
    worker.start()
    assert worker.join(DEADLINE)
    assert worker.load_error == "On cuda:0: GPU 0 is out of memory. On cuda:1: GPU 1 fell off the bus."
    assert worker.status == "failed" and not worker.ready


# -- a real server with two CPU workers ----------------------------------------------------------------

@pytest.fixture(scope="session")
def two_cpus(hub_cache, tmp_path_factory):
    """`spo serve --devices cpu,cpu`: two workers, each its own tiny pipeline, one queue."""
    s = Running(tmp_path_factory.mktemp("devices"), devices=["cpu", "cpu"], batch_size=2, batch_wait_ms=50,
                max_queue=32).start().ready()
    yield s
    s.stop()


def busy_devices(url: str) -> list[str]:
    return [d["device"] for d in request(url + "/health")[1]["devices"] if d["busy"]]


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
@pytest.mark.early
def test_two_cpu_workers_serve_sixteen_concurrent_requests_with_spo_generate_pixels(two_cpus, tmp_path):
    """Both devices hold a call at once (progress counts both, an interrupt stops both); 16 requests
    queued meanwhile are answered, once the devices are free, with `spo generate --seed`'s pixels, and
    /metrics shows images made on each device."""
    url, prompt = two_cpus.url, "a red fox in fresh snow"
    r = invoke("generate", prompt, "--seed", "300", "-n", "16", "--steps", "2", "--width", "64", "--height", "64",
               "--device", "cpu", "--out", str(tmp_path / "cli"), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    reference = {w["seed"]: png_pixels(Path(w["image"]).read_bytes()) for w in json.loads(r.stdout)}
    assert sorted(reference) == list(range(300, 316))
    status, health, _ = request(url + "/health")
    assert (status, health["status"]) == (200, "ready")
    assert [(d["device"], d["state"]) for d in health["devices"]] == [("cpu#0", "ready"), ("cpu#1", "ready")]
    before = metrics(url)

    slow = {"prompt": "a slow one", "size": "64x64", "steps": 500}

    def busy(n: int, *jobs) -> bool:
        assert not any(j.done() for j in jobs), [j.result() for j in jobs if j.done()]
        return len(busy_devices(url)) == n

    with ThreadPoolExecutor(18) as pool:
        first = pool.submit(request, url + OPENAI, {**slow, "seed": 1})
        wait_for(lambda: busy(1, first), "a device to take the first slow call")
        second = pool.submit(request, url + OPENAI, {**slow, "seed": 2})  # the busy one cannot take it
        wait_for(lambda: busy(2, first, second), "the other device to take the second")
        progress = request(url + "/sdapi/v1/progress")[1]
        assert progress["state"]["job_count"] == 2 and progress["state"]["sampling_steps"] == 500
        answers = [pool.submit(request, url + OPENAI, {"prompt": prompt, "size": "64x64", "steps": 2, "seed": s})
                   for s in range(300, 316)]
        wait_for(lambda: two_cpus.server.worker.queued == 16, "the 16 requests to be queued behind the slow calls")
        assert request(url + "/sdapi/v1/interrupt", {})[0] == 200
        assert first.result()[0] == 409 and second.result()[0] == 409  # both calls in flight stopped
        answers = [a.result() for a in answers]
    for seed, (status, body, _) in zip(range(300, 316), answers):
        assert status == 200 and body["spo"]["seeds"] == [seed], body
        served = png_pixels(base64.b64decode(body["data"][0]["b64_json"]))
        assert np.abs(served - reference[seed]).max() <= 1  # may share a call: ≤ 1/255, as in batch
    after = metrics(url)

    def grew(name, device):
        key = (name, ("device", device), ("model", "spo"))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("spo_image_failures_total", "cpu#0") == 1 and grew("spo_image_failures_total", "cpu#1") == 1
    made = {d: grew("spo_images_total", d) for d in ("cpu#0", "cpu#1")}
    assert sum(made.values()) == 16 and all(made.values()), made  # both devices made some
    for d in request(url + "/health")[1]["devices"]:  # /health counts what /metrics counts
        assert d["images"] == after[("spo_images_total", ("device", d["device"]), ("model", "spo"))], d
        assert d["failures"] == after[("spo_image_failures_total", ("device", d["device"]), ("model", "spo"))], d
        assert d["busy"] == 0 and d["state"] == "ready"
    assert after[("spo_device_up", ("device", "cpu#0"))] == after[("spo_device_up", ("device", "cpu#1"))] == 1
    assert after[("spo_queue_depth",)] == 0


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
@pytest.mark.early
def test_a_device_that_fails_to_load_leaves_the_other_serving_and_health_degraded(two_cpus, repos, tmp_path):
    """One device's copy of the model is damaged: it fails to load, the other serves, /health says
    degraded (200, for a load balancer) with each device's state, and /metrics lists both."""
    shared = {label: (m.engine, m.resolved) for label, m in two_cpus.server.worker.lanes[0].models.items()}
    server = Running(tmp_path, devices=["cpu", "cpu"], max_queue=4)
    lanes = server.server.worker.lanes
    lanes[0].load = lambda: shared  # the loaded tiny pipeline, not loaded again
    lanes[1].load = damaged_loader(damaged_copy(repos, tmp_path / "damaged"))
    server.start()
    try:
        url = server.url
        health = wait_for(lambda: (h := request(url + "/health"))[0] == 200 and h[1], "the devices to load")
        assert health["status"] == "degraded" and health["models"] == ["spo"]
        assert [(d["device"], d["state"]) for d in health["devices"]] == [("cpu#0", "ready"), ("cpu#1", "failed")]
        assert "not a safetensors file" in health["devices"][1]["error"]
        status, body, _ = request(url + OPENAI, {"prompt": "a fox", "size": "64x64", "steps": 2, "seed": 5})
        assert status == 200 and body["spo"]["seeds"] == [5], body
        got = metrics(url)
        assert got[("spo_images_total", ("device", "cpu#0"), ("model", "spo"))] == 1
        assert got[("spo_images_total", ("device", "cpu#1"), ("model", "spo"))] == 0  # listed, though it never loaded
        assert got[("spo_device_up", ("device", "cpu#0"))] == 1 and got[("spo_device_up", ("device", "cpu#1"))] == 0
        assert got[("spo_ready",)] == 1
        assert server.server.worker.load_error is None  # `spo serve` keeps serving
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.xdist_group("serve")
@pytest.mark.early
def test_serve_devices_that_all_fail_end_the_server_saying_why_once(hub_cache, tmp_path):
    r = invoke("serve", "--port", "0", "--devices", "cpu,cpu", "--models", "nobody/nothing", "--no-save", "--json")
    assert r.exit_code == 1, r.output
    error = r.output[r.output.index("error:"):]  # after any device's warning: the server's own error
    assert error.count("not available offline") == 1 and "nobody/nothing" in error
    assert "Traceback" not in r.output
    assert json.loads(r.stdout.splitlines()[0])["devices"] == ["cpu#0", "cpu#1"]


def test_an_unavailable_mps_is_not_sent_to_nvidia_smi():
    # --device mps off a Mac was told to "Check `nvidia-smi` and that torch was installed with CUDA support".
    with pytest.raises(UsageError) as e:
        devices.check("mps", [], None, CPU_ONLY)
    assert "Apple MPS is not available" in e.value.message and "nvidia" not in e.value.paragraph()
    with pytest.raises(UsageError) as e:
        devices.check("cuda", [], None, CPU_ONLY)
    assert "nvidia-smi" in e.value.hint

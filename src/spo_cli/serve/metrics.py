"""`/metrics`: the server's Prometheus series, kept by the maintained client library.

`Metrics` owns its own `CollectorRegistry` (not the process-wide default), so two apps in one process
(the tests run several) never register a series twice, and nothing else's series leak into ours.
The worker calls `queue_wait`, `call` and `image_failed`; the app calls `http_request` and
`exposition`. Gauges read the worker when scraped, so they are never stale.

With several devices (`spo serve --devices`), what a device does is labelled `device` (the lane's
name: `cuda:1`, or `cpu#0` for a device asked twice): images, failures, calls and their seconds, and
`spo_device_up` / `spo_device_busy` per device. The queue is one, shared by every device:
`spo_queue_depth` has no device label. `sum by (model)` gives the server's totals.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

OTHER = "other"  # the `path` label of every path no route has: unbounded labels would grow without end
# Seconds, from a tiny model's one step on a CPU to a large batch of 1024² images on a slow GPU.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    def __init__(self, worker, paths: Iterable[str] = ()):
        self.registry = CollectorRegistry(auto_describe=True)
        self.paths = set(paths)  # the route templates (`/outputs/{name:path}`): the only path labels but OTHER
        r = self.registry
        self._http = Counter("spo_http_requests", "HTTP requests by route and status.", ["path", "code"], registry=r)
        Gauge("spo_ready", "1 once every device has loaded (or failed to load) and at least one serves: "
              "/health's 200.", registry=r).set_function(lambda: float(bool(worker.ready)))
        Gauge("spo_queue_depth", "Images waiting for a device (one queue for them all).",
              registry=r).set_function(lambda: float(worker.queued))
        up = Gauge("spo_device_up", "1 while the device has its models loaded and takes calls; 0 while it loads "
                   "or after it failed to load.", ["device"], registry=r)
        busy = Gauge("spo_device_busy", "Images in the device's call in flight (0: idle).", ["device"], registry=r)
        for lane in getattr(worker, "lanes", ()):
            up.labels(lane.name).set_function(lambda lane=lane: float(lane.state == "ready"))
            busy.labels(lane.name).set_function(lambda lane=lane: float(lane.busy))
        by = ["model", "device"]
        self._images = Counter("spo_images", "Images the pipeline made.", by, registry=r)
        self._failures = Counter("spo_image_failures", "Images that failed: refused by the loaded model, "
                                 "interrupted, NaN, or not written.", by, registry=r)
        self._calls = Counter("spo_pipeline_calls", "Pipeline calls that ran to the end.", by, registry=r)
        self._batched = Counter("spo_batched_images", "Images that shared a call with another request's.",
                                by, registry=r)
        self._wait = Histogram("spo_queue_wait_seconds", "Seconds an image waited between its request and its "
                               "pipeline call (labelled with the device that took it).", by, buckets=BUCKETS,
                               registry=r)
        self._call = Histogram("spo_call_seconds", "Seconds per pipeline call.", by, buckets=BUCKETS, registry=r)

    def known(self, models: Iterable[str], devices: Iterable[str]) -> None:
        """Every model × device series at 0 from the start (the histograms' too), so that a device that
        has made nothing yet (or failed to load) is listed, not missing, and `rate()` sees its first image."""
        for model in models:
            for device in devices:
                for series in (self._images, self._failures, self._calls, self._batched, self._wait, self._call):
                    series.labels(model, device)

    # -- from the worker ----------------------------------------------------------------------------

    def queue_wait(self, model: str, device: str, seconds: float) -> None:
        """One image's wait in the queue, observed when its call starts on `device`."""
        self._wait.labels(model, device).observe(max(seconds, 0.0))

    def call(self, model: str, device: str, images: int, seconds: float, batched: int) -> None:
        """A pipeline call that ran to the end on `device`: the images it made, its duration, and how
        many of its images shared it with another request's (0 when it served one request)."""
        self._calls.labels(model, device).inc()
        self._call.labels(model, device).observe(max(seconds, 0.0))
        self._images.labels(model, device).inc(images)
        self._batched.labels(model, device).inc(batched)

    def image_failed(self, model: str, device: str) -> None:
        self._failures.labels(model, device).inc()

    # -- from the app -------------------------------------------------------------------------------

    def http_request(self, path: str, code: int) -> None:
        self._http.labels(path if path in self.paths else OTHER, str(code)).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The text format's body and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

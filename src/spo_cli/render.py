"""The generation loop every command shares: tasks → pipeline calls → images on disk.

Typer-free and torch-free itself (the engine it is handed does the torch work), so generate, batch,
compare and a server run the same loop. Per call: the engine makes the images; each image's
metadata is built; a writer thread encodes and writes it while the next call runs, so the GPU
does not wait for PNG compression. NaN images are never written.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter

from spo_cli.errors import GenerationError, translate
from spo_cli.outputs import files, metadata, naming
from spo_cli.request import ImageTask, calls


@dataclass
class Outcome:
    task: ImageTask
    written: dict | None = None  # files.write_pair's answer
    error: str | None = None  # one paragraph; None when written


class NoProgress:
    """What `render` reports to; the CLI's progress bars implement the same three methods."""

    def start_call(self, size: int, steps: int) -> None:
        pass

    def step(self, done: int, total: int) -> None:
        pass

    def images_done(self, n: int) -> None:
        pass

    def note(self, text: str) -> None:
        """Something the user should know about how the images were made (said once per run)."""


def nan_hint(dtype: str) -> str:
    if dtype == "float16":
        return ("This is float16 overflow: keep the default fp16-fix VAE (drop --vae), or run with --dtype fp32 "
                "(or bf16 on GPUs that support it).")
    return "Check the settings (an extreme --guidance or LoRA strength overflows) and the model's weights."


def nan_error(dtype: str) -> str:
    return "NaN output (the image would be all black). " + nan_hint(dtype)


def call_metadata(engine, model: dict, facts: dict, call: list[ImageTask], results, elapsed: float, *,
                  provenance: bool = True):
    """(task, result, sidecar) for each image of one pipeline call; the sidecar is None for a NaN
    image, which is never written. `model` is `resolved.describe()`, `facts` `engine.facts()`;
    `provenance` False (--no-provenance) writes no XMP (metadata.build)."""
    batch = [t.request for t in call]
    # The VAE options the engine turned on for this call to fit in memory (a --server's engine
    # stand-in has none: its server writes its own record).
    facts = engine.call_facts(facts) if hasattr(engine, "call_facts") else facts
    scheduler = engine.scheduler_facts(batch[0].scheduler)
    encoding = engine.encoding_facts(batch[0])
    created = naming.now()
    for task, res in zip(call, results):
        r = res.request
        meta = None if res.nan else metadata.build(
            r, model, facts, scheduler, **engine.recorded_size(r),
            batch_size=len(batch), elapsed_s=elapsed, created=created, spec_hash=task.spec_hash,
            encoding=encoding, extra=task.extra, provenance=provenance,
        )
        yield task, res, meta


def call_error(exc: Exception, debug: bool = False) -> str:
    """A failed pipeline call as one paragraph for the record."""
    err = translate(exc)
    if err is not None:
        return err.paragraph()
    if debug:
        traceback.print_exc()
    return f"The pipeline call failed: {type(exc).__name__}: {exc}"


def render(engine, resolved, tasks: list[ImageTask], *, out: Path, image_format: str, batch_size: int,
           keep_going: bool = False, stop: Callable[[], bool] = lambda: False, progress=None,
           outcomes: list[Outcome] | None = None, debug: bool = False, provenance: bool = True,
           signer=None) -> list[Outcome]:
    """Run `tasks` in pipeline calls of `batch_size` and write each image with its sidecar.

    With `keep_going`, a call that fails (out of memory, an encoder error, anything the pipeline
    raises) fails its images and the run goes on; otherwise the error propagates. `stop()` is
    checked between calls. Outcomes are appended to `outcomes` as they happen, so a caller keeps
    them across an interruption. A write error (a full disk) always ends the run. `provenance`
    False (--no-provenance): no XMP in the images; it is not part of a spec hash, since no pixel
    depends on it. With `signer` (outputs.credentials.Signer) each image is written with a signed
    C2PA manifest.
    """
    progress = progress or NoProgress()
    outcomes = [] if outcomes is None else outcomes
    model = resolved.describe()
    facts = engine.facts()
    when = naming.now()
    pending: deque[tuple[Outcome, Future]] = deque()
    said: set[str] = set()  # notes already given the user

    def write(task: ImageTask, image, meta: dict) -> dict:
        default = None if task.stem else naming.default_stem(task.request.prompt, task.request.seed, when)
        return files.write_pair(out, task.stem, image_format, image, meta, overwrite=task.overwrite,
                                default_stem=default, signer=signer)

    def settle(limit: int) -> None:
        while len(pending) > limit:
            outcome, future = pending.popleft()
            outcome.written = future.result()  # a write error (disk full) ends the run

    # On a GPU the next call runs while this one's images are encoded. On the CPU the pipeline
    # already uses every core, and an encoder beside it only makes torch's threads wait for each
    # other (measured in benchmarks/README.md), so there the images are written in line.
    on_cpu = str(getattr(engine, "device", "")).startswith("cpu")
    with (_InLine() if on_cpu else ThreadPoolExecutor(max_workers=1, thread_name_prefix="spo-writer")) as writer:
        try:
            for call in calls(tasks, batch_size, request=lambda t: t.request, key=engine.call_key):
                if stop():
                    break
                batch = [t.request for t in call]
                progress.start_call(len(batch), batch[0].denoising_steps)
                t0 = perf_counter()
                try:
                    results = engine.run(batch, on_step=progress.step)
                except Exception as e:
                    if not keep_going:
                        raise
                    error = call_error(e, debug)
                    outcomes.extend(Outcome(t, error=error) for t in call)
                    progress.images_done(len(call))
                    continue
                note = engine.vae_note() if hasattr(engine, "vae_note") else None
                if note and note not in said and hasattr(progress, "note"):
                    said.add(note)
                    progress.note(note)
                for task, res, meta in call_metadata(engine, model, facts, call, results, perf_counter() - t0,
                                                        provenance=provenance):
                    outcome = Outcome(task)
                    outcomes.append(outcome)
                    if meta is None:
                        outcome.error = nan_error(engine.dtype)
                        continue
                    pending.append((outcome, writer.submit(write, task, res.image, meta)))
                settle(limit=2 * batch_size)  # bounded: at most two calls' images in memory
                progress.images_done(len(call))
        finally:
            settle(limit=0)
    return outcomes


class _InLine:
    """An executor that runs each task as it is submitted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def submit(fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as e:
            future.set_exception(e)
        return future


def raise_for_failures(outcomes: list[Outcome], dtype: str) -> None:
    """generate/replay: any image that was not written fails the command (after the others were)."""
    failed = [o for o in outcomes if o.error]
    if not failed:
        return
    seeds = ", ".join(str(o.task.request.seed) for o in failed)
    if all(o.error.startswith("NaN output") for o in failed):
        raise GenerationError(
            f"{len(failed)} image(s) came out as NaN (they would be all black) for seed(s) {seeds}; "
            f"{len(outcomes) - len(failed)} other image(s) were written.", nan_hint(dtype),
        )
    raise GenerationError(f"{len(failed)} image(s) failed (seed(s) {seeds}): {failed[0].error}")

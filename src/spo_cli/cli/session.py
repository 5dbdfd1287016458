"""What every generating command does: resolve, load, render batches, write, report.

Imports of the engine (torch, diffusers) happen inside these functions, never at module level.
"""

from __future__ import annotations

import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import perf_counter

import typer

from spo_cli import jobs, outputs
from spo_cli.cli.ui import UI
from spo_cli.errors import EXIT_INTERRUPTED, GenerationError, UsageError, translate


@contextmanager
def handled(ui: UI):
    """Turn every failure into one paragraph on stderr and an exit code; tracebacks only with --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KeyboardInterrupt:
        ui.error("Interrupted. Files already written are complete; nothing half-written was left behind.")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as e:
        err = translate(e)
        if ui.debug:
            traceback.print_exc()
        if err is None:
            ui.error(
                f"Unexpected {type(e).__name__}: {e}. "
                + ("" if ui.debug else "Run again with --debug for the traceback, and please report it.")
            )
            raise typer.Exit(1) from None
        ui.error(err.paragraph())
        raise typer.Exit(err.exit_code) from None


def check_output_format(fmt: str) -> str:
    fmt = fmt.lower().lstrip(".")
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in outputs.FORMATS:
        raise UsageError(f"Unknown --format '{fmt}'.", "Use png, jpg or webp.")
    return fmt


def check_generator_device(device: str) -> str:
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise UsageError(f"Unknown --generator-device '{device}'.", "Use cpu (the default), cuda or mps.")
    return device


def validate_images(ui: UI, requests: list[jobs.ImageRequest]) -> None:
    """Everything that can be checked without the model, before anything heavy is imported."""
    seen = set()
    for r in requests:
        if not r.prompt.strip():
            raise UsageError("The prompt is empty.", 'Give one, e.g. spo generate "a lighthouse in a storm".')
        if r.steps < 1:
            raise UsageError(f"--steps must be at least 1, not {r.steps}.")
        jobs.check_seed(r.seed)
        jobs.check_scheduler(r.scheduler)
        check_generator_device(r.generator_device)
        for w in jobs.check_size(r.width, r.height):
            if w not in seen:
                seen.add(w)
                ui.warn(w)


def boot(ui: UI, request: jobs.ModelRequest, *, local_rank: int | None = None):
    """Import the engine (torch, diffusers) and pick device and dtype: (engine module, device, dtype)."""
    with ui.status("Starting PyTorch"):
        from spo_cli import engine as engine_mod

        engine_mod.quiet_libraries(ui.debug)
        device, notes = engine_mod.pick_device(request.device, local_rank)
        dtype = engine_mod.pick_dtype(device, request.dtype)
    for n in notes:
        ui.warn(n)
    return engine_mod, device, dtype


def resolve_model(ui: UI, request: jobs.ModelRequest, dtype: str):
    from spo_cli.resolve import resolve

    # No spinner here: download bars may need the live display.
    resolved = resolve(request, dtype, tqdm=ui.download_tqdm)
    for part in resolved.parts():
        at = f" @ {part.commit[:10]}" if part.commit else ""
        ui.info(f"[green]✓[/] Resolved {part.id}{'/' + part.file if part.file and part.source == 'hub' else ''}{at}")
    return resolved


def load(ui: UI, engine_mod, resolved, device: str, options: jobs.RunOptions = jobs.RunOptions()):
    with ui.status(f"Loading {resolved.pipeline.id} on {device} ({resolved.dtype})"):
        eng = engine_mod.Engine.load(resolved, device, options)
    if options.fast:
        ui.info(f"--fast: the first images compile the model (minutes); compiled code is cached in "
                f"{engine_mod.configure_compile_cache()} for later runs.")
    return eng


def start(ui: UI, request: jobs.ModelRequest, options: jobs.RunOptions = jobs.RunOptions()):
    """Boot, resolve (downloading if needed) and load: (engine, resolved)."""
    engine_mod, device, dtype = boot(ui, request)
    engine_mod.check_options(options, device)  # before a download, not after
    resolved = resolve_model(ui, request, dtype)
    return load(ui, engine_mod, resolved, device, options), resolved


def warn_truncation(ui: UI, eng, requests: list[jobs.ImageRequest]) -> None:
    seen = set()
    for r in requests:
        for label, text in (("prompt", r.prompt), ("negative prompt", r.negative_prompt)):
            if text in seen:
                continue
            seen.add(text)
            dropped = eng.dropped_words(text)
            if dropped:
                ui.warn(f"The {label} is longer than the text encoders' 77 tokens; SDXL ignores the end: "
                        f"[italic]{dropped}[/]")


@dataclass(frozen=True)
class Work:
    """One image to make, and how to file it."""

    request: jobs.ImageRequest
    stem: str | Callable[[], str]  # a callable is called when writing (claims a free name)
    extra: dict | None = None  # more metadata (where a batch line came from)
    spec_hash: str | None = None
    overwrite: bool = False


@dataclass
class Outcome:
    work: Work
    written: dict | None = None
    error: str | None = None


def nan_hint(dtype: str) -> str:
    if dtype == "float16":
        return ("This is float16 overflow: keep the default fp16-fix VAE (drop --vae), or run with --dtype fp32 "
                "(or bf16 on GPUs that support it).")
    return "Check the settings (an extreme --guidance overflows) and the model's weights."


def render(ui: UI, eng, resolved, works: list[Work], *, batch_size: int, out: Path, fmt: str,
           keep_going: bool = False, stop: Callable[[], bool] = lambda: False,
           outcomes: list[Outcome] | None = None, bars=None) -> list[Outcome]:
    """Run `works` in pipeline calls of `batch_size` and write each image with its sidecar.

    Encoding and writing happen on a writer thread while the next call runs, so the GPU does not
    wait for PNG compression. NaN images are never written. With `keep_going`, a failing call
    (out of memory, …) fails its images and the run goes on; `stop()` is checked between calls.
    `bars` continues a progress display the caller already shows.
    """
    model = resolved.describe()
    facts = eng.facts()
    default_w, default_h = eng.default_size()
    outcomes = [] if outcomes is None else outcomes  # the caller's list survives a Ctrl-C
    pending: deque[tuple[Outcome, Future]] = deque()

    def write(work: Work, image, meta: dict) -> dict:
        stem = work.stem() if callable(work.stem) else work.stem
        return outputs.write_result(out, stem, fmt, image, meta, overwrite=work.overwrite)

    def settle(limit: int) -> None:
        while len(pending) > limit:
            outcome, future = pending.popleft()
            outcome.written = future.result()  # a write error (disk full) ends the run

    calls = jobs.batches(works, batch_size, request=lambda w: w.request)
    progress = nullcontext(bars) if bars is not None else ui.images_progress(len(works), works[0].request.steps)
    with progress as bars, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="spo-writer") as writer:
        try:
            for call in calls:
                if stop():
                    break
                batch = [w.request for w in call]
                bars.start_batch(len(batch), batch[0].steps)
                t0 = perf_counter()
                try:
                    results = eng.run(batch, on_step=bars.step)
                except Exception as e:
                    err = translate(e)
                    if not keep_going or err is None:
                        raise
                    outcomes.extend(Outcome(w, error=err.paragraph()) for w in call)
                    bars.images_done(len(call))
                    continue
                elapsed = perf_counter() - t0
                scheduler = eng.scheduler_facts(batch[0].scheduler)
                created = outputs.now()
                for work, res in zip(call, results):
                    outcome = Outcome(work)
                    outcomes.append(outcome)
                    if res.nan:
                        outcome.error = "NaN output (the image would be all black). " + nan_hint(eng.dtype)
                        continue
                    r = res.request
                    meta = outputs.build_metadata(
                        r, model, facts, scheduler, width=r.width or default_w, height=r.height or default_h,
                        batch_size=len(batch), elapsed_s=elapsed, created=created, spec_hash=work.spec_hash,
                        extra=work.extra,
                    )
                    pending.append((outcome, writer.submit(write, work, res.image, meta)))
                settle(limit=2 * batch_size)  # bounded: at most two calls' images in memory
                bars.images_done(len(call))
        finally:
            settle(limit=0)
    return outcomes


def raise_for_nan(outcomes: list[Outcome], dtype: str) -> None:
    failed = [o for o in outcomes if o.error]
    if failed:
        seeds = ", ".join(str(o.work.request.seed) for o in failed)
        raise GenerationError(
            f"{len(failed)} image(s) came out as NaN (they would be all black) for seed(s) {seeds}; "
            f"{len(outcomes) - len(failed)} other image(s) were written.", nan_hint(dtype),
        )


def report(ui: UI, written: list[dict]) -> None:
    if ui.json_mode:
        ui.emit_json(written)
        return
    if ui.quiet:
        return
    folders = sorted({str(Path(w["image"]).parent) for w in written})
    ui.table(
        f"Wrote {len(written)} image(s) with sidecars to {', '.join(folders)}",
        ["file", "seed", "prompt"],
        [[Path(w["image"]).name, str(w["seed"]), w["prompt"]] for w in written],
    )


def generate_files(ui: UI, request: jobs.ModelRequest, images: list[jobs.ImageRequest], *, batch_size: int,
                   out: Path, fmt: str, options: jobs.RunOptions = jobs.RunOptions()) -> None:
    """The whole of `generate` and `replay` once their requests are known: validate, load, render, report."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    validate_images(ui, images)
    eng, resolved = start(ui, request, options)
    warn_truncation(ui, eng, images)
    when = outputs.now()

    def stem_for(r: jobs.ImageRequest) -> str:
        return outputs.claim_stem(out, outputs.default_stem(r.prompt, r.seed, when), fmt)

    outcomes = render(ui, eng, resolved, [Work(r, partial(stem_for, r)) for r in images], batch_size=batch_size,
                      out=out, fmt=fmt)
    raise_for_nan(outcomes, eng.dtype)
    report(ui, [o.written for o in outcomes])

"""What every generating command does: resolve, load, render batches, write, report.

Imports of the engine (torch, diffusers) happen inside these functions, never at module level.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
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


def start(ui: UI, request: jobs.ModelRequest, *, debug: bool):
    """Import the engine, pick device and dtype, resolve (downloading if needed) and load."""
    with ui.status("Starting PyTorch"):
        from spo_cli import engine as engine_mod
        from spo_cli.resolve import resolve

        engine_mod.quiet_libraries(debug)
        device, notes = engine_mod.pick_device(request.device)
        dtype = engine_mod.pick_dtype(device, request.dtype)
    for n in notes:
        ui.warn(n)
    # No spinner here: download bars may need the live display.
    resolved = resolve(request, dtype, tqdm=ui.download_tqdm)
    for part in resolved.parts():
        at = f" @ {part.commit[:10]}" if part.commit else ""
        ui.info(f"[green]✓[/] Resolved {part.id}{'/' + part.file if part.file and part.source == 'hub' else ''}{at}")
    with ui.status(f"Loading {resolved.pipeline.id} on {device} ({dtype})"):
        eng = engine_mod.Engine.load(resolved, device)
    return eng, resolved


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


def render(ui: UI, eng, resolved, requests: list[jobs.ImageRequest], *, batch_size: int, out: Path,
           fmt: str, stem_for, overwrite: bool = False) -> list[dict]:
    """Run `requests` in batches and write each image with its sidecar; return what was written.

    `stem_for(request)` names each file. NaN images are not written; they fail the run at the end.
    """
    model = resolved.describe()
    facts = eng.facts()
    default_w, default_h = eng.default_size()
    written, failed = [], []
    with ui.images_progress(len(requests), requests[0].steps) as bars:
        for batch in jobs.batches(requests, batch_size):
            bars.start_batch(len(batch), batch[0].steps)
            t0 = perf_counter()
            results = eng.run(batch, on_step=bars.step)
            elapsed = perf_counter() - t0
            scheduler = eng.scheduler_facts(batch[0].scheduler)
            created = outputs.now()
            for res in results:
                if res.nan:
                    failed.append(res.request)
                    continue
                r = res.request
                meta = outputs.build_metadata(
                    r, model, facts, scheduler, width=r.width or default_w, height=r.height or default_h,
                    batch_size=len(batch), elapsed_s=elapsed, created=created,
                )
                written.append(outputs.write_result(out, stem_for(r), fmt, res.image, meta, overwrite=overwrite))
            bars.images_done(len(batch))
    if failed:
        seeds = ", ".join(str(r.seed) for r in failed)
        raise GenerationError(
            f"{len(failed)} image(s) came out as NaN (they would be all black) for seed(s) {seeds}; "
            f"{len(written)} other image(s) were written.",
            "This is float16 overflow: keep the default fp16-fix VAE (drop --vae), or run with --dtype fp32 "
            "(or bf16 on GPUs that support it).",
        )
    return written


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
                   out: Path, fmt: str) -> None:
    """The whole of `generate` and `replay` once their requests are known: validate, load, render, report."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
    validate_images(ui, images)
    eng, resolved = start(ui, request, debug=ui.debug)
    warn_truncation(ui, eng, images)
    when = outputs.now()

    def stem_for(r: jobs.ImageRequest) -> str:
        return outputs.claim_stem(out, outputs.default_stem(r.prompt, r.seed, when), fmt)

    report(ui, render(ui, eng, resolved, images, batch_size=batch_size, out=out, fmt=fmt, stem_for=stem_for))

from __future__ import annotations

import os
import signal
from pathlib import Path
from time import perf_counter
from typing import Annotated, Optional

import typer

from spo_cli import jobs, outputs, presets, prompts
from spo_cli.cli import app, options as o, session
from spo_cli.cli.ui import UI
from spo_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, UsageError

EXAMPLES = """[bold]Examples[/]

  spo batch examples/prompts.txt --out runs/spo --num-images 4 --seed 1000 --batch-size 4

  spo batch eval.jsonl --out runs/eval            # per-line settings

  cat prompts.txt | spo batch - --out runs/stdin

  spo batch prompts.txt --out runs/spo            # again: skips what is done, finishes the rest

  torchrun --nproc-per-node 8 -m spo_cli batch prompts.txt --out runs/big   # 8 GPUs

[bold]jsonl keys[/]: prompt (required), negative_prompt, seed, num_images, steps, guidance, width, height,
scheduler, name. Command-line options give the defaults for what a line leaves out.
"""


def distributed_env() -> tuple[int, int, int | None]:
    """(rank, world size, local rank) from the variables torchrun and accelerate launch set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


class Stopper:
    """First Ctrl-C / SIGTERM: finish the pipeline call in flight, then stop. Second: abandon it."""

    def __init__(self, ui: UI):
        self.ui = ui
        self.signal: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        self.ui.warn("Stopping after the pipeline call in flight (press Ctrl-C again to abandon it).")

    def requested(self) -> bool:
        return self.signal is not None

    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else EXIT_INTERRUPTED


@app.command(epilog=EXAMPLES)
def batch(
    file: Annotated[str, typer.Argument(help="Prompt file (.txt: one prompt per line; .jsonl: one JSON object "
                                        "per line), or - for standard input.", show_default=False)],
    input_format: Annotated[Optional[str], typer.Option(
        "--format", help="txt or jsonl (default: by file name, or by content for stdin).")] = None,
    negative: o.Negative = None,
    seed: Annotated[int, typer.Option(help="Seed of the file's first image; image k gets seed+k unless its "
                                      "line sets a seed.", rich_help_panel="Sampling")] = 0,
    num_images: o.NumImages = 1,
    batch_size: o.BatchSize = 1,
    steps: o.Steps = presets.DEFAULT_STEPS,
    guidance: o.Guidance = presets.DEFAULT_GUIDANCE,
    width: o.Width = None,
    height: o.Height = None,
    scheduler: o.Scheduler = "default",
    generator_device: o.GeneratorDevice = "cpu",
    model: o.Model = presets.DEFAULT_PRESET,
    revision: o.Revision = None,
    lora: o.Lora = None,
    lora_file: o.LoraFile = None,
    lora_scale: o.LoraScale = 1.0,
    vae: o.Vae = None,
    device: o.Device = "auto",
    dtype: o.Dtype = "auto",
    fast: o.Fast = False,
    offload: o.Offload = None,
    vae_tiling: o.VaeTiling = False,
    vae_slicing: o.VaeSlicing = False,
    out: o.Out = Path("outputs"),
    image_format: Annotated[str, typer.Option("--image-format", help="png, jpg or webp.",
                                              rich_help_panel="Output")] = "png",
    overwrite: Annotated[bool, typer.Option(help="Make every image again, even those already done.",
                                            rich_help_panel="Output")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Report bad lines and run the others, instead of "
                                               "running nothing.")] = False,
    json_: o.Json = False,
    quiet: o.Quiet = False,
    debug: o.Debug = False,
) -> None:
    """Run a whole prompt file with the model loaded once; resumable, and sharded under torchrun."""
    rank, world, local_rank = distributed_env()
    # Only the first process draws progress and prints results; every process reports its errors.
    ui = UI(quiet=quiet or rank > 0, json_mode=json_, debug=debug)
    code = 0
    with session.handled(ui):
        t0 = perf_counter()
        fmt = session.check_output_format(image_format)
        parsed = prompts.read(file, input_format)
        if parsed.problems:
            for p in parsed.problems:
                (ui.warn if skip_invalid else ui.error)(p)
            if not skip_invalid:
                raise UsageError(f"{len(parsed.problems)} bad line(s) in {parsed.source}; nothing was run.",
                                 "Fix them, or pass --skip-invalid to run the other lines.")
        defaults = jobs.ImageRequest(
            prompt="", seed=jobs.check_seed(seed), negative_prompt=negative or None, steps=steps,
            guidance=guidance, width=width, height=height, scheduler=scheduler, generator_device=generator_device,
        )
        job_list = prompts.expand(parsed, defaults, num_images)
        session.validate_images(ui, [j.request for j in job_list])
        if batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, not {batch_size}.")
        request = jobs.ModelRequest(model=model, revision=revision, lora=lora, lora_file=lora_file,
                                    lora_scale=lora_scale, vae=vae, dtype=dtype, device=device)
        options = jobs.RunOptions(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                                  batch_size=batch_size)

        # 1. Device, process group, model files (the first process downloads, the others wait).
        engine_mod, dev, dt = session.boot(ui, request, local_rank=local_rank)
        engine_mod.check_options(options, dev)
        if world > 1:
            engine_mod.init_distributed(dev)
        if rank > 0:
            engine_mod.barrier()
        resolved = session.resolve_model(ui, request, dt)
        if rank == 0 and world > 1:
            engine_mod.barrier()

        # 2. What is left to do: images whose image and sidecar exist with the same settings are done.
        identity = resolved.identity()
        hashes = {j.stem: j.request.spec_hash(identity) for j in job_list}
        done_before = {j.stem for j in job_list
                       if not overwrite and outputs.recorded_hash(out, j.stem, fmt) == hashes[j.stem]}
        todo = [
            session.Work(j.request, j.stem, spec_hash=hashes[j.stem], overwrite=True,
                         extra={"batch": {"source": parsed.source, "line": j.line, "index": j.index,
                                          **({"rank": rank, "world_size": world} if world > 1 else {})}})
            for j in job_list if j.stem not in done_before
        ]
        if rank == 0 and out.exists():
            outputs.remove_leftovers(out)  # before any process writes
        engine_mod.barrier()
        if done_before:
            ui.info(f"{len(done_before)} of {len(job_list)} image(s) already done in {out}; "
                    f"{len(todo)} to make." + (" (--overwrite makes all again)" if todo else ""))

        # 3. This process's share: whole pipeline calls, dealt round-robin.
        calls = jobs.batches(todo, batch_size, request=lambda w: w.request)
        mine = [w for call in calls[rank::world] for w in call]
        outcomes: list[session.Outcome] = []
        interrupted = None
        if mine:
            eng = session.load(ui, engine_mod, resolved, dev, options)
            session.warn_truncation(ui, eng, [w.request for w in mine])
            with Stopper(ui) as stopper:
                try:
                    session.render(ui, eng, resolved, mine, batch_size=batch_size, out=out, fmt=fmt,
                                   keep_going=True, stop=stopper.requested, outcomes=outcomes)
                except KeyboardInterrupt:
                    stopper.signal = stopper.signal or signal.SIGINT
                if stopper.requested():
                    interrupted = stopper.exit_code()

        # 4. Manifest: built from what is on disk, so it is whole whatever was interrupted or killed.
        failures = [{"stem": o.work.stem, "error": o.error} for o in outcomes if o.error]
        if failures or world > 1:
            outputs.write_failures(out, rank, failures)
        if world > 1 and interrupted is None:
            engine_mod.barrier()
        if rank == 0:
            failed = outputs.collect_failures(out)
            rows = []
            for j in job_list:
                ok = outputs.recorded_hash(out, j.stem, fmt) == hashes[j.stem]
                rows.append({
                    "job": hashes[j.stem], "source": parsed.source, "line": j.line, "index": j.index,
                    "file": f"{j.stem}.{fmt}", "sidecar": f"{j.stem}.json", "prompt": j.request.prompt,
                    "seed": j.request.seed, "status": "ok" if ok else ("failed" if j.stem in failed else "pending"),
                    "error": None if ok else failed.get(j.stem), "resumed": j.stem in done_before,
                })
            out.mkdir(parents=True, exist_ok=True)
            manifest = outputs.write_manifest(out, rows)
            report(ui, rows, manifest, perf_counter() - t0, interrupted)
            if any(r["status"] == "failed" for r in rows):
                code = EXIT_FAILURE
        elif failures:
            code = EXIT_FAILURE
        if interrupted:
            code = interrupted
        if world > 1:
            engine_mod.shutdown_distributed()
    if code:
        raise typer.Exit(code)


def report(ui: UI, rows: list[dict], manifest: Path, elapsed: float, interrupted: int | None) -> None:
    count = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "pending")}
    resumed = sum(r["resumed"] and r["status"] == "ok" for r in rows)
    made = count["ok"] - resumed
    summary = {
        "manifest": str(manifest), "total": len(rows), "generated": made, "already_done": resumed,
        "failed": count["failed"], "pending": count["pending"], "elapsed_s": round(elapsed, 2),
        "images_per_minute": round(made / elapsed * 60, 2) if elapsed > 0 else None,
        "interrupted": bool(interrupted),
    }
    if ui.json_mode:
        ui.emit_json(summary)
        return
    for r in rows:
        if r["status"] == "failed":
            ui.error(f"{r['source']}:{r['line']} (seed {r['seed']}): {r['error']}")
    if ui.quiet and not (count["failed"] or interrupted):
        return
    title = "Stopped early" if interrupted else "Batch finished"
    ui.table(f"{title}: {manifest}", ["images", "count"], [
        ["made now", str(made)], ["already done", str(resumed)], ["failed", str(count["failed"])],
        ["not run", str(count["pending"])], ["images/min", f"{summary['images_per_minute']}"],
    ])
    if count["failed"] or count["pending"]:
        ui.info("Run the same command again to make the missing images; finished ones are skipped.")

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path
from time import perf_counter
from typing import Annotated

import typer

from spo_cli import distributed, presets, prompts, validate
from spo_cli.cli import app, loading, options as opts
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape
from spo_cli.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_SKIPPED, UsageError
from spo_cli.outputs import files
from spo_cli.request import calls

EXAMPLES = """[bold]Examples[/]

  spo batch examples/prompts.txt --out runs/spo --num-images 4 --seed 1000 --batch-size 4

  spo batch eval.jsonl --out runs/eval            # per-line settings

  cat prompts.txt | spo batch - --out runs/stdin

  spo batch prompts.txt --out runs/spo            # again: skips what is done, finishes the rest

  torchrun --nproc-per-node 8 -m spo_cli batch prompts.txt --out runs/big   # 8 GPUs

  spo batch edits.jsonl --strength 0.6            # {"prompt": "…", "image": "fox.png", "mask": "m.png"}

[bold]jsonl keys[/]: {keys}. Command-line options give the defaults for what a line leaves out. A line's \
"image" and "mask" are paths relative to the prompt file's folder (stdin's: the current folder), and must \
stay inside it.

[bold]Exit codes[/]: 0 all made; 1 some images failed (see the manifest); 2 bad input, nothing run;
3 made, but --skip-invalid skipped lines; 130/143 stopped by Ctrl-C / SIGTERM (run again to finish).
"""
# From the list the lines are checked against, so the help cannot name fewer keys than a line takes.
EXAMPLES = EXAMPLES.replace("{keys}", ", ".join(k + " (required)" if k == "prompt" else k for k in prompts.KEYS))
JSON_HELP = ("Print the run's summary as JSON on stdout (manifest path, counts of made, resumed, failed, "
             "pending and skipped images, skipped lines), nothing else.")


class Stopper:
    """Ctrl-C and SIGTERM for the whole of a batch run.

    While a pipeline call runs, the first signal lets it finish (its images are written), then the
    run stops; a second abandons it. Before the first call (starting torch, downloading, loading) a
    signal stops at once, as there is nothing to finish. Either way the run ends through its
    manifest, and once it is stopping, further signals are ignored so that nothing cuts that short.
    """

    def __init__(self, ui: UI):
        self.ui = ui
        self.signal: int | None = None
        self.rendering = False
        self.finishing = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            # Stopping: the process is on its way out; a late Ctrl-C would only spill tracebacks.
            signal.signal(sig, signal.SIG_IGN if self.signal is not None else handler)

    def _handle(self, signum, frame):
        if self.finishing:
            return
        first = self.signal is None
        self.signal = self.signal or signum
        if first and self.rendering:
            self.ui.warn("Stopping after the pipeline call in flight (press Ctrl-C again to abandon it).")
            return
        raise KeyboardInterrupt

    def requested(self) -> bool:
        return self.signal is not None

    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else EXIT_INTERRUPTED


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def batch(
    ui: UI,
    file: Annotated[str, typer.Argument(help="Prompt file (.txt: one prompt per line; .jsonl: one JSON object "
                                        "per line), or - for standard input.", show_default=False)],
    prompt_format: opts.PromptFormat = None,
    old_format: opts.OldPromptFormat = None,
    negative: opts.Negative = None,
    seed: Annotated[int, typer.Option(help="Seed of the file's first image; image k gets seed+k unless its "
                                      "line sets a seed (-1: a random one, recorded).", rich_help_panel="Sampling")] = 0,
    num_images: opts.NumImages = 1,
    batch_size: opts.BatchSize = 1,
    steps: opts.Steps = presets.DEFAULT_STEPS,
    guidance: opts.Guidance = presets.DEFAULT_GUIDANCE,
    width: opts.Width = None,
    height: opts.Height = None,
    scheduler: opts.Scheduler = "default",
    generator_device: opts.GeneratorDevice = "cpu",
    prompt_syntax: opts.PromptSyntax = "auto",
    emphasis: opts.Emphasis = "original",
    watermark: opts.Watermark = None,
    no_size_limit: opts.NoSizeLimit = False,
    image: opts.Image = None,
    mask: opts.Mask = None,
    strength: opts.Strength = None,
    mask_blur: opts.MaskBlur = None,
    mask_crop: opts.MaskCrop = None,
    hires: opts.Hires = None,
    hires_upscaler: opts.HiresUpscaler = None,
    hires_steps: opts.HiresSteps = None,
    hires_strength: opts.HiresStrength = None,
    keep_inputs: opts.KeepInputs = False,
    model: opts.Model = presets.DEFAULT_PRESET,
    revision: opts.Revision = None,
    lora: opts.Lora = None,
    lora_file: opts.LoraFile = None,
    lora_scale: opts.LoraScale = None,
    lora_dir: opts.LoraDir = None,
    vae: opts.Vae = None,
    device: opts.Device = "auto",
    dtype: opts.Dtype = "auto",
    quantize: opts.Quantize = None,
    fast: opts.Fast = False,
    offload: opts.Offload = None,
    vae_tiling: opts.VaeTiling = False,
    vae_slicing: opts.VaeSlicing = False,
    out: opts.Out = "outputs",
    image_format: opts.ImageFormat = "png",
    no_provenance: opts.NoProvenance = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Make every image again, even those already done.",
                                            rich_help_panel="Output")] = False,
    skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Report bad lines and run the others (exit code 3), instead "
                                               "of running nothing.")] = False,
    sign: opts.Sign = False,
    sign_key: opts.SignKey = None,
    sign_cert: opts.SignCert = None,
    server: opts.Server = None,
) -> None:
    """Run a whole prompt file with the model loaded once; resumable, and sharded under torchrun."""
    rank = distributed.rank_info()
    validate.shared_by(rank.world)  # every rank must build the same tasks: no -1 seeds, no stdin
    if not rank.first:
        ui.silence()  # the first process draws progress and prints results; every process reports errors
    t0 = perf_counter()

    # 1. Everything that can be checked without the model.
    image_format = opts.image_format(image_format, None, ui.warn)
    fmt = opts.prompt_format(prompt_format, old_format, ui.warn)
    defaults, warnings = opts.image_request(
        seed=seed, negative=negative, steps=steps, guidance=guidance, width=width, height=height,
        scheduler=scheduler, generator_device=generator_device, prompt_syntax=prompt_syntax, emphasis=emphasis,
        watermark=watermark,
        size_limit=not no_size_limit, check_prompt=False)
    validate.num_images(num_images)
    request, more = opts.model_request(model=model, revision=revision, lora=lora, lora_file=lora_file,
                                    lora_scale=lora_scale, vae=vae, dtype=dtype, device=device,
                                    lora_dir=None if server else lora_dir, quantize=None if server else quantize)
    options = opts.run_options(fast=fast, offload=offload, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                            batch_size=batch_size)
    server = opts.server_request(server, revision=revision, lora=lora, lora_file=lora_file, lora_scale=lora_scale,
                              vae=vae, device=device, dtype=dtype, fast=fast, offload=offload, vae_tiling=vae_tiling,
                              vae_slicing=vae_slicing, quantize=quantize)
    signer = opts.signer(sign, sign_key, sign_cert)
    if server and rank.several:
        raise UsageError("--server sends the work to one server; run it as a single process, not under torchrun.")
    parsed = prompts.read(file, fmt, prompt_syntax=defaults.prompt_syntax)
    # Image to image: the options apply to every line that does not set its own; a line's files are
    # read from the prompt file's folder (stdin's: the current folder) and must stay in it.
    edits = dict(image=image, mask=mask, strength=strength, mask_blur=mask_blur, mask_crop=mask_crop, hires=hires,
                 hires_upscaler=hires_upscaler, hires_steps=hires_steps, hires_strength=hires_strength)
    if image is not None or mask is not None:  # a wrong --image is the command line's error, not every line's
        from spo_cli import inputs

        for key, value in (("image", image), ("mask", mask)):
            if value is not None:
                inputs.check(value, key)
    parsed = prompts.apply_edits(parsed, defaults, edits, Path.cwd() if file == "-" else Path(file).parent,
                                 size_limit=not no_size_limit)
    if parsed.problems:
        for p in parsed.problems:
            (ui.warn if skip_invalid else ui.error)(p)
        if not skip_invalid:
            raise UsageError(f"{len(parsed.problems)} bad line(s) in {parsed.source}; nothing was run.",
                             "Fix them, or pass --skip-invalid to run the other lines.")
    extra = {"rank": rank.rank, "world_size": rank.world} if rank.several else None
    tasks, size_warnings = prompts.tasks(parsed, defaults, num_images, size_limit=not no_size_limit, extra=extra,
                                         lora_tags=opts.lora_tags(request.lora_dir, server))
    if server is None:
        from spo_cli import loras

        # One set of LoRAs per run: lines whose tags differ are refused, naming them.
        lines = {id(t.request): f"{t.extra['batch']['source']}:{t.extra['batch']['line']}" for t in tasks}
        request = loras.with_prompt_loras(request, [t.request for t in tasks],
                                          lambda image: validate.Where(lines[id(image)]))
        more += loras.scale_warnings(None, tuple(lr for lr in request.loras if lr.name))
        loading.precheck(request, options, [t.request for t in tasks])
    out = validate.output_folder(out)
    for w in warnings + size_warnings + more:
        ui.warn(w)

    # 2. One run per folder (the processes of one distributed run share it: the first holds the lock).
    if server is None:
        distributed.join(device)  # before the lock, which only the first rank takes: see distributed.join
    lock = files.FolderLock(out, "spo batch") if rank.first else None
    with lock or _Nothing():
        if rank.first:
            files.remove_leftovers(out)
            files.clear_failures(out)
        if keep_inputs:
            from spo_cli.cli.generate import kept_tasks

            tasks = kept_tasks(tasks, out, out)
        run = _Run(ui, parsed, tasks, out, image_format, rank, server, provenance=not no_provenance, signer=signer)
        with Stopper(ui) as stopper:
            run.stopper = stopper
            try:
                run.go(request, options, overwrite)
            except KeyboardInterrupt:
                run.interrupted = stopper.exit_code()
            finally:
                stopper.finishing = True
                run.finish(t0)  # the manifest, on every way out: errors, a full disk, signals
    code = run.exit_code()
    if code:
        raise typer.Exit(code)


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Run:
    """One batch run's state, so that the manifest can be written from whatever point it stopped at."""

    def __init__(self, ui: UI, parsed, tasks, out: Path, image_format: str, rank, server: str | None = None, *,
                 provenance: bool = True, signer=None):
        self.ui, self.parsed, self.tasks, self.out, self.fmt, self.rank = ui, parsed, tasks, out, image_format, rank
        self.server = server
        self.provenance = provenance
        self.signer = signer
        self.hashes: dict[str, str] = {}
        self.done_before: set[str] = set()
        self.outcomes = []
        self.interrupted: int | None = None
        self.runtime = None
        self.error: str | None = None
        self.failed_rows = 0

    def go(self, request, options, overwrite: bool) -> None:
        from spo_cli.render import render

        ui, rank = self.ui, self.rank
        try:
            # Device, process group, model files (the first process downloads, the others wait); or
            # the server's model, already loaded there.
            remote = None
            if self.server:
                from spo_cli.serve import client

                remote, resolved = client.connect(self.server, request.model, ui)
            else:
                self.runtime = rt = loading.start_torch(ui, request, options, [t.request for t in self.tasks],
                                                        local_rank=rank.local_rank)
                if rank.several:
                    distributed.init(rt.device)
                if not rank.first:
                    distributed.barrier()
                resolved = loading.find_model(ui, request, rt.dtype)
                if rank.first and rank.several:
                    distributed.barrier()

            # What is left: an image is done when it is whole and its sidecar has the same settings.
            identity = resolved.identity()
            self.hashes = {t.stem: t.request.spec_hash(identity) for t in self.tasks}
            self.done_before = {t.stem for t in self.tasks
                                if not overwrite and files.finished_hash(self.out, t.stem, self.fmt) == self.hashes[t.stem]}
            todo = [replace(t, spec_hash=self.hashes[t.stem], overwrite=True)
                    for t in self.tasks if t.stem not in self.done_before]
            if rank.several:  # each rank deals out its own list: every rank's must be the first's, or images go unmade
                from spo_cli.comparison import PLAN_DIFFERS

                team = distributed.Team(rank, self.out, debug=ui.debug)
                plan = plan_digest([(t.stem, self.hashes[t.stem]) for t in self.tasks], [t.stem for t in todo])
                team.agree(ui, team.meet("plan", {"plan": plan}), "plan", PLAN_DIFFERS)
            if self.done_before:
                ui.info(f"{len(self.done_before)} of {len(self.tasks)} image(s) already done in {escape(str(self.out))}; "
                        f"{len(todo)} to make." + (" (--overwrite makes all again)" if todo else ""))

            # This process's share: whole pipeline calls, dealt round-robin.
            mine = [t for call in calls(todo, options.batch_size, request=lambda t: t.request)[rank.rank::rank.world]
                    for t in call]
            if mine:
                engine = remote or loading.load(ui, rt, resolved, options)
                if remote is None:
                    loading.warn_truncation(ui, engine, [t.request for t in mine])
                stopper = self.stopper
                with ui.images_progress(len(mine), [t.request.denoising_steps for t in mine]) as bars:
                    stopper.rendering = True
                    try:
                        render(engine, resolved, mine, out=self.out, image_format=self.fmt,
                               batch_size=options.batch_size, keep_going=True, stop=stopper.requested,
                               progress=bars, outcomes=self.outcomes, debug=ui.debug,
                               provenance=self.provenance, signer=self.signer)
                    finally:
                        stopper.rendering = False
                if stopper.requested():
                    self.interrupted = stopper.exit_code()
        except Exception as e:
            from spo_cli.errors import translate

            err = translate(e)
            self.error = err.paragraph() if err else f"{type(e).__name__}: {e}"
            raise
        failures = [{"stem": oc.task.stem, "error": oc.error} for oc in self.outcomes if oc.error]
        if failures or rank.several:
            files.write_failures(self.out, rank.rank, failures)
        if rank.several and self.interrupted is None:
            distributed.barrier()

    def exit_code(self) -> int:
        if self.interrupted:
            return self.interrupted
        if self.failed_rows or any(oc.error for oc in self.outcomes):
            return EXIT_FAILURE
        return EXIT_SKIPPED if self.parsed.problems else 0

    def finish(self, t0: float) -> None:
        """Write the manifest (first process only) from what is on disk, and report."""
        if self.rank.first:
            failed = files.collect_failures(self.out)
            failed.update({oc.task.stem: oc.error for oc in self.outcomes if oc.error})
            rows = [self._row(t, failed) for t in self.tasks]
            rows += [{"source": self.parsed.source, "line": n, "status": "skipped", "error": text}
                     for n, text in self.parsed.bad_lines]
            try:
                manifest = files.write_manifest(self.out, rows)
            except OSError as e:  # a full disk can refuse this too: say so, but keep the run's own error
                self.ui.error(f"The manifest could not be written ({e.strerror or e}); the images on disk are "
                              "complete, and a rerun writes it.")
                manifest = self.out / files.MANIFEST
            self.failed_rows = sum(r["status"] == "failed" for r in rows)
            report(self.ui, rows, manifest, perf_counter() - t0, self.interrupted, self.error)
            if self.rank.several:  # the plan records were read by every rank before they last met
                records = distributed.Team(self.rank, self.out)
                records.clear()
                try:
                    records.folder.rmdir()
                except OSError:  # not there (a run stopped before the plan), or not empty: someone else's
                    pass
        if self.rank.several:
            distributed.shutdown()

    def _row(self, task, failed: dict) -> dict:
        info = task.extra["batch"]
        spec = self.hashes.get(task.stem)
        ok = spec is not None and files.finished_hash(self.out, task.stem, self.fmt) == spec
        status = "ok" if ok else ("failed" if task.stem in failed else "pending")
        return {
            "job": spec, "source": info["source"], "line": info["line"], "index": info["index"],
            "file": f"{task.stem}.{self.fmt}", "sidecar": f"{task.stem}.json", "prompt": task.request.prompt,
            "seed": task.request.seed, "status": status,
            "error": None if ok else failed.get(task.stem, self.error), "resumed": task.stem in self.done_before,
        }


def plan_digest(images: list[tuple[str, str]], left: list[str]) -> str:
    """What a rank deals out: every image's (name, spec hash with the model's identity), and the names
    left to make. A node whose cache holds another model revision, or another file at the prompt file's
    path, differs here."""
    return distributed.digest([images, left])


def report(ui: UI, rows: list[dict], manifest: Path, elapsed: float, interrupted: int | None,
           error: str | None) -> None:
    count = {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed", "pending", "skipped")}
    resumed = sum(bool(r.get("resumed")) and r["status"] == "ok" for r in rows)
    made = count["ok"] - resumed
    skipped = [f"{r['source']}:{r['line']}" for r in rows if r["status"] == "skipped"]
    summary = {
        "manifest": str(manifest), "total": len(rows) - len(skipped), "generated": made, "already_done": resumed,
        "failed": count["failed"], "pending": count["pending"], "skipped_lines": len(skipped),
        "skipped": skipped, "elapsed_s": round(elapsed, 2),
        "images_per_minute": round(made / elapsed * 60, 2) if elapsed > 0 else None,
        "interrupted": bool(interrupted), "error": error,
    }
    if ui.json_mode:
        ui.emit_json(summary)
        return
    for r in rows:
        if r["status"] == "failed":
            ui.error(f"{r['source']}:{r['line']} (seed {r['seed']}): {r['error']}")
    if skipped:
        ui.notice(f"{len(skipped)} line(s) skipped as invalid: {', '.join(skipped[:10])}"
                  + (", …" if len(skipped) > 10 else "") + " (listed in the manifest).")
    if ui.quiet:
        ui.paths([(str(manifest), "")])
        return
    title = "Stopped early" if interrupted or error else "Batch finished"
    ui.table(title, ["images", "count"], [
        ["made now", str(made)], ["already done", str(resumed)], ["failed", str(count["failed"])],
        ["not run", str(count["pending"])], ["images/min", f"{summary['images_per_minute']}"],
    ])
    ui.paths([(str(manifest), "manifest: one line per image, with its status")])
    if count["failed"] or count["pending"]:
        ui.info("Run the same command again to make the missing images; finished ones are skipped.")

"""From a checked request to a loaded model, with what the user sees on the way: the three steps
every generating command takes (start torch and pick the device, resolve the files, load).

The engine module (torch, diffusers) is imported here, inside `start_torch`, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass

from spo_cli.cli.ui import UI, escape, short
from spo_cli.request import ImageRequest, ModelRequest, RunOptions


@dataclass(frozen=True)
class Runtime:
    engine: object  # the spo_cli.engine module
    device: str
    dtype: str


def precheck(request: ModelRequest, options: RunOptions, images: list[ImageRequest] = ()) -> None:
    """What needs neither torch nor the network, in milliseconds, before the output folder is touched:
    devices this machine cannot have (a CPU-only torch build, MPS off macOS), local model paths and
    their model_index.json, repo ids."""
    from spo_cli import devices, quantize, speed
    from spo_cli.resolve import precheck as precheck_files

    speed.sdpa_order()  # SPO_SDPA_BACKENDS: refused here, not after torch has started (or serve has bound its port)
    devices.precheck(request.device, [r.generator_device for r in images], options.offload)
    quantize.precheck(request.quantize, request.device, request.dtype, options.offload)
    for name in dict.fromkeys(r.scheduler for r in images):
        scheduler_extra(name)
    if any(r.watermark for r in images):
        from spo_cli import watermark

        watermark.require()
    precheck_files(request)


def scheduler_extra(name: str) -> None:
    """A scheduler whose libraries are an extra (DPM++ SDE: torchsde), installed or said so."""
    from spo_cli import extras, presets

    extra = presets.SCHEDULERS[name].extra
    if extra:
        extras.require(extra, f"--scheduler {name}", *presets.SCHEDULER_EXTRAS[extra])


def start_torch(ui: UI, request: ModelRequest, options: RunOptions, images: list[ImageRequest] = (),
                *, local_rank: int | None = None) -> Runtime:
    """Import torch and the engine, pick device and dtype, and check what needs the machine (CUDA for
    --device or --generator-device, a GPU for --offload) before anything is downloaded or loaded.
    diffusers and transformers are imported later, by `libraries` (in `load`): resolving the files
    needs neither, so a missing or damaged model is reported seconds sooner."""
    with ui.status("Starting PyTorch"):
        from spo_cli import engine  # torch, not yet diffusers

        device, notes = engine.pick_device(request.device, local_rank)
        dtype, dtype_notes = engine.pick_dtype(device, request.dtype)
        engine.check_generator_devices(r.generator_device for r in images)
        engine.check_options(options, device)
        from spo_cli import quantize

        quantize.check_machine(request.quantize, device, dtype)
    for note in notes + dtype_notes:
        ui.warn(note)
    return Runtime(engine, device, dtype)


def find_model(ui: UI, request: ModelRequest, dtype: str, *, force: bool = False, downloading: bool = False):
    """Find (downloading if needed) the files of `request`, saying which commit of what was found."""
    from spo_cli.resolve import quiet_hub, resolve_model, uses_hub

    quiet_hub(ui.debug)
    local_only = not downloading and uses_hub(request, dtype) and cache_only(ui)
    # No spinner here: download bars may need the live display.
    resolved = resolve_model(request, dtype, tqdm=ui.download_tqdm, force=force, downloading=downloading,
                             local_only=local_only, hashing=hash_progress(ui))
    for part in resolved.parts():
        at = f" @ {part.commit[:10]}" if part.commit else ""
        at += " (configs and tokenizers for the file)" if part is resolved.config else ""
        ui.info(f"[green]✓[/] Resolved {escape(part.id)}{'/' + escape(part.file) if part.file and part.source == 'hub' else ''}{at}")
    return resolved


def hash_progress(ui: UI):
    """How hashing a single-file checkpoint (A1111's Model hash) is shown: a byte bar on a terminal,
    a line before and after elsewhere. Only the first time: the hash is cached."""
    from contextlib import contextmanager

    @contextmanager
    def show(name: str, size: int):
        what = f"the SHA-256 of {escape(name)} ({size / 1e9:.2f} GB) for its Model hash"
        if ui.quiet:
            yield lambda n: None
            return
        if not ui.err.is_terminal:
            ui.info(f"Computing {what}; it is cached for later runs.")
            yield lambda n: None
            ui.info(f"[green]✓[/] Computed {what}")
            return
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                      TimeRemainingColumn(), console=ui.err, transient=True) as progress:
            task = progress.add_task(f"Hashing {name}", total=size)
            yield lambda n: progress.advance(task, n)
        ui.info(f"[green]✓[/] Computed {what} (cached for later runs)")

    return show


def recorded_file(ui: UI, meta: dict) -> list[str]:
    """Replaying an image made from a single-file checkpoint: the file must still be where it was
    read from (else say how to point at it), and a file changed since is a warning (its images
    will differ). Hashing is cached, so resolving it again costs nothing."""
    from pathlib import Path

    from spo_cli.errors import UsageError
    from spo_cli.resolve import single

    model = meta.get("model")
    recorded = model.get("sha256") if isinstance(model, dict) else None
    if not (isinstance(recorded, str) and isinstance(model.get("id"), str)):
        return []
    path = Path(model["id"])
    if not path.is_file():
        raise UsageError(f"The image was made from the single-file checkpoint {path} (Model hash "
                         f"{single.short_hash(recorded)}), which is no longer there.",
                         "Give its new path with --model.")
    now = single.sha256(path, hash_progress(ui))
    if now == recorded:
        return []
    return [f"{path} has changed since the image was made (SHA-256 {single.short_hash(now)}, was "
            f"{single.short_hash(recorded)}): the image will differ."]


def cache_only(ui: UI) -> bool:
    """Whether to use the local cache only, because the Hub cannot be reached (said once, here):
    huggingface_hub would otherwise retry for half a minute before falling back to the cache."""
    from huggingface_hub import constants

    from spo_cli.resolve import hub_endpoint, unreachable

    if constants.HF_HUB_OFFLINE:
        return False  # huggingface_hub asks no one, and says so itself
    why = unreachable()
    if why:
        ui.warn(f"The Hub at {hub_endpoint()} cannot be reached ({why}); using the local cache only.")
    return why is not None


def libraries(ui: UI, runtime: Runtime) -> None:
    """Import diffusers and transformers, with their logging and bars quiet unless --debug."""
    runtime.engine.quiet_libraries(ui.debug)


def load(ui: UI, runtime: Runtime, resolved, options: RunOptions):
    with ui.status(f"Loading {escape(resolved.pipeline.id)} on {runtime.device} ({resolved.dtype})"):
        libraries(ui, runtime)
        engine = runtime.engine.Engine.load(resolved, runtime.device, options)
    if options.fast:
        ui.info(f"--fast: the first images compile the model (minutes); compiled code is cached in "
                f"{escape(runtime.engine.configure_compile_cache())} for later runs.")
    return engine


def open_model(ui: UI, request: ModelRequest, options: RunOptions, images: list[ImageRequest]):
    """All three steps: (engine, resolved)."""
    runtime = start_torch(ui, request, options, images)
    resolved = find_model(ui, request, runtime.dtype)
    return load(ui, runtime, resolved, options), resolved


def warn_truncation(ui: UI, engine, requests: list[ImageRequest]) -> None:
    """Words the text encoders will not see (plain syntax only: a1111 reads every window), and at
    --debug how many windows an a1111 prompt took."""
    seen = set()
    for r in requests:
        plan = engine.plan(r)
        if plan.syntax == "a1111":
            if ui.debug and (r.prompt, r.negative_prompt) not in seen:
                seen.add((r.prompt, r.negative_prompt))
                ui.info(f"A1111 prompt syntax, {plan.chunks} window(s) of 75 tokens: {escape(short(r.prompt))}")
            continue
        for label, text in (("prompt", r.prompt), ("negative prompt", r.negative_prompt)):
            if text in seen:
                continue
            seen.add(text)
            dropped = engine.dropped_words(text)
            if dropped:
                ui.warn(f"The {label} is longer than the text encoders' 77 tokens; SDXL ignores the end: {dropped} "
                        "(--prompt-syntax a1111 reads all of it)")


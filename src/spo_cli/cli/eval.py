from __future__ import annotations

import math
from contextlib import nullcontext
from time import perf_counter
from typing import Annotated, Optional

import typer

from spo_cli import distributed, extras, presets, quantize as fp8, validate
from spo_cli.cli import app, loading, options as opts, scoring
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI
from spo_cli.comparison import Scoring, build_columns, build_rows, render_columns, score_cells
from spo_cli.errors import EXIT_FAILURE, UsageError
from spo_cli.outputs import files
from spo_cli.scores import paper, report as eval_report

EXAMPLES = """[bold]Examples[/]

  spo eval prompts.txt --out runs/eval --columns base,spo --seeds 0-3

  spo eval prompts.txt --out runs/eval --columns base,spo-lora:0.5,spo --metric pickscore,hpsv2

  spo eval prompts.txt --out runs/eval --columns spo --seeds 0-3 --steps 20   # then compare with a run at 50

  spo eval --paper --out runs/paper             # Pick-a-Pic v1 validation_unique, the authors' settings

  spo eval --paper --limit 50 --out runs/paper  # its first 50 prompts; a later full run reuses them

[bold]Columns[/]: base, spo, spo-lora (strength 1), spo-lora:0.5 (any
strength), or any Hub repo / local folder; any of them with @fp8 after it
(spo@fp8) is that model with --quantize fp8. They keep the order given, and
each later column is compared against each earlier one: `--columns base,spo`
reports SPO against SDXL; `base,spo-lora:0.5,spo` the LoRA against SDXL, SPO
against SDXL, then SPO against the LoRA. Rendering is resumable (finished
cells are reused) and so is scoring.

[bold]Statistics[/]: the prompt is the unit. Intervals resample prompts (all
seeds of a prompt together); exact two-sided sign and Wilcoxon signed-rank
tests compare the prompts' mean differences. With fewer than 6 prompts that
are not tied no such test can reach p < 0.05, and the report says that
nothing can be concluded.

[bold]--paper[/]: SDXL base against SPO-SDXL on the captions of Pick-a-Pic v1 validation_unique
(spo download paper-prompts caches them), guidance 5.0, the checkpoint's scheduler, 50 steps, 1024²,
the fp16-fix VAE, seed 42, prompts read as plain text. Options you pass still apply; the report lists
every difference from the authors' setting and every assumption.
"""
JSON_HELP = "Print the report (the same object as report.json) on stdout, nothing else."


def parse_columns(text: str) -> dict:
    """`base,spo,spo-lora:0.5,org/model` → build_columns arguments, `order` keeping the order given.
    Any of them with @fp8 after it is that model under --quantize fp8 (`spo,spo@fp8`)."""
    kw = dict(base=None, spo=None, spo_lora=None, models=[], labels=[], scales=[], lora_scale=None, order=[],
              quantized=[])
    scales_seen = []  # (scale, quantize): spo-lora:0.5 and spo-lora:0.5@fp8 are two columns
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--columns is empty.", "E.g. --columns base,spo.")
    repeated = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if repeated is not None:  # base,base would otherwise be one column and a report with no pairs
        raise UsageError(f"--columns names '{repeated}' twice.", "Name each model once, e.g. --columns base,spo.")
    for full in names:
        name, q = fp8.split_suffix(full)
        if q and not (name == "spo-lora" or name.startswith("spo-lora:")):
            kw["order"].append(f"model:{len(kw['models'])}")  # a preset by name: build_columns reads @fp8
            kw["models"].append(full)
            continue
        if name == "base":
            kw["base"] = True
            kw["order"].append("base")
        elif name == "spo":
            kw["spo"] = True
            kw["order"].append("spo")
        elif name == "spo-lora" or name.startswith("spo-lora:"):
            try:
                scale = float(name.split(":", 1)[1]) if ":" in name else 1.0
            except ValueError:
                raise UsageError(f"--columns: '{name}' has no number after 'spo-lora:'.", "E.g. spo-lora:0.5.") from None
            if not math.isfinite(scale):  # named here: --lora-scale, which lora_scale() names, was not given
                raise UsageError(f"--columns: {validate.shown(name)} needs a finite number after 'spo-lora:'.",
                                 "E.g. spo-lora:0.5.")
            if (scale, q) in scales_seen:  # spo-lora:0.5 and spo-lora:.5 are one column
                raise UsageError(f"--columns names the SPO LoRA at strength {scale:g}{' ' + q if q else ''} twice.",
                                 "Name each strength once, e.g. --columns base,spo-lora:0.5,spo-lora:1.")
            scales_seen.append((scale, q))
            key = f"scale:{len(kw['scales'])}"
            kw["order"].append(key)
            if q:
                kw["quantized"].append(key)
            kw["scales"].append(validate.lora_scale(scale)[0])
        else:
            kw["order"].append(f"model:{len(kw['models'])}")
            kw["models"].append(name)
    return kw


def parse_seeds(text: str) -> list[int]:
    """'0-3' or '1,2,5' or '0-3,10' → seeds, each checked (compare's grammar too)."""
    return validate.seeds(text)


PaperFlag = Annotated[bool, typer.Option(
    "--paper", help="The SPO paper's evaluation: Pick-a-Pic v1 validation_unique prompts from the Hub, SDXL base "
    "against SPO-SDXL with the authors' settings (see below).")]
Limit = Annotated[Optional[int], typer.Option(
    help="Only the first N prompts (a cheap first look at --paper's 500).", show_default=False)]
Seeds = Annotated[Optional[str], typer.Option(
    help="Seeds per prompt: a range 0-3 or a list 1,2,5 (-1: a random one, recorded). Default: 0-3; 42 with "
    "--paper.", show_default=False)]
Syntax = Annotated[Optional[str], typer.Option(
    help="auto, a1111 or plain (see spo generate --help). Default: auto; plain with --paper, as the authors "
    "encoded prompts.", show_default=False)]
NoiseDevice = Annotated[Optional[str], typer.Option(
    help="Where the seeded noise is drawn. Default: cpu; with --paper the run's GPU when there is one, as in the "
    "authors' script.", show_default=False)]


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def eval(  # noqa: A001 - the command's name
    ui: UI,
    prompts_file: Annotated[Optional[str], typer.Argument(help="A prompt file (.txt or .jsonl, - for stdin); "
                                                          "or --paper.", show_default=False)] = None,
    paper_run: PaperFlag = False,
    limit: Limit = None,
    out: opts.Out = "outputs/eval",
    no_provenance: opts.NoProvenance = False,
    columns: Annotated[str, typer.Option(help="Models to evaluate, comma-separated (see below).")] = "base,spo",
    seeds: Seeds = None,
    metric: scoring.Metric = None,
    hps_version: scoring.HpsVersion = "v2.1",
    score_batch_size: scoring.ScoreBatch = 16,
    prompt_format: opts.PromptFormat = None,
    negative: opts.Negative = None,
    steps: opts.Steps = presets.DEFAULT_STEPS,
    guidance: opts.Guidance = presets.DEFAULT_GUIDANCE,
    width: opts.Width = None,
    height: opts.Height = None,
    scheduler: opts.Scheduler = "default",
    generator_device: NoiseDevice = None,
    prompt_syntax: Syntax = None,
    no_size_limit: opts.NoSizeLimit = False,
    batch_size: opts.BatchSize = 1,
    vae: opts.Vae = None,
    device: opts.Device = "auto",
    dtype: opts.Dtype = "auto",
    quantize: opts.Quantize = None,
    sign: opts.Sign = False,
    sign_key: opts.SignKey = None,
    sign_cert: opts.SignCert = None,
) -> None:
    """Generate a prompt file with several models and score it: means, paired win rates, a plot, a report."""
    t0 = perf_counter()
    rank = distributed.rank_info()
    first = rank.first  # under torchrun: the others print errors only, and take no lock
    validate.shared_by(rank.world)  # every rank must build the same cells: no -1 seeds, no stdin
    if not first:
        ui.silence()
    if (prompts_file is None) == (not paper_run):
        raise UsageError("Give a prompt file or --paper, not both." if paper_run else
                         "Give a prompt file, or --paper for the paper's Pick-a-Pic prompts.",
                         "E.g. spo eval prompts.txt --out runs/eval, or spo eval --paper --out runs/paper.")
    if limit is not None:
        validate.integer(limit, "limit", low=1, high=2**31 - 1)
    if paper_run:
        extras.require("score", "spo eval --paper (reading the Pick-a-Pic parquet files)", "pyarrow")
    names = scoring.metrics(metric, hps_version, score_batch_size)
    fmt = opts.prompt_format(prompt_format, None, ui.warn)
    cols = build_columns(**parse_columns(columns), revision=None, common=dict(vae=vae, dtype=dtype, device=device, quantize=quantize),
                         model_request=opts.model_request)
    seed_list = parse_seeds(seeds if seeds is not None else ",".join(map(str, paper.SETTINGS["seeds"])) if paper_run
                            else "0-3")
    syntax = prompt_syntax or ("plain" if paper_run else "auto")
    noise = generator_device or "cpu"
    if generator_device is None and paper_run:
        validate.device(device)  # before torch is imported to find the GPU
        noise = cuda_noise(ui, device)
    defaults, warnings = opts.image_request(
        seed=0, negative=negative, steps=steps, guidance=guidance, width=width, height=height, scheduler=scheduler,
        generator_device=noise, prompt_syntax=syntax, size_limit=not no_size_limit, check_prompt=False)
    options = opts.run_options(fast=False, offload=None, vae_tiling=False, vae_slicing=False, batch_size=batch_size)
    signer = opts.signer(sign, sign_key, sign_cert)
    dataset = None
    if paper_run:
        dataset, lines, dropped = paper_prompts(ui, limit)
        rows, more = build_rows(None, None, fmt, defaults, seed_list, ui.error, not no_size_limit, lines=lines,
                                source=paper.DATASET)
    else:
        rows, more = build_rows(None, prompts_file, fmt, defaults, seed_list, ui.error, not no_size_limit)
        if limit is not None:
            keep = list(dict.fromkeys(r.request.prompt for r in rows))[:limit]
            rows = [r for r in rows if r.request.prompt in set(keep)]
    for c in cols:
        loading.precheck(c.request, options, [r.request for r in rows])
    out = validate.output_folder(out)
    for w in warnings + more:
        ui.warn(w)
    distributed.join(device)  # under torchrun: before the lock, which only the first rank takes
    with files.FolderLock(out, "spo eval") if first else nullcontext():
        scorers = scoring.find_scorers(ui, names, hps_version)
        steps = scoring.steps(ui)
        run = render_columns(steps, cols, rows, options, out, keep_loaded=False, provenance=not no_provenance,
                             signer=signer)
        scored = score_cells(steps, cols, rows, out / "cells", run.failed,
                             Scoring(names, hps_version, score_batch_size, device), scorers, run.team)
        if scored is None:  # a rank other than the first: its share is rendered and scored; the first reports
            return
        report = eval_report.build_report(cols, rows, run, scored, defaults, seed_list, prompts_file, scorers,
                                          names, hps_version, perf_counter() - t0)
        if eval_report.quantized_pairs(cols):  # spo,spo@fp8: what fp8 does to the pixels too
            report["pixels"] = eval_report.pixel_distances(cols, rows, out / "cells", run.failed)
        if paper_run:
            eval_report.add_paper(report, dataset, dropped, names)
            for d in report["paper"]["deviations"]:
                ui.warn(f"--paper: {d}")
        paths = eval_report.write_report(out, report, cols, rows, scored)
    if ui.json_mode:
        ui.emit_json(report)
    else:
        scoring.print_summary(ui, scored["summary"])
        ui.paths([(str(paths["md"]), "the report"), (str(paths["json"]), "the same, as JSON"),
                  (str(paths["plot"]), "paired differences per metric"), (str(out / "cells"), "the images")])
    if run.failed or scored["errors"]:
        raise typer.Exit(EXIT_FAILURE)


def cuda_noise(ui: UI, device: str) -> str:
    """The authors drew their noise on the GPU they ran on; so does --paper, where there is one."""
    from spo_cli import engine

    engine.quiet_libraries(ui.debug)
    picked, _ = engine.pick_device(device)
    return picked if picked.startswith("cuda") else "cpu"


def paper_prompts(ui: UI, limit: int | None):
    """Pick-a-Pic v1 validation_unique from the Hub (or the cache): the dataset, its prompt lines, and
    how many captions were dropped as unusable (each named in a warning)."""
    from spo_cli.prompts import PromptLine
    from spo_cli.resolve import Fetch, quiet_hub, resolve_dataset

    quiet_hub(ui.debug)
    fetch = Fetch(loading.cache_only(ui), False, ui.download_tqdm, "spo download paper-prompts")
    dataset = resolve_dataset(paper.DATASET, paper.PATTERN, fetch)
    ui.info(f"[green]✓[/] Resolved {paper.DATASET} @ {(dataset.commit or '-')[:10]} ({paper.SPLIT})")
    lines, dropped = [], 0
    for i, caption in paper.captions([dataset.path / f for f in dataset.files]):
        if limit is not None and len(lines) == limit:
            break
        try:
            validate.text(caption, "caption", validate.Where(f"{paper.DATASET}:{i}"))
        except UsageError as e:
            ui.warn(f"{e.message} It is left out.")
            dropped += 1
            continue
        lines.append(PromptLine(i, caption))
    return dataset, lines, dropped



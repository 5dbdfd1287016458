from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spo_cli import validate
from spo_cli.cli import app, options as opts, scoring
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape, short
from spo_cli.errors import EXIT_FAILURE

EXAMPLES = """[bold]Examples[/]

  spo score runs/spo/                          # every image spo made there; prompts from the sidecars

  spo score a.png b.png --metric pickscore,hpsv2 --json

  spo score photo.jpg --prompt "a red fox in fresh snow"   # an image with no recorded prompt

  spo score runs/spo/ --device cpu --metric aesthetic

[bold]Metrics[/]: pickscore (PickScore v1), hpsv2 (HPS v2.1; --hps-version v2.0), imagereward, aesthetic (LAION
improved aesthetic predictor), clip (CLIP score, ViT-L/14). Each is computed as its authors' code computes it.
Scores are written beside each image as <stem>.scores.json (and into a batch folder's manifest.jsonl); a rerun
skips what was already scored by the same model commits.
"""
JSON_HELP = "Print a JSON array, one object per image (image, prompt, scores by metric, errors), nothing else."


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def score(
    ui: UI,
    paths: Annotated[list[str], typer.Argument(help="Images, or folders of images spo made.", show_default=False)],
    metric: scoring.Metric = None,
    prompt: Annotated[Optional[str], typer.Option(
        help="The prompt to score every image against, instead of the recorded one.")] = None,
    hps_version: scoring.HpsVersion = "v2.1",
    score_batch_size: scoring.ScoreBatch = 16,
    device: opts.Device = "auto",
    force: Annotated[bool, typer.Option("--force", help="Score again even where the same models already "
                                        "did.")] = False,
) -> None:
    """Score images with preference models (PickScore, HPSv2, ImageReward, aesthetic, CLIP)."""
    from spo_cli.scores import run, store

    names = scoring.metrics(metric, hps_version, score_batch_size)
    device = validate.device(device)
    if prompt is not None:
        prompt = validate.text(prompt, "prompt")
    items, passed = store.collect(paths, prompt)
    if passed:
        ui.info(f"{len(passed)} image(s) record no prompt and were passed over (give --prompt to score them): "
                + ", ".join(passed[:3]) + (", …" if len(passed) > 3 else ""))
    if not items:
        ui.info("No images to score.")
        if ui.json_mode:
            ui.emit_json([])
        return
    results = scoring.score_items(ui, items, names, hps_version, device=device, batch_size=score_batch_size,
                                  force=force)
    run.manifests(results)
    report(ui, results, names)
    if any(r.errors for r in results):
        raise typer.Exit(EXIT_FAILURE)


def report(ui: UI, results, names: list[str]) -> None:
    from spo_cli.scores import run, store

    if ui.json_mode:
        ui.emit_json([{"image": str(r.item.image), "prompt": r.item.prompt, "prompt_source": r.item.source,
                       "scores": {n: r.values.get(n) for n in names}, "reused": sorted(r.reused),
                       "errors": r.errors, "scores_file": str(store.scores_path(r.item.image))} for r in results])
        return
    rows = [[escape(Path(r.item.image).name), escape(short(r.item.prompt, 40))]
            + [f"{r.values[n]:.4f}" if n in r.values else "failed" for n in names] for r in results]
    if len(results) > 1:
        means = []
        for n in names:
            vals = [r.values[n] for r in results if n in r.values]
            means.append(f"{sum(vals) / len(vals):.4f}" if vals else "-")
        rows.append(["mean", f"{len(results)} images", *means])
    ui.table("Preference scores", ["image", "prompt", *names], rows)
    for line in run.error_lines(results):
        ui.error(line)

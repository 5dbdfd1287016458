"""What `spo score`, `spo compare --score` and `spo eval` share: the metric options, the steps from
a list of images to their scores (device, resolve, score with a bar), and the command line's side
of a comparison (`steps`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from spo_cli import distributed, scores
from spo_cli.cli.ui import UI, escape
from spo_cli.errors import UsageError

Metric = Annotated[Optional[str], typer.Option(
    "--metric", help=f"Metrics, comma-separated: {', '.join(scores.METRICS)} (default: all).",
    rich_help_panel="Scoring", show_default=False)]
HpsVersion = Annotated[str, typer.Option(help="HPS checkpoint: v2.1 (what papers report since 2024) or v2.0.",
                                         rich_help_panel="Scoring")]
ScoreBatch = Annotated[int, typer.Option("--score-batch-size", help="Images per scorer call.",
                                         rich_help_panel="Scoring")]
SCORE_BATCH_MAX = 256


def metrics(text: str | None, hps_version: str, batch_size: int = 16) -> list[str]:
    """The checked list of metrics (before torch): unknown names, repeats and versions refused."""
    if hps_version not in scores.HPS_VERSIONS:
        raise UsageError(f"--hps-version '{hps_version}' is not one of {', '.join(scores.HPS_VERSIONS)}.")
    if not 1 <= batch_size <= SCORE_BATCH_MAX:
        raise UsageError(f"--score-batch-size {batch_size} is outside 1 to {SCORE_BATCH_MAX}.")
    if text is None:
        return list(scores.DEFAULT_METRICS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in scores.METRICS]
    if unknown or not names:
        raise UsageError(f"--metric: {', '.join(repr(n) for n in unknown) or 'nothing given'} is not a metric.",
                         f"Choose from {', '.join(scores.METRICS)}, comma-separated.")
    return list(dict.fromkeys(names))


def device_and_dtype(ui: UI, device: str) -> tuple[str, object]:
    from spo_cli import engine

    engine.quiet_libraries(ui.debug)
    # under torchrun / accelerate launch, a bare cuda or auto is this rank's own GPU
    picked, notes = engine.pick_device(device, distributed.rank_info().local_rank)
    dtype, more = engine.pick_dtype(picked, "auto")
    for n in notes + more:
        if not n.startswith("No GPU found"):
            ui.warn(n)
    return picked, engine.TORCH_DTYPES[dtype]


def find_scorers(ui: UI, names: list[str], hps_version: str, *, force: bool = False, downloading: bool = False) -> dict:
    from spo_cli.cli.loading import cache_only
    from spo_cli.resolve import Fetch, quiet_hub
    from spo_cli.scores import run

    quiet_hub(ui.debug)
    local_only = not downloading and cache_only(ui)
    command = f"spo download score-models --metric {','.join(names)}" + (
        f" --hps-version {hps_version}" if hps_version != "v2.1" and "hpsv2" in names else "")
    fetch = Fetch(local_only, force, ui.download_tqdm, command, downloading)
    resolved = run.resolve_metrics(names, hps_version, fetch)
    seen = set()
    for parts in resolved.values():
        for repo, r in parts.items():
            if repo not in seen:
                seen.add(repo)
                ui.info(f"[green]✓[/] Resolved {escape(repo)} @ {(r.commit or '-')[:10]}")
    return resolved


def steps(ui: UI):
    """The command line's UI, loading and scoring steps, handed to `spo_cli.comparison`."""
    from spo_cli import comparison
    from spo_cli.cli import loading

    return comparison.Steps(ui, loading.start_torch, loading.find_model, loading.libraries, score_items, escape)


def score_items(ui: UI, items, names: list[str], hps_version: str, *, device: str, batch_size: int,
                force: bool = False, resolved: dict | None = None):
    """Score `items` with every metric in `names`: the list of `run.Scored`s."""
    from spo_cli.scores import run

    if not items:
        return []
    resolved = resolved or find_scorers(ui, names, hps_version)
    picked, dtype = device_and_dtype(ui, device)
    with ui.count_progress(len(items) * len(names), "scoring") as bar:
        def on_metric(name: str, todo: int, reused: int) -> None:
            bar.describe(f"{name}")
            bar.advance(len(items) - todo)  # reused, or refused before scoring
            if reused and todo:
                ui.info(f"{name}: {reused} image(s) already scored with the same models")

        results = run.score(items, names, resolved, device=picked, dtype=dtype, batch_size=batch_size,
                            hps_version=hps_version, force=force, on_metric=on_metric, on_batch=bar.advance,
                            debug=ui.debug)
    return results


def print_summary(ui: UI, summary: dict, what: str = "column") -> None:
    """`what`: what the summary's values are (compare's columns, or a sweep's --versus axis)."""
    from rich.text import Text

    from spo_cli.cli.ui import printable
    from spo_cli.scores.summary import TERMINAL_HEADERS, conclusions, means_rows, pair_rows

    ui.table("Mean score [95 % CI over prompts]", [what, *summary["metrics"]], means_rows(summary))
    if summary["pairs"]:
        ui.table(f"Each later {what} (a) against each earlier one (b)", TERMINAL_HEADERS,
                 pair_rows(summary, terminal=True))
        for line in conclusions(summary):  # the words: what each comparison can and cannot say
            ui.out.print(Text(printable(line)))

from __future__ import annotations

from typing import Annotated

import typer

from spo_cli import presets, validate
from spo_cli import scores
from spo_cli.cli import app, loading, options as opts, scoring
from spo_cli.cli.command import command
from spo_cli.cli.ui import UI, escape
from spo_cli.errors import ModelError, UsageError

EXAMPLES = """[bold]Examples[/]

  spo download                  # the default preset, for a GPU (float16)

  spo download spo-lora

  spo download base --dtype fp32  # the files a CPU run loads

  spo download spo --force        # fetch every file again (repairs a damaged cache)

  spo download my-sdxl-merge.safetensors --dtype fp32   # SDXL base's configs for a single file

  HF_HOME=/shared/hf spo download spo   # into a shared cache

  spo download score-models       # every preference scorer `spo score` uses (or one: spo download pickscore)

  spo download paper-prompts      # the Pick-a-Pic prompts `spo eval --paper` reads
"""
PAPER_PROMPTS = "paper-prompts"
JSON_HELP = ("Print a JSON object on stdout (model, dtype, bytes, and per repo its id, file, commit, variant and "
             "local path), nothing else.")


@command(app, examples=EXAMPLES, json_help=JSON_HELP)
def download(
    ui: UI,
    model: Annotated[str, typer.Argument(help="Preset, Hub repo id (diffusers layout), or an SDXL .safetensors "
                                         "file (fetches SDXL base's configs for it); or score-models, or one "
                                         "metric's name, for the scorers; or paper-prompts.")] = presets.DEFAULT_PRESET,
    revision: opts.Revision = None,
    lora: opts.Lora = None,
    lora_file: opts.LoraFile = None,
    vae: opts.Vae = None,
    dtype: Annotated[str, typer.Option(help="fp16 (GPU runs) or fp32 (CPU runs): decides which weight "
                                       "files and VAE are fetched.")] = "fp16",
    force: Annotated[bool, typer.Option("--force", help="Fetch every file again, even those already cached: "
                                        "repairs a damaged copy.")] = False,
    metric: scoring.Metric = None,
    hps_version: scoring.HpsVersion = "v2.1",
) -> None:
    """Fetch everything a model needs into the Hugging Face cache, for later offline use."""
    if model == PAPER_PROMPTS:
        return download_paper_prompts(ui, force)
    if model == "score-models" or model in scores.METRICS:
        return download_scorers(ui, [model] if model in scores.METRICS else scoring.metrics(metric, hps_version),
                                hps_version, force)
    if metric is not None:
        raise UsageError("--metric chooses scorers for `spo download score-models`.")
    dtype = validate.dtype(dtype, auto=False)
    request, _ = opts.model_request(model=model, revision=revision, lora=lora, lora_file=lora_file, vae=vae)
    from huggingface_hub import constants

    from spo_cli.resolve import hub_endpoint, quiet_hub, unreachable

    quiet_hub(ui.debug)
    ui.info(f"Cache: {escape(constants.HF_HUB_CACHE)}")
    if not constants.HF_HUB_OFFLINE:
        with ui.status(f"Reaching the Hub at {hub_endpoint()}"):
            why = unreachable()
        if why:
            raise ModelError(f"The Hugging Face Hub at {hub_endpoint()} cannot be reached: {why}.",
                             "Check the network, the proxy variables (HTTPS_PROXY) and HF_ENDPOINT; or run "
                             "`spo download` on a machine with network access and the same HF_HOME.")
    resolved = loading.find_model(ui, request, dtype, force=force, downloading=True)
    parts = resolved.parts()
    rows = [{"id": p.id, "file": p.file, "commit": p.commit, "variant": p.variant, "path": str(p.path)}
            for p in parts]
    if ui.json_mode:
        ui.emit_json({"model": model, "dtype": dtype, "bytes": resolved.nbytes(), "repos": rows})
        return
    if not ui.quiet:
        ui.info(f"{escape(model)}: ready for offline use ({resolved.nbytes() / 1e9:.2f} GB), in {dtype}:")
    ui.paths([(r["path"], f"{r['id']}{' / ' + r['file'] if r['file'] else ''} @ {(r['commit'] or '-')[:12]}")
              for r in rows])


def download_scorers(ui: UI, names: list[str], hps_version: str, force: bool) -> None:
    resolved = scoring.find_scorers(ui, names, hps_version, force=force, downloading=True)
    parts = {repo: r for by in resolved.values() for repo, r in by.items()}
    size = sum(r.nbytes() for r in parts.values())
    if ui.json_mode:
        ui.emit_json({"model": "score-models", "metrics": names, "bytes": size,
                      "repos": [{"id": repo, "files": list(r.files), "commit": r.commit, "path": str(r.path)}
                                for repo, r in parts.items()]})
        return
    if not ui.quiet:
        ui.info(f"Scorers {', '.join(names)}: ready for offline use ({size / 1e9:.2f} GB):")
    ui.paths([(str(r.path), f"{repo} @ {(r.commit or '-')[:12]}") for repo, r in parts.items()])


def download_paper_prompts(ui: UI, force: bool) -> None:
    from spo_cli.resolve import Fetch, quiet_hub, resolve_dataset
    from spo_cli.scores import paper

    quiet_hub(ui.debug)
    r = resolve_dataset(paper.DATASET, paper.PATTERN, Fetch(False, force, ui.download_tqdm,
                                                            f"spo download {PAPER_PROMPTS}", True))
    if ui.json_mode:
        ui.emit_json({"model": PAPER_PROMPTS, "bytes": r.nbytes(), "repos": [
            {"id": r.id, "files": list(r.files), "commit": r.commit, "path": str(r.path)}]})
        return
    if not ui.quiet:
        ui.info(f"{paper.DATASET} ({paper.SPLIT}): ready for offline use ({r.nbytes() / 1e6:.1f} MB):")
    ui.paths([(str(r.path / f), f"{r.id} @ {(r.commit or '-')[:12]}") for f in r.files])

"""Scoring many images: one metric's models in memory at a time (load, score everything, free),
in batches, with already-scored images skipped. Imports torch lazily; callers pass the UI's
progress as plain callables so that this module knows nothing of typer or rich."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from spo_cli import scores
from spo_cli.scores import store


@dataclass
class Scored:
    """One image's scores, those reused from its scores file, and why any metric failed."""

    item: store.Item
    values: dict[str, float] = field(default_factory=dict)
    reused: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)


def resolve_metrics(metrics: list[str], hps_version: str, fetch) -> dict[str, dict]:
    """Each metric's files, fetched (or found in the cache): {metric: {repo: Resolved}}."""
    from spo_cli.resolve import resolve_files

    table = scores.metric_table(hps_version)
    done: dict[tuple, object] = {}
    out = {}
    for name in metrics:
        out[name] = {}
        for src in table[name].sources:
            key = (src.repo, src.required, src.optional)
            if key not in done:
                done[key] = resolve_files(src.repo, src.required, src.optional, fetch)
            out[name][src.repo] = done[key]
    return out


def model_ids(resolved: dict) -> dict[str, str]:
    """What decides a metric's numbers: each repo's commit and the files read from it."""
    return {repo: f"{r.commit or r.revision}:{','.join(r.files)}" for repo, r in sorted(resolved.items())}


def score(items: list[store.Item], metrics: list[str], resolved: dict[str, dict], *, device: str, dtype,
          batch_size: int, hps_version: str = "v2.1", force: bool = False,
          on_metric: Callable[[str, int, int], None] = lambda name, todo, reused: None,
          on_batch: Callable[[int], None] = lambda n: None, debug: bool = False) -> list[Scored]:
    """Score `items` with each metric, writing each image's scores file as soon as a metric is done."""
    from PIL import Image

    from spo_cli.scores import models

    results = [Scored(it) for it in items]
    digests = [store.sha256(it.image) for it in items]
    previous = [store.read(it.image) for it in items]
    refused = [store.too_large(it.image) for it in items]
    for name in metrics:
        ids = model_ids(resolved[name])
        todo = []
        for i, it in enumerate(items):
            if refused[i]:
                results[i].errors[name] = refused[i]
                continue
            value = None if force else store.current(previous[i], name, ids, digests[i], it.prompt)
            if value is None:
                todo.append(i)
            else:
                results[i].values[name] = value
                results[i].reused.add(name)
        on_metric(name, len(todo), sum(name in r.reused for r in results))
        if not todo:
            continue
        folders = {repo: r.path for repo, r in resolved[name].items()}
        scorer = models.load(name, folders, device, dtype, hps_version)
        try:
            for start in range(0, len(todo), batch_size):
                chunk, images = [], []
                for i in todo[start:start + batch_size]:
                    try:
                        with store.quiet_bombs(), Image.open(items[i].image) as im:
                            im.load()
                            images.append(im.copy())
                        chunk.append(i)
                    except Exception as e:  # a damaged file fails itself, not the run
                        results[i].errors[name] = f"could not be read as an image ({type(e).__name__}: {e})"
                if not chunk:
                    on_batch(len(todo[start:start + batch_size]))
                    continue
                values = scorer.score(images, [items[i].prompt for i in chunk])
                for i, v in zip(chunk, values):
                    results[i].values[name] = float(v)
                    try:
                        previous[i] = store.write(items[i], digests[i], {name: (float(v), ids)}, previous[i])
                    except store.Unsaved as e:
                        results[i].errors[name] = e.message
                on_batch(len(todo[start:start + batch_size]))
        finally:
            del scorer
            gc.collect()
            _empty_cache(device)
    return results


def _empty_cache(device: str) -> None:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def error_lines(results: list[Scored]) -> list[str]:
    """One line per image and problem: an image refused before any scorer ran (too large) fails
    every metric alike, and is named once."""
    lines = []
    for r in results:
        by_error: dict[str, list[str]] = {}
        for metric, error in r.errors.items():
            by_error.setdefault(error, []).append(metric)
        for error, names in by_error.items():
            lines.append(f"{r.item.image}: {error}" if len(names) > 1 else f"{r.item.image}: {names[0]}: {error}")
    return lines


def manifests(results: list[Scored]) -> list[Path]:
    """Update the manifest.jsonl of every batch folder that holds scored images."""
    by_folder: dict[Path, dict[Path, dict]] = {}
    for r in results:
        if r.values:
            by_folder.setdefault(r.item.image.parent, {})[r.item.image.resolve()] = dict(r.values)
    return [p for folder, values in by_folder.items() if (p := store.update_manifest(folder, values))]

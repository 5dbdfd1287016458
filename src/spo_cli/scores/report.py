"""`spo eval`'s report: report.json, report.md and the paired-differences plot, from a comparison's
rendered and scored cells; with `--paper`, the paper's numbers beside this run's and every way this
run differs from the authors' setting. Pure but for the versions (asked of the engine when the
report is built) and the plot (PIL)."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

from spo_cli import presets
from spo_cli.outputs import files, metadata
from spo_cli.scores import paper

SCHEMA = "spo-cli/eval-2"  # 2: intervals by prompt, paired tests, too_few, conclusions


def add_paper(report: dict, dataset, dropped: int, names: list[str]) -> None:
    """The dataset, what the paper reported, and every way this run differs from the authors' setting."""
    from spo_cli import scores

    s, want = report["settings"], paper.SETTINGS
    found = {"guidance": s["guidance"], "steps": s["steps"], "scheduler": s["scheduler"],
             "width": s["width"] or presets.DEFAULT_SIZE, "height": s["height"] or presets.DEFAULT_SIZE,
             "negative_prompt": s["negative_prompt"], "prompt_syntax": s["prompt_syntax"], "seeds": report["seeds"]}
    deviations = [f"{k} is {found[k]!r}; the authors used {want[k]!r}." for k in found if found[k] != want[k]]
    labels = [c["label"] for c in report["columns"]]
    if labels != ["SDXL base", "SPO-SDXL"]:
        deviations.append(f"the columns are {', '.join(labels)}; the paper compares SDXL base with SPO-SDXL.")
    for c in report["columns"]:
        if c["vae"]["id"] != want["vae"]:
            deviations.append(f"{c['label']} decoded with the VAE {c['vae']['id'] or 'of the checkpoint'}; the "
                              f"authors used {want['vae']} (spo picks it in float16).")
        if c["dtype"] != "float16":
            deviations.append(f"{c['label']} ran in {c['dtype']}; the authors ran float16.")
    report["prompts"].update(dataset=paper.DATASET, split=paper.SPLIT, commit=dataset.commit,
                             files=list(dataset.files), dropped=dropped)
    table = scores.metric_table(report["metrics"].get("hpsv2", {}).get("version", "v2.1"))
    report["paper"] = {"reported": {m: table[m].paper for m in names},
                       "deviations": deviations, "assumptions": paper.ASSUMPTIONS}
    report["assumptions"] = paper.ASSUMPTIONS + report["assumptions"]


def build_report(cols, rows, run, scored, defaults, seeds, prompts_file, scorers, names, hps_version,
                 elapsed) -> dict:
    from spo_cli import engine, scores
    from spo_cli.scores import run as score_run
    from spo_cli.scores.stats import MIN_PROMPTS

    table = scores.metric_table(hps_version)

    settings = {k: v for k, v in asdict(defaults).items() if k not in ("prompt", "seed")}
    settings["scheduler"] = defaults.scheduler
    return {
        "schema": SCHEMA,
        "prompts": {"file": str(prompts_file), "count": len({r.request.prompt for r in rows})},
        "seeds": seeds,
        "settings": settings,
        "columns": [{"label": c.label, **res.describe(), "dtype": res.dtype} for c, res in zip(cols, run.resolved)],
        "images": {"rendered": run.rendered, "reused": run.reused, "failed": len(run.failed),
                   "scored": sum(1 for row in scored["cells"] for v in row if v)},
        "metrics": {m: {"models": score_run.model_ids(scorers[m]), **({"version": hps_version} if m == "hpsv2" else {}),
                        "computed": table[m].reference, "precision": table[m].precision} for m in names},
        "summary": scored["summary"],
        "versions": engine.versions(),
        "assumptions": [
            "Every image has its own generator seeded with its seed (spo's rule), so an image does not depend "
            "on which others shared its pipeline call.",
            "Scores are computed as each metric's reference code does; HPS is reported as its raw cosine "
            "(papers print it ×100).",
            "Intervals are 95 % percentile bootstrap intervals resampling prompts, all seeds of a prompt together "
            "(10,000 resamples, seed 0); a single prompt gives none.",
            "The paired tests (exact two-sided sign and Wilcoxon signed-rank tests) compare the prompts' mean "
            "differences, the seeds of a prompt averaged first; tied prompts are left out. With fewer than "
            f"{MIN_PROMPTS} untied prompts no such test can reach p < 0.05, and the report says nothing can be "
            "concluded.",
        ],
        "elapsed_s": round(elapsed, 1),
    }


def quantized_pairs(cols) -> list[tuple[int, int]]:
    """(i, j): column j is column i's model under --quantize (spo and spo@fp8), the one thing apart."""
    from dataclasses import replace

    return [(i, j) for i, a in enumerate(cols) for j, b in enumerate(cols)
            if b.request.quantize and not a.request.quantize
            and replace(a.request, quantize=None) == replace(b.request, quantize=None)]


def pixel_distances(cols, rows, cells_dir: Path, failed) -> list[dict]:
    """For each column quantized beside its own model (quantized_pairs): per cell (prompt and seed) the
    max and mean |Δ| of the two images' 8-bit values (0 to 255, so 2 is 2/255), and over the cells
    the largest max and the mean of the means: what fp8 changes in the pixels, beside what it changes
    in the scores."""
    import numpy as np
    from PIL import Image

    out = []
    for i, j in quantized_pairs(cols):
        cells = []
        for ri, r in enumerate(rows):
            a, b = (cells_dir / cols[k].folder / f"{r.stem}.png" for k in (i, j))
            if (i, ri) in failed or (j, ri) in failed or not (a.exists() and b.exists()):
                continue
            with Image.open(a) as x, Image.open(b) as y:
                if x.size != y.size:
                    continue
                d = np.abs(np.asarray(x.convert("RGB"), np.int16) - np.asarray(y.convert("RGB"), np.int16))
            cells.append({"prompt": r.request.prompt, "seed": r.request.seed, "max": int(d.max()),
                          "mean": round(float(d.mean()), 3)})
        out.append({"a": cols[j].label, "b": cols[i].label, "cells": cells,
                    "max": max((c["max"] for c in cells), default=None),
                    "mean": round(sum(c["mean"] for c in cells) / len(cells), 3) if cells else None})
    return out


def plot_panels(labels: list[str], prompts: list[str], scored: dict) -> list:
    """One panel per pair of columns (later minus earlier, as the summary) and metric; `prompts[row]`
    groups the rows, so the plot's intervals resample prompts as the summary's do."""
    from spo_cli.scores import plot

    panels = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            for m in scored["metrics"]:
                a = [(row[j] or {}).get(m) for row in scored["cells"]]
                b = [(row[i] or {}).get(m) for row in scored["cells"]]
                panels.append(plot.Panel.from_scores(m, f"{labels[j]} - {labels[i]}", a, b, groups=prompts))
    return panels


def write_report(out: Path, report: dict, cols, rows, scored) -> dict[str, Path]:
    from spo_cli.scores import plot
    from spo_cli.scores.summary import markdown

    groups = [r.request.prompt for r in rows]
    panels = plot_panels([c.label for c in cols], groups, scored)
    paths = {"json": out / "report.json", "md": out / "report.md", "plot": out / "report-plot.png"}
    if panels:
        image = plot.paired_differences(panels, f"Paired score differences ({len(rows)} prompt×seed pairs, "
                                                f"{len(set(groups))} prompts)")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        files.atomic_write(paths["plot"], buf.getvalue(), overwrite=True)
    files.atomic_write(paths["json"], (metadata.dumps(report) + "\n").encode(), overwrite=True)
    s = report["settings"]
    lines = [
        "# spo eval report", "",
        f"{report['prompts']['count']} prompt(s) from `{report['prompts']['file']}` × seeds "
        f"{', '.join(map(str, report['seeds'][:10]))}{' …' if len(report['seeds']) > 10 else ''}; "
        f"{report['images']['scored']} image(s) scored, {report['images']['failed']} failed.", "",
        "## Scores (mean [95 % CI over prompts])", "", markdown(report["summary"]), "",
    ]
    if panels:
        lines += [f"![paired differences]({paths['plot'].name})", ""]
    if report.get("pixels"):
        lines += ["## Pixel distance of the quantized columns", "",
                  "Δ: the absolute difference between each image and its own model's, same prompt and seed, in 8-bit "
                  "steps (2 = 2/255); the mean over each image's pixels, averaged over the cells, and the largest "
                  "difference of any cell.", "",
                  "| column | against | cells | mean Δ | largest Δ |", "|---|---|---|---|---|"]
        lines += [f"| {p['a']} | {p['b']} | {len(p['cells'])} | {'-' if p['mean'] is None else p['mean']} | "
                  f"{'-' if p['max'] is None else p['max']} |" for p in report["pixels"]]
        lines += [""]
    lines += ["## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in s.items()]
    lines += ["", "## Models", "", "| column | model | commit | LoRA |", "|---|---|---|---|"]
    for c in report["columns"]:
        lora = c.get("lora") or {}
        lines.append(f"| {c['label']} | {c['model']['id']} | {(c['model'].get('commit') or '-')[:12]} | "
                     f"{(lora.get('id') or '') + (' ×' + format(lora['scale'], 'g') if lora.get('scale') is not None else '')} |")
    lines += ["", "## Scorers", "", "| metric | models (repo: commit) | computed as | precision |", "|---|---|---|---|"]
    for m, info in report["metrics"].items():
        lines.append(f"| {m} | " + "<br>".join(f"{r}: {v.split(':')[0][:12]}" for r, v in info["models"].items())
                     + f" | {info['computed']} | {info['precision']} |")
    if "paper" in report:
        lines += paper_section(report)
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
              "## Assumptions", ""] + [f"- {a}" for a in report["assumptions"]] + [""]
    files.atomic_write(paths["md"], "\n".join(lines).encode(), overwrite=True)
    return paths


def paper_section(report: dict) -> list[str]:
    from spo_cli.scores.summary import verdict

    p, q = report["paper"], report["prompts"]
    lines = ["", "## Against the paper", "",
             f"Prompts: {q['count']} caption(s) of `{q['dataset']}` split `{q['split']}` at commit "
             f"{(q['commit'] or '-')[:12]} ({q['dropped']} left out as unusable).", "",
             "| metric | paper: SDXL → SPO-SDXL | this run | this run: SPO-SDXL against SDXL base |",
             "|---|---|---|---|"]
    means = report["summary"]["means"]
    # the paper's direction only: with the columns the other way round the pair is base against SPO
    pair = next((q["metrics"] for q in report["summary"]["pairs"] if (q["a"], q["b"]) == ("SPO-SDXL", "SDXL base")),
                {})
    for m, v in p["reported"].items():
        scale = 100 if m == "hpsv2" else 1  # the paper prints HPS ×100
        here = [means.get(label, {}).get(m, {}).get("value") for label in ("SDXL base", "SPO-SDXL")]
        ours = " → ".join("-" if x is None else f"{x * scale:.3f}" for x in here)
        said = verdict(pair[m]) if m in pair else "-"
        lines.append(f"| {m} | {v} | {ours}{' (×100)' if scale != 1 else ''} | {said} |")
    if p["deviations"]:
        lines += ["", "**Where this run differs from the authors' setting:**", ""] + [f"- {d}" for d in p["deviations"]]
    else:
        lines += ["", "No setting differs from the authors' (see the assumptions below)."]
    return lines

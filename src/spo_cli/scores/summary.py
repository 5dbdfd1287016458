"""Scores of a comparison (rows × columns, the same prompt and seed across a row) summed up:
each column's mean per metric, and each later column against each earlier one — paired win
rate and mean difference, with 95 % bootstrap intervals. Pure (numpy), shared by
`spo compare --score` and `spo eval`."""

from __future__ import annotations

from spo_cli.scores.stats import bootstrap_mean, paired

SHORT = {"pickscore": "pick", "hpsv2": "hps", "imagereward": "ir", "aesthetic": "aes", "clip": "clip"}


def summarise(columns: list[str], cells: list[list[dict | None]], metrics: list[str], *, seed: int = 0) -> dict:
    """`cells[row][col]` is that image's {metric: value} (None when it failed)."""

    def values(col: int, metric: str) -> list[float | None]:
        return [(row[col] or {}).get(metric) for row in cells]

    means = {label: {m: bootstrap_mean([v for v in values(c, m) if v is not None], seed=seed).to_dict()
                     for m in metrics} for c, label in enumerate(columns)}
    pairs = []
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            per = {m: paired(values(j, m), values(i, m), seed=seed).to_dict() for m in metrics}
            pairs.append({"a": columns[j], "b": columns[i], "metrics": per})
    return {"metrics": metrics, "means": means, "pairs": pairs,
            "note": "pairs: a against b over the same prompt and seed; win_rate is the share of pairs a scores "
                    "higher (ties count one half); intervals are 95 % percentile bootstrap over pairs."}


def _ci(e: dict, digits: int = 3) -> str:
    if e["value"] is None:
        return "—"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def means_rows(summary: dict) -> list[list[str]]:
    return [[label, *(_ci(by[m]) for m in summary["metrics"])] for label, by in summary["means"].items()]


def pair_rows(summary: dict) -> list[list[str]]:
    rows = []
    for p in summary["pairs"]:
        for m, r in p["metrics"].items():
            rows.append([f"{p['a']} vs {p['b']}", m, _ci(r["win_rate"], 2), _ci(r["mean_diff"], 4), str(r["n"])])
    return rows


def markdown(summary: dict) -> str:
    metrics = summary["metrics"]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += ["| " + " | ".join(r) + " |" for r in means_rows(summary)]
    lines += ["", "| pair | metric | win rate [95 % CI] | mean difference [95 % CI] | pairs |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in pair_rows(summary)]
    return "\n".join(lines)


def caption(values: dict | None, metrics: list[str], per_line: int = 1) -> list[str]:
    """Short lines for a grid cell: 'pick 21.30 · hps 0.271'."""
    if not values:
        return []
    parts = [f"{SHORT.get(m, m)} {values[m]:.3g}" for m in metrics if m in values]
    return [" · ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line)]

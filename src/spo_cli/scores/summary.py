"""Scores of a comparison (rows × columns, the same prompt and seed across a row) summed up:
each column's mean per metric, and each later column against each earlier one — paired win
rate and mean difference with 95 % intervals from a bootstrap over prompts, the exact sign and
signed-rank tests over prompts, and a sentence saying what may be concluded (nothing, with too
few prompts). Pure (numpy), shared by `spo compare --score` and `spo eval`."""

from __future__ import annotations

from collections.abc import Hashable

from spo_cli.scores.stats import MIN_PROMPTS, bootstrap_mean, paired

SHORT = {"pickscore": "pick", "hpsv2": "hps", "imagereward": "ir", "aesthetic": "aes", "clip": "clip"}
ALPHA = 0.05
NOTE = ("pairs: a (the later column) against b (the earlier one) over the same prompt and seed; win_rate is the "
        "share of pairs a scores higher (ties count one half), mean_diff the mean of a - b; intervals are 95 % "
        "percentile bootstrap intervals resampling prompts (all seeds of a prompt together; none from a single "
        "prompt); sign is an exact two-sided sign test over the prompts' mean differences (tied prompts left out), "
        "wilcoxon_p an exact two-sided signed-rank test over the same, rank_side the side its statistic leans to "
        "(1: a, -1: b); a difference is claimed only when both tests find it, for the same model; too_few: fewer than "
        f"{MIN_PROMPTS} untied prompts, with which no such test can reach p < 0.05, so nothing can be concluded.")


def summarise(columns: list[str], cells: list[list[dict | None]], metrics: list[str], *,
              groups: list[Hashable] | None = None, seed: int = 0) -> dict:
    """`cells[row][col]` is that image's {metric: value} (None when it failed); `groups[row]` names
    the row's prompt (rows of one prompt are resampled and tested together; without it each row
    is its own prompt). Columns keep their order: column j is compared against each column i < j."""

    def values(col: int, metric: str) -> list[float | None]:
        return [(row[col] or {}).get(metric) for row in cells]

    means = {label: {m: bootstrap_mean(values(c, m), groups=groups, seed=seed).to_dict() for m in metrics}
             for c, label in enumerate(columns)}
    pairs = []
    for i in range(len(columns)):
        for j in range(i + 1, len(columns)):
            per = {}
            for m in metrics:
                r = paired(values(j, m), values(i, m), groups=groups, seed=seed).to_dict()
                per[m] = {**r, "conclusion": conclusion(columns[j], columns[i], r)}
            pairs.append({"a": columns[j], "b": columns[i], "metrics": per})
    return {"metrics": metrics, "means": means, "pairs": pairs, "note": NOTE}


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3g}" if value >= 0.001 else "< 0.001"


def _is(value: float | None) -> str:
    """'= 0.754', '< 0.001' or 'not computed', to follow a 'p'."""
    if value is None:
        return "not computed"
    text = _p(value)
    return text if text.startswith("<") else f"= {text}"


def conclusion(a: str, b: str, r: dict) -> str:
    """One sentence: what this comparison of a against b can and cannot say."""
    s = r["sign"]
    untied = s["wins"] + s["losses"]
    if r["too_few"]:
        return (f"Too few prompts to conclude anything: {r['prompts']} prompt(s), {untied} not tied; "
                f"with fewer than {MIN_PROMPTS} untied prompts even a clean sweep cannot reach p < {ALPHA:g} "
                f"in a two-sided paired test.")
    if s["wins"] > s["losses"]:
        split = f"{a} scores higher than {b} on {s['wins']} of {untied} untied prompts"
    elif s["wins"] < s["losses"]:
        split = f"{a} scores lower than {b} on {s['losses']} of {untied} untied prompts"
    else:
        split = f"{a} and {b} each score higher on {s['wins']} of {untied} untied prompts"
    tests = f"sign test p {_is(s['p_value'])}, signed-rank p {_is(r['wilcoxon_p'])}"
    verdict = _verdict(r)
    if verdict == "tests disagree":
        if s["p_value"] < ALPHA and r["wilcoxon_p"] is not None and r["wilcoxon_p"] < ALPHA:
            return (f"{split} ({tests}): the tests disagree at the {ALPHA:.0%} level, each finding the other "
                    f"model ahead (the sign test counts prompts; the signed-rank test weighs how far apart the "
                    f"scores are); treat it as unsettled.")
        which = "signed-rank test (which weighs how far apart the scores are)" if s["p_value"] >= ALPHA \
            else "sign test (which counts prompts only)"
        return (f"{split} ({tests}): the tests disagree at the {ALPHA:.0%} level, only the {which} finding a "
                f"difference; treat it as unsettled.")
    if verdict == "no clear difference":
        return f"{split} ({tests}): no clear difference at the {ALPHA:.0%} level."
    return f"{split} ({tests}): a difference at the {ALPHA:.0%} level."


def _ci(e: dict, digits: int = 3) -> str:
    if e["value"] is None:
        return "—"
    if e["low"] is None:
        return f"{e['value']:.{digits}f} (one prompt: no interval)"
    return f"{e['value']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _pair_ci(e: dict, r: dict, digits: int) -> str:
    """An interval, unless there are too few prompts to trust one: then the value alone, said so."""
    if r["too_few"] and e["value"] is not None:
        return f"{e['value']:.{digits}f} (too few prompts)"
    return _ci(e, digits)


def means_rows(summary: dict) -> list[list[str]]:
    return [[label, *(_ci(by[m]) for m in summary["metrics"])] for label, by in summary["means"].items()]


def _verdict(r: dict) -> str:
    """Both tests must find a difference for one to be claimed (the signed-rank test is not run past
    WILCOXON_MAX prompts: then the sign test decides alone)."""
    if r["too_few"]:
        return "too few prompts"
    found = [p < ALPHA for p in (r["sign"]["p_value"], r["wilcoxon_p"]) if p is not None]
    if not any(found):
        return "no clear difference"
    if not all(found):
        return "tests disagree"
    side = 1 if r["sign"]["wins"] > r["sign"]["losses"] else -1
    if r["wilcoxon_p"] is not None and r.get("rank_side", side) != side:
        return "tests disagree"  # both significant, but each for the other model: no direction to claim
    return "a higher" if side > 0 else "a lower"


def verdict(r: dict) -> str:
    """The verdict with the prompts it rests on: 'a higher (sign p = 0.021, 10 prompts)'."""
    return f"{_verdict(r)} (sign p {_is(r['sign']['p_value'])}, {r['prompts']} prompts)"


PAIR_HEADERS = ["pair (a vs b)", "metric", "win rate [95 % CI]", "mean a − b [95 % CI]", "prompts (pairs)",
                "sign p", "signed-rank p", "verdict"]


# The terminal's table: narrower (the sentences printed under it say what the verdict column says).
TERMINAL_HEADERS = ["a vs b", "metric", "win rate [95 % CI]", "mean a − b [95 % CI]", "prompts (pairs)",
                    "sign p", "rank p"]


def pair_rows(summary: dict, terminal: bool = False) -> list[list[str]]:
    rows = []
    for p in summary["pairs"]:
        for m, r in p["metrics"].items():
            if terminal and r["too_few"]:  # the words come below the table
                win, diff = (f"{e['value']:.{d}f} (too few)" if e["value"] is not None else "—"
                             for e, d in ((r["win_rate"], 2), (r["mean_diff"], 4)))
            else:
                win, diff = _pair_ci(r["win_rate"], r, 2), _pair_ci(r["mean_diff"], r, 4)
            row = [f"{p['a']} vs {p['b']}", m, win, diff, f"{r['prompts']} ({r['n']})", _p(r["sign"]["p_value"]),
                   _p(r["wilcoxon_p"])]
            rows.append(row if terminal else row + [_verdict(r)])
    return rows


def conclusions(summary: dict) -> list[str]:
    return [f"{p['a']} vs {p['b']}, {m}: {r['conclusion']}" for p in summary["pairs"] for m, r in p["metrics"].items()]


def markdown(summary: dict) -> str:
    metrics = summary["metrics"]
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += ["| " + " | ".join(r) + " |" for r in means_rows(summary)]
    lines += ["", "| " + " | ".join(PAIR_HEADERS) + " |", "|" + "---|" * len(PAIR_HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in pair_rows(summary)]
    if summary["pairs"]:
        lines += ["", "Each later column (a) against each earlier one (b), over the same prompts and seeds:", ""]
        lines += [f"- {c}" for c in conclusions(summary)]
    return "\n".join(lines)


def caption(values: dict | None, metrics: list[str], per_line: int = 1) -> list[str]:
    """Short lines for a grid cell: 'pick 21.30 · hps 0.271'."""
    if not values:
        return []
    parts = [f"{SHORT.get(m, m)} {values[m]:.3g}" for m in metrics if m in values]
    return [" · ".join(parts[i:i + per_line]) for i in range(0, len(parts), per_line)]

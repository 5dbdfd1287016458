"""The phases of benchmarks/gpu_session.sh: what each needs, what each leaves in OUTDIR, and the two
device calls of issue 22's session. Standard library only (it runs on the GPU node before anything).

A device call runs at most 600 s and the lease has 15 minutes in all, machine start-up included, so
issue 22's measurements are planned as two calls, in order of value for the issue:

  call 1 (--budget-s 540): compile, bench, attn
  call 2 (--budget-s 300): serve, eval

`typical_s` is what a phase is expected to take on one H200 (from the first leases' logs, or an
estimate where the phase is new, said so below); `needs_s` is what must be left for it to start at all
(gpu_session.sh skips it otherwise, with a line that says so). A phase that has started runs under
`timeout` with what is left of the budget less what the phases after it need (`reserve`; phases run
in the order of PHASES below, whatever the order of --phases), so the
phases of a call cannot starve each other. The device returns at most 8 files from $OUT: each call's
phases leave at most 7 besides session.log.

    python benchmarks/session_plan.py check compile,bench,attn 540   # problems, one a line; exit 1 if any
    python benchmarks/session_plan.py needs prof [--toy]             # seconds
    python benchmarks/session_plan.py reserve compile compile,bench,attn [--toy]
    python benchmarks/session_plan.py show compile,bench,attn 540    # the plan, for the log
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

FILES_BACK = 8  # the device returns at most this many files from $OUT (session.log is one)
TOY_NEEDS_S = 20  # --toy: the tiny model on the CPU proves the paths; every phase starts with this left


@dataclass(frozen=True)
class Phase:
    title: str
    needs_s: int  # left in the budget, or it is skipped
    typical_s: int  # expected on one H200 with the model and compile cache the phases before it leave
    outputs: tuple[str, ...]  # files it leaves in OUTDIR


PHASES = {
    # bench_gpu.py --only fast,fast-fp8 in a fresh compile cache: the two --fast compiles, each timed (its
    # first call), then one settling round and one round at 50 steps (N = 1: marked not steady state).
    # --fast's compile took 95-122 s on an H200 before GEMM autotuning; autotuning SDXL's 24 GEMM shapes
    # adds 2-9 minutes (4.2-22.1 s a shape under the first lease's max-autotune, src/spo_cli/speed.py),
    # and fp8's compile tunes its scaled GEMMs too: 2 to 11 minutes for both, with the model build
    # (~40 s on a bare node). It runs apart so that the minutes it takes are recorded on their own and
    # cannot eat the interleaved rounds: past its time it is stopped, keeping what it saved, and the
    # bench phase leaves out a --fast contender whose compile did not finish. fp8's compile starts only
    # with 150 s of the phase left. An estimate.
    "compile": Phase("bench_gpu.py: spo --fast and --fast --quantize fp8 compiled in a fresh cache, each "
                     "compile timed", 150, 300, ("compile.json",)),
    # bench_gpu.py --keep-cache (the honest harness): six contenders loaded, the two --fast ones from the
    # compile phase's cache (first call ~20-25 s each: lease 3's second processes), 50 and 30 steps
    # interleaved (settling round + 3, ~15 s and ~10 s a round), no 2nd process (this one is): an estimate.
    "bench": Phase("bench_gpu.py: snippet, spo, spo --generator-device cuda, --fast, --fast --quantize fp8 "
                   "interleaved, --fast from the compile phase's cache", 150, 200, ("bench.json",)),
    # bench_attention.py (harness): SDPA backends at SDXL's four attention shapes; seconds of GPU.
    "attn": Phase("bench_attention.py: SDPA backends at SDXL's attention shapes", 30, 30, ("attention.json",)),
    # profile_step.py --fast: a 3rd process on the compile cache (first call 20 s in lease 3), 3 timed calls
    # and one under the profiler at 30 steps: 60 s in lease 3. A spare since GEMM autotuning made the
    # compile phase minutes longer: the bench rows give --fast's s/image and MFU without it.
    "prof": Phase("profile_step.py --fast: where one image's time goes", 60, 70, ("profile-fast.json",)),
    # bench_serve.py GPU mode, --fast, batch size 1, 24 requests at 30 steps: two processes that reuse the
    # compile cache (~10 s to load, ~20 s for the first call: lease 3), 3 warm-up and 24 timed images
    # each at ~1.1 s: about 60 s a side, an estimate.
    "serve": Phase("bench_serve.py: spo serve (16 clients) vs spo batch, on CUDA", 100, 120, ("serve.json",)),
    # bench_eval.py: a second random UNet and the full-size scorers built (~40 s), then spo eval --paper
    # --limit 20: 40 images at 50 steps (~2.9 s each in run 1), two loads, five scorers: an estimate.
    # Cut short, it still writes what it measured (images done, s/image), without the extrapolation.
    "eval": Phase("bench_eval.py: spo eval --paper --limit 20, end to end", 150, 180, ("eval.json",)),
    # Spares, in no call by default (see benchmarks/README.md, "How to run issue 22's measurements").
    # With --only snippet,fast,recipe: the two interleaved first (--fast from the cache, ~80 s), then the
    # recipe's child process loads the three again and compiles the recipe.
    "recipe": Phase("bench_gpu.py: the snippet with diffusers' compile recipe (max-autotune: 280 s and more "
                    "to compile), interleaved with the snippet and spo --fast", 400, 500, ("bench-recipe.json",)),
    # issue 23's rows (diffusers' img2img, spo --image, spo --hires 1.5): 90 s planned in round one.
    "edit": Phase("bench_gpu.py: img2img (diffusers, spo) and --hires 1.5", 90, 100, ("bench-edit.json",)),
    "cli": Phase("gpu_cli_check.py: spo generate / batch / compare on CUDA", 150, 150, ("cli_check.json",)),
}
CALLS = {1: ("compile,bench,attn", 540), 2: ("serve,eval", 300)}


def parse(text: str) -> list[str]:
    """--phases' list in the order gpu_session.sh runs them (PHASES' order), whatever order it is given in;
    unknown names kept last, for check() to name."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    return [k for k in PHASES if k in names] + [n for n in names if n not in PHASES]


def needs(key: str, toy: bool = False) -> int:
    return TOY_NEEDS_S if toy else PHASES[key].needs_s


def reserve(key: str, phases: list[str], toy: bool = False) -> int:
    """What the phases after `key` in this call need: kept back from `key`'s timeout."""
    phases = [k for k in PHASES if k in phases]  # the order they run in
    later = phases[phases.index(key) + 1:] if key in phases else []
    return sum(needs(k, toy) for k in later if k in PHASES)


def check(phases: list[str], budget: int) -> list[str]:
    """Why this list of phases does not fit one call of `budget` seconds (empty: it fits)."""
    problems = [f"unknown phase '{k}' (phases: {', '.join(PHASES)})" for k in phases if k not in PHASES]
    if problems:
        return problems
    if len(set(phases)) != len(phases):
        problems.append("a phase is named twice")
    typical = sum(PHASES[k].typical_s for k in phases)
    if typical > budget:
        problems.append(f"the phases take about {typical} s, more than the budget of {budget} s")
    files = 1 + sum(len(PHASES[k].outputs) for k in phases)
    if files > FILES_BACK:
        problems.append(f"{files} files in OUTDIR with session.log, and the device returns {FILES_BACK}")
    return problems


def show(phases: list[str], budget: int) -> str:
    lines = [f"plan for {budget} s: " + (", ".join(phases) or "no phase")]
    for k in phases:
        p = PHASES[k]
        lines.append(f"  {k:<7} about {p.typical_s:>3} s (starts only with {p.needs_s} s left; keeps "
                     f"{reserve(k, phases)} s for the phases after it) → {', '.join(p.outputs)}: {p.title}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    toy = "--toy" in argv
    argv = [a for a in argv if a != "--toy"]
    if len(argv) >= 2 and argv[0] == "needs" and argv[1] in PHASES:
        print(needs(argv[1], toy))
    elif len(argv) >= 3 and argv[0] == "reserve":
        print(reserve(argv[1], parse(argv[2]), toy))
    elif len(argv) >= 3 and argv[0] in ("check", "show"):
        phases, budget = parse(argv[1]), int(argv[2])
        problems = check(phases, budget)
        if argv[0] == "show" and not any(p.startswith("unknown") for p in problems):
            print(show(phases, budget))
        for p in problems:
            print(("warning: " if argv[0] == "show" else "") + p)
        return 1 if problems and argv[0] == "check" else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

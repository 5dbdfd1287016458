"""`spo compare` (5 columns in one process) against one `spo generate` per column, on the CPU.

The comparison is SDXL base, SPO-SDXL and the SPO LoRA at three strengths, two seeds each:

    spo compare PROMPT --base --spo --lora-scales 0,0.5,1 --seeds 1,2 ...

against the five `spo generate` runs that make the same ten images:

    spo generate PROMPT -n 2 --seed 1 --model base
    spo generate PROMPT -n 2 --seed 1 --model spo
    spo generate PROMPT -n 2 --seed 1 --model spo-lora --lora-scale {0, 0.5, 1}

Every contender is a fresh process doing the whole job, so wall times compare like with like. It also
counts the bytes of weights each side loads: `bytes_loaded` from `spo compare --json` (what its model
bank read: the shared text encoders, tokenizers and VAE once, each distinct UNet once, the LoRA once)
against the sum over the `spo generate` runs of `ResolvedModel.nbytes()` (everything each run resolves).
Uses the tiny random SDXL (real architecture, toy width): it measures loading and the tool's overhead,
not SDXL's denoising.

The sweep row: a 3×3 X/Y sweep of one model,

    spo compare PROMPT --spo --x steps=2,3,4 --y guidance=3,5,7 --seeds 1 ...

against the nine `spo generate --model spo --steps S --guidance G --seed 1` runs that make the same
nine images (each a fresh process loading SPO-SDXL).

    python benchmarks/bench_compare.py [--dtype fp32|fp16] [--size 128] [--steps 4] [--repeat 1] [--part all|columns|sweep]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, offline_cache, timed  # noqa: E402

PROMPT = "a child and a penguin sitting on the moon"
SEEDS = [1, 2]
SCALES = [0, 0.5, 1]
SWEEP_STEPS, SWEEP_GUIDANCE = (2, 3, 4), (3, 5, 7)
DTYPES = {"fp32": "float32", "fp16": "float16"}

# The weights each `spo generate` run loads, computed in a process whose HF_* environment points at
# the benchmark cache before huggingface_hub is imported (it reads HF_HUB_CACHE/HF_HUB_OFFLINE at
# import; this script's own process has imported it already, via the tiny-model builder).
NBYTES = r"""
import json, sys
from spo_cli.request import ModelRequest
from spo_cli.resolve import resolve_model
dtype = sys.argv[1]
out = []
for model, scale in json.loads(sys.argv[2]):
    r = resolve_model(ModelRequest(model=model, lora_scale=scale), dtype, local_only=True)
    # What Engine.load actually reads: safetensors of the pipeline (its own vae/ skipped when a separate
    # VAE is given), the LoRA, the separate VAE.
    read = sum((r.pipeline.path / f).stat().st_size for f in r.pipeline.files if f.endswith(".safetensors")
               and not (r.vae is not None and f.startswith("vae/")))
    read += sum(p.nbytes() for p in (r.lora, r.vae) if p is not None)
    out.append({"nbytes": r.nbytes(), "safetensors_read": read})
print(json.dumps(out))
"""


def generate_configs() -> list[tuple[str, list[str], str, float]]:
    """(label, generate flags, model, lora scale) for each compare column, in compare's order."""
    configs = [("SDXL base", ["--model", "base"], "base", 1.0), ("SPO-SDXL", ["--model", "spo"], "spo", 1.0)]
    configs += [(f"SPO LoRA x{s:g}", ["--model", "spo-lora", "--lora-scale", str(s)], "spo-lora", float(s))
                for s in SCALES]
    return configs


def run_compare(cmd: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed, json.loads(proc.stdout)


def mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of both sides; the table shows medians")
    ap.add_argument("--part", choices=("all", "columns", "sweep"), default="all")
    args = ap.parse_args()

    work, env = offline_cache()
    out = Path(tempfile.mkdtemp(dir=work))
    spo = [sys.executable, "-m", "spo_cli"]
    common = ["--width", str(args.size), "--height", str(args.size), "--steps", str(args.steps),
              "--device", "cpu", "--dtype", args.dtype]
    print(f"\nMachine: {machine()}")
    if args.part in ("all", "columns"):
        columns(args, spo, common, env, out)
    if args.part in ("all", "sweep"):
        sweep(args, spo, env, out)


def sweep(args, spo: list[str], env: dict, out: Path) -> None:
    """A 3×3 steps × guidance sweep of SPO-SDXL in one `spo compare` against 9 `spo generate` runs."""
    common = ["--width", str(args.size), "--height", str(args.size), "--device", "cpu", "--dtype", args.dtype]
    cells = [(s, g) for g in SWEEP_GUIDANCE for s in SWEEP_STEPS]
    compare_times, generate_times = [], []
    report = None
    for r in range(args.repeat):
        t, report = run_compare([*spo, "compare", PROMPT, "--spo", "--x", "steps=" + ",".join(map(str, SWEEP_STEPS)),
                                 "--y", "guidance=" + ",".join(map(str, SWEEP_GUIDANCE)), "--seeds", "1", *common,
                                 "--out", str(out / f"sweep-{r}"), "--json"], env)
        if report["rendered"] != len(cells) or report["failed"]:
            sys.exit(f"spo compare did not render every cell of the sweep: {report}")
        compare_times.append(t)
        generate_times.append(sum(
            timed([*spo, "generate", PROMPT, "--model", "spo", "--steps", str(s), "--guidance", str(g), "--seed", "1",
                   *common, "--out", str(out / f"sweep-generate-{r}-{k}"), "--quiet"], env)
            for k, (s, g) in enumerate(cells)))
    proc = subprocess.run([sys.executable, "-c", NBYTES, DTYPES[args.dtype], json.dumps([["spo", 1.0]])],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"could not resolve the model:\n{proc.stderr[-3000:]}")
    one = json.loads(proc.stdout)[0]["nbytes"]
    t_cmp, t_gen = statistics.median(compare_times), statistics.median(generate_times)
    b_cmp, b_gen = report["bytes_loaded"], one * len(cells)
    print(f"\nSweep: SPO-SDXL, steps {SWEEP_STEPS} × guidance {SWEEP_GUIDANCE} = {len(cells)} images, "
          f"{args.size}×{args.size}, seed 1, tiny random SDXL, {DTYPES[args.dtype]} CPU; "
          f"{'median of ' + str(args.repeat) + ' interleaved runs' if args.repeat > 1 else 'one run'}\n")
    print("| run | processes | wall s | s/image | weights loaded |")
    print("|---|---:|---:|---:|---:|")
    print(f"| spo compare --spo --x steps={','.join(map(str, SWEEP_STEPS))} --y guidance="
          f"{','.join(map(str, SWEEP_GUIDANCE))} | 1 | {t_cmp:.2f} | {t_cmp / len(cells):.3f} | "
          f"{b_cmp:,} B ({mib(b_cmp)}) |")
    print(f"| {len(cells)} × spo generate (one per cell) | {len(cells)} | {t_gen:.2f} | {t_gen / len(cells):.3f} | "
          f"{b_gen:,} B ({mib(b_gen)}) |")
    print(f"| ratio generate / compare | | {t_gen / t_cmp:.2f}× | | {b_gen / b_cmp:.2f}× |")


def columns(args, spo: list[str], common: list[str], env: dict, out: Path) -> None:
    configs = generate_configs()

    compare_times, generate_times, per_run = [], [], [[] for _ in configs]
    report = None
    for r in range(args.repeat):
        t, report = run_compare([*spo, "compare", PROMPT, "--base", "--spo", "--lora-scales",
                                 ",".join(f"{s:g}" for s in SCALES), "--seeds", ",".join(map(str, SEEDS)),
                                 *common, "--out", str(out / f"compare-{r}"), "--json"], env)
        if report["rendered"] != len(configs) * len(SEEDS) or report["failed"]:
            sys.exit(f"spo compare did not render every cell: {report}")
        compare_times.append(t)
        total = 0.0
        for k, (_, flags, _, _) in enumerate(configs):
            t = timed([*spo, "generate", PROMPT, "-n", str(len(SEEDS)), "--seed", str(SEEDS[0]), *flags, *common,
                       "--out", str(out / f"generate-{r}-{k}"), "--quiet"], env)
            per_run[k].append(t)
            total += t
        generate_times.append(total)

    proc = subprocess.run([sys.executable, "-c", NBYTES, DTYPES[args.dtype],
                           json.dumps([[model, scale] for _, _, model, scale in configs])],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"could not resolve the models:\n{proc.stderr[-3000:]}")
    loads = json.loads(proc.stdout)

    t_cmp, t_gen = statistics.median(compare_times), statistics.median(generate_times)
    b_cmp = report["bytes_loaded"]
    b_gen = sum(x["nbytes"] for x in loads)
    b_gen_read = sum(x["safetensors_read"] for x in loads)
    n_images = len(configs) * len(SEEDS)

    print(f"Work: {len(configs)} columns × {len(SEEDS)} seeds = {n_images} images, {args.size}×{args.size}, "
          f"{args.steps} steps, tiny random SDXL, {DTYPES[args.dtype]} CPU; "
          f"{'median of ' + str(args.repeat) + ' interleaved runs' if args.repeat > 1 else 'one run'}\n")
    print("| run | processes | wall s | s/image | weights loaded |")
    print("|---|---:|---:|---:|---:|")
    print(f"| spo compare --base --spo --lora-scales {','.join(f'{s:g}' for s in SCALES)} --seeds "
          f"{','.join(map(str, SEEDS))} | 1 | {t_cmp:.2f} | {t_cmp / n_images:.3f} | {b_cmp:,} B ({mib(b_cmp)}) |")
    print(f"| {len(configs)} × spo generate -n {len(SEEDS)} (one per column) | {len(configs)} | {t_gen:.2f} | "
          f"{t_gen / n_images:.3f} | {b_gen:,} B ({mib(b_gen)}) |")
    print(f"| ratio generate / compare | | {t_gen / t_cmp:.2f}× | | {b_gen / b_cmp:.2f}× |")
    print("\n| spo generate run | wall s | nbytes() | safetensors it reads |")
    print("|---|---:|---:|---:|")
    for (label, flags, _, _), ts, ld in zip(configs, per_run, loads):
        print(f"| {' '.join(flags)} ({label}) | {statistics.median(ts):.2f} | {ld['nbytes']:,} | "
              f"{ld['safetensors_read']:,} |")
    index = json.loads(Path(report["index"]).read_text())
    print("\nspo compare set-up log: " + " | ".join(index["setup"]))
    print(f"\nwall: {len(configs)} × generate / compare = {t_gen / t_cmp:.2f}; weights: Σ nbytes() / compare "
          f"bytes_loaded = {b_gen / b_cmp:.2f} (Σ safetensors actually read by the generate runs: {b_gen_read:,} B, "
          f"{b_gen_read / b_cmp:.2f}× compare)")


if __name__ == "__main__":
    main()

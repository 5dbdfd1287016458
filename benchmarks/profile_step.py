"""Where one SDXL image's time goes in spo, default or --fast: text encoders, the denoising loop
(and, inside one step, attention / convolutions / GEMMs / the rest), VAE decode, and the time the
GPU sits idle waiting for Python.

It loads the full-size random-weight SDXL that bench_gpu.py saved under --workdir (run that first)
and times one real `Engine.run` call, with `pipe.encode_prompt` and `pipe.vae.decode` wrapped so
that each is bounded by a device synchronisation:

  1. wall time of each part (median of --repeat calls, no profiler running): before the text
     encoders, text encoders, denoising loop (÷ steps = one step), VAE decode, after the decode;
  2. one more call under torch.profiler: every GPU kernel, put into the part it ran in by its
     timestamps and into a category by its name (attention, convolution, GEMM, normalisation,
     fused by inductor, element-wise and other, copies); the loop's GPU-busy time (union of
     kernel intervals) against its wall time gives the idle share (launch gaps, Python).

With --fast, the first call is the compile (or the compile cache's reuse, when
TORCHINDUCTOR_CACHE_DIR holds bench_gpu.py's cache: that is a further "2nd process" first-call
time, and is reported as such). --fast as spo runs it: the UNet's GEMMs autotuned, the text encoders
compiled, and the VAE decode run twice on zeros before the first image (its CUDA graph recorded), all
inside that first call; what inductor was told is saved in the JSON (compile_options). The UNet's
attention backends follow SPO_SDPA_BACKENDS as in spo (e.g. SPO_SDPA_BACKENDS=cudnn,flash), recorded
too; the kernels that ran are named in a table of the loop's longest kernels (which GEMM won, cuBLAS's
or a Triton template's, and which attention kernel ran).

    python benchmarks/profile_step.py [--fast] [--steps 30] [--workdir DIR] [--out-json F]
    python benchmarks/profile_step.py --toy          # the same code path on the CPU (CPU ops, not kernels)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_gpu  # noqa: E402  (also puts src/ on the path when spo_cli is not installed)

PARTS = ["before text encoders", "text encoders", "denoising loop", "VAE decode", "after decode"]
TOP_KERNELS = 15  # the denoising loop's longest kernels, by name, shown and saved
# Checked in order: the first pattern a kernel (or, on the CPU, an aten op) name matches wins.
CATEGORIES = [
    ("attention", re.compile(r"flash|fmha|attention|sdpa|scaled_dot_product|softmax", re.I)),
    ("convolution", re.compile(r"conv|implicit_gemm|fprop|dgrad|winograd|cudnn", re.I)),
    # triton_tem_*: inductor's Triton templates, under GEMM autotuning its matrix multiplies (a conv template
    # says "convolution" and is caught above).
    ("GEMM (linear)", re.compile(r"gemm|cublas|nvjet|cutlass|matmul|addmm|\bmm\b|aten::mm|bmm|linear|^triton_tem_",
                                 re.I)),
    ("normalisation", re.compile(r"norm", re.I)),
    ("fused by inductor", re.compile(r"^triton_|triton", re.I)),
    ("copies", re.compile(r"memcpy|memset|copy_|contiguous", re.I)),
]


def category(name: str) -> str:
    # inductor's other kernels are named after the ops fused into them, e.g. triton_poi_fused_addmm_gelu_1
    # for the bias add and GELU an addmm left behind: not GEMMs.
    generated = name.startswith("triton_") and not name.startswith("triton_tem_")
    for label, pattern in CATEGORIES:
        if generated and label == "GEMM (linear)":
            continue
        if pattern.search(name):
            return label
    return "element-wise and other"


class Parts:
    """Wraps encode_prompt and vae.decode so that each is a synchronised, labelled interval."""

    def __init__(self, pipe, sync):
        self.sync = sync
        self.marks: dict[str, float] = {}
        self._wrap(pipe, "encode_prompt", "text encoders")
        self._wrap(pipe.vae, "decode", "VAE decode")

    def _wrap(self, owner, attr: str, label: str) -> None:
        import torch

        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.sync()
            self.marks[label + " start"] = time.perf_counter()
            with torch.profiler.record_function(label):
                out = inner(*args, **kwargs)
                self.sync()
            self.marks[label + " end"] = time.perf_counter()
            return out

        setattr(owner, attr, timed)

    def split(self, t0: float, t1: float, steps: int) -> dict[str, float]:
        m = self.marks
        return {
            "before text encoders": m["text encoders start"] - t0,
            "text encoders": m["text encoders end"] - m["text encoders start"],
            "denoising loop": m["VAE decode start"] - m["text encoders end"],
            "VAE decode": m["VAE decode end"] - m["VAE decode start"],
            "after decode": t1 - m["VAE decode end"],
            "one step": (m["VAE decode start"] - m["text encoders end"]) / steps,
            "whole call": t1 - t0,
        }


def union_us(intervals: list[tuple[float, float]]) -> float:
    busy, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy


def kernel_breakdown(prof, cuda: bool) -> dict:
    """Kernel (or CPU op) time by part and category, from one profiled call."""
    from torch.autograd import DeviceType

    events = list(prof.events())
    regions = {e.name: (e.time_range.start, e.time_range.end) for e in events
               if e.name in ("text encoders", "VAE decode") and e.device_type == DeviceType.CPU}
    (enc_a, enc_b), (dec_a, dec_b) = regions["text encoders"], regions["VAE decode"]

    def part_of(start: float) -> str:
        if start < enc_a:
            return "before text encoders"
        if start < enc_b:
            return "text encoders"
        if start < dec_a:
            return "denoising loop"
        if start < dec_b:
            return "VAE decode"
        return "after decode"

    by = defaultdict(lambda: defaultdict(float))  # part → category → µs
    loop_kernels = defaultdict(lambda: [0.0, 0])  # kernel name → [µs, calls], in the denoising loop
    intervals = defaultdict(list)
    for e in events:
        if e.name in regions:  # our own labels, which on CUDA also appear as a GPU-side annotation span
            continue
        if cuda:
            if e.device_type != DeviceType.CUDA:
                continue
            us = e.time_range.end - e.time_range.start
        else:  # CPU: aten ops' own time (children excluded), so nothing counts twice
            if e.device_type != DeviceType.CPU or not e.name.startswith("aten::"):
                continue
            us = e.self_cpu_time_total
        part = part_of(e.time_range.start)
        by[part][category(e.name)] += us
        intervals[part].append((e.time_range.start, e.time_range.end))
        if part == "denoising loop":
            loop_kernels[e.name][0] += us
            loop_kernels[e.name][1] += 1
    top = sorted(loop_kernels.items(), key=lambda kv: -kv[1][0])[:TOP_KERNELS]
    return {
        "kernel_us": {p: dict(c) for p, c in by.items()},
        "top_loop_kernels": [{"name": name, "category": category(name), "us": us, "calls": calls}
                             for name, (us, calls) in top],
        "busy_us": {p: union_us(iv) for p, iv in intervals.items()} if cuda else None,
        "region_us": {"text encoders": enc_b - enc_a, "denoising loop": dec_a - enc_b, "VAE decode": dec_b - dec_a},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="tiny model on the CPU (bench_gpu.py --toy's workdir)")
    ap.add_argument("--fast", action="store_true", help="profile spo --fast (torch.compile) instead of the default")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; --toy: 2)")
    ap.add_argument("--repeat", type=int, default=3, help="unprofiled timed calls; the median is shown")
    ap.add_argument("--workdir", type=Path, default=None, help="bench_gpu.py's --workdir (the saved model)")
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()
    args.steps = args.steps or (2 if args.toy else 30)
    args.size = 64 if args.toy else 1024
    args.dtype = "float32" if args.toy else "float16"
    args.guidance = 5.0
    import tempfile

    args.workdir = (args.workdir or Path(tempfile.gettempdir()) / ("spo-bench-gpu-toy" if args.toy else "spo-bench-gpu"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not (args.workdir / "model" / "model_index.json").exists():
        raise SystemExit(f"No model in {args.workdir}/model: run benchmarks/bench_gpu.py"
                         f"{' --toy' if args.toy else ''} --workdir {args.workdir} first.")

    from torch.profiler import ProfilerActivity, profile

    bench_gpu.quiet()
    ctx = bench_gpu.make_ctx(args)
    info = bench_gpu.header(ctx)
    label = "spo --fast" if args.fast else "spo (default)"
    from spo_cli import speed
    from spo_cli.errors import UsageError

    try:
        sdpa = speed.sdpa_order()  # refused here, before the model loads, as spo does
    except UsageError as e:
        print(e.paragraph(), file=sys.stderr)
        raise SystemExit(2) from None
    settings = {"sdpa_backends": list(sdpa) if sdpa else "PyTorch's order"}
    if args.fast:
        settings["compile_options"] = {part: speed.compile_options(part, ctx.cuda)
                                       for part in ("unet", "vae", "text_encoder")}
    print(f"# Profile of one image, {label}: {info['device']}; torch {info['torch']}, diffusers "
          f"{info['diffusers']}; {args.size}², {args.steps} steps, guidance 5, {args.dtype}; {info['date']}", flush=True)
    print(f"UNet attention backends: {settings['sdpa_backends']}", flush=True)
    t0 = time.perf_counter()
    engine = bench_gpu.load_spo(ctx, fast=args.fast)
    ctx.sync()
    load_s = time.perf_counter() - t0
    parts = Parts(engine.pipe, ctx.sync)

    def call() -> dict[str, float]:
        ctx.sync()
        a = time.perf_counter()
        bench_gpu.call_spo(ctx, engine, args.steps)
        ctx.sync()
        return parts.split(a, time.perf_counter(), args.steps)

    first = call()["whole call"]
    print(f"loaded in {load_s:.1f} s; first call {first:.2f} s"
          + (f" (cache: {os.environ.get('TORCHINDUCTOR_CACHE_DIR', 'default')})" if args.fast else ""), flush=True)
    runs = [call() for _ in range(args.repeat)]
    wall = {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    whole = wall["whole call"]
    lines = [f"\n## {label}: wall time of one image (median of {args.repeat}, no profiler)\n",
             "| part | ms | share |", "|---|---:|---:|"]
    for p in PARTS:
        lines.append(f"| {p} | {wall[p] * 1e3:.1f} | {wall[p] / whole:.1%} |")
    lines.append(f"| **one denoising step** | {wall['one step'] * 1e3:.2f} | |")
    lines.append(f"| **whole call** | {whole * 1e3:.1f} | 100 % |")

    n_wall = len(lines)
    print("\n".join(lines), flush=True)  # kept even if the profiler fails below

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if ctx.cuda else [])
    kb: dict = {}
    try:
        with profile(activities=activities) as prof:
            call()
        kb = kernel_breakdown(prof, ctx.cuda)
    except Exception as e:  # e.g. CUPTI and CUDA graphs; the wall times above still stand
        kb = {"profile_error": f"{type(e).__name__}: {e}"[:500]}
        lines.append(f"\nThe profiled call failed: {kb['profile_error']}")
    if "kernel_us" in kb:
        unit = "GPU kernel" if ctx.cuda else "CPU op (self)"
        lines += [f"\n## {label}: {unit} time by part and category (one profiled call, ms)\n"]
        cats = [c for c, _ in CATEGORIES] + ["element-wise and other"]
        shown = [p for p in PARTS if p in kb["kernel_us"]]
        lines.append("| category | " + " | ".join(shown) + " |")
        lines.append("|---|" + "---:|" * len(shown))
        for c in cats:
            if any(kb["kernel_us"][p].get(c) for p in shown):
                lines.append(f"| {c} | " + " | ".join(f"{kb['kernel_us'][p].get(c, 0) / 1e3:.1f}" for p in shown) + " |")
        lines.append("| **total** | " + " | ".join(f"{sum(kb['kernel_us'][p].values()) / 1e3:.1f}" for p in shown) + " |")
        if kb["busy_us"]:
            lines.append("| GPU busy (union) | " + " | ".join(f"{kb['busy_us'].get(p, 0) / 1e3:.1f}" for p in shown) + " |")
            loop = kb["region_us"]["denoising loop"]
            busy = kb["busy_us"].get("denoising loop", 0.0)
            lines.append(f"\nDenoising loop under the profiler: {loop / 1e3:.1f} ms wall, GPU busy {busy / 1e3:.1f} ms "
                         f"({busy / loop:.1%}); idle {100 - 100 * busy / loop:.1f} % (launch gaps, Python, scheduler).")
        if kb["top_loop_kernels"]:
            loop_ms = sum(kb["kernel_us"].get("denoising loop", {}).values()) / 1e3
            lines += [f"\n## {label}: the denoising loop's longest {'GPU kernels' if ctx.cuda else 'CPU ops'} "
                      "(one profiled call, all steps)\n",
                      f"| {unit} | category | calls | ms | share of the loop's kernel time |", "|---|---|---:|---:|---:|"]
            for k in kb["top_loop_kernels"]:
                lines.append(f"| `{k['name'][:90]}` | {k['category']} | {k['calls']} | {k['us'] / 1e3:.1f} | "
                             f"{k['us'] / 1e3 / max(loop_ms, 1e-9):.1%} |")
    text = "\n".join(lines)
    print("\n".join(lines[n_wall:]))
    if args.out_json:
        args.out_json.write_text(json.dumps({
            "info": info, "label": label, "steps": args.steps, "size": args.size, "load_s": load_s,
            "first_call_s": first, "compile_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR") if args.fast else None,
            **settings,
            "wall_s": wall, "runs": runs, **kb, "table": text}, indent=2))
        print(f"\nSaved {args.out_json}")


if __name__ == "__main__":
    main()

"""torch's SDPA backends at SDXL's attention shapes: which is fastest for head dim 64 on this GPU.

SDXL at 1024² with classifier-free guidance runs its UNet at batch 2 on 128×128 latents; its
transformer blocks sit at the 64×64 and 32×32 levels:

  self-attention  64×64: 4096 tokens, 10 heads of 64   (10 transformer layers per UNet forward)
  self-attention  32×32: 1024 tokens, 20 heads of 64   (60 layers)
  cross-attention 64×64: 4096 queries, 77 keys (the prompt's 2048-wide embeddings projected to 10 × 64)
  cross-attention 32×32: 1024 queries, 77 keys (projected to 20 × 64)

(the layer counts come from benchmarks/sdxl/unet_config.json). For each shape and each SDPA backend
this torch has (CUDNN_ATTENTION, FLASH_ATTENTION, EFFICIENT_ATTENTION, MATH, and torch's own choice
with all enabled; also FlashAttention 3 / 4 when torch.nn.attention can activate them, which needs
their packages), forward only, in --dtype: --iters calls between two CUDA events, --repeat times,
the median in ms; TFLOP/s (4·B·H·Sq·Skv·D per call); max |Δ| of the output against MATH's on the same
inputs. The last table adds the shapes up per UNet step (× layer counts): against the profiler's
attention time per step (benchmarks/README.md) it says what a backend could save.

    python benchmarks/bench_attention.py [--dtype float16] [--iters 50] [--repeat 5] [--out-json F]
    python benchmarks/bench_attention.py --toy     # the CPU, small shapes, float32: the same code path
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, batch, heads, query tokens, key tokens, head dim, layers per UNet forward)
SHAPES = [
    ("self-attention 64×64", 2, 10, 4096, 4096, 64, 10),
    ("self-attention 32×32", 2, 20, 1024, 1024, 64, 60),
    ("cross-attention 64×64", 2, 10, 4096, 77, 64, 10),
    ("cross-attention 32×32", 2, 20, 1024, 77, 64, 60),
]
TOY_SHAPES = [
    ("self-attention (toy)", 2, 2, 256, 256, 32, 2),
    ("cross-attention (toy)", 2, 2, 256, 77, 32, 2),
]
BACKENDS = ["CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"]
DEFAULT = "default (torch's choice)"


def attention_flops(b: int, h: int, sq: int, skv: int, d: int) -> int:
    """Q·Kᵀ and P·V, two FLOPs per multiply-add each (what FlopCounterMode counts for SDPA)."""
    return 4 * b * h * sq * skv * d


def layer_counts(unet_config: dict) -> dict[int, int]:
    """Transformer layers per UNet forward at each downsampling level (0: the latent's size)."""
    per_block = unet_config["transformer_layers_per_block"]
    per_block = per_block if isinstance(per_block, list) else [per_block] * len(unet_config["down_block_types"])
    counts: dict[int, int] = {}
    for level, kind in enumerate(unet_config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            counts[level] = counts.get(level, 0) + unet_config["layers_per_block"] * per_block[level]
    counts[len(per_block) - 1] = counts.get(len(per_block) - 1, 0) + per_block[-1]  # the mid block
    for i, kind in enumerate(unet_config["up_block_types"]):
        level = len(per_block) - 1 - i
        if kind.startswith("CrossAttn"):
            counts[level] = counts.get(level, 0) + (unet_config["layers_per_block"] + 1) * per_block[level]
    return counts


def time_call(fn, device: str, iters: int, repeat: int) -> list[float]:
    """ms per call: `iters` calls between two events (CUDA) or perf_counter reads (CPU), `repeat` times."""
    import torch

    out = []
    for _ in range(repeat):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(iters):
                fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            out.append((time.perf_counter() - t0) * 1000 / iters)
    return out


def flash_impls() -> list[str]:
    """FlashAttention implementations torch can swap in for FLASH_ATTENTION (FA3, FA4: torch 2.13's registry)."""
    try:
        from torch.nn.attention import list_flash_attention_impls
    except ImportError:
        return []
    return list_flash_attention_impls()


def measure(shapes, device: str, dtype_name: str, iters: int, repeat: int, log=print) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator(device).manual_seed(0)
    results = []
    for name, b, h, sq, skv, d, layers in shapes:
        q = torch.randn(b, h, sq, d, device=device, dtype=dtype, generator=gen)
        k = torch.randn(b, h, skv, d, device=device, dtype=dtype, generator=gen)
        v = torch.randn(b, h, skv, d, device=device, dtype=dtype, generator=gen)
        flops = attention_flops(b, h, sq, skv, d)
        with torch.inference_mode():
            with sdpa_kernel(SDPBackend.MATH):
                ref = F.scaled_dot_product_attention(q, k, v)
            variants: list[tuple[str, object]] = [(DEFAULT, None)]
            variants += [(n, getattr(SDPBackend, n)) for n in BACKENDS if hasattr(SDPBackend, n)]
            if device == "cuda":
                variants += [(f"FLASH_ATTENTION via {impl}", impl) for impl in flash_impls()]
            for label, backend in variants:
                entry = {"shape": name, "batch": b, "heads": h, "q_tokens": sq, "kv_tokens": skv, "head_dim": d,
                         "layers_per_step": layers, "backend": label, "flops": flops}
                try:
                    if isinstance(backend, str):  # an alternative FlashAttention implementation
                        from torch.nn.attention import activate_flash_attention_impl, restore_flash_attention_impl

                        activate_flash_attention_impl(backend)
                        ctx = sdpa_kernel(SDPBackend.FLASH_ATTENTION)
                    else:
                        ctx = sdpa_kernel(backend) if backend is not None else None
                    try:
                        if ctx is not None:
                            ctx.__enter__()
                        call = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
                        out = call()  # also refuses here when the backend cannot take these inputs
                        for _ in range(3):
                            call()
                        ms = time_call(call, device, iters, repeat)
                    finally:
                        if ctx is not None:
                            ctx.__exit__(None, None, None)
                        if isinstance(backend, str):
                            restore_flash_attention_impl(_raise_warn=False)
                    entry["ms_runs"] = ms
                    entry["ms"] = statistics.median(ms)
                    entry["tflops"] = flops / (entry["ms"] / 1000) / 1e12
                    entry["max_abs_diff_vs_math"] = float((out.float() - ref.float()).abs().max())
                except Exception as e:  # not available for these inputs / on this GPU / without its package
                    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                    entry["error"] = f"{type(e).__name__}: {first}"[:300]
                results.append(entry)
                if "ms" in entry:
                    log(f"  {name:<22} {label:<34} {entry['ms']:8.4f} ms  {entry['tflops']:8.3g} TFLOP/s  "
                        f"max |Δ| vs MATH {entry['max_abs_diff_vs_math']:.2e}")
                else:
                    log(f"  {name:<22} {label:<34} unavailable: {entry['error']}")
    return results


def per_step(results: list[dict]) -> dict[str, float | None]:
    """Attention ms per UNet step for each backend: Σ over shapes of ms × layers (None if a shape is missing)."""
    shapes = {r["shape"] for r in results}
    totals: dict[str, float | None] = {}
    for backend in dict.fromkeys(r["backend"] for r in results):
        rows = [r for r in results if r["backend"] == backend and "ms" in r]
        totals[backend] = (sum(r["ms"] * r["layers_per_step"] for r in rows)
                           if {r["shape"] for r in rows} == shapes else None)
    return totals


def render(results: list[dict], totals: dict) -> str:
    out = ["| shape | backend | ms | TFLOP/s | max abs diff vs MATH |", "|---|---|---:|---:|---:|"]
    for r in results:
        if "ms" in r:
            out.append(f"| {r['shape']} (B {r['batch']}, H {r['heads']}, {r['q_tokens']}×{r['kv_tokens']}, "
                       f"d {r['head_dim']}) | {r['backend']} | {r['ms']:.4f} | {r['tflops']:.3g} | "
                       f"{r['max_abs_diff_vs_math']:.2e} |")
        else:
            out.append(f"| {r['shape']} | {r['backend']} | unavailable: {r['error'].split('. ')[0][:100]} | | |")
    out += ["", "| backend | attention ms per UNet step (Σ ms × layers) |", "|---|---:|"]
    for backend, ms in totals.items():
        out.append(f"| {backend} | {'n/a (a shape unavailable)' if ms is None else f'{ms:.3f}'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", action="store_true", help="the CPU, small shapes, float32")
    ap.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default=None,
                    help="default float16 (--toy: float32)")
    ap.add_argument("--iters", type=int, default=None, help="calls per timed loop (default 50; --toy: 5)")
    ap.add_argument("--repeat", type=int, default=5, help="timed loops per backend and shape; the median is shown")
    ap.add_argument("--out-json", type=Path, default=None)
    args = ap.parse_args()
    if args.repeat < 1 or (args.iters is not None and args.iters < 1):
        print("bench_attention.py: --iters and --repeat must be at least 1.", file=sys.stderr)
        sys.exit(2)
    dtype = args.dtype or ("float32" if args.toy else "float16")
    iters = args.iters or (5 if args.toy else 50)

    import torch

    device = "cpu" if args.toy else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(f"bench_attention.py: no CUDA GPU visible to torch {torch.__version__}; --toy runs on the CPU.",
              file=sys.stderr)
        sys.exit(2)
    shapes = TOY_SHAPES if args.toy else SHAPES
    if not args.toy:  # the layer counts from SDXL's own config, not from memory
        counts = layer_counts(json.loads((HERE / "sdxl" / "unet_config.json").read_text()))
        shapes = [(n, b, h, sq, skv, d, counts[1 if sq == 4096 else 2]) for n, b, h, sq, skv, d, _ in shapes]
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or platform.machine()})"
    info = {"device": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if device == "cuda" else None, "dtype": dtype,
            "iters": iters, "repeat": args.repeat, "flash_impls": flash_impls(), "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"), "toy": args.toy}
    print(f"# SDPA backends at SDXL's attention shapes{' — CPU TOY RUN, not GPU numbers' if args.toy else ''}\n")
    print(f"{gpu}; torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}; {dtype}; forward only; "
          f"median of {args.repeat} loops of {iters} calls; {info['date']}\n", flush=True)
    results = measure(shapes, device, dtype, iters, args.repeat)
    totals = per_step(results)
    print("\n" + render(results, totals))
    if args.out_json:
        args.out_json.write_text(json.dumps({"info": info, "results": results, "per_step_ms": totals}, indent=2))
        print(f"\nSaved {args.out_json}")


if __name__ == "__main__":
    main()

"""Shared set-up for the benchmarks: the tiny SDXL repos in a private offline HF cache, bench_gpu.py's model."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def offline_cache() -> tuple[Path, dict[str, str]]:
    """Build the tiny repos into a fresh HF cache; return (workdir, environment for subprocesses)."""
    from spo_cli import tiny

    work = Path(tempfile.mkdtemp(prefix="spo-bench-"))
    repos = tiny.save_repos(work / "repos")
    for repo, src in repos.items():
        tiny.add_to_cache(work / "hub", repo, src)
    env = {**os.environ, "HF_HOME": str(work / "hf-home"), "HF_HUB_CACHE": str(work / "hub"),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    return work, env


def ensure_model(workdir: Path, toy: bool) -> tuple[Path, Path]:
    """bench_gpu.py's model/ and vae/ in `workdir`, built as bench_gpu.py builds them when missing
    (the tiny one on the CPU in seconds, the full-size one on the GPU: a bare node's second call), with
    its marker, so that bench_gpu.py reuses them."""
    import json

    model, vae = workdir / "model", workdir / "vae"
    if (model / "model_index.json").exists() and (vae / "config.json").exists():
        return model, vae
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_gpu

    device, dtype = ("cpu", "float32") if toy else ("cuda", "float16")
    print(f"Model: building {'the tiny' if toy else 'full-size'} random SDXL into {workdir} (bench_gpu.py's "
          "build_and_save) ...", flush=True)
    t0 = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    bench_gpu.build_and_save(model, vae, toy, device, dtype)
    (model / ".spo-bench.json").write_text(json.dumps({"hash": bench_gpu.config_hash(toy, dtype)}))
    print(f"  built in {time.perf_counter() - t0:.1f} s", flush=True)
    return model, vae


def timed(cmd: list[str], env: dict, **kw) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return elapsed


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
            f" ({torch.get_num_threads()} threads)")


def gpu_name() -> str | None:
    """The GPU's name and driver, as nvidia-smi says them (None where there is none)."""
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None

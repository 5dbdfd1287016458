"""Shared set-up for the CPU benchmarks: the tiny SDXL repos in a private offline HF cache."""

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

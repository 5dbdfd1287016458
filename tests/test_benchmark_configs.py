"""The GPU benchmark's SDXL component configs build exactly SDXL-base-1.0's published sizes."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_sdxl_configs_match_the_published_parameter_counts():
    import bench_gpu

    ok, lines = bench_gpu.check_configs()
    assert ok, "\n".join(lines)
    assert len(lines) == 4

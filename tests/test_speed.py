"""Speed and memory options: each works end to end and keeps the images (no timings here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier

TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def images(out: Path, *args: str) -> list[np.ndarray]:
    r = invoke("generate", "a red fox in fresh snow", *args, "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    written = json.loads(r.stdout)
    return [np.asarray(Image.open(w["image"]).convert("RGB")).astype(int) for w in written], written


@pytest.mark.early
def test_fast_compiles_caches_and_keeps_the_images(hub_cache, tmp_path, monkeypatch):
    """--fast on the CPU: torch.compile for real (inductor), the SPO LoRA folded into the weights,
    padded fixed-shape batches, and a second compile that is served from the on-disk cache. One
    test: the cold compile is paid once."""
    import os

    import torch
    import torch._inductor.config as inductor
    from torch._dynamo.utils import counters

    # Compile-time knobs of inductor's CPU backend, none of which changes what is tested (compiled,
    # cached, the same images; on GPUs inductor emits Triton): scalar C++ kernels (a third less compile
    # time: 182 s → 122 s); the graph's kernels and its wrapper in one C++ file per graph (cpp_wrapper:
    # three g++ runs, not fifty); g++ at -O0 (TORCHINDUCTOR_DEBUG_COMPILE, read at each build and part
    # of the cache key); no pool of compile workers to start for those three. With them the cold
    # compile takes 20 s of CPU here, not 42.
    monkeypatch.setattr(inductor.cpp, "vec_isa_ok", False)
    monkeypatch.setattr(inductor, "cpp_wrapper", True)
    monkeypatch.setattr(inductor, "compile_threads", 1)
    monkeypatch.setenv("TORCHINDUCTOR_DEBUG_COMPILE", "1")

    from spo_cli import tiny

    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    # The smallest SDXL that still has every kind of block: compile time is the graph's size.
    model, lora = tiny.save_smaller(tmp_path / "smaller")
    args = [*TINY, "--model", str(model), "--lora", str(lora), "--lora-scale", "0.7", "--seed", "5", "-n", "3",
            "--batch-size", "2"]
    first, written = images(tmp_path / "fast1", *args, "--fast")
    assert cache.is_dir() and any(cache.rglob("*")), "torch.compile left nothing in its cache"
    # What a second process has: no compiled code in memory, only the cache on disk.
    torch._dynamo.reset()
    counters.clear()
    second, _ = images(tmp_path / "fast2", *args, "--fast")
    assert counters["inductor"]["fxgraph_cache_hit"] >= 2 and not counters["inductor"]["fxgraph_cache_miss"]
    torch._dynamo.reset()
    plain, _ = images(tmp_path / "plain", *args)  # the LoRA as PEFT layers, eager
    assert len(first) == 3  # the short last batch was padded, and the padding dropped
    for a, b, c in zip(first, second, plain):
        assert np.array_equal(a, b)  # compiled code from the cache computes the same thing
        assert np.abs(a - c).max() <= 1  # the same images up to float rounding, LoRA folded in or not
    meta = json.loads(Path(written[0]["sidecar"]).read_text())
    assert meta["run_options"]["fast"] is True and meta["lora"]["scale"] == 0.7


def test_vae_tiling_stays_close_to_untiled(hub_cache, tmp_path):
    # 128 px is twice the tiny VAE's tile size (64 px), so tiling really happens: overlapping tiles, blended.
    size = ["--width", "128", "--height", "128", "--steps", "2", "--device", "cpu", "--seed", "1"]
    plain, _ = images(tmp_path / "a", *size)
    tiled, written = images(tmp_path / "b", *size, "--vae-tiling")
    diff = np.abs(plain[0] - tiled[0])
    assert diff.max() > 0  # the option took effect
    assert diff.mean() < 4  # blended tile seams only
    meta = json.loads(Path(written[0]["sidecar"]).read_text())
    assert meta["run_options"]["vae_tiling"] is True


def test_vae_slicing_keeps_the_images(hub_cache, tmp_path):
    plain, _ = images(tmp_path / "a", *TINY, "--seed", "1", "-n", "2", "--batch-size", "2")
    sliced, _ = images(tmp_path / "b", *TINY, "--seed", "1", "-n", "2", "--batch-size", "2", "--vae-slicing")
    assert all(np.abs(a - b).max() <= 1 for a, b in zip(plain, sliced))


@pytest.mark.parametrize("command", ["generate", "batch"])
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_without_a_gpu_says_so(hub_cache, tmp_path, command, mode):
    target = "a cat" if command == "generate" else str(Path(__file__).parents[1] / "examples" / "prompts.txt")
    r = invoke(command, target, *TINY, "--offload", mode, "--out", str(tmp_path))
    assert r.exit_code == 2, r.output
    msg = " ".join(r.stderr.split())
    assert f"--offload {mode} moves weights between host memory and a GPU" in msg and "Traceback" not in r.output
    # No image; a batch that got as far as its output folder still leaves its manifest (all pending).
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".png"] == []


def test_unknown_offload_mode(hub_cache, tmp_path):
    r = invoke("generate", "a cat", *TINY, "--offload", "disk", "--out", str(tmp_path))
    assert r.exit_code == 2 and "--offload cannot be 'disk'. Choose one of: model, sequential." in r.stderr


def test_compile_cache_defaults_to_a_persistent_folder(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)
    # `import diffusers` is what sets inductor's own default (/tmp/torchinductor_$USER) when nothing has.
    code = "from spo_cli import engine; import diffusers; print(engine.configure_compile_cache())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "spo-cli" / "torch-compile")

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


@pytest.fixture
def quick_compile(monkeypatch):
    """Compile-time knobs of inductor's CPU backend, none of which changes what is tested (compiled,
    cached, the same images; on GPUs inductor emits Triton): scalar C++ kernels (a third less compile
    time: 182 s → 122 s); the graph's kernels and its wrapper in one C++ file per graph (cpp_wrapper:
    three g++ runs, not fifty); g++ at -O0 (TORCHINDUCTOR_DEBUG_COMPILE, read at each build and part of
    the cache key); no pool of compile workers to start for those three. With them the cold compile of
    the SDXL below takes 20 s of CPU here, not 42. Through inductor's own patch, which puts each value
    back (pytest's monkeypatch deletes cpp.vec_isa_ok on the way out, and a later compile in the same
    worker would then fail)."""
    import torch._inductor.config as inductor

    monkeypatch.setenv("TORCHINDUCTOR_DEBUG_COMPILE", "1")
    with inductor.patch({"cpp.vec_isa_ok": False, "cpp_wrapper": True, "compile_threads": 1}):
        yield


@pytest.mark.early
def test_fast_compiles_caches_and_keeps_the_images(hub_cache, tmp_path, quick_compile):
    """--fast on the CPU: torch.compile for real (inductor) of the UNet, the VAE decode and both text
    encoders, the SPO LoRA folded into the weights, padded fixed-shape batches, a second compile that
    is served from the on-disk cache, and the VAE decode's warm-up. One test: the cold compile is
    paid once."""
    import os

    import torch
    from torch._dynamo.utils import counters

    from spo_cli import tiny
    from spo_cli.engine import Engine
    from spo_cli.request import ImageRequest, ModelRequest, RunOptions
    from spo_cli.resolve import resolve_model

    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    # The smallest SDXL that still has every kind of block: compile time is the graph's size.
    model, lora = tiny.save_smaller(tmp_path / "smaller")
    prompt = "a red fox in fresh snow"
    args = [*TINY, "--model", str(model), "--lora", str(lora), "--lora-scale", "0.7", "--seed", "5", "-n", "3",
            "--batch-size", "2"]
    first, written = images(tmp_path / "fast1", *args, "--fast")
    assert cache.is_dir() and any(cache.rglob("*")), "torch.compile left nothing in its cache"

    # What a second process has: no compiled code in memory, only the cache on disk; in this process,
    # so that the engine can be looked at.
    torch._dynamo.reset()
    counters.clear()
    request = ModelRequest(model=str(model), lora=str(lora), lora_scale=0.7, dtype="float32", device="cpu")
    engine = Engine.load(resolve_model(request, "float32", local_only=True), "cpu", RunOptions(fast=True, batch_size=2))
    # On CUDA two decodes of zeros record the decode's CUDA graph before a size's first image; the CPU has
    # none to record and skips them. One here: it must be the very call the pipeline makes (one compiled
    # decode graph for both, below), or on CUDA the recording would be of a graph the image never uses.
    assert engine.decode_warmup.calls == 0
    engine.decode_warmup.calls = 1
    decoded, decode = [], engine.pipe.vae.decode  # the compiled decode, counted on its way
    engine.pipe.vae.decode = lambda latents, **kw: decoded.append(latents.shape) or decode(latents, **kw)
    seeds = [ImageRequest(prompt, seed, steps=2, width=64, height=64) for seed in (5, 6, 7)]
    made = engine.run(seeds[:2]) + engine.run(seeds[2:])
    second = [np.asarray(g.image.convert("RGB")).astype(int) for g in made]
    # Four graphs, each from the cache: the UNet, the VAE decode, the two text encoders; the warm-up's
    # decode (once for the shape, before the first call's) made no graph of its own.
    assert counters["inductor"]["fxgraph_cache_hit"] == 4 and not counters["inductor"]["fxgraph_cache_miss"]
    assert counters["stats"]["unique_graphs"] == 4
    side = 64 // engine.pipe.vae_scale_factor  # of the latents
    assert decoded == [(2, 4, side, side)] * 3
    assert engine.decode_warmup.done == {(2, side, side, "torch.float32", False, False): 1}
    # A prompt's length is no shape: the encoders take 77 tokens, padded (spo's A1111 path takes one
    # 77-token window at a time, (1, 77), never compiled here: a second pair of encoder graphs would cost
    # the suite seconds to show what its fixed shape already says).
    engine.run([ImageRequest(prompt + " at dawn, beside a frozen river", 8, steps=2, width=64, height=64)])
    assert counters["stats"]["unique_graphs"] == 4
    del engine
    torch._dynamo.reset()
    plain, _ = images(tmp_path / "plain", *args)  # the LoRA as PEFT layers, eager
    assert len(first) == 3  # the short last batch was padded, and the padding dropped
    for a, b, c in zip(first, second, plain):
        assert np.array_equal(a, b)  # compiled code from the cache computes the same thing
        assert np.abs(a - c).max() <= 1  # the same images up to float rounding, LoRA folded in or not
    meta = json.loads(Path(written[0]["sidecar"]).read_text())
    assert meta["run_options"]["fast"] is True and meta["lora"]["scale"] == 0.7


def test_fast_compile_options_are_inductor_options():
    """What --fast tells torch.compile on CUDA is checked here by torch itself, which refuses an option
    name it does not have or a value of the wrong type when the compiled module is made."""
    import torch

    from spo_cli import speed

    for part in ("unet", "vae", "text_encoder"):
        torch.compile(torch.nn.Linear(2, 2), options=speed.compile_options(part, cuda=True))
    unet = speed.compile_options("unet", cuda=True)
    # Only the GEMMs are tuned, under CUDA graphs; the encoders have no graphs their outputs could be
    # overwritten in; the CPU gets inductor's defaults.
    assert unet["max_autotune_gemm"] and unet["triton.cudagraphs"] and unet["max_autotune_conv_backends"] == "ATEN"
    assert not (unet["max_autotune"] or unet["max_autotune_pointwise"] or unet["coordinate_descent_tuning"])
    assert "max_autotune_gemm" not in speed.compile_options("vae", cuda=True)
    assert speed.compile_options("text_encoder", cuda=True) == {} == speed.compile_options("unet", cuda=False)
    with pytest.raises(RuntimeError, match="Unexpected optimization option"):
        torch.compile(torch.nn.Linear(2, 2), options={**unet, "max_autotune_conv": True})


def test_sdpa_backends_variable_is_read_in_order_and_refused_clearly():
    from spo_cli import speed
    from spo_cli.errors import UsageError

    assert speed.sdpa_order("") is None and speed.sdpa_order(" ") is None
    assert speed.sdpa_order("cudnn, Flash,efficient,math") == ("CUDNN_ATTENTION", "FLASH_ATTENTION",
                                                               "EFFICIENT_ATTENTION", "MATH")
    assert speed.sdpa_order("math") == ("MATH",)
    for value, words in [("flash,cuda", "'cuda' is not an attention backend"),
                         ("flash,,math", "an empty name is not an attention backend"),
                         ("x" * 100_000, "(100,000 characters) is not an attention backend"),
                         (",".join(f"n{i}" for i in range(10_000)), "'n0', 'n1', 'n2' and 9,997 more are not"),
                         ("flash,flash2,fa3", "'flash2', 'fa3' are not attention backends"),
                         ("flash,math,flash", "flash is named twice")]:
        with pytest.raises(UsageError) as e:
            speed.sdpa_order(value)
        assert words in e.value.message and "cudnn, flash, efficient, math" in e.value.hint
        assert len(e.value.message) < 300  # one paragraph, whatever the variable holds


def test_sdpa_backends_variable_refused_before_torch_and_only_where_a_model_loads(monkeypatch, tmp_path):
    from conftest import probe_cli

    # Checked after torch had started before (and by spo serve after it had bound its port).
    monkeypatch.setenv("SPO_SDPA_BACKENDS", "flash,cuda")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    got = probe_cli({"generate": ["generate", "a cat", *TINY, "--out", str(tmp_path)],
                     "batch": ["batch", str(prompts), *TINY, "--out", str(tmp_path)],
                     "models": ["models"]})
    for case in ("generate", "batch"):
        msg = " ".join(got[case].split())
        assert msg.endswith("EXIT:2:HEAVY:"), (case, msg)
        assert "SPO_SDPA_BACKENDS='flash,cuda': 'cuda' is not an attention backend." in msg and "Traceback" not in msg
    assert got["models"].rstrip().endswith("EXIT:0:HEAVY:")  # a command that loads no model does not care
    assert not list(tmp_path.glob("*.png"))


def sdpa_ops(fn) -> set[str]:
    """The attention kernels (aten ops) one call of `fn` ran, as the profiler sees them."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")}


def test_sdpa_backends_variable_picks_the_unets_attention(hub_cache, repos, monkeypatch):
    """SPO_SDPA_BACKENDS=math on the CPU: the UNet's attention runs PyTorch's math kernel in spo's calls,
    and the text encoders' and the VAE's keep the flash kernel, as the UNet does when called otherwise
    (the CPU has those two)."""
    from spo_cli import presets
    from spo_cli.engine import Engine
    from spo_cli.request import ImageRequest, ModelRequest
    from spo_cli.resolve import resolve_model

    resolved = resolve_model(ModelRequest(model=str(repos[presets.SDXL_BASE])), "float32", local_only=True)
    request = ImageRequest("a cat", 1, steps=1, width=64, height=64)
    flash, math = "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"
    monkeypatch.setenv("SPO_SDPA_BACKENDS", "math")
    engine = Engine.load(resolved, "cpu")
    assert sdpa_ops(lambda: engine.run([request])) == {flash, math}
    # Outside spo's calls the UNet is left alone, and the process's own settings are as they were.
    assert sdpa_ops(lambda: unet_call(engine.pipe)) == {flash}
    import torch

    assert torch._C._get_flash_sdp_enabled() and torch._C._get_math_sdp_enabled()


def unet_call(pipe):
    import torch

    unet = pipe.unet
    with torch.inference_mode():
        unet(torch.zeros(1, unet.config.in_channels, 8, 8), 1, torch.zeros(1, 77, unet.config.cross_attention_dim),
             added_cond_kwargs={"text_embeds": torch.zeros(1, pipe.text_encoder_2.config.projection_dim),
                                "time_ids": torch.zeros(1, 6)})


def test_sdpa_backends_under_torch_compile(monkeypatch, quick_compile):
    """Under torch.compile the attention kernel is chosen when the graph is traced and stays in it: the
    order must be in force then (spo enters it around the compiled module's call), and a compiled graph
    cached by a process with another order must not be reused (AOTAutograd's cache, keyed by the traced
    Python, cannot tell them apart)."""
    import torch
    import torch._functorch.config as functorch_config
    from diffusers.models.attention_processor import Attention
    from torch._inductor.utils import run_and_get_code

    from spo_cli import speed

    monkeypatch.setattr(functorch_config, "enable_autograd_cache", True)  # restored after the test
    torch.manual_seed(0)
    attention = Attention(32, heads=2, dim_head=16).eval()
    x = torch.randn(1, 16, 32)

    def compiled_code(order):
        torch._dynamo.reset()  # a new process: only the caches on disk
        compiled = torch.compile(attention, fullgraph=True, dynamic=False)
        if order is not None:
            speed.keep_attention_out_of_the_cache()
        with torch.inference_mode(), speed.attention(compiled, order):
            return "\n".join(run_and_get_code(compiled, x)[1])

    assert "flash_attention" in compiled_code(None)
    math = compiled_code(("MATH",))
    assert "flash_attention" not in math and "bmm" in math


def test_profile_tells_the_kernels_of_fast_apart():
    """profile_step.py's kernel categories for what --fast runs on CUDA: inductor's Triton GEMM templates
    (GEMM autotuning), cuDNN's attention (SPO_SDPA_BACKENDS), inductor's fused kernels named after an
    addmm whose bias add they took (not GEMMs)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from profile_step import category

    assert [category(name) for name in [
        "triton_tem_fused_mm_12", "triton_tem_fused_addmm_0", "sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize",
        "nvjet_hsh_128x256_64x4_1x2_h_bz_coopA_NNT", "triton_tem_fused_convolution_3",
        "cudnn_generated_fort_native_sdpa_sm90_knob_7_64x128x64_4x1x1_kernel0_0", "flash_fwd_kernel",
        "triton_red_fused_native_group_norm_silu_3", "triton_poi_fused_addmm_gelu_1"]
    ] == ["GEMM (linear)"] * 4 + ["convolution", "attention", "attention", "normalisation", "fused by inductor"]


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


def test_decode_warmup_skips_a_vae_that_diffusers_upcasts_for_each_decode():
    """A float16 VAE with force_upcast is moved to float32 for every decode and back (diffusers), so no CUDA
    graph outlives a call: nothing to warm, and two decodes would be wasted. The fp16-fix VAE is warmed."""
    import torch
    from diffusers import AutoencoderKL

    from spo_cli import speed, tiny

    for upcast, warmed in ((True, {}), (False, {(1, 4, 4, "torch.float16", False, False): 2})):
        vae = AutoencoderKL(**tiny.vae_config(force_upcast=upcast)).to(torch.float16).eval()
        warm = speed.DecodeWarmup(calls=2)
        with torch.inference_mode():
            warm(vae, 1, 32, 32, 8)
        assert warm.done == warmed, upcast


def test_sdpa_backends_none_of_which_runs_here_is_said_not_unexpected(monkeypatch):
    # cudnn alone on the CPU: torch's "No viable backend" RuntimeError reached the user as "Unexpected".
    import torch

    from spo_cli import speed
    from spo_cli.errors import UsageError

    class Attn(torch.nn.Linear):
        def forward(self, x):
            q = super().forward(x)
            return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    module, x = Attn(8, 8), torch.randn(1, 2, 4, 8)
    monkeypatch.setenv("SPO_SDPA_BACKENDS", "cudnn")
    with pytest.raises(UsageError) as e, speed.attention(module, speed.sdpa_order()):
        module(x)
    assert e.value.message == ("SPO_SDPA_BACKENDS='cudnn': none of these attention backends can run the UNet's "
                               "attention on cpu in float32.") and "math" in e.value.hint
    with speed.attention(module, ("MATH",)):
        module(x)  # and one that runs, runs

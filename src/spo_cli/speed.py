"""What `--fast` tells torch.compile for each part of SDXL, which attention kernels the UNet may use,
and which VAE decode shapes have had their CUDA graph recorded.

Nothing heavy is imported at module level: `sdpa_order` checks SPO_SDPA_BACKENDS where only the
engine's option checks have run, and `compile_options` is plain data (a CPU test hands it to
torch.compile, which refuses any option name torch does not have).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from spo_cli.errors import UsageError

SDPA_ENV = "SPO_SDPA_BACKENDS"
# Names a user writes → torch.nn.attention.SDPBackend members.
SDPA_NAMES = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
              "math": "MATH"}

# SDXL's GEMMs, and only they, autotuned (inductor's Triton templates against cuBLAS). The H200 profile
# (benchmarks/README.md) has the UNet's GEMMs at 14.4 of 30.6 ms of kernels per step, at 61 % of the
# fp16 peak, and Triton beating cuBLAS 1.38× on the fused QKV GEMM; but the first lease's full
# `max-autotune` tuned every GEMM shape for 4 to 22 s each on 16 cores (Triton's compile of each
# candidate dominates; the benchmark of one is capped at 25 ms) and was still tuning after 280 s, as it
# also tuned the convolutions (Triton conv templates) and every fused kernel (coordinate descent). So:
# - GEMMs only: no pointwise or coordinate-descent tuning (inductor's heuristics pick those blocks),
#   and convolutions stay cuDNN's (ATEN alone: one candidate, nothing to time). 1×1 convolutions are
#   GEMMs (conv_1x1_as_mm) and are tuned as such. That leaves 24 GEMM shapes in SDXL's UNet at one
#   image size (counted on the meta device, 1024², batch 2: 9 of attention and feed-forward, 9 of 1×1
#   convolutions, 6 tiny time-embedding ones), each timed once and remembered.
# - candidates: ATen (cuBLAS, cuBLASLt) and inductor's Triton templates in the DEFAULT search space
#   (21 block configurations before de-duplication); no CUTLASS / CK / NVGEMM backends, whose
#   candidates compile for minutes (CUTLASS) or are not built for SDXL's GPUs.
# - precompilation of one shape's candidates is given 60 s (inductor's default is 300 s): a candidate
#   still compiling then is dropped, not waited for, so one slow shape cannot stall the first image.
#   Candidates compile in parallel on every core (inductor's compile_threads default).
# - no epilogue benchmarking: epilogue fusion is off (diffusers' SDXL guide), so there is nothing to
#   time a template's fused epilogue against.
# - benchmarks run in this process (autotune_in_subproc off, inductor's default): a benchmark subprocess
#   per GPU would add its start-up to the first image, for protection against a candidate that crashes,
#   which inductor's own templates are not known to do. (autotune_num_choices_displayed only trims the log.)
# Every choice lands in TORCHINDUCTOR_CACHE_DIR twice: in the FX graph cache (the compiled graph,
# kernels chosen) and in the autotune cache (each shape's timings), both on at inductor's defaults
# (fx_graph_cache, autotune_local_cache), left so that TORCHINDUCTOR_FX_GRAPH_CACHE=0 still works.
# A later process reads them and tunes nothing (the ≤ 30 s to its first image that the cache gave
# before); a new image size is new GEMM shapes, tuned once.
GEMM_AUTOTUNE = {
    "max_autotune": False,  # its conv, pointwise and flex tuning too: not even from TORCHINDUCTOR_MAX_AUTOTUNE
    "max_autotune_gemm": True,
    "max_autotune_pointwise": False,
    "coordinate_descent_tuning": False,
    "max_autotune_gemm_backends": "ATEN,TRITON",
    "max_autotune_conv_backends": "ATEN",
    "max_autotune_gemm_search_space": "DEFAULT",
    "precompilation_timeout_seconds": 60,
    "benchmark_epilogue_fusion": False,
}

# From diffusers' SDXL speed guide: 1×1 convolutions as matrix multiplies, no epilogue fusion.
GUIDE = {"conv_1x1_as_mm": True, "epilogue_fusion": False}

# Norm fusions: none added. torch 2.13's inductor already fuses each GroupNorm's statistics and its
# normalisation with the neighbouring add and SiLU (the profile's 2.7 ms of norm per step are those
# fused kernels, as in eager). What its config calls fusions beyond that are horizontal: group_fusion
# (deprecated) and pre_grad/post_grad_fusion_options (batch_layernorm, batch_linear, group_linear)
# batch independent, same-shaped layers side by side, which SDXL's sequential norms are not, and
# group_linear needs fbgemm's grouped GEMM. None is known to be safe and useful here.


def compile_options(part: str, cuda: bool) -> dict:
    """Inductor options for torch.compile of `part` ("unet", "vae" or "text_encoder") under --fast."""
    if part not in ("unet", "vae", "text_encoder"):
        raise ValueError(f"no compile options for {part!r}")
    if not cuda:
        return {}  # the CPU: inductor's C++ kernels, no CUDA graphs, nothing to tune
    if part == "text_encoder":
        # Fusion only, no CUDA graphs: a graph's outputs live in memory the next replay of the same graph
        # overwrites, and the encoders' outputs are held across their next call (diffusers keeps the
        # prompt's pooled embedding while it encodes the negative; spo's A1111 windows keep the first
        # window's). Once per prompt, they are about 2 % of an image (21 ms at 1024² on an H200).
        return {}
    # CUDA graphs (reduce-overhead's one option, written out since options and mode exclude each other):
    # they removed the host's launch gaps from the loop (GPU idle 35 % → 5.5 % of it on an H200).
    options = {**GUIDE, "triton.cudagraphs": True}
    if part == "unet":
        options |= GEMM_AUTOTUNE
    return options


def sdpa_order(value: str | None = None) -> tuple[str, ...] | None:
    """SPO_SDPA_BACKENDS (or `value`) as SDPBackend member names, in the order of preference; None when
    unset: PyTorch's own order. For benchmarking attention kernels on the UNet."""
    if value is None:
        value = os.environ.get(SDPA_ENV)
    if value is None or not value.strip():
        return None
    from spo_cli.validate import shown

    names = [name.strip().lower() for name in value.split(",")]
    # Each unknown name once, and at most a few of them: the variable can hold anything, of any length.
    unknown = list(dict.fromkeys(name for name in names if name not in SDPA_NAMES))
    twice = sorted({name for name in names if names.count(name) > 1} - set(unknown))
    if unknown or twice:
        listed = ", ".join("an empty name" if not n else shown(n, 30) for n in unknown[:3])
        listed += f" and {len(unknown) - 3:,} more" if len(unknown) > 3 else ""
        what = (f"{listed} {'is not an' if len(unknown) == 1 else 'are not'} "
                "attention backend" + ("s" if len(unknown) > 1 else "") if unknown
                else f"{', '.join(twice)} {'is' if len(twice) == 1 else 'are'} named twice")
        raise UsageError(f"{SDPA_ENV}={shown(value)}: {what}.",
                         f"Give some of {', '.join(SDPA_NAMES)}, comma-separated, in the order the UNet's "
                         f"attention should try them (e.g. {','.join(SDPA_NAMES)}), or unset it for "
                         "PyTorch's own order.")
    return tuple(SDPA_NAMES[name] for name in names)


@contextmanager
def attention(module, order: tuple[str, ...] | None):
    """While in this block, each call of `module` (the UNet, compiled or not) may use only the SDPA
    backends of `order`, in that order of preference; nothing changes when `order` is None.

    Entered around the call from outside, by hooks on `module` itself: torch.compile chooses the
    attention kernel when it traces (the choice is then part of the compiled graph), and it honours
    the backends set at that moment. An sdpa_kernel block inside the compiled code is traced into the
    graph but ignored by the kernel choice (checked on torch 2.13). Only the UNet: the VAE's attention
    has head dim 512, which some backends refuse, and the backend list is also a list of those allowed."""
    if order is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, name) for name in order]
    open_blocks = []

    def enter(mod, args):
        block = sdpa_kernel(backends, set_priority=True)
        block.__enter__()
        open_blocks.append(block)

    def leave(mod, args, output):
        if open_blocks:
            open_blocks.pop().__exit__(None, None, None)

    before = module.register_forward_pre_hook(enter)
    after = module.register_forward_hook(leave, always_call=True)
    try:
        yield
    except Exception as e:
        # Valid names, none of which runs here (cudnn or efficient alone on the CPU): torch's own
        # RuntimeError reached the user as "Unexpected", after the model had loaded.
        cause = e
        while cause is not None and "No viable backend for scaled_dot_product_attention" not in str(cause):
            cause = cause.__cause__
        if cause is None:
            raise
        from spo_cli.validate import shown

        weight = next(module.parameters())
        raise UsageError(f"{SDPA_ENV}={shown(os.environ.get(SDPA_ENV, ','.join(order)))}: none of these attention "
                         f"backends can run the UNet's attention on {weight.device.type} in "
                         f"{str(weight.dtype).removeprefix('torch.')}.",
                         "Add math at the end (it runs everywhere), or unset it for PyTorch's own order.") from e
    finally:
        before.remove()
        after.remove()


def keep_attention_out_of_the_cache() -> None:
    """With SPO_SDPA_BACKENDS set, compiled graphs must not come from AOTAutograd's cache: its key is the
    traced Python graph, which is the same whatever backend the kernel choice then made, so a process
    asking for `math` got a cached graph with flash attention (checked on torch 2.13, two processes,
    one cache folder). Inductor's own FX graph cache, keyed by the graph after that choice, still serves."""
    import torch._functorch.config as functorch_config

    functorch_config.enable_autograd_cache = False


class DecodeWarmup:
    """Which VAE decode shapes have been run often enough that the next decode of that shape replays a
    CUDA graph. CUDA graph trees run a compiled function's first call eagerly (warm-up) and record its
    graph on the second; the UNet reaches that within its first image, but the decode runs once per
    image, so the 2nd image of a size paid the recording (the 30-step --fast rows of the H200 runs:
    1.094 to 1.179 s against 1.045 s steady). `calls` decodes of zeros before the first real one of a
    shape; 0 (not CUDA, not --fast) does nothing."""

    def __init__(self, calls: int = 0):
        self.calls = calls
        self.done: dict[tuple, int] = {}  # shape key → decode calls made to warm it

    def __call__(self, vae, images: int, width: int, height: int, scale: int) -> None:
        if not self.calls:
            return
        import torch

        if vae.dtype == torch.float16 and vae.config.force_upcast:
            # diffusers moves such a VAE to float32 for the decode and back after it: new weights every
            # time, so no graph outlives a call (spo's float16 default is the fp16-fix VAE, which does not).
            return
        # What the compiled decode is specialised on: its input's shape and dtype, and the slicing and
        # tiling flags its code reads (the memory plan may turn them on for this call only).
        key = (images, height // scale, width // scale, str(vae.dtype), bool(vae.use_slicing), bool(vae.use_tiling))
        if key in self.done:
            return
        latents = torch.zeros(images, vae.config.latent_channels, height // scale, width // scale,
                              dtype=vae.dtype, device=vae.device)
        for _ in range(self.calls):
            vae.decode(latents, return_dict=False)  # as the pipelines call it: the same compiled graph
        self.done[key] = self.calls

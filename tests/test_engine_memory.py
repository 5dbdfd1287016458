"""The engine's memory policy for the VAE and the out-of-memory advice: pure arithmetic, no pipeline."""

from __future__ import annotations

from spo_cli.engine import vae_bytes, vae_plan
from spo_cli.errors import oom_hint
from spo_cli.request import Hires, RunOptions

GIB = 2**30


def test_the_estimate_scales_with_pixels_images_and_precision():
    one = vae_bytes(1024, 1024, 1, 2)
    assert vae_bytes(2048, 1024, 1, 2) == 2 * one and vae_bytes(1024, 1024, 3, 2) == 3 * one
    assert vae_bytes(1024, 1024, 1, 4) == 2 * one
    # A 1536² float16 decode is estimated at about 5.5 GiB: a 24 GB GPU holding SDXL (≈ 7 GiB) fits one.
    assert 4 * GIB < vae_bytes(1536, 1536, 1, 2) < 7 * GIB


def test_nothing_is_decided_off_a_gpu_or_when_the_pass_fits():
    assert vae_plan(4096, 4096, 8, 4, None, 1024) == {}
    assert vae_plan(1536, 1536, 1, 2, 20 * GIB, 1024) == {}


def test_a_batch_that_does_not_fit_is_sliced_and_an_image_that_does_not_is_tiled():
    one = vae_bytes(1536, 1536, 1, 2)
    sliced = vae_plan(1536, 1536, 4, 2, 2 * one, 1024)
    assert sliced["vae_slicing"] is True and "vae_tiling" not in sliced
    both = vae_plan(1536, 1536, 4, 2, one // 2, 1024)
    assert both["vae_slicing"] is True and both["vae_tiling"] is True
    assert both["estimated_gib"] > both["available_gib"]
    alone = vae_plan(1536, 1536, 1, 2, one // 2, 1024)
    assert alone.get("vae_tiling") is True and "vae_slicing" not in alone


def test_tiling_is_not_turned_on_where_diffusers_would_not_tile():
    # SDXL's VAE tiles only images over 1024 px a side: tiling a 1024² image would change nothing.
    assert vae_plan(1024, 1024, 1, 2, 1, 1024) == {}
    assert vae_plan(1024, 1032, 1, 2, 1, 1024)["vae_tiling"] is True


def test_oom_advice_for_the_hires_fix_and_edits():
    hint = oom_hint(pixels=1536 * 1536, options=RunOptions(), hires=Hires(1.5, "lanczos"))
    assert "a lower --hires (this call upscaled by 1.5)" in hint and "--hires-upscaler latent" in hint
    assert "--vae-tiling" in hint
    assert "--hires-upscaler" not in oom_hint(pixels=1536 * 1536, hires=Hires(1.5))  # already latent
    edit = oom_hint(pixels=2048 * 1536, options=RunOptions(), edit=True)
    assert "encodes the input and decodes the image in tiles" in edit and "--width and --height" in edit
    assert "--hires" not in oom_hint(pixels=1536 * 1536) and "--vae-tiling" not in oom_hint(
        pixels=1536 * 1536, options=RunOptions(vae_tiling=True), edit=True)


def test_noise_asked_of_any_gpu_is_drawn_on_the_engines_gpu():
    # spo serve --devices hands a request recorded on cuda:1 to whichever GPU is free; diffusers refuses a
    # generator on another GPU than the latents. CPU noise stays on the CPU, and a CPU engine keeps what was asked.
    from types import SimpleNamespace

    from spo_cli.engine import Engine

    on = lambda device, asked: Engine._noise_device(SimpleNamespace(device=device), asked)  # noqa: E731
    assert on("cuda:0", "cuda:1") == "cuda:0"
    assert on("cuda:1", "cuda") == "cuda:1"
    assert on("cuda:0", "cpu") == "cpu"
    assert on("cpu", "cuda") == "cuda"  # refused earlier (devices.check), never silently moved


def test_a_cuda_error_is_the_devices_only_when_the_device_then_fails_one_tiny_operation():
    # spo serve --devices retires a device that faulted for good (a lost CUDA context fails every later call
    # at once, so that device would take and fail most of the queue); a request's own error, or running out
    # of memory, retires nothing.
    from types import SimpleNamespace

    import torch

    from spo_cli.engine import Engine

    def fault(device, exc):
        return Engine.device_fault(SimpleNamespace(device=device), exc)

    crash = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    assert fault("cpu", crash) is None  # the device still computes
    assert fault("meta", ValueError("a request's own")) is None  # never probed: not a device's error
    assert fault("meta", torch.OutOfMemoryError("CUDA out of memory")) is None  # not sticky
    lost = fault("meta", crash)  # a device where nothing can be computed and read back, as a lost GPU
    assert "illegal memory access" in lost and "one-element sum failed" in lost

"""Whether this machine has the devices a request names, and the one wording of every refusal.

Most refusals need no torch at all: a CPU-only torch build says so in `torch/version.py`, and Apple
MPS exists only on macOS. `precheck` answers those in milliseconds, before the output folder is
touched; what it cannot know (a CUDA build on a machine without a GPU, too few GPUs) the engine
answers with torch, through `refusal` with the same words.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from dataclasses import dataclass

from spo_cli.errors import UsageError

DEVICE_HINT = "Check `nvidia-smi` and that torch was installed with CUDA support, or use --device cpu."
NOISE_HINT = "--generator-device cpu draws the same noise on any machine; an image made with {device} noise can " \
             "only be made again on such a device."


@dataclass(frozen=True)
class Machine:
    """What is known of this machine's devices: `cuda_gpus` None when only torch can tell."""

    torch_version: str
    cuda_build: bool
    cuda_gpus: int | None
    mps: bool | None


def refusal(device: str, option: str, machine: Machine) -> str | None:
    """Why `device` cannot be used here (one sentence), or None when it can or only torch can tell."""
    base, _, index = device.partition(":")
    if base == "cuda":
        if not machine.cuda_build:
            return (f"{option} {device} was asked for, but this PyTorch ({machine.torch_version}) sees no CUDA GPU "
                    "(it is a CPU-only build).")
        if machine.cuda_gpus == 0:
            return f"{option} {device} was asked for, but this PyTorch ({machine.torch_version}) sees no CUDA GPU."
        if machine.cuda_gpus is not None and index and int(index) >= machine.cuda_gpus:
            return f"{option} {device} was asked for, but this machine has {machine.cuda_gpus} CUDA GPU(s)."
    if base == "mps" and machine.mps is False:
        return f"{option} {device} was asked for, but Apple MPS is not available here."
    return None


def check(device: str, generator_devices, offload: str | None, machine: Machine) -> None:
    """Refuse what `machine` rules out; `device` may be 'auto' (nothing to refuse yet)."""
    if device != "auto":
        why = refusal(device, "--device", machine)
        if why:
            raise UsageError(why, DEVICE_HINT)
    for g in sorted(set(generator_devices)):
        why = refusal(g, "--generator-device", machine)
        if why:
            raise UsageError(why, NOISE_HINT.format(device=g))
    if offload and device == "cpu":
        raise UsageError(offload_refusal(offload, device), OFFLOAD_HINT)


OFFLOAD_HINT = "Drop --offload here; it is for GPUs with too little memory for SDXL."


def offload_refusal(offload: str, device: str) -> str:
    return f"--offload {offload} moves weights between host memory and a GPU, and this run is on {device}."


def installed() -> Machine:
    """What the installed torch build says, read from its version file without importing torch."""
    spec = importlib.util.find_spec("torch")
    facts: dict = {}
    if spec and spec.submodule_search_locations:
        try:
            with open(os.path.join(spec.submodule_search_locations[0], "version.py"), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in tree.body:  # `name = constant` and `name: type = constant` lines
                target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
                value = getattr(node, "value", None)
                if isinstance(target, ast.Name) and isinstance(value, ast.Constant):
                    facts[target.id] = value.value
        except (OSError, SyntaxError, ValueError):
            facts = {}
    cuda_build = bool(facts.get("cuda") or facts.get("hip")) if facts else True  # unknown: let torch tell
    return Machine(str(facts.get("__version__", "unknown")), cuda_build, None,
                   False if sys.platform != "darwin" else None)


def precheck(device: str, generator_devices, offload: str | None) -> None:
    """The refusals that need no torch, for a request about to run."""
    check(device, generator_devices, offload, installed())

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
# Not DEVICE_HINT: nvidia-smi and CUDA builds say nothing about Apple's GPUs.
MPS_HINT = "MPS is Apple's GPU backend: it needs a Mac with Apple silicon and torch's macOS build; use --device cpu."
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
            raise UsageError(why, MPS_HINT if device.startswith("mps") else DEVICE_HINT)
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


# -- `spo serve --devices`: a worker per device ------------------------------------------------------

DEVICES_MAX = 64  # workers of one server: a node's GPUs, with room; each holds its own copy of the models
DEVICES_HINT = "E.g. --devices all (every visible GPU), --devices cuda:0,cuda:1, or --devices cpu,cpu."
NO_GPU_HINT = "Without a GPU, --devices cpu,cpu runs two CPU workers (or use --device cpu for one)."


def serve_devices(value: str, machine: Machine) -> list[str]:
    """--devices, checked without torch: `all` (kept as ['all'] for `count_all` to expand once torch
    can count the GPUs), or a comma-separated list of cpu (repeatable: several CPU workers), cuda:N
    (each GPU once) and mps (once), all of one kind, so that a seed makes the same image whichever
    worker takes it."""
    text = value.strip()
    if text == "all":
        why = all_refusal(machine)
        if why:
            raise UsageError(why, NO_GPU_HINT)
        return ["all"]
    names = [d.strip() for d in text.split(",")]
    if not text or any(not d for d in names):
        raise UsageError(f"--devices {value!r} has an empty entry.", DEVICES_HINT)
    if len(names) > DEVICES_MAX:
        raise UsageError(f"--devices names {len(names):,} devices; a server runs at most {DEVICES_MAX}.", DEVICES_HINT)
    for d in names:
        if d == "cuda":
            raise UsageError("--devices cuda does not say which GPU: name each by its index.",
                             "E.g. --devices cuda:0,cuda:1, or --devices all.")
        if d not in ("cpu", "mps") and not (d.startswith("cuda:") and d[5:].isascii() and d[5:].isdigit()):
            raise UsageError(f"--devices: {d[:40]!r} is not a device (cpu, cuda:N or mps).", DEVICES_HINT)
    kinds = sorted({d.partition(":")[0] for d in names})
    if len(kinds) > 1:
        raise UsageError(f"--devices {value} mixes {' and '.join(kinds)}: a seed would make a different image "
                         "depending on which worker took it (another dtype, another device's arithmetic).",
                         "Name devices of one kind: all GPUs, or cpu,cpu.")
    seen = set()
    for d in names:
        if d != "cpu" and d in seen:
            raise UsageError(f"--devices names {d} twice: one worker per GPU (two would share its memory and "
                             "its compute, and serve no faster).", "Name each GPU once; cpu may repeat.")
        seen.add(d)
    for d in names:
        why = refusal(d, "--devices", machine)
        if why:
            raise UsageError(why, NO_GPU_HINT if d.startswith("cuda") else DEVICES_HINT)
    return names


def all_refusal(machine: Machine) -> str | None:
    """Why `--devices all` finds no GPU here (one sentence), or None when it may (or only torch can tell)."""
    if not machine.cuda_build:
        return (f"--devices all asks for every CUDA GPU, but this PyTorch ({machine.torch_version}) has no CUDA "
                "(it is a CPU-only build).")
    if machine.cuda_gpus == 0:
        return f"--devices all asks for every CUDA GPU, but this PyTorch ({machine.torch_version}) sees none."
    return None


def count_all(devices: list[str], machine: Machine) -> list[str]:
    """`devices` with `all` expanded into every GPU torch sees (`machine` from engine.machine()), and
    every cuda:N checked against how many there are."""
    if devices == ["all"]:
        why = all_refusal(machine)
        if why:
            raise UsageError(why, NO_GPU_HINT)
        devices = [f"cuda:{i}" for i in range(min(machine.cuda_gpus or 0, DEVICES_MAX))]
    for d in devices:
        why = refusal(d, "--devices", machine)
        if why:
            raise UsageError(why, NO_GPU_HINT)
    return devices

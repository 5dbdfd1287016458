"""Which files of a repo or folder are read, and whether they are whole: the allow-lists (a pipeline's
configs and the safetensors of one variant, a VAE's config and weights), the model_index.json check
(an SDXL pipeline, no custom code), and header-only integrity checks. Pure: no Hub, no torch."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from spo_cli.errors import ModelError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".pb")
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece
SDXL_CLASSES = ("StableDiffusionXLPipeline",)
# Where each component class of an SDXL pipeline comes from; anything else would be custom code.
LIBRARIES = ("diffusers", "transformers")

_WEIGHT_NAME = re.compile(
    r"^[^.]+?(?:\.(?P<v1>[^.-]+))?(?:-\d+-of-\d+)?\.safetensors(?:\.index(?:\.(?P<v2>[^.]+))?\.json)?$"
)


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder` (links included, even dangling ones: the integrity check names
    those), relative and with forward slashes, sorted."""
    return sorted(str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


# ---------------------------------------------------------------------------------------------
# Selection: what a diffusers pipeline or VAE folder needs


def variant_of(name: str) -> str | None:
    """'fp16' for model.fp16.safetensors, model.fp16-00001-of-00002.safetensors and
    diffusion_pytorch_model.safetensors.index.fp16.json; None for the plain names."""
    m = _WEIGHT_NAME.match(name)
    return (m.group("v1") or m.group("v2")) if m else None


def _component_folders(model_index: dict) -> list[str]:
    return sorted(
        k for k, v in model_index.items()
        if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None
    )


def _has_weights(entry) -> bool:
    """Whether a model_index component is a model with weights (not a scheduler or a tokenizer)."""
    cls = entry[1] if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str) else ""
    return not (cls.endswith("Scheduler") or "Tokenizer" in cls or cls.endswith(("FeatureExtractor", "Processor")))


def select_pipeline_files(files: list[str], model_index: dict, variant: str | None, repo: str,
                          skip: tuple[str, ...] = ()) -> tuple[list[str], str | None]:
    """The files of `files` that `from_pretrained(use_safetensors=True, variant=…)` reads.

    Returns (files, variant actually used): the variant is dropped unless every component with
    weights has it, since a mixed set is what diffusers would fall back to file by file anyway.
    Components in `skip` (a VAE replaced by another) are left out altogether.
    """
    by_folder: dict[str, list[str]] = {}
    for f in files:
        if "/" in f:
            folder, name = f.split("/", 1)
            if "/" not in name:  # only files directly in the component folder
                by_folder.setdefault(folder, []).append(name)
    weighted = {}
    folders = [f for f in _component_folders(model_index) if f not in skip]
    for folder in folders:
        names = by_folder.get(folder, [])
        weights = [n for n in names if n.endswith(WEIGHT_SUFFIXES) or ".index." in n]
        if not weights:
            if _has_weights(model_index[folder]):
                raise ModelError(f"The copy of '{repo}' is incomplete: its {folder}/ has no weight files.",
                                 "Fetch or save the model again.")
            continue  # scheduler, tokenizers
        safetensors = [n for n in weights if n.endswith(".safetensors") or (".safetensors.index" in n)]
        if not safetensors:
            raise ModelError(
                f"'{repo}' has no safetensors weights for its {folder}/ (only {', '.join(sorted(weights)[:3])}).",
                "spo-cli never loads pickled (.bin/.ckpt) weights; convert the model to safetensors first.",
            )
        weighted[folder] = safetensors
    if variant and not all(any(variant_of(n) == variant for n in w) for w in weighted.values()):
        variant = None
    chosen = ["model_index.json"]
    for folder in folders:
        names = by_folder.get(folder, [])
        chosen += [f"{folder}/{n}" for n in names if n.endswith(CONFIG_SUFFIXES) and ".index." not in n]
        weights = [f"{folder}/{n}" for n in weighted.get(folder, []) if variant_of(n) == variant]
        if folder in weighted and not weights:
            raise ModelError(
                f"'{repo}' has no {variant or 'full-precision'} safetensors weights for its {folder}/ "
                f"(only {', '.join(sorted(weighted[folder])[:3])}).",
                "Fetch the weights of the dtype you run in: `spo download <model> --dtype fp32` for CPU runs.",
            )
        chosen += weights
    return sorted(set(chosen)), variant


def select_vae_files(files: list[str], variant: str | None) -> tuple[list[str], str | None, str | None]:
    """(files, variant, subfolder) for a VAE repo: config + diffusers-named safetensors only."""
    sub = None
    if "config.json" not in files and "vae/config.json" in files:
        sub = "vae"
    prefix = f"{sub}/" if sub else ""
    names = [f[len(prefix):] for f in files if f.startswith(prefix) and "/" not in f[len(prefix):]]
    weights = [n for n in names if n.startswith("diffusion_pytorch_model") and n.endswith(".safetensors")]
    if variant and not any(variant_of(n) == variant for n in weights):
        variant = None
    weights = [n for n in weights if variant_of(n) == variant]
    if "config.json" not in names or not weights:
        return [], variant, sub
    return [prefix + "config.json"] + [prefix + n for n in weights], variant, sub


# ---------------------------------------------------------------------------------------------
# What a pipeline folder must be, checked from its model_index.json before any weight is fetched


def read_index(path: Path, where: str, repair: str | None) -> dict:
    """model_index.json, parsed and checked: an SDXL pipeline made of diffusers/transformers parts."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise damaged(where, "model_index.json", f"{type(e).__name__}: {e}", repair) from None
    if not isinstance(index, dict):
        raise damaged(where, "model_index.json", "not a JSON object", repair)
    check_index(index, where)
    return index


def check_index(index: dict, where: str) -> None:
    cls = index.get("_class_name")
    if isinstance(cls, list) or index.get("_custom_pipeline") or any(
            isinstance(v, list) and len(v) == 2 and v[0] is not None and v[0] not in LIBRARIES
            for k, v in index.items() if not k.startswith("_")):
        raise ModelError(f"'{where}' needs custom Python code from the repository to load.",
                         "spo-cli runs only the standard diffusers StableDiffusionXLPipeline and never executes "
                         "code that comes with a model.")
    if cls not in SDXL_CLASSES:
        raise ModelError(f"'{where}' is a {cls or 'pipeline of unknown type'}, not an SDXL pipeline.",
                         "spo-cli runs StableDiffusionXLPipeline checkpoints (SDXL base and its fine-tunes).")


# ---------------------------------------------------------------------------------------------
# Integrity: every file the pipeline will read is there and whole


def damaged(where: str, file: str, what: str, repair: str | None) -> ModelError:
    return ModelError(f"The copy of '{where}' on this machine is damaged: {file} ({what}).",
                      f"Repair it with `{repair}`." if repair else "Save or copy the folder again.")


def check_files(folder: Path, files: list[str], where: str, repair: str | None,
                missing_hint: Callable[[], str] | None = None) -> None:
    """Every file the pipeline will read is there and whole: JSON parses, a safetensors file is as
    long as its header says. Cheap (headers only), and a damaged cache is named before a load."""
    for f in files:
        path = folder / f
        if not path.exists():
            if os.path.lexists(path):
                raise damaged(where, f, "a link to a missing or looping file", repair)
            raise ModelError(f"The copy of '{where}' on this machine is incomplete: {f} is missing.",
                             missing_hint() if missing_hint else "Save or copy the folder again.")
        try:
            if f.endswith(".json"):
                json.loads(path.read_text(encoding="utf-8"))
            elif f.endswith(".safetensors"):
                problem = safetensors_problem(path)
                if problem:
                    raise damaged(where, f, problem, repair)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            raise damaged(where, f, f"{type(e).__name__}: {e}", repair) from None


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file cannot be whole (from its header and length), or None."""
    return safetensors_header(path)[1]


def safetensors_header(path: Path) -> tuple[dict | None, str | None]:
    """(header, None) for a whole .safetensors file, (None, why not) otherwise. The header is read
    bounded (100 MB; SDXL's is about 200 KB) and each tensor entry is checked for its offsets."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None, f"{size} bytes, too short for a safetensors header"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            return None, "its header length is impossible: not a safetensors file, or cut short"
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None, "its header is not JSON: not a safetensors file"
    if not isinstance(header, dict):
        return None, "its header is not a JSON object: not a safetensors file"
    return header, _tensors_problem(header, 8 + n, size)


def _tensors_problem(header: dict, start: int, size: int) -> str | None:
    ends = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        # Every other entry is a tensor: data_offsets [begin, end], byte offsets after the header.
        offsets = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(type(o) is int and o >= 0 for o in offsets) and offsets[0] <= offsets[1]):
            return "its header has a tensor without valid data_offsets: not a safetensors file"
        ends.append(offsets[1])
    if start + max(ends, default=0) > size:
        return f"cut short: {size:,} bytes of {start + max(ends):,}"
    return None

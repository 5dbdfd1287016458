"""Single-file checkpoints: one .safetensors holding a whole SDXL in the original Stability / A1111
key layout (`model.diffusion_model.*`, `conditioner.embedders.{0,1}.*`, `first_stage_model.*`), as
most fine-tunes are shared.

- what a file is, from its header alone (bounded; no tensor is read), so that an SD 1.x, SD 2.x,
  refiner, inpainting or LoRA file is named and refused before torch is imported;
- the SDXL configs diffusers builds it with (`from_single_file(config=…)`): model_index.json,
  the component configs and tokenizers of SDXL base, from the Hugging Face cache, never a weight;
- its SHA-256, whose first 10 hex digits are A1111's `Model hash`, cached by (path, size, mtime)
  in spo's cache folder, since reading a 7 GB file takes seconds to minutes.

No torch, no diffusers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path

from spo_cli import presets
from spo_cli.errors import ModelError, UsageError
from spo_cli.resolve import hub
from spo_cli.resolve.files import check_files, folder_files, read_index, safetensors_header
from spo_cli.resolve.hub import Fetch

CONFIG_REPO = presets.SDXL_BASE  # the configs every SDXL single file is built with
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")
SUFFIXES = (".safetensors", ".sft") + PICKLE_SUFFIXES
SHORT_HASH = 10  # A1111's shorthash: sha256[0:10] (modules/sd_models.py, CheckpointInfo)

# A hashing progress display: (label, total bytes) → a context giving `advance(n_bytes)`.
HashProgress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]

# Key prefixes of the original layout, by part.
UNET = "model.diffusion_model."
CLIP_L = "conditioner.embedders.0.transformer."  # SDXL base's first text encoder (CLIP ViT-L)
OPENCLIP_G = "conditioner.embedders.1.model."  # its second (OpenCLIP ViT-bigG)
VAE = "first_stage_model."


def is_single_file(spec: str) -> bool:
    """Whether --model names one checkpoint file (by its name, or because it is a file), rather
    than a preset, a Hub repo or a diffusers folder."""
    try:
        return spec.lower().endswith(SUFFIXES) or Path(spec).expanduser().is_file()
    except OSError:  # a name too long for the file system: not a file here
        return False


def short_hash(sha256: str) -> str:
    return sha256[:SHORT_HASH]


# ---------------------------------------------------------------------------------------------
# What a file is


def checkpoint_path(spec: str) -> Path:
    """The file `spec` names, if it is one spo may read: a local .safetensors file."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", spec, re.IGNORECASE):
        raise UsageError(f"--model {spec}: a single-file checkpoint is read from this machine, not from a URL.",
                         "Download it first (for a file on the Hub: `hf download ORG/REPO FILE.safetensors`), then "
                         "give its path.")
    path = Path(spec).expanduser().resolve()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UsageError(f"{path} is a pickled checkpoint ({path.suffix}); spo-cli never loads pickles, which can run "
                         "code when they are opened.",
                         "Use the model's .safetensors file (most fine-tunes publish one), or convert it to safetensors "
                         "on a machine you do not mind exposing.")
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:  # a name too long for the file system, a path through a file
        raise UsageError(f"Model file {path} cannot be read: {e.strerror or e}.") from None
    if not exists:
        raise UsageError(f"Model file {path} does not exist.")
    if not is_file:
        raise UsageError(f"{path} is not a file.")
    if path.name == "model_index.json":
        raise UsageError(f"{path} is a diffusers pipeline's index; --model takes the folder that holds it.",
                         f"--model {path.parent}")
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{path} is a file, but not a .safetensors checkpoint.",
                         "--model takes a preset, a Hub repo id, a diffusers folder or an SDXL .safetensors file.")
    return path


def read_header(path: Path) -> dict:
    """The safetensors header of `path`, checked whole (bounded read; offsets within the file)."""
    try:
        header, problem = safetensors_header(path)
    except OSError as e:
        raise UsageError(f"{path} could not be read: {e.strerror or e}.") from None
    if problem:
        raise ModelError(f"{path} is not a usable single-file checkpoint: {problem}.",
                         "spo-cli reads single-file checkpoints in safetensors format; copy or download the file again "
                         "if it was cut short.")
    return header


def kind(keys: set[str], shapes: dict[str, list]) -> str | None:
    """What a checkpoint with these tensor names is, in a few words, when it is not an SDXL base
    model (UNet and both text encoders); None when it is one."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has(UNET + "joint_blocks."):
        return "a Stable Diffusion 3 checkpoint"
    if has(UNET + "double_blocks.") or has("double_blocks."):
        return "a Flux checkpoint"
    if any("lora_down" in k or "lora_up" in k or ".lora_A." in k or ".lora_B." in k or k.startswith("lora_")
           for k in keys):
        return "a LoRA, not a whole model (add it with --lora)"
    if has(UNET):
        if "edm_mean" in keys or "edm_vp_mean" in keys:
            return "a Playground v2.5 checkpoint (EDM), not SDXL"
        if "v_pred" in keys:  # the marker v-prediction fine-tunes carry; diffusers would run it as epsilon
            return ("a v-prediction SDXL checkpoint (its 'v_pred' key), which the SDXL base config spo loads "
                    "it with would run as epsilon prediction, making wrong images")
        if has("cond_stage_model.model."):
            return "a Stable Diffusion 2.x checkpoint"
        if has("cond_stage_model.transformer."):
            return "a Stable Diffusion 1.x checkpoint"
        if has("conditioner.embedders.0.model.") and not has(OPENCLIP_G):
            return "an SDXL refiner checkpoint (spo-cli runs SDXL base and its fine-tunes)"
        if has(CLIP_L) != has(OPENCLIP_G):
            return "an SDXL checkpoint missing one of its two text encoders"
        if has(CLIP_L) and has(OPENCLIP_G):
            conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
            if isinstance(conv_in, list) and len(conv_in) == 4 and type(conv_in[1]) is int and conv_in[1] != 4:
                return f"an SDXL inpainting (or other {conv_in[1]}-channel) checkpoint, not a text-to-image one"
            return None
        if has(UNET + "label_emb."):
            return "an SDXL UNet alone, without the text encoders (and VAE) a whole checkpoint holds"
        return "a UNet of unknown type, without the text encoders of a whole checkpoint"
    if has("encoder.down.") and has("decoder.up."):
        return "a VAE alone (give it with --vae once converted to diffusers layout)"
    if has("down_blocks.") or has("text_model.") or has("unet.") or has("transformer_blocks."):
        return "a single component in diffusers layout, not a whole checkpoint"
    return "not a Stable Diffusion checkpoint that spo-cli recognises"


def check_header(path: Path, header: dict) -> None:
    """Refuse, naming what it is, a file that is not an SDXL base-layout checkpoint."""
    tensors = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    shapes = {k: v.get("shape") for k, v in tensors.items()}
    what = kind(set(tensors), shapes)
    if what:
        raise ModelError(f"{path.name} is {what}, not an SDXL checkpoint.",
                         "spo-cli runs SDXL (base 1.0 and its fine-tunes, SPO merges included) from single files in "
                         "the original (A1111) layout; for other models use a tool made for them.")


def has_vae(header: dict) -> bool:
    return any(k.startswith(VAE) for k in header if k != "__metadata__")


def checked_file(spec: str) -> tuple[Path, dict]:
    """(path, header) of a single-file checkpoint that is whole and an SDXL one; no tensor is read."""
    path = checkpoint_path(spec)
    header = read_header(path)
    check_header(path, header)
    return path, header


def no_vae(path: Path) -> ModelError:
    return ModelError(f"{path.name} holds no VAE (no {VAE}* weights), and the run would use the checkpoint's own.",
                      f"Give one with --vae (for SDXL: {presets.FP16_FIX_VAE}, or the VAE folder of SDXL base).")


# ---------------------------------------------------------------------------------------------
# The configs it is built with


def _config_files(index: dict, listing: list[str]) -> tuple[list[str], list[str]]:
    """(required, optional) files of SDXL base that from_single_file reads besides the weights:
    model_index.json, each model's config.json, the scheduler's config, the tokenizers' files."""
    required, optional = ["model_index.json"], []
    for name, entry in sorted(index.items()):
        if name.startswith("_") or not (isinstance(entry, list) and len(entry) == 2 and entry[0] is not None):
            continue
        cls = entry[1] if isinstance(entry[1], str) else ""
        if "Tokenizer" in cls:
            required += [f"{name}/vocab.json", f"{name}/merges.txt"]
            optional += [f for f in listing if f.startswith(f"{name}/") and f.count("/") == 1
                         and f.endswith(".json") and f not in required]
        elif cls.endswith("Scheduler"):
            required.append(f"{name}/scheduler_config.json")
        else:
            required.append(f"{name}/config.json")
    return required, sorted(set(optional))


def _configs(fetch: Fetch):
    from spo_cli.resolve.parts import Resolved

    snapshot, commit = hub.pin(CONFIG_REPO, None, ("model_index.json",), fetch, "pipeline")
    index = read_index(snapshot / "model_index.json", CONFIG_REPO, fetch.repair)
    listing = folder_files(snapshot) if hub.offline(fetch) else hub.list_files(CONFIG_REPO, commit, snapshot, fetch)
    required, optional = _config_files(index, listing)
    if hub.offline(fetch):
        check_files(snapshot, required, CONFIG_REPO, fetch.repair, lambda: hub.offline_hint(fetch))
        folder, files = snapshot, required + [f for f in optional if f in listing]
    else:
        files = required + [f for f in optional if f in listing]
        folder = hub.fetch_files(CONFIG_REPO, commit, files, fetch)
    return Resolved(CONFIG_REPO, "hub", folder, "main", commit, files=tuple(files)), index


def configs(fetch: Fetch, file: Path):
    """(Resolved, model_index) of SDXL base's configs and tokenizers, from the cache when there:
    they are the same for every SDXL file, so the Hub is asked only when they are missing (and
    neither the cache-only choice nor HF_HUB_OFFLINE forbids it), and then for these small files only."""
    if not fetch.force:
        try:
            return _configs(Fetch(True, False, None, fetch.command, fetch.downloading))
        except ModelError as e:
            if hub.offline(fetch):
                raise _configs_missing(file, e.message) from None
    why = hub.unreachable()
    if why:
        raise _configs_missing(file, f"the Hub at {hub.hub_endpoint()} cannot be reached ({why})")
    try:
        return _configs(fetch)
    except ModelError as e:
        raise _configs_missing(file, e.message) from None


def _configs_missing(file: Path, why: str) -> ModelError:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in why:
        why = why.rstrip(".") + " (HF_HUB_OFFLINE is set, so the Hub is not asked)"
    return ModelError(
        f"{file.name} is built with the configs and tokenizers of {CONFIG_REPO} (small files, no weights), "
        f"which this machine lacks: {why.rstrip('.')}. Cache: {constants.HF_HUB_CACHE}.",
        f"On a machine with network access and the same HF_HOME, run `spo download {file}` (these files only) or "
        "`spo download base` (the whole SDXL base, which has them).")


# ---------------------------------------------------------------------------------------------
# The SHA-256 (A1111's Model hash), cached


def cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spo-cli"


HASH_CACHE = "file-hashes.json"
_CACHE_MAX_BYTES = 16 << 20  # a damaged or hostile cache file is never read whole
_CACHE_MAX_ENTRIES = 2000
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _load_cache(path: Path) -> dict:
    try:
        # Non-blocking: a plain open() of a FIFO put in its place waits for a writer forever (one with no
        # writer reads as empty, a damaged cache; os.replace later puts a file there).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(_CACHE_MAX_BYTES + 1)
        if len(data) > _CACHE_MAX_BYTES:
            return {}
        cache = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return {}  # no cache yet, or a damaged one: hashes are computed again, and it is rewritten
    return cache if isinstance(cache, dict) else {}


def _cached(entry, stat: os.stat_result) -> str | None:
    if (isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("sha256"), str) and _HEX64.match(entry["sha256"])):
        return entry["sha256"]
    return None


def _store(path: Path, key: str, entry: dict) -> None:
    """Add `entry` to the cache file, atomically; a cache that cannot be written is no error (the
    hash is computed again next time)."""
    import tempfile

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        cache = _load_cache(path)  # read again: another spo may have added entries meanwhile
        cache.pop(key, None)
        cache[key] = entry
        for old in list(cache)[:max(0, len(cache) - _CACHE_MAX_ENTRIES)]:
            del cache[old]
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, path)
    except OSError:
        if tmp:
            with suppress(OSError):
                os.unlink(tmp)


def sha256(path: Path, progress: HashProgress | None = None) -> str:
    """The SHA-256 of the file at `path` (hex), from spo's cache when the file's size and
    modification time are those it was hashed at, else read once (with `progress`) and cached."""
    path = path.resolve()
    cache_file = cache_folder() / HASH_CACHE
    before = path.stat()
    found = _cached(_load_cache(cache_file).get(str(path)), before)
    if found:
        return found
    digest = hashlib.sha256()
    with (progress(path.name, before.st_size) if progress else nullcontext(lambda n: None)) as advance:
        with open(path, "rb") as f:
            left = before.st_size  # a file still growing (a download) is not read forever
            while left and (chunk := f.read(min(1 << 20, left))):
                digest.update(chunk)
                advance(len(chunk))
                left -= len(chunk)
    value = digest.hexdigest()
    # Keyed by the size and mtime from before the read: a file written to meanwhile no longer matches.
    _store(cache_file, str(path), {"size": before.st_size, "mtime_ns": before.st_mtime_ns, "sha256": value})
    return value

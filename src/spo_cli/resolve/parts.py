"""Each part on its own, from the Hub (through the cache) or from this machine: a pipeline, a VAE, a
LoRA file, a scorer's repo files, a dataset's files by pattern. Every file is checked whole before
it is handed on; a pipeline's model_index.json is checked before any of its weights is fetched."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from spo_cli import validate
from spo_cli.errors import ModelError, UsageError
from spo_cli.resolve import hub
from spo_cli.resolve.files import (check_files, folder_files, read_index, safetensors_header, select_pipeline_files,
                                   select_vae_files)
from spo_cli.resolve.hub import Fetch

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Resolved:
    """One repo or folder (or, for a LoRA, one file), as found on this machine."""

    id: str  # Hub repo id, or absolute local path
    source: str  # "hub" or "local"
    path: Path  # local folder of the snapshot (the file itself for a LoRA)
    revision: str | None = None
    commit: str | None = None
    variant: str | None = None
    file: str | None = None  # LoRA weight file name
    subfolder: str | None = None  # a VAE taken from a pipeline repo's vae/ folder
    files: tuple[str, ...] = ()  # what the pipeline reads, relative to `path` (a folder)
    sha256: str | None = None  # a single-file checkpoint's (A1111's Model hash is its first 10 digits)

    def nbytes(self) -> int:
        if self.path.is_file():
            return self.path.stat().st_size
        return sum((self.path / f).stat().st_size for f in self.files)

    def describe(self) -> dict:
        d = {"id": self.id, "source": self.source, "revision": self.revision, "commit": self.commit}
        if self.variant:
            d["variant"] = self.variant
        if self.subfolder:
            d["subfolder"] = self.subfolder
        if self.sha256:
            d |= {"file": self.file, "sha256": self.sha256}
        return d


def _commit_of(snapshot: Path) -> str | None:
    """The commit a snapshot folder is named after (None for a folder not named by a commit)."""
    return snapshot.name if _COMMIT.match(snapshot.name) else None


def lora_file_needed(repo: str) -> UsageError:
    return UsageError(f"Name the LoRA file in '{repo}' with --lora-file when offline.")


# ---------------------------------------------------------------------------------------------
# From the Hub


def pipeline_from_hub(repo: str, revision: str | None, variant: str | None, fetch: Fetch,
                      skip: tuple[str, ...] = ()) -> tuple[Resolved, dict]:
    snapshot, commit = hub.pin(repo, revision, ("model_index.json",), fetch, "pipeline")
    model_index = read_index(snapshot / "model_index.json", repo, fetch.repair)  # before any weight
    files = hub.list_files(repo, commit, snapshot, fetch)
    chosen, variant = select_pipeline_files(files, model_index, variant, repo, skip)
    folder = hub.fetch_files(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, revision or "main", commit, variant, files=tuple(chosen)), model_index


def vae_from_hub(repo: str, variant: str | None, fetch: Fetch) -> Resolved:
    snapshot, commit = hub.pin(repo, None, ("config.json", "vae/config.json"), fetch, "VAE")
    files = hub.list_files(repo, commit, snapshot, fetch)
    chosen, variant, sub = select_vae_files(files, variant)
    if not chosen:
        raise ModelError(
            f"'{repo}' holds no diffusers VAE (config.json and diffusion_pytorch_model*.safetensors).",
            "--vae takes a diffusers AutoencoderKL repo or folder, or 'model' for the checkpoint's own.",
        )
    folder = hub.fetch_files(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, "main", commit, variant, subfolder=sub, files=tuple(chosen))


def lora_from_hub(repo: str, file: str | None, fetch: Fetch) -> Resolved:
    """The LoRA file `file` of `repo`; when `file` is None, the repo's only .safetensors file."""
    from huggingface_hub import HfApi

    if file is None:
        if hub.offline(fetch):
            raise lora_file_needed(repo)
        info = hub.hub_call(lambda: HfApi().model_info(repo), repo, fetch)
        candidates = [s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
        if len(candidates) != 1:
            raise UsageError(
                f"'{repo}' holds {len(candidates)} .safetensors files; say which with --lora-file.",
                ("Files: " + ", ".join(candidates[:10]) + ".") if candidates else None,
            )
        file = candidates[0]
    if not file.endswith(".safetensors"):
        raise UsageError(f"LoRA file '{file}' is not .safetensors; spo-cli never loads pickled weights.")
    folder = hub.fetch_files(repo, None, [file], fetch)
    return Resolved(repo, "hub", folder / file, "main", _commit_of(folder), file=file)


def resolve_files(repo: str, required: tuple[str, ...], optional: tuple[str, ...], fetch: Fetch) -> Resolved:
    """A non-pipeline repo (a scorer's): the `required` files, plus those of `optional` it has.
    The first required file pins the commit; the listing is checked before anything large is fetched."""
    snapshot, commit = hub.pin(repo, None, required[:1], fetch, "model")
    listing = set(hub.list_files(repo, commit, snapshot, fetch))
    missing = [f for f in required if f not in listing]
    if missing:
        raise ModelError(f"'{repo}' has no {', '.join(missing)} at commit {commit[:10]}.",
                         "The repo may have been reorganised; please report it to spo-cli.")
    chosen = list(required) + [f for f in optional if f in listing and f not in required]
    folder = hub.fetch_files(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, "main", commit, files=tuple(chosen))


def resolve_dataset(repo: str, pattern: str, fetch: Fetch) -> Resolved:
    """The files of a Hub dataset that match `pattern` (a glob), pinned to a commit. Data files
    are named by whoever pushed them (shard counts, hashes), so they are found by pattern."""
    folder = hub.snapshot(repo, None, [pattern], fetch, repo_type="dataset")
    name = pattern.rsplit("/", 1)[-1]
    files = [f for f in folder_files(folder) if fnmatch.fnmatch(f.rsplit("/", 1)[-1], name)]
    if not files:
        raise ModelError(f"The dataset '{repo}' (commit {folder.name[:10]}) has no file matching {pattern}.",
                         hub.offline_hint(fetch) if hub.offline(fetch) else
                         "The dataset may have been reorganised; please report it to spo-cli.")
    check_files(folder, files, repo, fetch.repair, lambda: hub.offline_hint(fetch))
    return Resolved(repo, "hub", folder, "main", _commit_of(folder), files=tuple(files))


# ---------------------------------------------------------------------------------------------
# From this machine


def local_pipeline_folder(spec: str) -> Path:
    folder = Path(spec).expanduser().resolve()
    if not folder.exists():
        raise UsageError(f"Model folder {folder} does not exist.")
    if folder.is_file():
        raise UsageError(
            f"{folder} is a single file; --model takes a folder in diffusers layout (with model_index.json).",
            "Convert single-file checkpoints with diffusers' StableDiffusionXLPipeline.from_single_file(...).save_pretrained(...).",
        )
    if not (folder / "model_index.json").exists():
        raise UsageError(f"{folder} has no model_index.json; it is not a diffusers pipeline folder.")
    return folder


def pipeline_from_folder(spec: str, variant: str | None, skip: tuple[str, ...] = ()) -> tuple[Resolved, dict]:
    folder = local_pipeline_folder(spec)
    model_index = read_index(folder / "model_index.json", str(folder), None)
    chosen, variant = select_pipeline_files(folder_files(folder), model_index, variant, str(folder), skip)
    check_files(folder, chosen, str(folder), None)
    return Resolved(str(folder), "local", folder, variant=variant, files=tuple(chosen)), model_index


def local_vae_folder(spec: str) -> Path:
    folder = Path(spec).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"VAE folder {folder} does not exist.")
    return folder


def vae_from_folder(spec: str, variant: str | None) -> Resolved:
    folder = local_vae_folder(spec)
    chosen, variant, sub = select_vae_files(folder_files(folder), variant)
    if not chosen:
        raise UsageError(f"{folder} holds no diffusers VAE (config.json and diffusion_pytorch_model*.safetensors).")
    check_files(folder, chosen, str(folder), None)
    return Resolved(str(folder), "local", folder, variant=variant, subfolder=sub, files=tuple(chosen))


def local_lora_path(spec: str) -> Path:
    path = Path(spec).expanduser().resolve()
    if path.suffix != ".safetensors":
        raise UsageError(f"LoRA file {path} is not .safetensors; spo-cli never loads pickled weights.")
    if not path.is_file():
        relative = not path.exists() and not Path(spec).expanduser().is_absolute()
        raise UsageError(f"LoRA file {path} does not exist." if not path.exists() else f"LoRA {path} is not a file.",
                         f"{validate.shown(spec, 200)} is relative to the current folder (a sidecar records --lora as "
                         "given: replay from the folder it ran in, or give --lora)." if relative else None)
    _check_lora_header(path)
    return path


def _check_lora_header(path: Path) -> None:
    """A LoRA file the user named is checked as one, from its header, before anything loads: a cut or
    foreign file was called a damaged copy of its folder (exit 1, after PyTorch started), and a model's
    weights given as a LoRA failed only once the whole pipeline had loaded. Lenient: a file with any
    key holding 'lora' passes (diffusers wants every key to; kohya, PEFT and diffusers names all do)."""
    try:
        header, problem = safetensors_header(path)
    except OSError as e:
        raise UsageError(f"LoRA file {path} cannot be read ({e.strerror or type(e).__name__}).",
                         "Check that it is readable, or use another LoRA.") from None
    if problem:
        raise UsageError(f"LoRA file {path} is not a whole safetensors file ({problem}).",
                         "Download or copy it again, or use another LoRA.")
    tensors = [k for k in header if k != "__metadata__"]
    if not any("lora" in k for k in tensors):
        raise UsageError(f"LoRA file {path} holds no LoRA weights: none of its {len(tensors):,} tensors is named as "
                         "a LoRA's (lora_A/lora_B, lora_down/lora_up, lora_unet_…).",
                         "It may be a whole model or a part of one: a single-file checkpoint goes with --model FILE.")


def lora_from_file(spec: str) -> Resolved:
    path = local_lora_path(spec)
    check_files(path.parent, [path.name], str(path.parent), None)
    return Resolved(str(path), "local", path, file=path.name)

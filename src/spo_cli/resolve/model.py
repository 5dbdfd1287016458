"""A model request, resolved: which parts it needs (the pipeline; the preset's LoRA or --lora; the
fp16-fix VAE, --vae or the checkpoint's own), where each comes from (a preset, a Hub repo id, a path
on this machine), and what can be refused before the Hub or torch is asked."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from spo_cli import loras as lora_names
from spo_cli import presets
from spo_cli.errors import ModelError, UsageError
from spo_cli.request import LoraRequest, ModelRequest
from spo_cli.resolve import parts, single
from spo_cli.resolve.files import WEIGHT_SUFFIXES, read_index
from spo_cli.resolve.hub import Fetch, TqdmFactory, offline
from spo_cli.resolve.parts import Resolved


@dataclass(frozen=True)
class ResolvedModel:
    request: ModelRequest
    preset: str | None
    pipeline: Resolved
    dtype: str
    lora: Resolved | None = None
    vae: Resolved | None = None  # None: the checkpoint's own VAE
    model_index: dict = field(default_factory=dict)  # the pipeline's model_index.json, parsed once, checked
    # LoRAs stacked after `lora` (more --lora, a prompt's <lora:> tags), each with what asked for it.
    extra_loras: tuple[tuple[Resolved, LoraRequest], ...] = ()
    _hashes: dict = field(default_factory=dict, repr=False, compare=False)  # LoRA file → hashes, computed once
    config: Resolved | None = None  # a single-file checkpoint's configs and tokenizers (SDXL base's)

    @property
    def lora_scale(self) -> float | None:
        return self.request.effective_lora_scale if self.lora else None

    def parts(self) -> list[Resolved]:
        return [p for p in (self.pipeline, self.config, self.lora, self.vae) if p is not None] + [p for p, _ in self.extra_loras]

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts())

    def identity(self) -> dict:
        """What decides the weights, for spec hashes: ids, commits, LoRA scale, dtype; not paths."""
        def ident(p: Resolved | None) -> dict | None:
            if p is None:
                return None
            d = {"id": p.id, "commit": p.commit, "variant": p.variant, "file": p.file, "subfolder": p.subfolder}
            # Only where there is one, so that the spec hashes of earlier runs stay what they were.
            return d | {"sha256": p.sha256} if p.sha256 else d

        identity = {"model": ident(self.pipeline), "lora": ident(self.lora),
                    "lora_scale": self.lora_scale, "vae": ident(self.vae),
                    "dtype": self.dtype}
        if self.extra_loras:  # only then: the hashes of runs made before stacking stay as they were
            identity["loras"] = [dict(ident(p), scale=r.scale, unet_scale=r.unet_scale) for p, r in self.extra_loras]
        if self.request.quantize:  # likewise: other weights, other pixels
            identity["quantize"] = self.request.quantize
        return identity

    def describe(self) -> dict:
        lora = None
        if self.lora:
            lora = dict(self.lora.describe(), file=self.lora.file, scale=self.lora_scale)
        request = asdict(lora_names.from_command_line(self.request))
        request.pop("device")  # where it ran is recorded separately; a replay picks its own
        for key in ("loras", "lora_dir", "quantize"):  # recorded only when used: sidecars without them stay as they were
            if not request[key]:
                del request[key]
        described = {
            "model_request": request,  # what the user asked for, so replay can ask again
            "model": dict(self.pipeline.describe(), preset=self.preset,
                          **({"config": {"id": self.config.id, "commit": self.config.commit}} if self.config else {})),
            "lora": lora,
            "vae": self.vae.describe() if self.vae else {"id": None, "source": "model"},
        }
        if self.extra_loras:
            described["loras"] = self.lora_records()
        return described

    def lora_records(self) -> list[dict]:
        """Every LoRA applied, in order, for the sidecar: where it came from, its weights, and its
        SHA-256 (and A1111's hash of it, for `Lora hashes`)."""
        out = []
        entries = ([(self.lora, self.lora_scale, None, None)] if self.lora else []) + [
            (p, r.scale, r.unet_scale, r.name) for p, r in self.extra_loras]
        for part, scale, unet_scale, name in entries:
            if part.path not in self._hashes:
                self._hashes[part.path] = lora_names.file_hashes(part.path)
            sha256, a1111 = self._hashes[part.path]
            record = dict(part.describe(), file=part.file, scale=scale)
            if unet_scale is not None:
                record["unet_scale"] = unet_scale
            record |= {"name": name or Path(part.file or part.id).stem, "tag": name is not None,
                       "sha256": sha256, "a1111_hash": a1111[:12] if a1111 else None}
            out.append(record)
        return out


# ---------------------------------------------------------------------------------------------
# What each spec names


def _looks_local(spec: str) -> bool:
    # A Hub id is exactly "org/name"; anything path-like, or an existing path, is local (as in diffusers).
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec:
        return True
    try:
        return Path(spec).expanduser().exists()
    except OSError:  # a name too long for the file system: no such path here
        return False


def _lora_is_local(spec: str) -> bool:
    return _looks_local(spec) or spec.endswith(WEIGHT_SUFFIXES)


def _known_lora_file(repo: str) -> str | None:
    """The LoRA file of a repo a preset names (the SPO LoRA's), so a stacked one needs no --lora-file."""
    return next((p.lora_file for p in presets.PRESETS.values() if p.lora_repo == repo), None)


def _check_repo_id(spec: str, what: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
        ok = spec.count("/") == 1
    except Exception:
        ok = False
    if not ok and what != "--model":  # presets name models: listing them for --lora or --vae misled
        kind, local = {"--lora": ("LoRA", "a local .safetensors file"), "--vae": ("VAE", "a local VAE folder")}.get(
            what, (what, "a local path"))
        if spec in presets.PRESETS:
            raise UsageError(f"{what} {spec}: '{spec}' is a model preset, not a {kind}.",
                             f"Give it with --model {spec}; {what} takes {local} or a Hub repo id (org/name).")
        raise UsageError(f"'{spec}' is neither an existing path nor a Hub repo id (org/name) for {what}.",
                         f"Give {what} {local}, or a Hub repo id.")
    if not ok:
        names = ", ".join(presets.PRESETS)
        raise UsageError(
            f"'{spec}' is neither a preset, an existing folder, nor a Hub repo id (org/name) for {what}.",
            f"Presets: {names}.",
        )


def _refuse_revision(revision: str | None, folder) -> None:
    if revision:
        raise UsageError(f"--revision {revision} applies to Hub repos; {folder} is a local folder.",
                         "Drop --revision, or check out that revision of the folder yourself.")


def _refuse_file_revision(revision: str | None) -> None:
    if revision:
        raise UsageError(f"--revision {revision} applies to Hub repos; a single-file checkpoint is one file.",
                         "Drop --revision.")


def _vae_spec(request: ModelRequest, dtype: str) -> str:
    """--vae, else the fp16-fix VAE in float16 (as the authors do) and the checkpoint's own otherwise."""
    if request.vae is not None:
        return request.vae
    return presets.FP16_FIX_VAE if dtype == "float16" else "model"


# ---------------------------------------------------------------------------------------------


def precheck(request: ModelRequest) -> None:
    """What can be known of `request` without the Hub or torch: local paths exist and are what they
    should be (a local pipeline's model_index.json is read and checked too), repo ids are repo ids."""
    preset = presets.PRESETS.get(request.model)
    if not preset and single.is_single_file(request.model):
        _refuse_file_revision(request.revision)
        single.checked_file(request.model)
    elif not preset:
        if _looks_local(request.model):
            folder = parts.local_pipeline_folder(request.model)
            _refuse_revision(request.revision, folder)
            read_index(folder / "model_index.json", str(folder), None)
        else:
            _check_repo_id(request.model, "--model")
    if request.lora:
        if _lora_is_local(request.lora):
            parts.local_lora_path(request.lora)
        else:
            _check_repo_id(request.lora, "--lora")
            from huggingface_hub import constants

            if request.lora_file is None and _known_lora_file(request.lora) is None and constants.HF_HUB_OFFLINE:
                raise parts.lora_file_needed(request.lora)
    for extra in request.loras:
        if _lora_is_local(extra.spec):
            parts.local_lora_path(extra.spec)
        else:
            _check_repo_id(extra.spec, "--lora")
            from huggingface_hub import constants

            if _known_lora_file(extra.spec) is None and constants.HF_HUB_OFFLINE:
                raise UsageError(f"--lora {extra.spec}: offline, spo cannot list the repo to find its LoRA file, and "
                                 "with several LoRAs there is no --lora-file.",
                                 "Give that LoRA as the path of its .safetensors file.")
    if request.vae and request.vae != "model":
        if _looks_local(request.vae):
            parts.local_vae_folder(request.vae)
        else:
            _check_repo_id(request.vae, "--vae")


def uses_hub(request: ModelRequest, dtype: str) -> bool:
    """Whether any part of `request` comes from the Hub (a preset, a repo id), not a local path."""
    preset = presets.PRESETS.get(request.model)
    vae = _vae_spec(request, dtype)
    specs = [request.model, request.lora or (preset.lora_repo if preset else None), None if vae == "model" else vae,
             *(r.spec for r in request.loras)]
    return bool(preset) or any(s and not _looks_local(s) for s in specs)


def download_command(request: ModelRequest, dtype: str) -> str:
    """The exact `spo download` that fetches what `request` needs in `dtype`."""
    flags = [("--revision", request.revision), ("--lora", request.lora), ("--lora-file", request.lora_file),
             ("--vae", request.vae), ("--dtype", {"float32": "fp32", "bfloat16": "bf16"}.get(dtype))]
    flags += [("--lora", r.spec) for r in request.loras if r.name is None]
    return " ".join(["spo download", request.model] + [f"{k} {v}" for k, v in flags if v])


def resolve_model(request: ModelRequest, dtype: str, *, local_only: bool = False, force: bool = False,
                  tqdm: TqdmFactory | None = None, downloading: bool = False,
                  hashing: single.HashProgress | None = None) -> ResolvedModel:
    """Find (and fetch, unless `local_only` or offline) everything `request` needs in `dtype`.

    Each pipeline's model_index.json is fetched first and checked (an SDXL pipeline, no custom
    code) before any weight file is; every file is checked to be whole before it is handed on.
    A single-file checkpoint is checked from its header, then hashed (`hashing` shows progress)."""
    fetch = Fetch(local_only, force, tqdm, download_command(request, dtype), downloading)
    if force and offline(fetch):
        raise ModelError("--force fetches every file again from the Hub, and HF_HUB_OFFLINE is set.",
                         "Unset HF_HUB_OFFLINE (on a machine with network access and the same HF_HOME) to repair "
                         "the cache.")
    preset = presets.PRESETS.get(request.model)
    variant = "fp16" if dtype == "float16" else None
    vae_spec = _vae_spec(request, dtype)
    skip = ("vae",) if vae_spec != "model" else ()  # a replaced VAE is never loaded: don't fetch it

    # 1. The pipeline.
    config = None
    if not preset and single.is_single_file(request.model):
        _refuse_file_revision(request.revision)
        path, header = single.checked_file(request.model)
        if vae_spec == "model" and not single.has_vae(header):
            raise single.no_vae(path)
        config, index = single.configs(fetch, path)
        pipeline = parts.Resolved(str(path), "local", path, file=path.name, sha256=single.sha256(path, hashing))
    elif preset:
        pipeline, index = parts.pipeline_from_hub(preset.repo_id, request.revision,
                                                  variant if preset.has_fp16_variant else None, fetch, skip)
    elif _looks_local(request.model):
        _refuse_revision(request.revision, request.model)
        pipeline, index = parts.pipeline_from_folder(request.model, variant, skip)
    else:
        _check_repo_id(request.model, "--model")
        pipeline, index = parts.pipeline_from_hub(request.model, request.revision, variant, fetch, skip)

    # 2. The LoRA: the preset's own unless --lora names another. --revision pins the model only.
    lora = None
    lora_spec = request.lora or (preset.lora_repo if preset else None)
    if lora_spec:
        if _lora_is_local(lora_spec):
            lora = parts.lora_from_file(lora_spec)
        else:
            _check_repo_id(lora_spec, "--lora")
            file = request.lora_file or _known_lora_file(lora_spec)  # the SPO LoRA's, by any model
            lora = parts.lora_from_hub(lora_spec, file, fetch)

    # 2b. LoRAs stacked after it.
    extras = []
    for extra in request.loras:
        if _lora_is_local(extra.spec):
            extras.append((parts.lora_from_file(extra.spec), extra))
        else:
            _check_repo_id(extra.spec, "--lora")
            extras.append((parts.lora_from_hub(extra.spec, _known_lora_file(extra.spec), fetch), extra))

    # 3. The VAE.
    vae = None
    if vae_spec != "model":
        if _looks_local(vae_spec):
            vae = parts.vae_from_folder(vae_spec, variant)
        else:
            _check_repo_id(vae_spec, "--vae")
            vae = parts.vae_from_hub(vae_spec, variant, fetch)

    return ResolvedModel(request, request.model if preset else None, pipeline, dtype, lora, vae, index,
                         extra_loras=tuple(extras), config=config)

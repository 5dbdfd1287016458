"""Where the weights come from: presets, Hub repos and local folders, resolved to local files.

Everything goes through huggingface_hub, so HF_HOME, HF_HUB_CACHE, HF_TOKEN, HF_HUB_OFFLINE and
HF_ENDPOINT behave as in every Hugging Face tool and the cache is shared with them. Only the files
the pipeline will load are fetched: the safetensors of the chosen variant and the small config and
tokenizer files, never `.bin`, ONNX, OpenVINO, Flax or single-file checkpoints.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from spo_cli import presets
from spo_cli.errors import ModelError, UsageError, translate
from spo_cli.request import ModelRequest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".pb")
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # configs, tokenizer vocab/merges, sentencepiece
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
SDXL_CLASSES = ("StableDiffusionXLPipeline",)
# Where each component class of an SDXL pipeline comes from; anything else would be custom code.
LIBRARIES = ("diffusers", "transformers")

TqdmFactory = Callable[[str], type | None]


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
        return d


@dataclass(frozen=True)
class ResolvedModel:
    request: ModelRequest
    preset: str | None
    pipeline: Resolved
    dtype: str
    lora: Resolved | None = None
    vae: Resolved | None = None  # None: the checkpoint's own VAE
    model_index: dict = field(default_factory=dict)  # the pipeline's model_index.json, parsed once, checked

    @property
    def lora_scale(self) -> float | None:
        return self.request.effective_lora_scale if self.lora else None

    def parts(self) -> list[Resolved]:
        return [p for p in (self.pipeline, self.lora, self.vae) if p is not None]

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts())

    def identity(self) -> dict:
        """What decides the weights, for spec hashes: ids, commits, LoRA scale, dtype; not paths."""
        def ident(p: Resolved | None) -> dict | None:
            return None if p is None else {"id": p.id, "commit": p.commit, "variant": p.variant, "file": p.file,
                                           "subfolder": p.subfolder}

        return {"model": ident(self.pipeline), "lora": ident(self.lora),
                "lora_scale": self.lora_scale, "vae": ident(self.vae),
                "dtype": self.dtype}

    def describe(self) -> dict:
        lora = None
        if self.lora:
            lora = dict(self.lora.describe(), file=self.lora.file, scale=self.lora_scale)
        request = asdict(self.request)
        request.pop("device")  # where it ran is recorded separately; a replay picks its own
        return {
            "model_request": request,  # what the user asked for, so replay can ask again
            "model": dict(self.pipeline.describe(), preset=self.preset),
            "lora": lora,
            "vae": self.vae.describe() if self.vae else {"id": None, "source": "model"},
        }


# ---------------------------------------------------------------------------------------------
# Which files a diffusers pipeline folder needs


_WEIGHT_NAME = re.compile(
    r"^[^.]+?(?:\.(?P<v1>[^.-]+))?(?:-\d+-of-\d+)?\.safetensors(?:\.index(?:\.(?P<v2>[^.]+))?\.json)?$"
)


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
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{size} bytes, too short for a safetensors header"
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            return "its header length is impossible: not a safetensors file, or cut short"
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError):
            return "its header is not JSON: not a safetensors file"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)]
    if 8 + n + max(ends, default=0) > size:
        return f"cut short: {size:,} bytes of {8 + n + max(ends):,}"
    return None


# ---------------------------------------------------------------------------------------------
# Hub plumbing


@dataclass(frozen=True)
class Fetch:
    """How to fetch: from the cache only, whether to re-download, the progress bar, and the exact
    `spo download` command that fetches (or repairs) what the request needs, for messages."""

    local_only: bool = False
    force: bool = False
    tqdm: TqdmFactory | None = None
    command: str = "spo download"
    downloading: bool = False  # the command is `spo download` itself: never tell it to run itself

    @property
    def repair(self) -> str:
        return self.command + " --force"


def quiet_hub(debug: bool = False) -> None:
    """No retry chatter or bars from huggingface_hub itself (spo draws its own), unless debugging."""
    from huggingface_hub.utils import logging

    (logging.set_verbosity_warning if debug else logging.set_verbosity_error)()


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub cannot be reached from here, in a few words (None when it can): a bad HF_ENDPOINT,
    DNS, a refused or silent connection (through the proxy if one is set), or a server that accepts
    the connection and never answers. One try each, no retries: a few seconds at most."""
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    endpoint = hub_endpoint()
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        return f"HF_ENDPOINT {endpoint!r} is not an http(s) URL"
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        host, port, via = p.hostname, p.port or 8080, f" through the proxy {p.hostname}:{p.port or 8080}"
    else:
        host, port, via = url.hostname, url.port or (443 if url.scheme == "https" else 80), ""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"the name {host} does not resolve (no DNS{via})"
    except (OSError, UnicodeError) as e:
        return f"{host}: {e}"
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
    except ConnectionRefusedError:
        return f"{host}:{port} refused the connection{via}"
    except TimeoutError:
        return f"{host}:{port} did not answer within {timeout:g} s{via}"
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}{via}"
    # Connected: now one request, so that a server which accepts and then stays silent is caught
    # here rather than after huggingface_hub's minutes of timeouts and retries.
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        pass  # any HTTP answer means the server is there
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError) or "timed out" in str(reason):
            return f"{endpoint} accepted the connection but did not answer within {timeout:g} s{via}"
        return f"{endpoint}: {reason}{via}"
    return None


def _offline_hint(repo: str, fetch: Fetch) -> str:
    from huggingface_hub import constants

    where = f"It is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        reason = " and HF_HUB_OFFLINE is set, so the Hub is not asked"
    else:
        why = unreachable()
        reason = f" and the Hub at {hub_endpoint()} cannot be reached: {why}" if why else ""
    if fetch.downloading:
        fix = ("Unset HF_HUB_OFFLINE to download." if constants.HF_HUB_OFFLINE else
               "Check the network, the proxy variables (HTTPS_PROXY) and HF_ENDPOINT, then try again.")
    else:
        fix = f"On a machine with network access and the same HF_HOME, run `{fetch.command}` first."
    return f"{where}{reason}. {fix}"


def _root_cause(exc: BaseException) -> str:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def _hub_call(fn, repo: str, fetch: Fetch):
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if fetch.local_only or constants.HF_HUB_OFFLINE:
            raise ModelError(f"'{repo}' is not available offline.", _offline_hint(repo, fetch)) from e
        # Online, yet huggingface_hub fell back to a cache without the file: say what the Hub did.
        hint = ("Check the network, the proxy variables (HTTPS_PROXY) and HF_ENDPOINT, then try again."
                if fetch.downloading else
                f"On a machine with network access and the same HF_HOME, run `{fetch.command}` first.")
        raise ModelError(f"'{repo}' could not be fetched from the Hub at {hub_endpoint()} ({_root_cause(e)}), and "
                         "it is not in the local Hugging Face cache.", hint) from e
    except Exception as e:
        err = translate(e, repo=repo)
        if err is None:
            raise
        raise err from e


def _list_files(repo: str, commit: str, snapshot: Path, fetch: Fetch) -> list[str]:
    """The repo's files: from the Hub when it answers, else what the cached snapshot holds."""
    from huggingface_hub import HfApi, constants

    if not fetch.local_only and not constants.HF_HUB_OFFLINE:
        try:
            return HfApi().list_repo_files(repo, revision=commit)
        except Exception as e:  # network down: the cache is all there is
            err = translate(e, repo=repo)
            if err is not None:
                raise err from e
    # Offline: the listing snapshot_download cached (every file of the commit, fetched or not), so that
    # the weights a different dtype needs are found missing rather than silently left out.
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return sorted(f.path for f in get_cached_repo_tree(repo, revision=commit))
    except CachedRepoTreeNotFoundError:
        pass
    return sorted(str(p.relative_to(snapshot)).replace(os.sep, "/") for p in snapshot.rglob("*")
                  if p.is_file() or p.is_symlink())


def _snapshot(repo: str, revision: str | None, patterns: list[str], fetch: Fetch, repo_type: str = "model") -> Path:
    from huggingface_hub import snapshot_download

    return Path(_hub_call(
        lambda: snapshot_download(
            repo, repo_type=repo_type, revision=revision, allow_patterns=patterns, local_files_only=fetch.local_only,
            force_download=fetch.force, tqdm_class=fetch.tqdm(repo) if fetch.tqdm else None,
        ),
        repo, fetch,
    ))


def _fetch(repo: str, revision: str | None, files: list[str], fetch: Fetch) -> Path:
    folder = _snapshot(repo, revision, files, fetch)
    check_files(folder, files, repo, fetch.repair, lambda: _offline_hint(repo, fetch))
    return folder


def _pin(repo: str, revision: str | None, names: tuple[str, ...], fetch: Fetch, what: str) -> tuple[str, Path, str]:
    """Fetch the first of `names` (a small config) that the repo has; return (name, snapshot, commit).

    One small download pins the revision to a commit and finds the snapshot folder, online or off.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for i, name in enumerate(names):
        try:
            path = Path(_hub_call(
                lambda: hf_hub_download(repo, name, revision=revision, local_files_only=fetch.local_only,
                                        force_download=fetch.force), repo, fetch))
        except EntryNotFoundError:
            continue
        except ModelError as e:
            # Offline, a name missing from the cache looks like the repo missing: try the next name.
            if isinstance(e.__cause__, LocalEntryNotFoundError) and i < len(names) - 1:
                continue
            raise
        snapshot = path.parents[len(Path(name).parts) - 1]
        return name, snapshot, snapshot.name
    raise ModelError(f"'{repo}' is not a diffusers {what} repo (it has no {' or '.join(names)}).",
                     "See `spo generate --help` for what --model, --vae and --lora take.")


def _resolve_hub_pipeline(repo: str, revision: str | None, variant: str | None, fetch: Fetch,
                          skip: tuple[str, ...] = ()) -> tuple[Resolved, dict]:
    _, snapshot, commit = _pin(repo, revision, ("model_index.json",), fetch, "pipeline")
    model_index = read_index(snapshot / "model_index.json", repo, fetch.repair)  # before any weight
    files = _list_files(repo, commit, snapshot, fetch)
    chosen, variant = select_pipeline_files(files, model_index, variant, repo, skip)
    folder = _fetch(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, revision or "main", commit, variant, files=tuple(chosen)), model_index


def _resolve_hub_vae(repo: str, revision: str | None, variant: str | None, fetch: Fetch) -> Resolved:
    _, snapshot, commit = _pin(repo, revision, ("config.json", "vae/config.json"), fetch, "VAE")
    files = _list_files(repo, commit, snapshot, fetch)
    chosen, variant, sub = select_vae_files(files, variant)
    if not chosen:
        raise ModelError(
            f"'{repo}' holds no diffusers VAE (config.json and diffusion_pytorch_model*.safetensors).",
            "--vae takes a diffusers AutoencoderKL repo or folder, or 'model' for the checkpoint's own.",
        )
    folder = _fetch(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, revision or "main", commit, variant, subfolder=sub, files=tuple(chosen))


def _resolve_hub_lora(repo: str, file: str | None, revision: str | None, fetch: Fetch) -> Resolved:
    from huggingface_hub import HfApi, constants

    if file is None:
        if fetch.local_only or constants.HF_HUB_OFFLINE:
            raise _lora_file_needed(repo)
        info = _hub_call(lambda: HfApi().model_info(repo, revision=revision), repo, fetch)
        candidates = [s.rfilename for s in info.siblings or [] if s.rfilename.endswith(".safetensors")]
        if len(candidates) != 1:
            raise UsageError(
                f"'{repo}' holds {len(candidates)} .safetensors files; say which with --lora-file.",
                ("Files: " + ", ".join(candidates[:10]) + ".") if candidates else None,
            )
        file = candidates[0]
    if not file.endswith(".safetensors"):
        raise UsageError(f"LoRA file '{file}' is not .safetensors; spo-cli never loads pickled weights.")
    folder = _fetch(repo, revision, [file], fetch)
    commit = folder.name if _COMMIT.match(folder.name) else None
    return Resolved(repo, "hub", folder / file, revision or "main", commit, file=file)


def resolve_files(repo: str, required: tuple[str, ...], optional: tuple[str, ...], fetch: Fetch,
                  revision: str | None = None) -> Resolved:
    """A non-pipeline repo (a scorer's): the `required` files, plus those of `optional` it has.
    The first required file pins the commit; the listing is checked before anything large is fetched."""
    _, snapshot, commit = _pin(repo, revision, required[:1], fetch, "model")
    listing = set(_list_files(repo, commit, snapshot, fetch))
    missing = [f for f in required if f not in listing]
    if missing:
        raise ModelError(f"'{repo}' has no {', '.join(missing)} at commit {commit[:10]}.",
                         "The repo may have been reorganised; please report it to spo-cli.")
    chosen = list(required) + [f for f in optional if f in listing and f not in required]
    folder = _fetch(repo, commit, chosen, fetch)
    return Resolved(repo, "hub", folder, revision or "main", commit, files=tuple(chosen))


def resolve_dataset(repo: str, pattern: str, fetch: Fetch, revision: str | None = None) -> Resolved:
    """The files of a Hub dataset that match `pattern` (a glob), pinned to a commit. Data files
    are named by whoever pushed them (shard counts, hashes), so they are found by pattern."""
    from huggingface_hub import constants

    folder = _snapshot(repo, revision, [pattern], fetch, repo_type="dataset")
    files = sorted(str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*")
                   if (p.is_file() or p.is_symlink()) and fnmatch.fnmatch(p.name, pattern.rsplit("/", 1)[-1]))
    if not files:
        raise ModelError(f"The dataset '{repo}' (commit {folder.name[:10]}) has no file matching {pattern}.",
                         _offline_hint(repo, fetch) if fetch.local_only or constants.HF_HUB_OFFLINE else
                         "The dataset may have been reorganised; please report it to spo-cli.")
    check_files(folder, files, repo, fetch.repair, lambda: _offline_hint(repo, fetch))
    commit = folder.name if _COMMIT.match(folder.name) else None
    return Resolved(repo, "hub", folder, revision or "main", commit, files=tuple(files))


# ---------------------------------------------------------------------------------------------
# Local folders and files


def _looks_local(spec: str) -> bool:
    # A Hub id is exactly "org/name"; anything path-like, or an existing path, is local (as in diffusers).
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or Path(spec).expanduser().exists()


def _local_files(folder: Path) -> list[str]:
    return [str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*") if p.is_file() or p.is_symlink()]


def _local_pipeline_folder(spec: str) -> Path:
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


def _resolve_local_pipeline(spec: str, variant: str | None, skip: tuple[str, ...] = ()) -> tuple[Resolved, dict]:
    folder = _local_pipeline_folder(spec)
    model_index = read_index(folder / "model_index.json", str(folder), None)
    chosen, variant = select_pipeline_files(_local_files(folder), model_index, variant, str(folder), skip)
    check_files(folder, chosen, str(folder), None)
    return Resolved(str(folder), "local", folder, variant=variant, files=tuple(chosen)), model_index


def _local_vae_folder(spec: str) -> Path:
    folder = Path(spec).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"VAE folder {folder} does not exist.")
    return folder


def _resolve_local_vae(spec: str, variant: str | None) -> Resolved:
    folder = _local_vae_folder(spec)
    chosen, variant, sub = select_vae_files(_local_files(folder), variant)
    if not chosen:
        raise UsageError(f"{folder} holds no diffusers VAE (config.json and diffusion_pytorch_model*.safetensors).")
    check_files(folder, chosen, str(folder), None)
    return Resolved(str(folder), "local", folder, variant=variant, subfolder=sub, files=tuple(chosen))


def _local_lora_path(spec: str) -> Path:
    path = Path(spec).expanduser().resolve()
    if path.suffix != ".safetensors":
        raise UsageError(f"LoRA file {path} is not .safetensors; spo-cli never loads pickled weights.")
    if not path.is_file():
        raise UsageError(f"LoRA file {path} does not exist." if not path.exists() else f"LoRA {path} is not a file.")
    return path


def _resolve_local_lora(spec: str) -> Resolved:
    path = _local_lora_path(spec)
    check_files(path.parent, [path.name], str(path.parent), None)
    return Resolved(str(path), "local", path, file=path.name)


def _check_repo_id(spec: str, what: str) -> None:
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(spec)
        ok = spec.count("/") == 1
    except Exception:
        ok = False
    if not ok:
        names = ", ".join(presets.PRESETS)
        raise UsageError(
            f"'{spec}' is neither a preset, an existing folder, nor a Hub repo id (org/name) for {what}.",
            f"Presets: {names}.",
        )


# ---------------------------------------------------------------------------------------------


def _lora_file_needed(repo: str) -> UsageError:
    return UsageError(f"Name the LoRA file in '{repo}' with --lora-file when offline.")


def _refuse_revision(revision: str | None, folder) -> None:
    if revision:
        raise UsageError(f"--revision {revision} applies to Hub repos; {folder} is a local folder.",
                         "Drop --revision, or check out that revision of the folder yourself.")


def precheck(request: ModelRequest) -> None:
    """What can be known of `request` without the Hub or torch: local paths exist and are what they
    should be (a local pipeline's model_index.json is read and checked too), repo ids are repo ids."""
    preset = presets.PRESETS.get(request.model)
    if not preset:
        if _looks_local(request.model):
            folder = _local_pipeline_folder(request.model)
            _refuse_revision(request.revision, folder)
            read_index(folder / "model_index.json", str(folder), None)
        else:
            _check_repo_id(request.model, "--model")
    if request.lora:
        if _looks_local(request.lora) or request.lora.endswith(WEIGHT_SUFFIXES):
            _local_lora_path(request.lora)
        else:
            _check_repo_id(request.lora, "--lora")
            from huggingface_hub import constants

            if request.lora_file is None and constants.HF_HUB_OFFLINE:
                raise _lora_file_needed(request.lora)
    if request.vae and request.vae != "model":
        if _looks_local(request.vae):
            _local_vae_folder(request.vae)
        else:
            _check_repo_id(request.vae, "--vae")


def uses_hub(request: ModelRequest, dtype: str) -> bool:
    """Whether any part of `request` comes from the Hub (a preset, a repo id), not a local path."""
    preset = presets.PRESETS.get(request.model)
    vae = request.vae if request.vae is not None else (presets.FP16_FIX_VAE if dtype == "float16" else "model")
    specs = [request.model, request.lora or (preset.lora_repo if preset else None), None if vae == "model" else vae]
    return bool(preset) or any(s and not _looks_local(s) for s in specs)


def download_command(request: ModelRequest, dtype: str) -> str:
    """The exact `spo download` that fetches what `request` needs in `dtype`."""
    flags = [("--revision", request.revision), ("--lora", request.lora), ("--lora-file", request.lora_file),
             ("--vae", request.vae), ("--dtype", {"float32": "fp32", "bfloat16": "bf16"}.get(dtype))]
    return " ".join(["spo download", request.model] + [f"{k} {v}" for k, v in flags if v])


def resolve(request: ModelRequest, dtype: str, *, local_only: bool = False, force: bool = False,
            tqdm: TqdmFactory | None = None, downloading: bool = False) -> ResolvedModel:
    """Find (and fetch, unless `local_only` or offline) everything `request` needs in `dtype`.

    Each pipeline's model_index.json is fetched first and checked (an SDXL pipeline, no custom
    code) before any weight file is; every file is checked to be whole before it is handed on."""
    from huggingface_hub import constants

    if force and (local_only or constants.HF_HUB_OFFLINE):
        raise ModelError("--force fetches every file again from the Hub, and HF_HUB_OFFLINE is set.",
                         "Unset HF_HUB_OFFLINE (on a machine with network access and the same HF_HOME) to repair "
                         "the cache.")
    preset = presets.PRESETS.get(request.model)
    variant = "fp16" if dtype == "float16" else None
    fetch = Fetch(local_only, force, tqdm, download_command(request, dtype), downloading)
    # The fp16-fix VAE in float16 (as the authors do), the checkpoint's own otherwise.
    vae_spec = request.vae if request.vae is not None else (presets.FP16_FIX_VAE if dtype == "float16" else "model")
    skip = ("vae",) if vae_spec != "model" else ()  # a replaced VAE is never loaded: don't fetch it

    # 1. The pipeline.
    if preset:
        pipeline, index = _resolve_hub_pipeline(preset.repo_id, request.revision,
                                                variant if preset.has_fp16_variant else None, fetch, skip)
    elif _looks_local(request.model):
        _refuse_revision(request.revision, request.model)
        pipeline, index = _resolve_local_pipeline(request.model, variant, skip)
    else:
        _check_repo_id(request.model, "--model")
        pipeline, index = _resolve_hub_pipeline(request.model, request.revision, variant, fetch, skip)

    # 2. The LoRA: the preset's own unless --lora names another. --revision pins the model only.
    lora = None
    lora_spec = request.lora or (preset.lora_repo if preset else None)
    if lora_spec:
        if _looks_local(lora_spec) or lora_spec.endswith(WEIGHT_SUFFIXES):
            lora = _resolve_local_lora(lora_spec)
        else:
            _check_repo_id(lora_spec, "--lora")
            file = request.lora_file or (preset.lora_file if preset and lora_spec == preset.lora_repo else None)
            lora = _resolve_hub_lora(lora_spec, file, None, fetch)

    # 3. The VAE.
    vae = None
    if vae_spec != "model":
        if _looks_local(vae_spec):
            vae = _resolve_local_vae(vae_spec, variant)
        else:
            _check_repo_id(vae_spec, "--vae")
            vae = _resolve_hub_vae(vae_spec, None, variant, fetch)

    return ResolvedModel(request, request.model if preset else None, pipeline, dtype, lora, vae, index)

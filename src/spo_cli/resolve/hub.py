"""Hub access: downloads into the shared Hugging Face cache, reachability, and what to say when the
Hub or the cache lacks something.

Whether to use the cache only, because the Hub cannot be reached, is decided once per command, by
`spo_cli.cli.loading.cache_only` (it warns): here `Fetch.local_only` carries that decision, and
HF_HUB_OFFLINE is huggingface_hub's own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spo_cli.errors import ModelError, translate
from spo_cli.resolve.files import check_files, folder_files

TqdmFactory = Callable[[str], type | None]


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


def offline(fetch: Fetch) -> bool:
    """Whether the Hub is not to be asked: the cache only was chosen, or HF_HUB_OFFLINE is set."""
    from huggingface_hub import constants

    return fetch.local_only or constants.HF_HUB_OFFLINE


# ---------------------------------------------------------------------------------------------
# Reachability and what to say when something is not there


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


def _next_step(fetch: Fetch) -> str:
    """What the user does about a file that is neither in the cache nor fetchable now."""
    from huggingface_hub import constants

    if not fetch.downloading:
        return f"On a machine with network access and the same HF_HOME, run `{fetch.command}` first."
    if constants.HF_HUB_OFFLINE:
        return "Unset HF_HUB_OFFLINE to download."
    return "Check the network, the proxy variables (HTTPS_PROXY) and HF_ENDPOINT, then try again."


def offline_hint(fetch: Fetch) -> str:
    """Why something is not in the cache, and the next step, for a run that did not ask the Hub."""
    from huggingface_hub import constants

    where = f"It is not in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.HF_HUB_OFFLINE:
        reason = " and HF_HUB_OFFLINE is set, so the Hub is not asked"
    else:
        why = unreachable()
        reason = f" and the Hub at {hub_endpoint()} cannot be reached: {why}" if why else ""
    return f"{where}{reason}. {_next_step(fetch)}"


def _root_cause(exc: BaseException) -> str:
    seen = set()
    while (exc.__cause__ or exc.__context__) is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__


def hub_call(fn, repo: str, fetch: Fetch):
    """`fn()`, with huggingface_hub's errors turned into one-paragraph messages naming `repo`."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        return fn()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if offline(fetch):
            raise ModelError(f"'{repo}' is not available offline.", offline_hint(fetch)) from e
        # Online, yet huggingface_hub fell back to a cache without the file: say what the Hub did.
        raise ModelError(f"'{repo}' could not be fetched from the Hub at {hub_endpoint()} ({_root_cause(e)}), and "
                         "it is not in the local Hugging Face cache.", _next_step(fetch)) from e
    except Exception as e:
        err = translate(e, repo=repo)
        if err is None:
            raise
        raise err from e


# ---------------------------------------------------------------------------------------------
# Listing, pinning and fetching


def list_files(repo: str, commit: str, snapshot: Path, fetch: Fetch) -> list[str]:
    """The repo's files: from the Hub when it answers, else what the cached snapshot holds."""
    from huggingface_hub import HfApi

    if not offline(fetch):
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
    return folder_files(snapshot)


def snapshot(repo: str, revision: str | None, patterns: list[str], fetch: Fetch, repo_type: str = "model") -> Path:
    """The snapshot folder of `repo` at `revision`, with the files matching `patterns` in it."""
    from huggingface_hub import snapshot_download

    return Path(hub_call(
        lambda: snapshot_download(
            repo, repo_type=repo_type, revision=revision, allow_patterns=patterns, local_files_only=fetch.local_only,
            force_download=fetch.force, tqdm_class=fetch.tqdm(repo) if fetch.tqdm else None,
        ),
        repo, fetch,
    ))


def fetch_files(repo: str, revision: str | None, files: list[str], fetch: Fetch) -> Path:
    """Exactly `files` of `repo`, each checked whole; the snapshot folder that holds them."""
    folder = snapshot(repo, revision, files, fetch)
    check_files(folder, files, repo, fetch.repair, lambda: offline_hint(fetch))
    return folder


def pin(repo: str, revision: str | None, names: tuple[str, ...], fetch: Fetch, what: str) -> tuple[Path, str]:
    """Fetch the first of `names` (a small config) that the repo has; return (snapshot, commit).

    One small download pins the revision to a commit and finds the snapshot folder, online or off.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for i, name in enumerate(names):
        try:
            path = Path(hub_call(
                lambda: hf_hub_download(repo, name, revision=revision, local_files_only=fetch.local_only,
                                        force_download=fetch.force), repo, fetch))
        except EntryNotFoundError:
            continue
        except ModelError as e:
            # Offline, a name missing from the cache looks like the repo missing: try the next name.
            if isinstance(e.__cause__, LocalEntryNotFoundError) and i < len(names) - 1:
                continue
            raise
        folder = path.parents[len(Path(name).parts) - 1]
        return folder, folder.name
    raise ModelError(f"'{repo}' is not a diffusers {what} repo (it has no {' or '.join(names)}).",
                     "See `spo generate --help` for what --model, --vae and --lora take.")

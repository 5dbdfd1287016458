"""A loopback stand-in for the few Hugging Face Hub endpoints that downloads use.

`HubServer` serves local folders as Hub model repos, one commit each, to the real huggingface_hub client
(pointed at it with HF_ENDPOINT). It answers what `hf_hub_download`, `snapshot_download`,
`HfApi.model_info`/`repo_info` and `HfApi.list_repo_files`/`list_repo_tree` ask for, the way the Hub
does (huggingface_hub 2.x):

- `GET /api/models/{repo}` and `GET /api/models/{repo}/revision/{rev}`: repo info (`sha`, `siblings`);
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=…`: the file listing, paginated with a
  GitHub-style `Link: <…>; rel="next"` header;
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: small ("git") files are served directly with `ETag` (the git
  blob sha1), `X-Repo-Commit` and `Content-Length`; LFS files (weights, by suffix as in the Hub's default
  `.gitattributes`) answer `302` with `X-Linked-Etag` (sha256), `X-Linked-Size`, `X-Repo-Commit` and a
  `Location` on a second loopback port playing the CDN, so the client drops its `Authorization` header
  there as it does for the real CDN;
- `GET /api/agent-harnesses`: an empty registry (huggingface_hub's best-effort agent detection asks once);
- errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) and
  `X-Error-Message`, which is how huggingface_hub picks its exception class.

No Xet headers are ever sent (no `X-Xet-Hash`, no xet-auth link, no `xetHash` in listings), so the
client always takes the plain HTTP path even with `hf_xet` installed.

Every request is recorded (`requests`), and every file whose bytes were served is recorded as
`(repo_id, path)` in `downloads`, so tests can assert exactly what was fetched. The server binds
127.0.0.1 only, on ports the OS picks, answers at most `max_requests` requests, and shuts itself down
after `lifetime` seconds even if the `with` block never ends.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Suffixes the Hub's default .gitattributes sends to LFS; bigger files go to LFS whatever their name.
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model",
    ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth",
    ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
)
LFS_MIN_SIZE = 10 * 1024 * 1024

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(rf"^/cdn/{_REPO}/(?P<sha256>[0-9a-f]{{64}})/(?P<path>.+)$")


@dataclass(frozen=True)
class RepoFileEntry:
    path: str
    source: Path
    size: int
    git_sha1: str  # the git blob id: the ETag of a non-LFS file
    sha256: str  # the LFS oid: the ETag of an LFS file
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1


@dataclass
class Repo:
    repo_id: str
    commit: str
    files: dict[str, RepoFileEntry]

    def folders(self) -> list[str]:
        out = set()
        for p in self.files:
            parts = p.split("/")[:-1]
            out.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return sorted(out)


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # unquoted path, without the query
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    status: int
    server: str  # "hub" or "cdn"
    repo_id: str | None = None  # the repo the request was about, when it named one
    file: str | None = None  # the repo file, for /resolve/ and CDN requests

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def _scan(repo_id: str, folder: Path) -> Repo:
    files = {}
    commit = hashlib.sha1(repo_id.encode())
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        data = p.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        git_sha1 = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = rel.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
        files[rel] = RepoFileEntry(rel, p, len(data), git_sha1, sha256, lfs)
        commit.update(rel.encode() + b"\0" + sha256.encode())
    return Repo(repo_id, commit.hexdigest(), files)


class HubServer:
    """Serve `{repo_id: folder}` as Hub model repos on 127.0.0.1; use as a context manager.

    gated: repo ids whose files need an accepted licence. Their info and listings stay public (as on the
        Hub); `/resolve/` answers 401 without a token and 403 with a token not in `granted_tokens`, both
        with `X-Error-Code: GatedRepo`.
    granted_tokens: tokens that may read gated repos.
    unknown_status: the status for repos the server does not hold, always with `X-Error-Code: RepoNotFound`:
        404, or 401 as the real Hub answers anonymous requests for missing or private repos.
    tree_page_size: entries per page of tree listings (the Hub uses 1000).
    lifetime: seconds after which the server stops by itself.
    max_requests: requests answered; later ones get 503.
    """

    def __init__(self, repos: dict[str, str | os.PathLike], *, gated=(), granted_tokens=(),
                 unknown_status: int = 404, tree_page_size: int = 1000, lifetime: float = 120.0,
                 max_requests: int = 5000):
        self.repos = {rid: _scan(rid, Path(folder)) for rid, folder in repos.items()}
        self.gated = set(gated)
        unknown = self.gated - set(self.repos)
        if unknown:
            raise ValueError(f"gated repos not served: {sorted(unknown)}")
        self.granted_tokens = set(granted_tokens)
        self.unknown_status = unknown_status
        self.tree_page_size = tree_page_size
        self.lifetime = lifetime
        self.max_requests = max_requests
        self.requests: list[Request] = []
        self.downloads: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._timer: threading.Timer | None = None
        self.url = ""  # the HF_ENDPOINT, once started
        self.cdn_url = ""

    # -- what tests look at -------------------------------------------------------------------------

    @property
    def commits(self) -> dict[str, str]:
        return {rid: r.commit for rid, r in self.repos.items()}

    def fetched(self, repo_id: str | None = None) -> set[str] | set[tuple[str, str]]:
        """Files whose bytes were served: paths of `repo_id`, or (repo_id, path) pairs for all repos."""
        with self._lock:
            if repo_id is None:
                return set(self.downloads)
            return {p for r, p in self.downloads if r == repo_id}

    def fetched_repos(self) -> set[str]:
        with self._lock:
            return {r for r, _ in self.downloads}

    def requested(self, method: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if method is None or r.method == method]

    def files_requested(self, repo_id: str) -> set[str]:
        """Files of `repo_id` named in any /resolve/ (HEAD or GET) or CDN request, served or not."""
        with self._lock:
            return {r.file for r in self.requests if r.repo_id == repo_id and r.file is not None}

    def unexpected(self) -> list[Request]:
        """Requests for endpoints this server does not emulate (the client asked for something new)."""
        with self._lock:
            return [r for r in self.requests if r.status == 404 and r.repo_id is None]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.downloads.clear()

    # -- life cycle ---------------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        hub = self._start(_HubHandler)
        cdn = self._start(_CdnHandler)
        self.url = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{cdn.server_address[1]}"
        self._timer = threading.Timer(self.lifetime, self.stop)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self, handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True,
                                  name=f"hubserver-{handler.kind}")
        thread.start()
        self._servers.append(server)
        self._threads.append(thread)
        return server

    def stop(self) -> None:
        with self._lock:
            servers, self._servers = self._servers, []
        if self._timer is not None and self._timer is not threading.current_thread():
            self._timer.cancel()
        for s in servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5)

    # -- bookkeeping from the handlers --------------------------------------------------------------

    def _record(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _exhausted(self) -> bool:
        with self._lock:
            return len(self.requests) >= self.max_requests

    def _record_download(self, repo_id: str, path: str) -> None:
        with self._lock:
            self.downloads.append((repo_id, path))


class _Handler(BaseHTTPRequestHandler):
    kind = "?"
    protocol_version = "HTTP/1.0"  # one request per connection: nothing to keep alive or drain
    timeout = 30  # a stuck client cannot hold a thread for ever
    server_version = "hubserver"
    sys_version = ""

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format, *args):  # noqa: A002 - silence the default stderr log
        pass

    def do_HEAD(self):
        self._handle(body=False)

    def do_GET(self):
        self._handle(body=True)

    def _handle(self, *, body: bool) -> None:
        url = urlsplit(self.path)
        self._path = unquote(url.path)
        self._raw_path = url.path
        self._query = parse_qs(url.query)
        self._body = body
        self._status = 0
        self._repo_id = self._file_path = None
        try:
            if self.hub._exhausted():
                self._error(503, None, "Too many requests for this test server.")
            else:
                self.route()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.hub._record(Request(self.command, self._path, self._query,
                                     {k.lower(): v for k, v in self.headers.items()}, self._status, self.kind,
                                     self._repo_id, self._file_path))

    def route(self) -> None:
        raise NotImplementedError

    # -- responses ----------------------------------------------------------------------------------

    def _send(self, status: int, headers: dict[str, str], payload: bytes = b"") -> None:
        self._status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self._body and payload:
            self.wfile.write(payload)

    def _json(self, data, headers: dict[str, str] | None = None) -> None:
        self._send(200, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                   json.dumps(data).encode())

    def _error(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        h = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": message, **(headers or {})}
        if code:
            h["X-Error-Code"] = code
        self._send(status, h, json.dumps({"error": message}).encode())

    def _file(self, repo: Repo, entry: RepoFileEntry, headers: dict[str, str]) -> None:
        """The file's bytes, honouring `Range: bytes=N-` / `bytes=N-M` as the Hub and its CDN do."""
        size = entry.size
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size:
                self._error(416, None, "Requested range not satisfiable", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{size}"}
        self._status = status
        self.send_response(status)
        for k, v in {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if self._body:
            self.hub._record_download(repo.repo_id, entry.path)
            with open(entry.source, "rb") as f:
                f.seek(start)
                self.wfile.write(f.read(end - start + 1))


class _HubHandler(_Handler):
    kind = "hub"

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _repo(self, repo_id: str) -> Repo | None:
        self._repo_id = repo_id
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(self.hub.unknown_status, "RepoNotFound", "Repository not found")
        return repo

    def _revision(self, repo: Repo, rev: str) -> bool:
        if unquote(rev) in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        return False

    def route(self) -> None:
        path = self._raw_path  # match on the raw path: quoted revisions and file names stay one segment
        if m := _TREE.match(path):
            return self._tree(unquote(m["repo"]), m["rev"], unquote(m["path"] or ""))
        if m := _INFO.match(path):
            return self._info(unquote(m["repo"]), m["rev"] or "main")
        if m := _RESOLVE.match(path):
            return self._resolve(unquote(m["repo"]), m["rev"], unquote(m["path"]))
        if path == "/":  # the home page, which spo's reachability check asks for (HEAD)
            return self._json({})
        if path == "/api/agent-harnesses":  # huggingface_hub's best-effort agent detection: nothing known
            return self._json({"standardEnvVars": [], "harnesses": {}})
        self._error(404, None, f"Not served by the test hub: {self._path}")

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, rev):
            return
        blobs = self._query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for e in repo.files.values():
            s = {"rfilename": e.path}
            if blobs:
                s.update(size=e.size, blobId=e.git_sha1)
                if e.lfs:
                    s["lfs"] = {"sha256": e.sha256, "size": e.size, "pointerSize": 134}
            siblings.append(s)
        self._json({
            "_id": repo.commit[:24], "id": repo.repo_id, "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": repo.commit, "private": False,
            "gated": "manual" if repo.repo_id in self.hub.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": ["diffusers"], "library_name": "diffusers",
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": siblings,
        })

    def _tree(self, repo_id: str, rev: str, folder: str) -> None:
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, rev):
            return
        recursive = self._query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        if prefix and prefix[:-1] not in repo.folders():
            return self._error(404, "EntryNotFound", f"{folder} does not exist on \"{unquote(rev)}\"",
                               {"X-Repo-Commit": repo.commit})
        entries = []
        for d in repo.folders():
            if d.startswith(prefix) and (recursive or "/" not in d[len(prefix):]):
                entries.append({"type": "directory", "oid": hashlib.sha1(f"{repo.commit}:{d}".encode()).hexdigest(),
                                "size": 0, "path": d})
        for e in repo.files.values():
            if e.path.startswith(prefix) and (recursive or "/" not in e.path[len(prefix):]):
                entry = {"type": "file", "oid": e.git_sha1, "size": e.size, "path": e.path}
                if e.lfs:
                    entry["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": 134}
                entries.append(entry)
        entries.sort(key=lambda x: x["path"])
        cursor = int(self._query.get("cursor", ["0"])[0])
        page = entries[cursor: cursor + self.hub.tree_page_size]
        headers = {}
        if cursor + self.hub.tree_page_size < len(entries):
            query = "&".join(f"{k}={quote(v[0])}" for k, v in self._query.items() if k != "cursor")
            nxt = f"{self.hub.url}{self._raw_path}?{query + '&' if query else ''}cursor={cursor + len(page)}"
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        self._file_path = path
        repo = self._repo(repo_id)
        if repo is None or not self._revision(repo, rev):
            return
        if repo.repo_id in self.hub.gated and self._token() not in self.hub.granted_tokens:
            status = 403 if self._token() else 401
            return self._error(
                status, "GatedRepo",
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated "
                "to access it. Please log in." if status == 401 else
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.hub.url}/{repo.repo_id} to ask for access.",
            )
        entry = repo.files.get(path)
        if entry is None:
            return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": repo.commit})
        common = {"X-Repo-Commit": repo.commit, "ETag": f'"{entry.etag}"'}
        if entry.lfs:
            location = f"{self.hub.cdn_url}/cdn/{quote(repo.repo_id)}/{entry.sha256}/{quote(entry.path)}"
            return self._send(302, {
                **common, "X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
                "Location": location, "Content-Type": "text/plain; charset=utf-8",
            }, f"Found. Redirecting to {location}".encode())
        self._file(repo, entry, common)


class _CdnHandler(_Handler):
    kind = "cdn"

    def route(self) -> None:
        m = _CDN.match(self._raw_path)
        if m:
            self._repo_id, self._file_path = unquote(m["repo"]), unquote(m["path"])
        repo = self.hub.repos.get(unquote(m["repo"])) if m else None
        entry = repo.files.get(unquote(m["path"])) if repo else None
        if entry is None or entry.sha256 != m["sha256"] or not entry.lfs:
            return self._error(404, None, "NoSuchKey")
        self._file(repo, entry, {"ETag": f'"{entry.sha256}"'})

"""Hostile run, round two (issue 20): `spo serve` from a hostile web page, the `--server` client against a
lying server, and the parsers. Run through `python benchmarks/hostile.py --round2 --out FILE.md`.

Three areas, every case bounded in time (a deadline per case; a case past it is a hang) and memory
(RLIMIT_AS on every child, and the peak RSS read back):

- **server**: a real `spo serve` with the tiny random model on a loopback port (and a few more servers for
  the cases that poison one: gallery files, tokens, `--json --debug`, prompts that cost minutes), driven
  with raw HTTP: Origin and Content-Type (what a page on another site can send without a preflight),
  Host (DNS rebinding), tokens, hostile bodies, sampler names, sizes, output paths, cost;
- **client**: `spo generate/batch --server URL` against a loopback server of this script that answers
  scripted lies (garbage, wrong types and sizes, 200,000-deep JSON, a multi-GB body, a decompression bomb,
  terminal escapes, a redirect to another host...), with the real server's answers as the honest template;
- **parsers**: infotext and A1111 syntax in a child process (CPU time of the call itself), the infotext
  writer read back for every sampler, prompt files, sidecars and `spo replay` of files that are not files.

Each case records the input, the outcome (exit code or HTTP status), the first line of the message,
whether a Traceback or "Unexpected" appeared, wall and CPU time, peak RSS, the files written, and a
verdict by these rules, in order:

- **defect**: a Traceback (without --debug) or "Unexpected"; an HTTP 5xx; a hang (past the case's
  deadline); peak RSS over 2 GiB or a MemoryError; a silent wrong result, checked per case (an image whose
  size differs from its sidecar's, fewer images than asked with exit 0, a request from another origin or
  Host answered 200, a token sent to another host, server text shown as markup or escapes, a refused
  legitimate request, a parser slower than linear...);
- **poor message**: the right refusal with a message that does not say what was wrong and where
  (a wrong exit code for a refusal, no message, a message of another problem, a raw Python warning);
- **good** otherwise.

The table goes to stdout and to `--out` (markdown), with a summary by area and verdict; `--json` keeps the
rows. Exit status 1 when any case is a defect. `--only REGEX` runs a subset (ids), `--list` lists them.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))  # this tree's spo_cli, for the fixtures and probes

MiB, GiB = 1 << 20, 1 << 30
RSS_BOUND_MB = 2048  # peak RSS over this is a defect
AS_LIMIT = 3 * GiB  # every child's address space: a runaway read fails there, not in the machine
FSIZE_LIMIT = 1 * GiB  # and its largest file
TINY_GEN = {"size": "64x64", "steps": 1}
TINY_A1111 = {"width": 64, "height": 64, "steps": 1}
SHELL_SPECIAL = re.compile(r"[`$;|&<>(){}\\'\"*?!\n\r\t]")  # what a shell reads in a word (not - ~ #: inside a path)
ESC = "\x1b"
# spo's own "Unexpected <Error>: …, please report it" (not Python's "Unexpected UTF-8 BOM" in a JSON message)
UNEXPECTED = re.compile(r"Unexpected [A-Za-z_.]+:")

ROOT: Path  # this run's work folder
ENV: dict  # the environment of every spo child (offline tiny cache, HOME inside ROOT)
PY = sys.executable


# --------------------------------------------------------------------------------------------
# Records


@dataclass
class Row:
    id: str
    area: str
    input: str
    outcome: str = "-"
    message: str = ""
    tb: bool = False  # a Traceback appeared
    unexpected: bool = False  # "Unexpected" appeared
    wall_s: float = 0.0
    cpu_s: float | None = None
    rss_mb: float | None = None
    files: str = ""
    verdict: str = "good"
    why: list = field(default_factory=list)
    base: list = field(default_factory=list, repr=False)  # the case's own problems, before judge's rules


def judge(row: Row, problems: list[tuple[str, str]]) -> Row:
    """problems: (level, reason) with level 'defect' or 'poor'; the worst wins."""
    row.base = list(problems)
    if row.tb:
        problems.append(("defect", "a Traceback"))
    if row.unexpected:
        problems.append(("defect", "'Unexpected'"))
    if row.rss_mb is not None and row.rss_mb > RSS_BOUND_MB:
        problems.append(("defect", f"peak RSS {row.rss_mb:,.0f} MB > {RSS_BOUND_MB} MB"))
    row.why = [f"{lvl}: {why}" for lvl, why in problems]
    levels = {lvl for lvl, _ in problems}
    row.verdict = "defect" if "defect" in levels else ("poor message" if "poor" in levels else "good")
    return row


def clean(text) -> str:
    """Any text as printable UTF-8 (a lone surrogate or a control character shown escaped)."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def one_line(text: str, n: int = 140) -> str:
    text = clean(text or "")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)", "", text or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    pick = next((ln for ln in lines if re.match(r"(error|Error):", ln)), None)
    pick = pick or next((ln for ln in lines if "Unexpected" in ln or "Traceback" in ln), None)
    pick = pick or next((ln for ln in lines if ln.startswith("warning:") and "far from SDXL" not in ln), None)
    pick = pick or (lines[0] if lines else "")
    # an error paragraph continues on the next lines (Rich wraps at 80 columns)
    if pick and pick.startswith("error:"):
        i = lines.index(pick)
        for ln in lines[i + 1:i + 4]:
            if re.match(r"(error|warning|✓|Next step)", ln):
                break
            pick += " " + ln
    pick = pick.replace(str(ROOT), "$ROOT") if "ROOT" in globals() else pick
    pick = pick.encode("unicode_escape").decode("ascii") if any(ord(c) < 32 for c in pick) else pick
    return pick if len(pick) <= n else pick[: n - 1] + "…"


# --------------------------------------------------------------------------------------------
# Children: bounded in memory and time


def _limits():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass
class Proc:
    rc: int | None
    out: str
    err: str
    wall: float
    cpu: float
    rss_mb: float
    hang: bool


def run_proc(argv: list, cwd: Path, env: dict | None = None, deadline: float = 30, stdin: bytes | None = None) -> Proc:
    """Run a child in its own session under _limits; past `deadline` its whole group is killed."""
    fo, fe = tempfile.TemporaryFile(dir=ROOT), tempfile.TemporaryFile(dir=ROOT)
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=cwd, env=env or ENV, stdout=fo, stderr=fe, preexec_fn=_limits,
                         start_new_session=True, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL)
    if stdin is not None:
        def feed():
            try:
                p.stdin.write(stdin)
                p.stdin.close()
            except OSError:
                pass
        threading.Thread(target=feed, daemon=True).start()
    hang = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > deadline:
            hang = True
            _killpg(p.pid)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.03)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    _killpg(p.pid)  # what it left behind (bash's process substitutions)
    fo.seek(0)
    fe.seek(0)
    out = fo.read(4 * MiB).decode("utf-8", "replace")
    err = fe.read(4 * MiB).decode("utf-8", "replace")
    fo.close()
    fe.close()
    return Proc(None if hang else p.returncode, out, err, wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, hang)


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


def spo(*args) -> list:
    return [PY, "-m", "spo_cli", *args]


def proc_row(row: Row, p: Proc, debug: bool = False) -> Row:
    row.outcome = "hang" if p.hang else f"exit {p.rc}"
    first_out = next((ln for ln in p.out.splitlines() if ln.strip()), "")
    row.message = (one_line(first_out) if p.rc == 0 and first_out else one_line(p.err) or one_line(p.out)) or "(no message)"
    row.tb = "Traceback" in p.err and not debug
    row.unexpected = bool(UNEXPECTED.search(p.err))
    row.wall_s, row.cpu_s, row.rss_mb = p.wall, p.cpu, p.rss_mb
    return row


def base_problems(p: Proc, deadline: float) -> list:
    out = []
    if p.hang:
        out.append(("defect", f"hang: no end within {deadline:g} s (killed)"))
    if "MemoryError" in p.err:
        out.append(("defect", "MemoryError: the read is unbounded (stopped by RLIMIT_AS)"))
    if p.rc is not None and p.rc < 0:
        out.append(("defect", f"killed by signal {-p.rc}"))
    return out


def listing(folder: Path) -> set[str]:
    if not folder.is_dir():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def files_note(new: set[str]) -> str:
    if not new:
        return "none"
    names = sorted(new)
    return ", ".join(n if len(n) < 40 else n[:37] + "…" for n in names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")


# --------------------------------------------------------------------------------------------
# A real `spo serve`


class SpoServer:
    def __init__(self, name: str, out: Path, extra: tuple = (), env: dict | None = None):
        self.name, self.out, self.extra, self.env = name, out, extra, env or ENV
        self.p = None
        self.url = None

    started: list = []  # every server this run started, stopped at the end whatever happens

    def start(self, ready: bool = True, deadline: float = 120) -> "SpoServer":
        self.last = None
        SpoServer.started.append(self)
        self.log = ROOT / f"serve-{self.name}-{int(time.time() * 1000)}.err"
        self.stdout = ROOT / f"serve-{self.name}-{int(time.time() * 1000)}.out"
        self.p = subprocess.Popen(spo("serve", "--port", "0", "--device", "cpu", "--json", "--out", str(self.out),
                                      *self.extra), cwd=ROOT, env=self.env, stdout=open(self.stdout, "wb"),
                                  stderr=open(self.log, "wb"), preexec_fn=_limits, start_new_session=True,
                                  stdin=subprocess.DEVNULL)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < deadline:
            url = _url_line(self.stdout.read_text(errors="replace"))
            if url:
                self.url = url
                break
            if self.p.poll() is not None:
                raise RuntimeError(f"spo serve {self.name} exited {self.p.returncode}: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"spo serve {self.name} printed no URL in {deadline} s")
        self.host, self.port = self.url.split("//")[1].rsplit(":", 1)
        self.port = int(self.port)
        if ready:
            while time.perf_counter() - t0 < deadline:
                try:
                    if request(self, "GET", "/health", deadline=5).status == 200:
                        return self
                except OSError:
                    pass
                time.sleep(0.25)
            raise RuntimeError(f"spo serve {self.name} not ready in {deadline} s: {self.log.read_text()[-2000:]}")
        return self

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def stop(self) -> None:
        if self.p is not None:
            time.sleep(0.2)
            late_log(self)
            self.last = None
        if self.p is not None and self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                _killpg(self.p.pid)
                self.p.wait()
        self.p = None

    def cpu(self) -> float:
        try:
            fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError):
            return 0.0

    def hwm_mb(self) -> float:
        try:
            for ln in Path(f"/proc/{self.p.pid}/status").read_text().splitlines():
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
        except (OSError, AttributeError):
            pass
        return 0.0

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read(2 * MiB).decode("utf-8", "replace")


def _url_line(text: str) -> str | None:
    for ln in text.splitlines():
        try:
            return json.loads(ln)["url"]
        except (ValueError, KeyError, TypeError):
            continue
    return None


@dataclass
class Reply:
    status: int | None  # None: no answer before the deadline
    headers: dict
    body: bytes
    wall: float
    error: str = ""
    cpu: float = 0.0  # the server's CPU seconds during the request

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def message(self) -> str:
        j = self.json()
        if isinstance(j, dict) and isinstance(j.get("error"), dict):
            return str(j["error"].get("message"))
        if isinstance(j, dict) and "detail" in j:
            return str(j["detail"])
        if isinstance(j, dict):
            keys = ", ".join(list(j)[:6])
            return f"{{{keys}}}"
        return self.body[:120].decode("utf-8", "replace") or self.error


def request(srv, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            host: str | bytes | None = "default", deadline: float = 30, chunks=None, read_limit: int = 64 * MiB) -> Reply:
    """One raw HTTP request: any Host (or none), any header bytes, a body or a chunked stream."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=deadline)
    t0 = time.perf_counter()
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host == "default":
            conn.putheader("Host", f"127.0.0.1:{srv.port}")
        elif host is not None:
            conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if chunks is not None:
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            try:
                for c in chunks:
                    if time.perf_counter() - t0 > deadline:
                        break
                    conn.send(b"%x\r\n%s\r\n" % (len(c), c))
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass  # the server stopped reading: its answer tells why
        else:
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        r = conn.getresponse()
        data = r.read(read_limit)
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, data, time.perf_counter() - t0)
    except (socket.timeout, TimeoutError):
        return Reply(None, {}, b"", time.perf_counter() - t0, "timeout")
    except (OSError, http.client.HTTPException) as e:
        return Reply(-1, {}, b"", time.perf_counter() - t0, f"{type(e).__name__}: {e}")
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# Server cases


@dataclass
class SCase:
    id: str
    desc: str
    method: str = "POST"
    path: str = "/v1/images/generations"
    body: object = None  # dict/list → JSON; bytes as is; None → no body
    headers: dict = field(default_factory=lambda: {"Content-Type": "application/json"})
    host: object = "default"
    want: str = "refuse"  # refuse (4xx) | ok (2xx) | any (not 5xx)
    why: str = ""  # what a 2xx means when refuse is wanted
    check: Callable | None = None  # check(reply, new_files, srv) -> [(level, reason)]
    deadline: float = 30
    chunks: Callable | None = None  # () -> iterator of bytes, sent chunked
    server: str = "main"
    restart_after_hang: bool = False
    before: Callable | None = None  # before(srv): put files in place
    after: Callable | None = None  # after(srv): clean up (unblock a FIFO)


def J(obj) -> bytes:
    return json.dumps(obj).encode()


def gen(**kw) -> dict:
    return {"prompt": "a cat", **TINY_GEN, **kw}


def a1(**kw) -> dict:
    return {"prompt": "a cat", **TINY_A1111, **kw}


EVIL = "http://evil.example"


def cors_cases() -> list[SCase]:
    S = SCase
    own = lambda srv: f"http://127.0.0.1:{srv.port}"  # noqa: E731
    page = "a page on another site can make images and write files on this machine"
    out = [
        S("co-textplain", "no-cors POST, Content-Type text/plain, Origin evil", body=J(gen()),
          headers={"Content-Type": "text/plain", "Origin": EVIL}, why=page),
        S("co-textplain-charset", "text/plain;charset=UTF-8 (what fetch sends for a string body)", body=J(gen()),
          headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": EVIL}, why=page),
        S("co-form", "application/x-www-form-urlencoded from a <form>", body=J(gen()),
          headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": EVIL}, why=page),
        S("co-multipart", "multipart/form-data from a <form>", body=J(gen()),
          headers={"Content-Type": "multipart/form-data; boundary=x", "Origin": EVIL}, why=page),
        S("co-no-ctype", "no Content-Type, Origin evil", body=J(gen()), headers={"Origin": EVIL}, why=page),
        S("co-json-evil", "application/json with Origin evil (after a preflight it must still be refused)",
          body=J(gen()), headers={"Content-Type": "application/json", "Origin": EVIL},
          why="another origin is served (403 wanted)"),
        S("co-null-origin", "Origin: null (sandboxed iframe), text/plain", body=J(gen()),
          headers={"Content-Type": "text/plain", "Origin": "null"}, why=page),
        S("co-prefix-origin", "Origin http://127.0.0.1:PORT.evil.example", body=J(gen()),
          headers={"Content-Type": "application/json", "Origin": "__OWN__.evil.example"},
          why="an origin that only starts like this server's is served"),
        S("co-userinfo-origin", "Origin http://127.0.0.1:PORT@evil.example", body=J(gen()),
          headers={"Content-Type": "application/json", "Origin": "__OWN__@evil.example"},
          why="a malformed origin is served"),
        S("co-txt2img", "A1111 txt2img, text/plain, Origin evil", path="/sdapi/v1/txt2img", body=J(a1()),
          headers={"Content-Type": "text/plain", "Origin": EVIL}, why=page),
        S("co-run", "/spo/v1/run, text/plain, Origin evil", path="/spo/v1/run",
          body=J({"model": "spo", "images": [{"prompt": "a cat", "seed": 1, "width": 64, "height": 64, "steps": 1}]}),
          headers={"Content-Type": "text/plain", "Origin": EVIL}, why=page),
        S("co-interrupt", "POST /sdapi/v1/interrupt, no body, Origin evil", path="/sdapi/v1/interrupt", body=b"",
          headers={"Origin": EVIL}, why="another site can interrupt the running call"),
        S("co-options", "POST /sdapi/v1/options text/plain, Origin evil", path="/sdapi/v1/options",
          body=J({"sd_model_checkpoint": "x"}), headers={"Content-Type": "text/plain", "Origin": EVIL},
          why="a state-changing endpoint takes text/plain from another origin"),
        S("co-gallery-get", "GET /spo/v1/gallery with Origin evil", method="GET", path="/spo/v1/gallery",
          body=None, headers={"Origin": EVIL}, why="another origin is served the gallery"),
        S("co-info-get", "GET /spo/v1/info with Origin evil", method="GET", path="/spo/v1/info", body=None,
          headers={"Origin": EVIL}, why="another origin is served the output folder and models"),
        S("co-preflight", "OPTIONS preflight from evil asking POST + content-type", method="OPTIONS", body=None,
          headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                   "Access-Control-Request-Headers": "content-type"}, want="any",
          check=lambda r, n, s: [("defect", "the preflight allows the evil origin")]
          if r.headers.get("access-control-allow-origin") in (EVIL, "*") else []),
        S("co-referer-only", "text/plain, no Origin, Referer evil", body=J(gen()),
          headers={"Content-Type": "text/plain", "Referer": EVIL + "/x"}, why="a text/plain body is parsed"),
        S("co-json-typo", "Content-Type application/jsonx", body=J(gen()),
          headers={"Content-Type": "application/jsonx"}, why="a non-JSON content type is parsed as JSON"),
        S("co-text-json", "Content-Type text/json", body=J(gen()), headers={"Content-Type": "text/json"},
          why="a non-JSON content type is parsed as JSON"),
        # what must keep working
        S("co-same-origin", "Origin http://127.0.0.1:PORT, application/json (the page)", body=J(gen()),
          headers={"Content-Type": "application/json", "Origin": "__OWN__"}, want="ok"),
        S("co-json-charset", "application/json; charset=utf-8, no Origin (curl, scripts)", body=J(gen()),
          headers={"Content-Type": "application/json; charset=utf-8"}, want="ok"),
        S("co-localhost-origin", "Origin http://localhost:PORT, Host localhost:PORT", body=J(gen()),
          headers={"Content-Type": "application/json", "Origin": "http://localhost:__PORT__"},
          host="localhost:__PORT__", want="ok"),
        S("co-same-origin-get", "GET /spo/v1/gallery with its own Origin", method="GET", path="/spo/v1/gallery",
          body=None, headers={"Origin": "__OWN__"}, want="ok"),
    ]
    del own
    return out


def host_cases() -> list[SCase]:
    S = SCase
    rebind = "a DNS-rebinding page (Host {}) is served"
    out = []
    for i, (host, path, method) in enumerate([
            ("evil.example", "/spo/v1/info", "GET"), ("evil.example", "/spo/v1/gallery", "GET"),
            ("evil.example:__PORT__", "/spo/v1/gallery", "GET"), ("127.0.0.1.evil.example", "/spo/v1/info", "GET"),
            ("localhost.evil.example:__PORT__", "/spo/v1/info", "GET"), ("evil.example", "/sdapi/v1/options", "GET"),
            ("evil.example", "/metrics", "GET"), ("evil.example", "/sdapi/v1/sd-models", "GET"),
            ("evil.example", "/spo/v1/models", "GET"), ("evil.example", "/v1/images/generations", "POST"),
            ("evil.example", "/sdapi/v1/txt2img", "POST"), ("evil.example", "/outputs/__FIRST__", "GET")]):
        body = J(gen()) if path == "/v1/images/generations" else (J(a1()) if path.endswith("txt2img") else None)
        out.append(S(f"host-{i:02d}-{host.split(':')[0].split('.')[0]}-{path.strip('/').replace('/', '-')[:18]}",
                     f"{method} {path.replace('__FIRST__', '<an image>')} with Host: {host.replace('__PORT__', 'PORT')}", method=method, path=path, body=body, host=host,
                     headers={"Content-Type": "application/json"} if body else {}, why=rebind.format(host)))
    out += [
        S("host-own-ip", "GET /spo/v1/info, Host 127.0.0.1:PORT", method="GET", path="/spo/v1/info", headers={},
          want="ok"),
        S("host-localhost", "GET /spo/v1/info, Host localhost:PORT", method="GET", path="/spo/v1/info",
          headers={}, host="localhost:__PORT__", want="ok"),
        S("host-ipv6-loopback", "GET /spo/v1/info, Host [::1]:PORT", method="GET", path="/spo/v1/info",
          headers={}, host="[::1]:__PORT__", want="ok"),
        S("host-localhost-noport", "GET /spo/v1/info, Host localhost", method="GET", path="/spo/v1/info",
          headers={}, host="localhost", want="ok"),
        S("host-missing", "GET /spo/v1/info with no Host header (HTTP/1.1)", method="GET", path="/spo/v1/info",
          headers={}, host=None, want="any"),
        S("host-10k", "GET /spo/v1/info with a 10,000-character Host", method="GET", path="/spo/v1/info",
          headers={}, host="a" * 10_000, want="any"),
        S("host-nul", "GET /spo/v1/info with a NUL in Host", method="GET", path="/spo/v1/info", headers={},
          host="127.0.0.1\x00.evil.example", want="any",
          check=lambda r, n, s: [("defect", "a Host with a NUL is served")] if r.status == 200 else []),
        S("host-two", "two Host headers: evil.example then 127.0.0.1", method="GET", path="/spo/v1/info",
          headers={"Host": "127.0.0.1:__PORT__"}, host="evil.example", want="any",
          check=lambda r, n, s: [("poor", "two Host headers are served (RFC 9112: 400)")] if r.status == 200 else []),
    ]
    return out


def body_cases() -> list[SCase]:
    S = SCase
    deep = lambda n: b'{"prompt": "a cat", "x": ' + b"[" * n + b"]" * n + b"}"  # noqa: E731
    out = [
        S("b-nan", "guidance NaN literal", body=b'{"prompt":"a cat","guidance":NaN,"size":"64x64","steps":1}',
          why="NaN accepted"),
        S("b-infinity", "guidance Infinity literal", body=b'{"prompt":"a cat","guidance":Infinity}', why="Infinity accepted"),
        S("b-1e999", "guidance 1e999 (reads as inf)", body=b'{"prompt":"a cat","guidance":1e999}', why="inf accepted"),
        S("b-deep-20", "a field nested 20 deep", body=deep(20), why="over-deep body accepted"),
        S("b-deep-200k", "a field nested 200,000 deep", body=deep(200_000), why="accepted"),
        S("b-huge-cl", "5 MiB body with Content-Length", body=J(gen(negative_prompt="x" * (5 * MiB))),
          why="accepted", check=lambda r, n, s: [] if r.status == 413 else [("poor", f"{r.status}, not 413")]),
        S("b-huge-chunked", "64 MiB chunked body, no Content-Length", body=None,
          chunks=lambda: (b"x" * MiB for _ in range(64)), why="accepted",
          check=lambda r, n, s: [] if r.status in (413, -1) else [("poor", f"{r.status}, not 413")]),
        S("b-bad-utf8", "prompt bytes that are not UTF-8", body=b'{"prompt":"a \xff\xfe cat"}', why="accepted"),
        S("b-surrogate", "prompt with a lone surrogate escape", body=b'{"prompt":"a \\ud800 cat"}', why="accepted"),
        S("b-prompt-int", "prompt is a number", body=J({"prompt": 42, **TINY_GEN}), why="accepted"),
        S("b-prompt-list", "prompt is a list", body=J({"prompt": ["a", "b"], **TINY_GEN}), why="accepted"),
        S("b-prompt-obj", "prompt is an object", body=J({"prompt": {"a": 1}, **TINY_GEN}), why="accepted"),
        S("b-prompt-null", "prompt null", body=J({"prompt": None, **TINY_GEN}), why="accepted"),
        S("b-n-str", "n is \"2\"", body=J(gen(n="2")), want="any"),
        S("b-n-bool", "n is true", body=J(gen(n=True)), why="a boolean read as 1"),
        S("b-n-float", "n is 1.5", body=J(gen(n=1.5)), why="1.5 images accepted"),
        S("b-n-huge", "n is 10**30", body=J(gen(n=10**30)), why="accepted"),
        S("b-n-neg", "n is -1", body=J(gen(n=-1)), why="accepted"),
        S("b-steps-neg", "steps -1", body=J(gen(steps=-1)), why="accepted"),
        S("b-steps-str", "steps \"abc\"", body=J(gen(steps="abc")), why="accepted"),
        S("b-guidance-str", "guidance \"5\"", body=J(gen(guidance="5")), want="any"),
        S("b-seed-2^64", "seed 2**64", body=J(gen(seed=2**64)), why="accepted"),
        S("b-seed-neg2", "seed -2", body=J(gen(seed=-2)), why="accepted"),
        S("b-seed-float", "seed 1.5", body=J(gen(seed=1.5)), why="accepted"),
        S("b-dup-keys", "duplicate key: prompt twice", body=b'{"prompt":"a cat","prompt":"a dog","size":"64x64","steps":1}',
          want="any", check=lambda r, n, s: [("poor", "duplicate keys accepted silently (last wins, no warning)")]
          if r.status == 200 and "prompt" not in json.dumps((r.json() or {}).get("spo", {}).get("warnings", [])) else []),
        S("b-array", "body is a JSON array", body=b"[1,2]", why="accepted"),
        S("b-null", "body is null", body=b"null", why="accepted"),
        S("b-empty", "empty body", body=b"", why="accepted"),
        S("b-bom", "UTF-8 BOM before the JSON", body=b"\xef\xbb\xbf" + J(gen()), want="any"),
        S("b-trailing", "JSON then garbage", body=J(gen()) + b"garbage", why="accepted"),
        S("b-size-junk", "size 64x64junk", body=J({"prompt": "a cat", "size": "64x64junk", "steps": 1}), why="accepted"),
        S("b-size-arabic", "size in Arabic-Indic digits ٦٤x٦٤", body=J({"prompt": "a cat", "size": "٦٤x٦٤", "steps": 1}),
          why="accepted"),
        S("b-size-fullwidth", "size in full-width digits ６４x６４", body=J({"prompt": "a cat", "size": "６４x６４"}),
          why="accepted"),
        S("b-size-superscript", "size 6⁴x64", body=J({"prompt": "a cat", "size": "6⁴x64"}), why="accepted"),
        S("b-size-newline", "size \"64x64\\n\"", body=J({"prompt": "a cat", "size": "64x64\n"}), why="accepted"),
        S("b-size-space", "size \" 64x64\"", body=J({"prompt": "a cat", "size": " 64x64"}), why="accepted"),
        S("b-size-zero", "size 0x0", body=J({"prompt": "a cat", "size": "0x0"}), why="accepted"),
        S("b-size-huge", "size 99999x99999", body=J({"prompt": "a cat", "size": "99999x99999"}), why="accepted"),
        S("b-size-int", "size 64 (a number)", body=J({"prompt": "a cat", "size": 64}), why="accepted"),
        S("b-size-and-width", "size and width both", body=J({"prompt": "a cat", "size": "64x64", "width": 64}),
          why="accepted"),
        S("b-a1111-width-str", "txt2img width \"64\"", path="/sdapi/v1/txt2img", body=J(a1(width="64")), want="any"),
        S("b-a1111-width-float", "txt2img width 64.5", path="/sdapi/v1/txt2img", body=J(a1(width=64.5)),
          why="accepted"),
        S("b-a1111-batch-huge", "txt2img batch_size 10**9", path="/sdapi/v1/txt2img", body=J(a1(batch_size=10**9)),
          why="accepted"),
        S("b-model-markup", "model \"[/bold]\"", body=J(gen(model="[/bold]")), want="any"),
        S("b-response-format", "response_format \"../../etc\"", body=J(gen(response_format="../../etc")),
          why="accepted"),
        S("b-scheduler-markup", "scheduler \"[red]x[/red]\"", body=J(gen(scheduler="[red]x[/red]")), why="accepted"),
    ]
    return out


def sampler_cases() -> list[SCase]:
    S = SCase
    diffusers_shaped = "a diffusers-class-shaped sampler name silently becomes the checkpoint's default"
    out = []
    for name in ("DPMSolverMultistepScheduler", "AEvilScheduler", "EulerDiscreteScheduler", "DDIMScheduler",
                 "XScheduler"):
        out.append(S(f"smp-{name}", f"txt2img sampler_name {name!r}", path="/sdapi/v1/txt2img",
                     body=J(a1(sampler_name=name)), why=diffusers_shaped))
    out += [
        S("smp-unknown", "sampler_name 'Foo'", path="/sdapi/v1/txt2img", body=J(a1(sampler_name="Foo")), why="accepted"),
        S("smp-markup", "sampler_name '[red]x[/red]'", path="/sdapi/v1/txt2img", body=J(a1(sampler_name="[red]x[/red]")),
          why="accepted"),
        S("smp-int", "sampler_name 3", path="/sdapi/v1/txt2img", body=J(a1(sampler_name=3)), why="accepted"),
        S("smp-schedule-junk", "sampler DPM++ 2M, scheduler 'Bogus'", path="/sdapi/v1/txt2img",
          body=J(a1(sampler_name="DPM++ 2M", scheduler="Bogus")), why="accepted"),
        S("smp-dpm2m-no-schedule", "sampler_name 'DPM++ 2M', no scheduler (A1111 1.9+ runs Karras)",
          path="/sdapi/v1/txt2img", body=J(a1(sampler_name="DPM++ 2M")), want="ok", check=_ran_karras),
        S("smp-euler-a", "sampler_name 'Euler a' (control)", path="/sdapi/v1/txt2img", body=J(a1(sampler_name="Euler a")),
          want="ok"),
        S("smp-dpm-karras", "sampler DPM++ 2M + scheduler Karras (control)", path="/sdapi/v1/txt2img",
          body=J(a1(sampler_name="DPM++ 2M", scheduler="Karras")), want="ok"),
    ]
    return out


def _ran_karras(r, new, srv):
    sides = [srv.out / f for f in new if f.endswith(".json")]
    if r.status != 200 or not sides:
        return []
    sched = json.loads(sides[0].read_text()).get("scheduler") or {}
    karras = "karras" in str(sched.get("name")) or (sched.get("config") or {}).get("use_karras_sigmas")
    return [] if karras else [("defect", f"ran {sched.get('name')!r} without Karras sigmas: A1111 runs DPM++ 2M Karras")]


def _warned(word: str):
    def check(r, new, srv):
        j = r.json() or {}
        warnings = j.get("spo", {}).get("warnings") if "spo" in j else json.loads(j.get("info", "{}")).get("warnings")
        if r.status == 200 and not re.search(word, json.dumps(warnings or []), re.I):
            return [("defect", f"accepted with no warning that names {word!r}: encoded as text")]
        return []
    return check


def prompt_cases() -> list[SCase]:
    S = SCase
    return [
        S("pr-lora-tag", "prompt '<lora:foo:1.2> a cat' (A1111 strips extra-network tags)",
          body=J(gen(prompt="<lora:foo:1.2> a cat")), want="any", check=_warned("lora")),
        S("pr-hypernet-tag", "prompt '<hypernet:bar:1> a cat'", body=J(gen(prompt="<hypernet:bar:1> a cat")),
          want="any", check=_warned("hypernet|extra.network|<")),
        S("pr-and", "prompt 'a cat AND a dog' (composable diffusion)", body=J(gen(prompt="a cat AND a dog")),
          want="any", check=_warned("AND")),
        S("pr-cat-65504-fp32", "prompt '(cat:65504)' on a float32 server", body=J(gen(prompt="(cat:65504)")),
          want="any"),
        S("pr-nested-parens", "prompt of 2,000 nested parentheses", body=J(gen(prompt="(" * 2000 + "cat" + ")" * 2000)),
          want="any", deadline=60),
        S("pr-10k", "prompt of 10,000 characters", body=J(gen(prompt="cat " * 2500)), want="any", deadline=30,
          restart_after_hang=True),
        S("pr-infotext-200k", "txt2img with a 200 KB 'infotext' field", path="/sdapi/v1/txt2img",
          body=J(a1(infotext="a cat\nSteps: 20, Seed: 1, Size: 64x64, " + "k: v, " * 33_000)), want="any"),
        S("pr-prompt-200k", "prompt of 200,000 characters", body=J(gen(prompt="a" * 200_000)), why="accepted"),
        S("pr-seed-minus1", "txt2img seed -1 (random)", path="/sdapi/v1/txt2img", body=J(a1(seed=-1)), want="ok"),
        S("pr-break-1666", "prompt 'BREAK ' × 1666 (1,667 text-encoder windows)", body=J(gen(prompt="BREAK " * 1666)),
          why="1,667 windows accepted", deadline=30, restart_after_hang=True,
          check=lambda r, n, s: [("defect", f"answered {r.status} after {r.cpu:.1f} s of server CPU: not refused early")]
          if r.status is not None and r.status < 500 and r.cpu > 5 else []),
        S("pr-neg-break-1666", "txt2img negative 'BREAK ' × 1666", path="/sdapi/v1/txt2img",
          body=J(a1(negative_prompt="BREAK " * 1666)), why="1,667 windows accepted", deadline=30,
          restart_after_hang=True,
          check=lambda r, n, s: [("defect", f"answered {r.status} after {r.cpu:.1f} s of server CPU: not refused early")]
          if r.status is not None and r.status < 500 and r.cpu > 5 else []),
    ]


def _outputs_404(r, new, srv):
    return [("defect", "a file outside --out (or not a regular file) was served")] if r.status == 200 else []


def path_cases() -> list[SCase]:
    S = SCase
    G = lambda i, p, d: S(i, d, method="GET", path=p, body=None, headers={}, want="refuse", check=_outputs_404,  # noqa
                          why="served")
    return [
        G("path-dotdot", "/outputs/../../../../etc/passwd", "GET /outputs/../../../../etc/passwd"),
        G("path-encoded", "/outputs/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "percent-encoded ../"),
        G("path-encoded-slash", "/outputs/..%2f..%2f..%2fetc%2fpasswd", "%2f separators"),
        G("path-absolute", "/outputs//etc/passwd", "an absolute path after /outputs/"),
        G("path-symlink-out", "/outputs/escape.png", "a symlink in --out to a PNG outside it"),
        G("path-dev-zero", "/outputs/zero.png", "a symlink in --out to /dev/zero"),
        G("path-fifo", "/outputs/fifo.png", "a FIFO in --out named .png"),
        G("path-json-out", "/outputs/escape.json", "a symlink sidecar pointing outside"),
        G("path-backslash", "/outputs/..\\..\\etc\\passwd", "backslashes"),
        G("path-nul", "/outputs/a%00.png", "a NUL in the name"),
        S("path-gallery-limit-neg", "GET /spo/v1/gallery?limit=-5", method="GET", path="/spo/v1/gallery?limit=-5",
          body=None, headers={}, want="any"),
        S("path-gallery-limit-word", "GET /spo/v1/gallery?limit=abc", method="GET", path="/spo/v1/gallery?limit=abc",
          body=None, headers={}, want="refuse", why="accepted"),
        S("path-gallery-limit-huge", "GET /spo/v1/gallery?limit=10**30", method="GET",
          path="/spo/v1/gallery?limit=" + "9" * 30, body=None, headers={}, want="any"),
        S("path-unknown", "GET /nope", method="GET", path="/nope", body=None, headers={}, why="served"),
        S("path-put", "PUT /v1/images/generations", method="PUT", body=J(gen()), why="served"),
        S("path-url-format", "response_format url, then fetch it", body=J(gen(response_format="url")), want="ok",
          check=lambda r, n, s: _fetch_url(r, s)),
    ]


def _fetch_url(r, srv):
    try:
        url = r.json()["data"][0]["url"]
    except (TypeError, KeyError, IndexError):
        return [("defect", "no url in the answer")]
    path = "/" + url.split("/", 3)[3]
    got = request(srv, "GET", path, headers={})
    return [] if got.status == 200 and got.body[:4] == b"\x89PNG" else [("defect", f"its url answers {got.status}")]


def gallery_cases() -> list[SCase]:
    """On their own server: each one may block its executor threads or blow its memory."""
    S = SCase
    G = lambda i, d, before, after=None, **kw: S(  # noqa: E731
        i, d, method="GET", path="/spo/v1/gallery", body=None, headers={}, want="ok", server="gallery",
        before=before, after=after, deadline=kw.pop("deadline", 10), restart_after_hang=True, **kw)
    return [
        G("gal-control", "gallery with one spo image and its sidecar", None,
          check=lambda r, n, s: [] if r.status == 200 and len((r.json() or {}).get("images", [])) >= 1
          else [("defect", "the image is not listed")]),
        G("gal-fifo", "a FIFO named zz.json in --out", lambda s: os.mkfifo(s.out / "zz.json"),
          after=lambda s: _unblock_fifo(s.out / "zz.json")),
        G("gal-fifo-again", "the gallery again, the FIFO still there", lambda s: os.mkfifo(s.out / "zz.json")
          if not (s.out / "zz.json").exists() else None, after=lambda s: _unblock_fifo(s.out / "zz.json", remove=True)),
        G("gal-dev-zero", "a symlink zero.json → /dev/zero", lambda s: os.symlink("/dev/zero", s.out / "zero.json"),
          after=lambda s: (s.out / "zero.json").unlink()),
        G("gal-sparse-1g", "a 1 GiB sparse sidecar big.json",
          lambda s: os.truncate(_touch(s.out / "big.json"), GiB), after=lambda s: (s.out / "big.json").unlink(),
          check=lambda r, n, s: [("defect", f"a 1 GiB sidecar read whole: {r.cpu:.1f} s of server CPU")] if r.cpu > 1.5 else []),
        G("gal-loop", "a symlink loop loop.json", lambda s: os.symlink("loop.json", s.out / "loop.json"),
          after=lambda s: (s.out / "loop.json").unlink()),
        G("gal-dir", "a directory named d.json", lambda s: (s.out / "d.json").mkdir(),
          after=lambda s: (s.out / "d.json").rmdir()),
        G("gal-deep", "a sidecar nested 100,000 deep", lambda s: (s.out / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000),
          after=lambda s: (s.out / "deep.json").unlink()),
        G("gal-outside-link", "a sidecar symlinked from outside --out, naming an image inside",
          lambda s: _outside_sidecar(s), after=lambda s: (s.out / "outside.json").unlink(),
          check=lambda r, n, s: [("defect", "a sidecar outside --out (through a symlink) is read and listed")]
          if any(i.get("prompt") == "read from outside" for i in (r.json() or {}).get("images", [])) else []),
        G("gal-file-escape", "a sidecar whose file is ../../etc/passwd",
          lambda s: (s.out / "esc.json").write_text(json.dumps({"file": "../../etc/passwd", "prompt": "x"})),
          after=lambda s: (s.out / "esc.json").unlink(),
          check=lambda r, n, s: [("defect", "an entry naming a file outside --out is listed")]
          if any("passwd" in str(i.get("file")) for i in (r.json() or {}).get("images", [])) else []),
        G("gal-not-utf8", "a sidecar that is not UTF-8", lambda s: (s.out / "bad.json").write_bytes(b"\xff\xfe{"),
          after=lambda s: (s.out / "bad.json").unlink()),
        G("gal-types", "a sidecar with every field of the wrong type",
          lambda s: _typed_sidecar(s), after=lambda s: (s.out / "typed.json").unlink()),
    ]


def _touch(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _unblock_fifo(p: Path, remove: bool = False) -> None:
    """Open the FIFO's writing end and close it, so that a server thread blocked reading it sees EOF."""
    for _ in range(20):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            break  # no reader left
        time.sleep(0.05)
    if remove:
        p.unlink(missing_ok=True)


def _outside_sidecar(srv) -> None:
    first = next(iter(sorted(srv.out.glob("*.png"))))
    meta = json.loads(first.with_suffix(".json").read_text())
    meta["prompt"] = "read from outside"
    outside = ROOT / "outside" / "x.json"
    outside.parent.mkdir(exist_ok=True)
    outside.write_text(json.dumps(meta))
    os.symlink(outside, srv.out / "outside.json")


def _typed_sidecar(srv) -> None:
    first = next(iter(sorted(srv.out.glob("*.png"))))
    (srv.out / "typed.json").write_text(json.dumps({"file": first.name, "prompt": ["x"], "seed": "x", "steps": {},
                                                    "scheduler": "x", "model": [1], "width": True}))


def token_case_runs() -> list:
    """Token cases: each starts a server of its own (or fails to)."""
    return [
        ("tok-nonascii", "--token-file with 'pässwörd-0123456789' (non-ASCII)", "pässwörd-0123456789".encode(), "nonascii"),
        ("tok-short", "--token-file with 'abc'", b"abc\n", "refuse"),
        ("tok-empty", "--token-file empty", b"", "refuse"),
        ("tok-space", "--token-file with an inner space", b"abcdefgh ijklmnopqrstuvwx\n", "refuse"),
        ("tok-control", "--token-file with a DEL character", b"abcdefghijklmnop\x7fqrstuvwx\n", "refuse"),
        ("tok-not-utf8", "--token-file of bytes that are not UTF-8", b"\xff\xfe" * 20, "refuse"),
        ("tok-dev-zero", "--token-file /dev/zero", "/dev/zero", "refuse"),
        ("tok-dev-urandom", "--token-file /dev/urandom", "/dev/urandom", "refuse"),
        ("tok-fifo", "--token-file a FIFO no one writes", "FIFO", "refuse"),
        ("tok-dir", "--token-file a directory", "DIR", "refuse"),
        ("tok-missing", "--token-file that does not exist", "MISSING", "refuse"),
        ("tok-10mb", "--token-file of 10 MB of 'a'", b"a" * (10 * MiB), "any"),
    ]


TOKEN = "tok-0123456789abcdef0123456789"


def auth_cases() -> list[SCase]:
    S = SCase
    B = f"Bearer {TOKEN}"
    info = dict(method="GET", path="/spo/v1/info", body=None, server="token")
    return [
        S("auth-none", "no Authorization", headers={}, why="served without the token", **info),
        S("auth-wrong", "Bearer wrong", headers={"Authorization": "Bearer wrong"}, why="served", **info),
        S("auth-basic", "Basic auth with the token as password",
          headers={"Authorization": "Basic " + base64.b64encode(f"x:{TOKEN}".encode()).decode()}, why="served", **info),
        S("auth-lowercase", "'bearer <token>' (scheme is case-insensitive)", headers={"Authorization": f"bearer {TOKEN}"},
          want="ok", **info),
        S("auth-ok", "the right token", headers={"Authorization": B}, want="ok", **info),
        S("auth-latin1-bytes", "Authorization of raw bytes 0xff 0xfe", headers={"Authorization": b"Bearer \xff\xfe"},
          why="served", **info),
        S("auth-utf8-bytes", "Authorization of UTF-8 'pässwörd'", headers={"Authorization": "Bearer pässwörd".encode()},
          why="served", **info),
        S("auth-100k", "Authorization of 100 KB", headers={"Authorization": "Bearer " + "a" * 100_000}, want="refuse",
          why="served", **info),
        S("auth-query", "?token=<token> in the URL", headers={}, why="served",
          **{**info, "path": f"/spo/v1/info?token={TOKEN}"}),
        S("auth-prefix", "the token plus one character", headers={"Authorization": B + "x"}, why="served", **info),
        S("auth-evil-host", "the right token, Host evil.example", headers={"Authorization": B}, host="evil.example",
          why="Host evil.example is served when the token is right (the Host rule applies with a token too)",
          **info),
        S("auth-evil-origin", "the right token, text/plain POST from Origin evil", method="POST",
          path="/v1/images/generations", body=J(gen()),
          headers={"Authorization": B, "Content-Type": "text/plain", "Origin": EVIL}, server="token",
          why="a cross-origin text/plain body is parsed (with the token)"),
        S("auth-health-open", "/health without a token (open path)", method="GET", path="/health", body=None,
          headers={}, server="token", want="any"),
    ]


def fill(v, srv):
    if isinstance(v, str):
        return (v.replace("__OWN__", f"http://127.0.0.1:{srv.port}").replace("__PORT__", str(srv.port))
                .replace("__FIRST__", _first_output(srv)))
    if isinstance(v, dict):
        return {k: fill(x, srv) for k, x in v.items()}
    return v


def _first_output(srv) -> str:
    pngs = sorted(p.name for p in srv.out.glob("*.png") if p.is_file() and not p.is_symlink())
    return pngs[0] if pngs else "none.png"


def late_log(srv: SpoServer) -> None:
    """What the server logged after the previous case's answer (a traceback printed once the 500 was
    sent) belongs to that case."""
    prev = getattr(srv, "last", None)
    if prev is None:
        return
    row, offset = prev
    text = srv.log_since(offset)
    if ("Traceback" in text and not row.tb) or (UNEXPECTED.search(text) and not row.unexpected):
        row.tb = row.tb or "Traceback" in text
        row.unexpected = row.unexpected or bool(UNEXPECTED.search(text))
        judge(row, list(row.base))


def run_scase(c: SCase, srv: SpoServer) -> Row:
    row = Row(c.id, "server", c.desc)
    late_log(srv)
    if c.before:
        c.before(srv)
    files0 = listing(srv.out)
    cpu0, log0 = srv.cpu(), srv.log_size()
    body = c.body if isinstance(c.body, (bytes, type(None))) else J(c.body)
    r = request(srv, c.method, fill(c.path, srv), body=body, headers=fill(c.headers, srv),
                host=fill(c.host, srv) if isinstance(c.host, str) else c.host, deadline=c.deadline,
                chunks=c.chunks() if c.chunks else None)
    if r.status is not None and r.status >= 500:
        time.sleep(1.0)  # uvicorn logs the exception after the 500 is sent
    log = srv.log_since(log0)
    row.cpu_s = r.cpu = srv.cpu() - cpu0
    row.rss_mb = srv.hwm_mb()
    new = listing(srv.out) - files0
    row.files = files_note(new)
    row.wall_s = r.wall
    row.outcome = "no answer" if r.status is None else ("connection error" if r.status == -1 else f"HTTP {r.status}")
    row.message = one_line(r.message() if r.status not in (None, -1) else r.error)
    row.tb = "Traceback" in log
    row.unexpected = bool(UNEXPECTED.search(log) or UNEXPECTED.search(r.body.decode("utf-8", "replace")))
    problems = []
    if r.status is None:
        problems.append(("defect", f"hang: no answer within {c.deadline:g} s"))
    elif r.status >= 500:
        problems.append(("defect", f"HTTP {r.status}: {row.message}"))
    if not srv.alive():
        problems.append(("defect", "the server died"))
    if "MemoryError" in log or "MemoryError" in r.body.decode("utf-8", "replace"):
        problems.append(("defect", "MemoryError in the server"))
    if r.status not in (None, -1) and r.status < 500:
        if c.want == "refuse" and 200 <= r.status < 300:
            problems.append(("defect", (c.why or "accepted") + f" (HTTP {r.status}"
                             + (f", {len([f for f in new if f.endswith('.png')])} image(s) written)" if new else ")")))
        elif c.want == "ok" and not 200 <= r.status < 300:
            problems.append(("defect", f"a legitimate request refused: {r.status} {row.message}"))
        elif 400 <= r.status < 500 and c.want == "refuse" and not (isinstance(r.json(), dict) and r.message()):
            problems.append(("poor", "refused with no JSON message"))
        if c.want == "refuse" and 400 <= r.status < 500 and new:
            problems.append(("defect", f"refused, yet wrote {files_note(new)}"))
    if c.check and r.status not in (None,):
        problems += c.check(r, new, srv)
    judge(row, problems)
    srv.last = (row, srv.log_size())
    if c.after:
        c.after(srv)
    return row


# --------------------------------------------------------------------------------------------
# The lying server (for `--server`)


LIES: dict[str, dict] = {}  # scenario → {"models": fn, "run": fn}
SEEN: dict[str, list] = {}  # scenario → requests received (method, path, headers, body)
TEMPLATE: dict = {}  # the real server's /spo/v1/models answer and one image's meta


def png_of(w: int, h: int, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (w, h), (120, 30, 200) if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


def big_png(w: int, h: int, text: dict | None = None) -> bytes:
    """A grayscale PNG of zeros of any size, written row by row (a few hundred KB for 100 Mpx)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    z = zlib.compressobj(9)
    row = b"\0" * (w + 1)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
    for k, v in (text or {}).items():
        out += chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
    return out + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def honest_models(body=None):
    return 200, {}, J(TEMPLATE["models"])


def honest_items(req: dict, size=None, fmt="PNG", mode="RGB", count=None, png=None, meta_change=None) -> list:
    items = []
    images = req.get("images", [])
    for im in images[: len(images) if count is None else count]:
        w, h = size or (im.get("width") or 64, im.get("height") or 64)
        meta = dict(TEMPLATE["meta"])
        meta.update({k: im.get(k) for k in ("prompt", "negative_prompt", "seed", "steps", "guidance")})
        meta.update(width=im.get("width") or 64, height=im.get("height") or 64)
        if meta_change:
            meta = meta_change(meta)
        data = (png() if callable(png) else png) if png is not None else png_of(w, h, fmt, mode)
        items.append({"png": data if isinstance(data, str) else base64.b64encode(data).decode(), "meta": meta})
    return items


def run_answer(**kw):
    return lambda req: (200, {}, J({"images": honest_items(req, **kw), "warnings": []}))


def models_with(change: Callable[[dict], None]):
    def fn(body=None):
        m = json.loads(json.dumps(TEMPLATE["models"]))
        change(m["models"]["spo"])
        return 200, {}, J(m)
    return fn


def raw(status: int, body: bytes, headers: dict | None = None):
    return lambda req=None: (status, headers or {"Content-Type": "application/json"}, body)


class Stream:
    """A body of `total` bytes of spaces, sent a MiB at a time, announced with its Content-Length."""

    def __init__(self, total: int):
        self.total = total


class LiarHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _answer(self):
        parts = self.path.split("/", 2)
        scen, rest = (parts[1], "/" + parts[2]) if len(parts) > 2 else ("honest", self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        SEEN.setdefault(scen, []).append((self.command, rest, dict(self.headers), body))
        lie = LIES.get(scen, {})
        try:
            req = json.loads(body) if body else None
        except ValueError:
            req = None
        if rest.endswith("/spo/v1/models"):
            status, headers, data = (lie.get("models") or honest_models)(req)
        elif rest.endswith("/spo/v1/run"):
            status, headers, data = (lie.get("run") or run_answer())(req or {})
        else:
            status, headers, data = 404, {}, J({"error": {"message": "no such path"}})
        if callable(data):
            data = data()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(data, Stream):
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(data.total))
            self.end_headers()
            block, sent = b" " * MiB, 0
            try:
                while sent < data.total:
                    self.wfile.write(block)
                    sent += len(block)
            except OSError:
                pass
            self.close_connection = True
            return
        if "Content-Type" not in headers:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except OSError:
            pass

    do_GET = do_POST = _answer


def start_liar(host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    srv = http.server.ThreadingHTTPServer((host, 0), LiarHandler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@dataclass
class CCase:
    id: str
    desc: str
    lie: dict  # {"models": fn, "run": fn}
    args: tuple = ()  # extra CLI arguments
    n: int = 1
    want: str = "refuse"  # refuse (exit 1 with a message) | ok | any
    check: Callable | None = None  # check(proc, out_folder, seen) -> [(level, reason)]
    env: dict = field(default_factory=dict)
    deadline: float = 60
    url: str | None = None  # a --server URL of its own
    cmd: str = "generate"
    codes: tuple = (1,)  # the exit codes of a right refusal


def _meta_change(fn):
    def change(meta):
        meta = json.loads(json.dumps(meta))
        fn(meta)
        return meta
    return change


def client_cases(other: str) -> list[CCase]:
    C = CCase
    deep = b'{"ready": true, "models": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    escape_id = "evil\x1b]0;pwned\x07\x1b[2J\x1b[31mred"

    def set_(path: str, value):
        def change(m):
            *head, last = path.split(".")
            d = m
            for k in head:
                d = d[k]
            d[last] = value
        return models_with(change)

    def inert(text: str, shown: str | None = None):
        def check(p, out, seen):
            both = p.out + p.err
            if ESC in both:
                return [("defect", "a terminal escape from the server reached the terminal")]
            if shown and shown not in re.sub(r"\s+", "", both):
                return [("defect", f"server text {shown!r} not shown as is (interpreted as markup or emoji)")]
            return []
        return check

    return [
        C("cl-honest", "an honest answer (the real server's, replayed)", {}, want="ok"),
        C("cl-honest-n2-bs2", "honest, -n 2 --batch-size 2", {}, args=("--batch-size", "2"), n=2, want="ok"),
        C("cl-models-garbage", "/spo/v1/models answers 'garbage'", {"models": raw(200, b"garbage")}),
        C("cl-models-array", "/spo/v1/models answers a JSON array", {"models": raw(200, b"[1, 2]")}),
        C("cl-models-html", "/spo/v1/models answers an HTML page", {"models": raw(200, b"<html>hi</html>", {"Content-Type": "text/html"})}),
        C("cl-models-list", "'models' is a list", {"models": raw(200, J({"ready": True, "models": []}))}),
        C("cl-models-missing", "the model lacks 'facts'", {"models": models_with(lambda m: m.pop("facts"))}),
        C("cl-describe-str", "'describe' is a string", {"models": set_("describe", "x")}),
        C("cl-describe-no-model", "'describe' has no 'model'", {"models": models_with(lambda m: m["describe"].pop("model"))}),
        C("cl-facts-list", "'facts' is a list", {"models": set_("facts", [1, 2])}),
        C("cl-facts-no-device", "'facts' lacks 'device'", {"models": models_with(lambda m: m["facts"].pop("device"))}),
        C("cl-dtype-int", "'dtype' is 123", {"models": set_("dtype", 123)}),
        C("cl-default-size-str", "default_size ['a','b'], no --width/--height", {"models": set_("default_size", ["a", "b"])},
          args=("--no-size",)),
        C("cl-default-size-huge", "default_size [10**9, 10**9], no --width/--height",
          {"models": set_("default_size", [10**9, 10**9])}, args=("--no-size",)),
        C("cl-default-size-short", "default_size [64]", {"models": set_("default_size", [64])}, args=("--no-size",)),
        C("cl-identity-str", "'identity' is a string", {"models": set_("identity", "x")}),
        C("cl-ready-false", "ready: false", {"models": lambda b=None: (200, {}, J({**TEMPLATE["models"], "ready": False}))}),
        C("cl-not-loaded", "the model asked is not loaded", {"models": lambda b=None: (200, {}, J(
            {"ready": True, "models": {"other": TEMPLATE["models"]["models"]["spo"]}}))}, codes=(1, 2)),
        C("cl-deep-200k", "/spo/v1/models is 200,000-deep JSON", {"models": raw(200, deep)}),
        C("cl-huge-body", "/spo/v1/models streams a 4 GiB body", {"models": lambda b=None: (200, {}, Stream(4 * GiB))},
          deadline=60),
        C("cl-id-escapes", "model id with terminal escapes", {"models": set_("describe.model.id", escape_id)},
          check=inert(escape_id), want="any"),
        C("cl-id-markup-bad", "model id '[/bold]' (Rich markup that does not parse)",
          {"models": set_("describe.model.id", "[/bold]")}, want="any", check=inert("[/bold]", "[/bold]")),
        C("cl-id-markup", "model id '[red]evil[/red]'", {"models": set_("describe.model.id", "[red]evil[/red]")},
          want="any", check=inert("[red]evil[/red]", "[red]evil[/red]")),
        C("cl-id-emoji", "model id ':smile:'", {"models": set_("describe.model.id", ":smile:")}, want="any",
          check=inert(":smile:", ":smile:")),
        C("cl-device-markup", "facts.device '[blink]cuda[/blink]'", {"models": set_("facts.device", "[blink]cuda[/blink]")},
          want="any", check=inert("", "[blink]cuda[/blink]")),
        C("cl-models-500", "/spo/v1/models answers 500 with HTML", {"models": raw(500, b"<h1>oops</h1>", {"Content-Type": "text/html"})}),
        C("cl-models-401", "/spo/v1/models answers 401", {"models": raw(401, J({"error": {"message": "needs a token"}}))},
          codes=(1, 2),
          check=lambda p, o, s: [] if p.rc == 2 or re.search("token", p.err, re.I) else [("poor", "does not say a token is needed")]),
        C("cl-error-markup", "a 500 whose message is '[/red] [bold]x'",
          {"run": raw(500, J({"error": {"message": "[/red] [bold]x"}}))}, check=inert("", "[/red][bold]x")),
        C("cl-redirect-models", "/spo/v1/models 307 → another host (token set)",
          {"models": lambda b=None: (307, {"Location": f"{other}/spo/v1/models"}, b"")}, env={"SPO_TOKEN": TOKEN},
          want="any", check=_no_token_leak),
        C("cl-redirect-run", "/spo/v1/run 307 → another host (token set)",
          {"run": lambda req: (307, {"Location": f"{other}/spo/v1/run"}, b"")}, env={"SPO_TOKEN": TOKEN},
          want="any", check=_no_token_leak),
        C("cl-run-garbage", "/spo/v1/run answers garbage", {"run": raw(200, b"\x00\x01garbage")}),
        C("cl-run-images-str", "'images' is a string", {"run": raw(200, J({"images": "x"}))}),
        C("cl-run-images-null-item", "'images' is [null]", {"run": raw(200, J({"images": [None]}))}),
        C("cl-run-none", "'images' is [] for 1 asked", {"run": raw(200, J({"images": [], "warnings": []}))}),
        C("cl-run-fewer", "1 image for 2 asked in one call", {"run": run_answer(count=1)}, args=("--batch-size", "2"), n=2),
        C("cl-run-no-images-key", "no 'images' key", {"run": raw(200, J({"warnings": []}))}),
        C("cl-run-wrong-size", "a 16×24 image for 64×64 asked", {"run": run_answer(size=(16, 24))}),
        C("cl-run-not-base64", "'png' is not base64", {"run": run_answer(png="!!!not*base64!!!")}),
        C("cl-run-not-image", "'png' is base64 of text", {"run": run_answer(png=b"this is not a PNG at all")}),
        C("cl-run-truncated-png", "'png' is a truncated PNG", {"run": run_answer(png=png_of(64, 64)[:60])}),
        C("cl-run-png-int", "'png' is 42", {"run": lambda req: (200, {}, J({"images": [{"png": 42, "meta": TEMPLATE["meta"]}]}))}),
        C("cl-run-bomb-100mpx", "'png' is a 10000×10000 PNG (100 Mpx, PIL warns)", {"run": run_answer(png=lambda: big("100mpx"))},
          deadline=60),
        C("cl-run-bomb-400mpx", "'png' is a 20000×20000 PNG (decompression bomb)", {"run": run_answer(png=lambda: big("400mpx"))}),
        C("cl-run-meta-missing", "meta lacks 'scheduler'", {"run": run_answer(meta_change=_meta_change(lambda m: m.pop("scheduler")))}),
        C("cl-run-meta-str", "meta is a string", {"run": lambda req: (200, {}, J({"images": [{"png": base64.b64encode(png_of(64, 64)).decode(), "meta": "x"}]}))}),
        C("cl-run-scheduler-str", "meta.scheduler is a string", {"run": run_answer(meta_change=_meta_change(lambda m: m.__setitem__("scheduler", "x")))}),
        C("cl-run-error-item", "an item {'error': '[red]boom[/red]'}", {"run": raw(200, J({"images": [{"error": "[red]boom[/red]", "nan": False}]}))},
          check=inert("", "[red]boom[/red]")),
        C("cl-run-deep", "/spo/v1/run is 200,000-deep JSON", {"run": raw(200, b'{"images": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")}),
        C("cl-run-extra-images", "3 images for 1 asked", {"run": lambda req: (200, {}, J({"images": honest_items(req) * 3, "warnings": []}))},
          want="any", check=lambda p, o, s: [("defect", "more images written than asked")] if len(_images(o)) > 1 else []),
        C("cl-run-jpeg", "a JPEG 64×64 instead of a PNG", {"run": run_answer(fmt="JPEG")}, want="any"),
        C("cl-run-rgba", "an RGBA PNG 64×64", {"run": run_answer(mode="RGBA")}, want="any"),
        C("cl-run-seed-lie", "meta.seed differs from the seed asked", {"run": run_answer(meta_change=_meta_change(lambda m: m.__setitem__("seed", 7)))},
          want="any"),
        # the command line's own URL handling
        C("cl-url-password", "--server http://user:s3cret@127.0.0.1:9 (nothing listens)", {}, url="http://user:s3cret@127.0.0.1:9",
          want="any", check=lambda p, o, s: [("defect", "the password is echoed")] if "s3cret" in p.err + p.out else []),
        C("cl-url-port-99999", "--server http://127.0.0.1:99999", {}, url="http://127.0.0.1:99999", want="any",
          check=lambda p, o, s: [] if p.rc == 2 and re.search("port", p.err, re.I) else [("poor", "no message about the port")]),
        C("cl-url-query", "--server URL?x=1", {}, url="__LIAR__/honest?x=1", want="any",
          check=lambda p, o, s: [] if p.rc == 2 else [("poor", "a query in --server is not refused as such")]),
        C("cl-url-fragment", "--server URL#frag", {}, url="__LIAR__/honest#frag", want="any",
          check=lambda p, o, s: [] if p.rc == 2 else [("poor", "a fragment in --server is not refused as such")]),
        C("cl-url-ftp", "--server ftp://x", {}, url="ftp://x", want="any",
          check=lambda p, o, s: [] if p.rc == 2 else [("poor", f"exit {p.rc}, not 2")]),
        C("cl-url-bracket", "--server http://[::1", {}, url="http://[::1", want="any",
          check=lambda p, o, s: [] if p.rc == 2 else [("poor", f"exit {p.rc}, not 2")]),
        # what the CLI sends and shows (prompts read A1111's way)
        C("cl-emoji-summary", "prompt 'a [cat:dog:5]': the summary line", {}, want="ok",
          args=("--prompt-override", "a [cat:dog:5]"), check=lambda p, o, s: [("defect", "':dog:' shown as an emoji")]
          if "🐶" in p.out + p.err else []),
        C("cl-lora-tag", "prompt '<lora:foo:1.2> a cat': warned or stripped", {}, want="any",
          args=("--prompt-override", "<lora:foo:1.2> a cat"), check=_tag_check("lora:foo")),
        C("cl-and", "prompt 'a cat AND a dog': warned", {}, want="any", args=("--prompt-override", "a cat AND a dog"),
          check=lambda p, o, s: [] if re.search(r"\bAND\b", _warnings(p)) else [("defect", "AND is not warned about")]),
        C("cl-break-1666", "prompt 'BREAK ' × 1666: refused before sending", {},
          want="any", args=("--prompt-override", "BREAK " * 1666), check=lambda p, o, s: [] if p.rc == 2 else
          [("defect", f"exit {p.rc}: {len([x for x in s if x[1].endswith('run')])} call(s) sent with 1,667 windows")]),
    ]


def _warnings(p: Proc) -> str:
    """The warning paragraphs of stderr (not the progress bars or the summary, which echo the prompt)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", p.err or "")
    parts = re.split(r"(?m)^(?=warning:|error:|✓|images |denoising |Wrote )", text)
    return " ".join(x for x in parts if x.startswith("warning:"))


def _tag_check(tag: str):
    def check(p, out, seen):
        sent = " ".join(b.decode("utf-8", "replace") for m, path, h, b in seen if path.endswith("/run"))
        if re.search("lora", _warnings(p), re.I):
            return []
        if tag in sent:
            return [("defect", "the tag is sent as prompt text, with no warning")]
        return [("poor", "the tag was stripped without a warning")]
    return check


def _no_token_leak(p, out, seen):
    leaked = [x for x in SEEN.get("__other__", []) if "Authorization" in x[2] or "authorization" in x[2]]
    SEEN.pop("__other__", None)
    return [("defect", f"the token was sent to another host ({len(leaked)} request(s))")] if leaked else []


def _images(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))


def check_written(out: Path, want_n: int, want_size: tuple | None) -> list:
    """Every image decodes, matches its sidecar's size and the size asked; the count is the count asked."""
    from PIL import Image

    problems = []
    images = _images(out)
    if len(images) < want_n:
        problems.append(("defect", f"exit 0 with {len(images)} image(s) for {want_n} asked"))
    for img in images:
        side = img.with_suffix(".json")
        try:
            meta = json.loads(side.read_text())
            with Image.open(img) as im:
                size = im.size
        except (OSError, ValueError) as e:
            problems.append(("defect", f"{img.name}: {type(e).__name__}"))
            continue
        if (meta.get("width"), meta.get("height")) != size:
            problems.append(("defect", f"{img.name} is {size[0]}×{size[1]}, its sidecar says "
                                       f"{meta.get('width')}×{meta.get('height')}"))
        elif want_size and size != want_size:
            problems.append(("defect", f"{img.name} is {size[0]}×{size[1]}, {want_size[0]}×{want_size[1]} asked"))
    return problems


def run_ccase(c: CCase, liar_url: str, n: int) -> Row:
    row = Row(c.id, "client", c.desc)
    scen = re.sub(r"\W", "_", c.id)
    LIES[scen] = c.lie
    SEEN.pop(scen, None)
    sb = ROOT / "client" / c.id
    sb.mkdir(parents=True)
    out = sb / "out"
    url = (c.url or f"{liar_url}/{scen}").replace("__LIAR__", liar_url)
    args = list(c.args)
    prompt = "a cat"
    if "--prompt-override" in args:
        i = args.index("--prompt-override")
        prompt = args[i + 1]
        del args[i:i + 2]
    size_args = [] if "--no-size" in args else ["--width", "64", "--height", "64"]
    args = [a for a in args if a != "--no-size"]
    argv = spo(c.cmd, prompt, "--server", url, "--steps", "1", *size_args, "-n", str(c.n), "--out", "out", *args)
    env = {**ENV, **c.env}
    p = run_proc(argv, sb, env, c.deadline)
    proc_row(row, p)
    row.files = files_note(listing(out))
    seen = SEEN.get(scen, [])
    problems = base_problems(p, c.deadline)
    if not p.hang:
        if c.want == "refuse":
            if p.rc == 0:
                problems.append(("defect", "believed the lie: exit 0"))
                problems += [x for x in check_written(out, c.n, None if size_args == [] else (64, 64))
                             if x[0] == "defect"]
            elif p.rc not in c.codes:
                problems.append(("poor", f"exit {p.rc}, not {'/'.join(map(str, c.codes))} (a bad answer is a runtime failure)"))
            elif not re.search(r"answered|server", p.err):
                problems.append(("poor", "the message does not say the server's answer was wrong"))
            if p.rc not in (0, None) and _images(out):
                problems.append(("defect", f"failed, yet wrote {files_note(listing(out))}"))
        elif c.want == "ok":
            if p.rc != 0:
                problems.append(("defect", f"an honest answer refused: exit {p.rc}"))
            else:
                problems += check_written(out, c.n, (64, 64))
        elif p.rc == 0:
            problems += check_written(out, c.n, None if size_args == [] else (64, 64))
            if size_args == []:
                problems += _sidecar_types(out)
    if c.check:
        problems += c.check(p, out, seen)
    return judge(row, problems)


def _sidecar_types(out: Path) -> list:
    bad = []
    for side in out.glob("*.json"):
        meta = json.loads(side.read_text())
        if not all(isinstance(meta.get(k), int) and 8 <= meta.get(k) <= 8192 for k in ("width", "height")):
            bad.append(("defect", f"{side.name} records width/height {meta.get('width')!r}×{meta.get('height')!r}"))
    return bad


# --------------------------------------------------------------------------------------------
# Parsers: probes run in a child (bounded), and CLI cases


def probe_main(name: str, arg: str) -> None:
    """In the child: run one probe and print one JSON line {ok, exc, msg, value, cpu}."""
    import warnings as _w

    _w.simplefilter("ignore")
    from spo_cli import infotext, presets, syntax, validate
    from spo_cli.outputs import metadata
    from spo_cli.request import ImageRequest

    a = json.loads(arg)
    text = eval(a["expr"]) if "expr" in a else None  # noqa: S307 - the harness's own expressions
    t0 = time.process_time()
    res = {"ok": True, "exc": None, "msg": None, "value": None}
    try:
        if name == "infotext":
            fields, ignored = infotext.to_request_fields(infotext.parse(text))
            res["value"] = {k: (v if not isinstance(v, str) or len(v) < 80 else f"<{len(v)} chars>")
                            for k, v in fields.items()}
        elif name == "infotext-parse":
            info = infotext.parse(text)
            res["value"] = {"prompt": len(info.prompt), "params": len(info.params)}
        elif name == "syntax":
            runs = syntax.parse(text)
            res["value"] = len(runs)
            res["finite"] = all(math.isfinite(w) for _, w in runs)
        elif name == "roundtrip":
            meta = json.loads(Path(a["meta"]).read_text())
            sched = presets.SCHEDULERS[a["scheduler"]]
            meta["scheduler"] = {"name": a["scheduler"], "class": meta["scheduler"]["class"], "a1111": sched.a1111,
                                 "config": {}}
            written = metadata.a1111_parameters(meta)
            fields, _ = infotext.to_request_fields(infotext.parse(written))
            res["value"] = {"written": written.splitlines()[-1][:160], "read": fields.get("scheduler")}
        elif name == "warnings":
            req = ImageRequest(prompt=text, seed=0, prompt_syntax=a.get("syntax", "auto"))
            validate.readable_prompts(req.prompt, req.negative_prompt, req.prompt_syntax)
            res["value"] = validate.unsupported_syntax(req)
        else:
            raise SystemExit(f"no probe {name}")
    except Exception as e:  # noqa: BLE001 - reported, judged by the parent
        res.update(ok=False, exc=type(e).__name__, msg=str(e)[:300])
    res["cpu"] = time.process_time() - t0
    print(json.dumps(res, default=str))


@dataclass
class PCase:
    id: str
    desc: str
    probe: str
    arg: dict
    allowed: tuple = ("InfotextError", "PromptSyntaxError", "UsageError")  # refusals that are fine
    cpu_max: float = 1.0
    check: Callable | None = None  # check(result) -> [(level, reason)]
    deadline: float = 30


def run_pcase(c: PCase) -> Row:
    row = Row(c.id, "parsers", c.desc)
    p = run_proc([PY, str(Path(__file__).resolve()), "--probe", c.probe, json.dumps(c.arg)], ROOT, ENV, c.deadline)
    row.wall_s, row.rss_mb = p.wall, p.rss_mb
    problems = base_problems(p, c.deadline)
    try:
        res = json.loads(p.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = None
    if p.hang:
        row.outcome = "hang"
    elif res is None:
        row.outcome = f"exit {p.rc}"
        row.message = one_line(p.err)
        problems.append(("defect", "the probe died: " + one_line(p.err, 100)))
    else:
        row.cpu_s = res["cpu"]
        row.outcome = "parsed" if res["ok"] else f"refused ({res['exc']})"
        row.message = one_line(res["msg"] or json.dumps(res["value"], ensure_ascii=False))
        if not res["ok"] and res["exc"] not in c.allowed:
            problems.append(("defect", f"uncaught {res['exc']}: {one_line(res['msg'] or '', 80)}"))
        if res["cpu"] > c.cpu_max:
            problems.append(("defect", f"{res['cpu']:.2f} s of CPU (bound {c.cpu_max:g} s): slower than linear"))
        if c.check:
            problems += c.check(res)
    return judge(row, problems)


def infotext_cases() -> list[PCase]:
    P = PCase
    tail = "\\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: 1, Size: 64x64"
    out = []
    for n in (10_000, 20_000, 100_000, 1_000_000):
        out.append(P(f"it-text-{n // 1000}k", f"infotext of {n:,} characters, no parameters line ('a ' × {n // 2:,})",
                     "infotext-parse", {"expr": f"'a ' * {n // 2}"}, deadline=15))
    for n in (20_000, 1_000_000):
        out.append(P(f"it-prompt-{n // 1000}k", f"infotext with a prompt of {n:,} characters, then parameters",
                     "infotext-parse", {"expr": f"'a ' * {n // 2} + '{tail}'"}, deadline=15))
    out += [
        P("it-lines-100k", "100,000 empty lines then parameters", "infotext-parse", {"expr": f"'a' + '\\n' * 100000 + '{tail}'"}),
        P("it-steps-lines-10k", "10,000 'Steps: 1, a: b, c: d' lines", "infotext-parse",
          {"expr": "'a\\n' + 'Steps: 1, a: b, c: d\\n' * 10000"}),
        P("it-pairs-100k", "a parameters line of 100,000 pairs", "infotext-parse",
          {"expr": "'a\\nSteps: 1, ' + 'k: v, ' * 100000 + 'Seed: 1'"}),
        P("it-quotes-100k", "a quoted value of 100,000 backslashes", "infotext-parse",
          {"expr": "'a\\nSteps: 1, Seed: 1, k: \"' + '\\\\\\\\' * 50000 + '\"'"}),
        P("it-negatives-10k", "10,000 'Negative prompt:' lines", "infotext-parse",
          {"expr": f"'a\\n' + 'Negative prompt: x\\n' * 10000 + '{tail}'"}),
        P("it-seed-minus1", "Seed: -1 (A1111's random)", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: -1, Size: 64x64'"},
          check=lambda r: [("defect", "Seed -1 refused: " + (r["msg"] or "")[:80])] if not r["ok"] else
          [("defect", "Seed -1 kept as -1 (replay refuses it)")] if r["value"].get("seed") == -1 else []),
        P("it-seed-4001", "Seed of 4,001 digits", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: Euler, CFG scale: 5, Seed: ' + '9' * 4001 + ', Size: 64x64'"},
          check=lambda r: [("poor", f"message of {len(r['msg'] or '')} characters prints the number whole")]
          if not r["ok"] and len(r["msg"] or "") > 290 else []),
        P("it-size-junk", "Size: 64x64junk", "infotext", {"expr": "'a cat\\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64junk'"},
          check=lambda r: [("defect", "64x64junk read as a size")] if r["ok"] and r["value"].get("width") == 64 else []),
        # A1111 reads these with \\d and int(), which take any Unicode digit: recorded, not judged
        P("it-size-arabic", "Size in Arabic-Indic digits", "infotext", {"expr": "'a cat\\nSteps: 20, Sampler: Euler, Seed: 1, Size: ٦٤x٦٤'"}),
        P("it-steps-fullwidth", "Steps in full-width digits", "infotext", {"expr": "'a cat\\nSteps: ２０, Sampler: Euler, Seed: 1, Size: 64x64'"}),
        P("it-sampler-diffusers", "Sampler: DPMSolverMultistepScheduler", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: DPMSolverMultistepScheduler, Seed: 1, Size: 64x64'"},
          # spo writes the checkpoint scheduler's class as the Sampler where A1111 has no name for it, and reads
          # a class name back as that default: recorded, not judged (the A1111 API refuses class names).
          ),
        P("it-dpm2m-no-schedule", "Sampler: DPM++ 2M with no Schedule type (A1111 1.9+: Karras)", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: DPM++ 2M, CFG scale: 5, Seed: 1, Size: 64x64'"},
          check=lambda r: [] if r["ok"] and r["value"].get("scheduler") == "dpm++2m-karras" else
          [("defect", f"read as {(r['value'] or {}).get('scheduler')!r}, A1111 reads DPM++ 2M Karras")]),
        P("it-dpm2m-uniform", "Sampler: DPM++ 2M, Schedule type: Uniform", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Uniform, Seed: 1, Size: 64x64'"},
          check=lambda r: [] if r["ok"] and r["value"].get("scheduler") == "dpm++2m" else
          [("defect", f"read as {(r['value'] or {}).get('scheduler')!r}")]),
        P("it-dpm2m-karras-old", "Sampler: DPM++ 2M Karras (before 1.9)", "infotext",
          {"expr": "'a cat\\nSteps: 20, Sampler: DPM++ 2M Karras, Seed: 1, Size: 64x64'"},
          check=lambda r: [] if r["ok"] and r["value"].get("scheduler") == "dpm++2m-karras" else
          [("defect", f"read as {(r['value'] or {}).get('scheduler')!r}")]),
        P("it-euler-a", "Sampler: Euler a", "infotext", {"expr": "'a cat\\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 64x64'"},
          check=lambda r: [] if r["ok"] and r["value"].get("scheduler") == "euler-a" else
          [("defect", f"read as {(r['value'] or {}).get('scheduler')!r}")]),
        P("it-lora-prompt", "a prompt with <lora:foo:0.8>", "infotext",
          {"expr": "'<lora:foo:0.8> a cat\\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64'"}),
        P("it-nul", "an infotext with NUL bytes", "infotext", {"expr": "'a\\x00cat\\nSteps: 20, Seed: 1, Size: 64x64'"}),
        P("it-surrogate", "an infotext with a lone surrogate", "infotext", {"expr": "'a \\ud800 cat\\nSteps: 20, Seed: 1, Size: 64x64'"}),
        P("it-only-params", "only a parameters line, no prompt", "infotext", {"expr": "'Steps: 20, Seed: 1, Size: 64x64'"}),
        P("it-cr-only", "lines separated by CR only", "infotext", {"expr": "'a cat\\rSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64'"},
          check=lambda r: [] if r["ok"] and r["value"].get("steps") == 20 else [("poor", "CR line ends not read")]),
    ]
    return out


def syntax_cases() -> list[PCase]:
    P = PCase
    allowed = ("PromptSyntaxError", "UsageError", "ValueError")
    out = []
    for name, expr in [("open-paren-100k", "'(' * 100000"), ("open-bracket-100k", "'[' * 100000"),
                       ("nested-10k", "'(' * 10000 + 'a' + ')' * 10000"), ("weights-50k", "'(a:1.1)' * 50000"),
                       ("backslash-100k", "'\\\\' * 100000"), ("colons-100k", "':' * 100000"),
                       ("editing-2k", "'[a:b:' * 2000"), ("editing-8k", "'[a:b:' * 8000"),
                       ("alternation-2.5k", "'[a|' * 2500"), ("alternation-10k", "'[a|' * 10000"),
                       ("close-100k", "')' * 100000"), ("break-50k", "'BREAK ' * 50000"),
                       ("mixed-1mb", "'(a:1.2), [b], \\\\(c\\\\), ' * 40000")]:
        out.append(P(f"sx-{name}", f"syntax.parse of {expr.strip(chr(39))}", "syntax", {"expr": expr},
                     allowed=allowed, cpu_max=3.0 if "1mb" in name else 1.0, deadline=20))
    out += [
        P("sx-weight-65504", "(cat:65504)", "syntax", {"expr": "'(cat:65504)'"}, allowed=allowed),
        # A1111's weight grammar is [+-]?[.\d]+ (its re_attention): '(cat:nan)' is the text 'cat:nan' at
        # weight 1.1 there, and so here. A defect is a weight that is not finite, not the text kept.
        P("sx-weight-1e309", "a prompt '(cat:1e309)' through syntax.parse", "syntax", {"expr": "'(cat:1e309)'"},
          allowed=allowed, check=lambda r: [] if r.get("finite", True) else [("defect", "a weight that is not finite")]),
        P("sx-weight-nan", "a prompt '(cat:nan)' through syntax.parse", "syntax", {"expr": "'(cat:nan)'"},
          allowed=allowed, check=lambda r: [] if r.get("finite", True) else [("defect", "a weight that is not finite")]),
        P("sx-weight-neg-inf", "a prompt '(cat:-inf)' through syntax.parse", "syntax", {"expr": "'(cat:-inf)'"},
          allowed=allowed, check=lambda r: [] if r.get("finite", True) else [("defect", "a weight that is not finite")]),
        P("sx-warn-lora", "warnings for '<lora:foo:1.2> a cat'", "warnings", {"expr": "'<lora:foo:1.2> a cat'"},
          allowed=allowed + ("InfotextError",)),
        P("sx-warn-and", "warnings for 'a cat AND a dog'", "warnings", {"expr": "'a cat AND a dog'"}, allowed=allowed),
    ]
    return out


def roundtrip_cases(meta_path: Path) -> list[PCase]:
    from spo_cli import presets

    out = []
    for name in presets.SCHEDULERS:
        if name == "default":
            continue
        out.append(PCase(f"rt-{name}", f"infotext written for --scheduler {name}, read back", "roundtrip",
                         {"meta": str(meta_path), "scheduler": name},
                         check=lambda r, name=name: _a1111_reads(r, name)))
    return out


# A1111 1.9+: a sampler without "Schedule type" runs its own default schedule ("Automatic"):
# modules/sd_samplers_kdiffusion.py, the 'scheduler' option of each sampler. The rest: the model's (uniform).
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2S a": "Karras", "DPM2": "Karras",
                   "DPM2 a": "Karras", "Restart": "Karras", "DPM++ 2M SDE": "Exponential",
                   "DPM++ 2M SDE Heun": "Exponential", "DPM++ 3M SDE": "Exponential"}


def a1111_schedule(line: str) -> tuple[str, str]:
    """(sampler, schedule) as A1111 1.9+ reads a parameters line (old names carry the schedule)."""
    fields = dict(re.findall(r"\s*([\w ]+):\s*([^,]+)", line))
    sampler, schedule = fields.get("Sampler", "").strip(), fields.get("Schedule type", "").strip()
    for suffix in ("Karras", "Exponential"):
        if sampler.endswith(" " + suffix):
            sampler, schedule = sampler[: -len(suffix) - 1], schedule or suffix
    if not schedule or schedule == "Automatic":
        schedule = A1111_AUTOMATIC.get(sampler, "Uniform")
    return sampler, schedule


def _a1111_reads(r: dict, name: str) -> list:
    if not r["ok"]:
        return []
    written, read = r["value"]["written"], r["value"]["read"]
    problems = []
    if read != name:
        problems.append(("defect", f"spo reads its own text back as {read!r}"))
    sampler, schedule = a1111_schedule(written)
    want = "Karras" if "karras" in name else "Uniform"
    if schedule != want:
        problems.append(("defect", f"'{written[:70]}…': A1111 runs {sampler} with {schedule}, spo ran {want}"))
    return problems


@dataclass
class FCase:
    """A CLI case on files: replay / batch / generate with a file made by `setup`."""
    id: str
    desc: str
    setup: Callable  # setup(sb) -> argv after `spo`
    want_rc: tuple = (2,)
    must: str | None = None  # the message must match (else poor)
    check: Callable | None = None  # check(proc, sb) -> [(level, reason)]
    deadline: float = 30
    shell: bool = False


def run_fcase(c: FCase, liar_url: str) -> Row:
    row = Row(c.id, "parsers", c.desc)
    sb = ROOT / "files" / c.id
    sb.mkdir(parents=True)
    argv = c.setup(sb)
    argv = [a.replace("__LIAR__", liar_url) if isinstance(a, str) else a for a in argv]
    before = listing(sb)
    if c.shell:
        p = run_proc(["bash", "-c", argv[0]], sb, ENV, c.deadline)
    else:
        p = run_proc(spo(*argv), sb, ENV, c.deadline)
    proc_row(row, p)
    row.files = files_note(listing(sb) - before)
    problems = base_problems(p, c.deadline)
    if not p.hang:
        if p.rc not in c.want_rc:
            problems.append(("poor" if p.rc in (1, 2) else "defect", f"exit {p.rc}, {'/'.join(map(str, c.want_rc))} wanted"))
        elif c.must and not re.search(c.must, re.sub(r"\s+", " ", p.err), re.I):
            problems.append(("poor", f"the message does not match /{c.must}/"))
        if "DecompressionBombWarning" in p.err:
            problems.append(("poor", "PIL's raw DecompressionBombWarning is printed"))
    if c.check:
        problems += c.check(p, sb)
    return judge(row, problems)


def sidecar_of(sb: Path, change=None, raw: bytes | None = None, name: str = "x.json") -> Path:
    meta = json.loads(json.dumps(TEMPLATE["meta"]))
    meta["file"] = "x.png"
    if change:
        change(meta)
    p = sb / name
    p.write_bytes(raw if raw is not None else J(meta))
    return p


def spo_png(sb: Path, name: str = "x.png", fmt: str = "png") -> Path:
    from PIL import Image

    from spo_cli.outputs import metadata

    data = metadata.encode_image(Image.new("RGB", (64, 64)), fmt, TEMPLATE["meta"])
    p = sb / name
    p.write_bytes(data)
    return p


STEPS0 = ("--steps", "0")  # a change replay checks after reading the file: exit 2 naming --steps = the file was read
READ_OK = r"steps"


def file_cases() -> list[FCase]:
    F = FCase
    L = "__LIAR__/honest"
    gen_s = ("--server", L, "--width", "64", "--height", "64", "--steps", "1", "--out", "out")

    def batch(lines: str | bytes, *extra, name="p.jsonl"):
        def setup(sb):
            (sb / name).write_bytes(lines if isinstance(lines, bytes) else lines.encode())
            return ["batch", name, *gen_s, *extra]
        return setup

    def safe_names(p, sb):
        made = [x.name for x in (sb / "out").glob("*")] if (sb / "out").is_dir() else []
        bad = [m for m in made if SHELL_SPECIAL.search(m)]
        return [("defect", f"a file named {bad[0]!r}: a shell would run part of it from a copied command")] if bad else []

    out = []
    for i, name in enumerate(["y`touch${IFS}PWNED`", "$(id)", "a;b", "a|b", "-rf", "a'b", "a\nb", "x&y", "a>b",
                              "~root", "*"]):
        out.append(F(f"pf-name-{i:02d}", f"batch line name {name!r}", batch(jsonl_line({"prompt": "a cat", "name": name})),
                     want_rc=(0, 2), check=safe_names))
    out += [
        F("pf-name-scores", "batch line name 'x.scores' (its sidecar is x.scores.json, the scores file of x.png)",
          batch(jsonl_line({"prompt": "a cat", "name": "x.scores"})), want_rc=(0, 2),
          check=lambda p, sb: [("defect", "x.scores.json written: `spo score` overwrites it as x.png's scores")]
          if (sb / "out" / "x.scores.json").exists() else []),
        F("pf-deep", "a prompt-file line nested 100,000 deep", batch(b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n")),
        F("pf-nan", "a line with guidance NaN", batch('{"prompt": "a", "guidance": NaN}\n'), must="guidance|NaN"),
        F("pf-dup", "a line with 'prompt' twice", batch('{"prompt": "a", "prompt": "b"}\n'), want_rc=(0, 2)),
        F("pf-seed-minus1", "a line with seed -1", batch('{"prompt": "a", "seed": -1}\n'), want_rc=(0, 2)),
        F("pf-break", "a txt line of 'BREAK ' × 1666", batch("BREAK " * 1666 + "\n", name="p.txt"),
          must="window|BREAK|chunk"),
        F("pf-50mb", "a 50 MB prompt file", batch(b'{"prompt": "' + b"a" * (50 * MiB) + b'"}\n'), deadline=30),
        F("pf-fifo", "a prompt file that is a FIFO no one writes", lambda sb: (os.mkfifo(sb / "p.txt"), ["batch", "p.txt", *gen_s])[1],
          want_rc=(1, 2), deadline=15),
        F("pf-dev-zero", "a prompt file that is a link to /dev/zero", lambda sb: (os.symlink("/dev/zero", sb / "p.txt"),
                                                                                 ["batch", "p.txt", *gen_s])[1],
          want_rc=(1, 2), deadline=15),
        F("pf-bad-utf8", "a prompt file of Latin-1 bytes", batch(b"caf\xe9\n", name="p.txt"), must="UTF-8|text"),
        F("pf-lock-loop", "batch --server into an --out whose .spo-lock is a symlink loop",
          lambda sb: ((sb / "out").mkdir(), os.symlink(".spo-lock", sb / "out" / ".spo-lock"),
                      (sb / "p.txt").write_text("a cat\n"), ["batch", "p.txt", *gen_s])[3], want_rc=(0, 1, 2)),
        F("pf-ulimit-f", "batch --server under ulimit -f 1 (1 KiB files: EFBIG)",
          lambda sb: [f"printf 'a cat\\n' > p.txt; ulimit -f 1; {PY} -m spo_cli batch p.txt " + " ".join(gen_s)],
          shell=True, want_rc=(1,)),
        F("pf-crlf-bom", "a txt file with a BOM and CRLF (fine)", batch(b"\xef\xbb\xbfa cat\r\n", name="p.txt"), want_rc=(0,)),
        # sidecars and replay
        F("rp-fifo", "replay a FIFO x.json", lambda sb: (os.mkfifo(sb / "x.json"), ["replay", "x.json", *STEPS0])[1],
          want_rc=(1, 2), deadline=15),
        F("rp-dev-zero-json", "replay x.json → /dev/zero", lambda sb: (os.symlink("/dev/zero", sb / "x.json"),
                                                                       ["replay", "x.json", *STEPS0])[1], want_rc=(1, 2), deadline=15),
        F("rp-dev-zero-png", "replay x.png → /dev/zero", lambda sb: (os.symlink("/dev/zero", sb / "x.png"),
                                                                     ["replay", "x.png", *STEPS0])[1], want_rc=(1, 2), deadline=15),
        F("rp-loop", "replay a symlink loop", lambda sb: (os.symlink("x.json", sb / "x.json"), ["replay", "x.json", *STEPS0])[1],
          want_rc=(1, 2), check=lambda p, sb: [("poor", "a symlink loop is reported as missing")]
          if re.search(r"does not exist|no such", p.err, re.I) else []),
        F("rp-jpeg-as-png", "replay a JPEG named .png (spo wrote it, with its metadata)",
          lambda sb: (spo_png(sb, "x.png", "jpg"), ["replay", "x.png", *STEPS0])[1], must=READ_OK,
          check=lambda p, sb: [("defect", "a legitimate file refused: 'carries no metadata' for a JPEG that carries it")]
          if "no metadata" in p.err or "carries no" in p.err else []),
        F("rp-100mpx", "replay a 10000×10000 PNG with A1111 parameters",
          lambda sb: ((sb / "x.png").write_bytes(big("100mpx-params")), ["replay", "x.png", *STEPS0])[1], want_rc=(2,),
          deadline=40),
        F("rp-400mpx", "replay a 20000×20000 PNG (a decompression bomb)",
          lambda sb: ((sb / "x.png").write_bytes(big("400mpx")), ["replay", "x.png", *STEPS0])[1], want_rc=(1, 2), deadline=40),
        F("rp-params-200k", "replay a PNG whose parameters chunk is 200 KB", deadline=20, setup=
          lambda sb: ((sb / "x.png").write_bytes(big_png(64, 64, {"parameters": "a " * 100_000})),
                      ["replay", "x.png", *STEPS0])[1]),
        F("rp-infotext-50k", "replay --infotext 'a ' × 25,000", lambda sb: ["replay", "--infotext", "a " * 25_000, *STEPS0],
          deadline=20, check=lambda p, sb: [("defect", f"{p.cpu:.1f} s of CPU to answer")] if p.cpu > 8 else []),
        F("rp-proc-subst", "replay <(cat x.json): a sidecar through a pipe",
          lambda sb: (sidecar_of(sb), ["spo replay <(cat x.json) --steps 0".replace("spo", f"{PY} -m spo_cli", 1)])[1],
          shell=True, must=READ_OK, deadline=20,
          check=lambda p, sb: [("defect", "a legitimate sidecar refused because it comes through a pipe")]
          if "carries no" in p.err or "not a" in p.err else []),
        F("rp-width-1e9", "a sidecar with width 1000000000", lambda sb: (sidecar_of(sb, lambda m: m.update(width=10**9)),
                                                                         ["replay", "x.json"])[1],
          must=r"x\.json", check=lambda p, sb: [("poor", "names --width, an option not given, for the file's key")]
          if "--width" in p.err else []),
        F("rp-seed-4001", "a sidecar with a 4,001-digit seed", lambda sb: (sidecar_of(sb, lambda m: m.update(seed=int("9" * 4001))),
                                                                          ["replay", "x.json", *STEPS0])[1],
          check=lambda p, sb: [("poor", f"the message is {len(p.err):,} characters (the number printed whole)")]
          if len(p.err) > 1200 else []),
        F("rp-nan", "a sidecar with guidance NaN", lambda sb: (sidecar_of(sb, raw=J(TEMPLATE["meta"]).replace(b'"guidance": 5.0', b'"guidance": NaN')),
                                                               ["replay", "x.json", *STEPS0])[1], must="guidance"),
        F("rp-deep", "a sidecar nested 100,000 deep", lambda sb: (sidecar_of(sb, raw=b"[" * 100_000 + b"]" * 100_000),
                                                                  ["replay", "x.json", *STEPS0])[1]),
        F("rp-50mb", "a 50 MB sidecar", lambda sb: (sidecar_of(sb, raw=b'{"prompt": "' + b"a" * (50 * MiB) + b'"}'),
                                                    ["replay", "x.json", *STEPS0])[1]),
        F("rp-not-utf8", "a sidecar of Latin-1 bytes", lambda sb: (sidecar_of(sb, raw=b'{"prompt": "caf\xe9"}'), ["replay", "x.json", *STEPS0])[1]),
        F("rp-dir", "replay a directory x.json", lambda sb: ((sb / "x.json").mkdir(), ["replay", "x.json", *STEPS0])[1]),
        F("rp-array", "a sidecar that is a JSON array", lambda sb: (sidecar_of(sb, raw=b"[1]"), ["replay", "x.json", *STEPS0])[1]),
        F("rp-schema", "a sidecar of another schema", lambda sb: (sidecar_of(sb, lambda m: m.update(schema="other/9")),
                                                                  ["replay", "x.json", *STEPS0])[1]),
        F("rp-size-junk", "a sidecar with width '64junk'", lambda sb: (sidecar_of(sb, lambda m: m.update(width="64junk")),
                                                                       ["replay", "x.json", *STEPS0])[1], must="width"),
        F("rp-seed-minus1", "replay --infotext with Seed: -1 (A1111's random)",
          lambda sb: ["replay", "--infotext", "a cat\nSteps: 20, Sampler: Euler, Seed: -1, Size: 64x64", *STEPS0],
          must=READ_OK, check=lambda p, sb: [("defect", "Seed -1 refused")] if re.search(r"seed", one_line(p.err), re.I) else []),
        F("rp-ztxt-bomb", "a PNG whose zTXt parameters inflate to 64 MB",
          lambda sb: ((sb / "x.png").write_bytes(_ztxt_bomb()), ["replay", "x.png", *STEPS0])[1], want_rc=(1, 2)),
        F("rp-png-truncated", "a PNG cut after its header", lambda sb: ((sb / "x.png").write_bytes(png_of(64, 64)[:40]),
                                                                       ["replay", "x.png", *STEPS0])[1], want_rc=(1, 2)),
        F("gen-cat-65504-fp16", "generate '(cat:65504)' in float16 on the CPU (weight overflows fp16)",
          lambda sb: ["generate", "(cat:65504)", "--device", "cpu", "--dtype", "fp16", "--steps", "1", "--width", "64",
                      "--height", "64", "--out", "out"], want_rc=(0, 1, 2), deadline=90,
          # Weights are applied in float32 and the mean restored (A1111's "Original" emphasis), so 65504 may
          # well give a finite image; what must not happen is a NaN image blamed on the VAE.
          check=lambda p, sb: [("defect", "the message blames the VAE, not the weight 65504")]
          if re.search("VAE", p.err) and "65504" not in p.err and "65,504" not in p.err else []),
    ]
    return out


def _ztxt_bomb() -> bytes:
    png = png_of(64, 64)
    data = b"parameters\0\0" + zlib.compress(b"a" * (64 * MiB), 9)
    chunk = struct.pack(">I", len(data)) + b"zTXt" + data + struct.pack(">I", zlib.crc32(b"zTXt" + data) & 0xffffffff)
    return png[:33] + chunk + png[33:]


def jsonl_line(obj) -> str:
    return json.dumps(obj) + "\n"


BIG: dict[str, bytes] = {}
BIG_SPECS = {"100mpx": (10_000, 10_000, None), "400mpx": (20_000, 20_000, None),
             "100mpx-params": (10_000, 10_000, {"parameters": "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64"})}


def big(key: str) -> bytes:
    if key not in BIG:
        BIG[key] = big_png(*BIG_SPECS[key])
    return BIG[key]


# --------------------------------------------------------------------------------------------
# The other server cases: token files, --json --debug


def run_token_case(cid: str, desc: str, content, mode: str) -> Row:
    row = Row(cid, "server", desc)
    sb = ROOT / "tokens" / cid
    sb.mkdir(parents=True)
    if content == "FIFO":
        os.mkfifo(sb / "tok")
        path = str(sb / "tok")
    elif content == "DIR":
        (sb / "tok").mkdir()
        path = str(sb / "tok")
    elif content == "MISSING":
        path = str(sb / "nope")
    elif isinstance(content, str):
        path = content
    else:
        (sb / "tok").write_bytes(content)
        path = str(sb / "tok")
    srv = SpoServer(cid, sb / "out", ("--token-file", path))
    t0 = time.perf_counter()
    try:
        srv.start(ready=False, deadline=15)
    except RuntimeError:
        pass
    problems = []
    started = srv.url is not None
    if started:
        row.outcome = "listening"
        if mode == "nonascii":
            r = request(srv, "GET", "/spo/v1/info", headers={"Authorization": ("Bearer " + "pässwörd-0123456789").encode()})
            problems.append(("defect", f"a non-ASCII token accepted at start; a UTF-8 client gets {r.status}"))
        elif mode == "refuse":
            problems.append(("defect", "the server started with this token"))
        srv.stop()
        p_rc, err, hang = None, srv.log.read_text(errors="replace"), False
    else:
        hang = srv.p is not None and srv.p.poll() is None
        if hang:
            srv.stop()
        p_rc = None if hang else srv.p.returncode if srv.p else None
        err = srv.log.read_text(errors="replace")
        row.outcome = "hang" if hang else f"exit {p_rc}"
        if hang:
            problems.append(("defect", "hang: neither listening nor refused within 15 s"))
        elif p_rc != 2:
            problems.append(("poor" if p_rc == 1 else "defect", f"exit {p_rc}, 2 wanted"))
    row.wall_s = time.perf_counter() - t0
    row.message = one_line(err)
    row.tb, row.unexpected = "Traceback" in err, bool(UNEXPECTED.search(err))
    if "MemoryError" in err:
        problems.append(("defect", "MemoryError: the token file is read without a bound"))
    srv.p = None
    return judge(row, problems)


def run_json_debug() -> Row:
    row = Row("srv-json-debug", "server", "spo serve --json --debug: stdout is one JSON line")
    sb = ROOT / "jsondebug"
    sb.mkdir()
    srv = SpoServer("jsondebug", sb / "out", ("--debug",))
    t0 = time.perf_counter()
    problems = []
    try:
        srv.start(ready=False, deadline=30)
        for path in ("/health", "/spo/v1/info", "/nope"):
            request(srv, "GET", path, headers={})
        time.sleep(0.5)
        srv.stop()
        lines = [ln for ln in srv.stdout.read_text(errors="replace").splitlines() if ln.strip()]
        bad = [ln for ln in lines[1:]]
        row.outcome = f"{len(lines)} stdout line(s)"
        row.message = one_line(bad[0] if bad else lines[0])
        if bad:
            problems.append(("defect", f"{len(bad)} more line(s) on stdout, e.g. {one_line(bad[0], 60)!r}"))
    except RuntimeError as e:
        problems.append(("defect", str(e)[:100]))
        srv.stop()
    row.wall_s = time.perf_counter() - t0
    return judge(row, problems)


# --------------------------------------------------------------------------------------------
# The run


def build_world() -> tuple[dict, Path]:
    """The main server, with the files that the output-path cases need in its --out."""
    out = ROOT / "main-out"
    out.mkdir()
    outside = ROOT / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png_of(8, 8))
    (outside / "secret.json").write_text('{"secret": true}')
    os.symlink(outside / "secret.png", out / "escape.png")
    os.symlink(outside / "secret.json", out / "escape.json")
    os.symlink("/dev/zero", out / "zero.png")
    os.mkfifo(out / "fifo.png")
    return {"main": SpoServer("main", out)}, out


def _wait_ready(srv: SpoServer, headers: dict, deadline: float = 180) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < deadline and srv.alive():
        if request(srv, "GET", "/health", headers=headers, deadline=5).status == 200:
            return
        time.sleep(0.25)


def capture_template(srv: SpoServer) -> Path:
    r = request(srv, "GET", "/spo/v1/models", headers={})
    TEMPLATE["models"] = r.json()
    r = request(srv, "POST", "/spo/v1/run", body=J({"model": "spo", "images": [
        {"prompt": "a cat", "seed": 1, "width": 64, "height": 64, "steps": 1}]}),
        headers={"Content-Type": "application/json"}, deadline=60)
    TEMPLATE["meta"] = r.json()["images"][0]["meta"]
    p = ROOT / "meta.json"
    p.write_text(json.dumps(TEMPLATE["meta"]))
    # one spo image and sidecar in --out (the gallery server's control, the Host case's /outputs/ file)
    r = request(srv, "POST", "/v1/images/generations", body=J(gen()), headers={"Content-Type": "application/json"},
                deadline=60)
    return p


def main(out_md: Path | None, only: str | None = None, list_only: bool = False, json_out: Path | None = None) -> int:
    global ROOT, ENV
    from common import offline_cache  # noqa: E402

    server_cases = cors_cases() + host_cases() + body_cases() + sampler_cases() + path_cases() + prompt_cases()
    ids = ([c.id for c in server_cases] + [t[0] for t in token_case_runs()] + [c.id for c in auth_cases()]
           + [c.id for c in gallery_cases()] + ["srv-json-debug"] + [c.id for c in client_cases("x")]
           + [c.id for c in infotext_cases() + syntax_cases()] + [f"rt-{n}" for n in _schedulers()]
           + [c.id for c in file_cases()])
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {dup}"
    if list_only:
        print("\n".join(ids))
        print(f"{len(ids)} cases")
        return 0
    sel = (lambda i: re.search(only, i) is not None) if only else (lambda i: True)

    ROOT = Path(tempfile.mkdtemp(prefix="spo-hostile2-"))
    (ROOT / "home").mkdir()
    print(f"hostile round 2: work in {ROOT}; building the tiny offline cache …", file=sys.stderr)
    work, env = offline_cache()
    ENV = {k: v for k, v in env.items() if not k.startswith(("HF_ENDPOINT", "HF_TOKEN", "SPO_TOKEN"))}
    ENV.update(HOME=str(ROOT / "home"), TMPDIR=str(ROOT), COLUMNS="200")
    ENV.pop("XDG_CACHE_HOME", None)
    src = Path(__file__).resolve().parents[1] / "src"
    ENV["PYTHONPATH"] = str(src) + (os.pathsep + ENV["PYTHONPATH"] if ENV.get("PYTHONPATH") else "")
    rows: list[Row] = []
    t_all = time.perf_counter()

    def emit(row: Row) -> None:
        row.message, row.input = clean(row.message), clean(row.input)
        rows.append(row)
        print(f"[{len(rows):3d}] {row.area:7} {row.id:34} {row.outcome:18} {row.wall_s:6.1f} s  {row.verdict}"
              + (f"  {row.why}" if row.why else ""), file=sys.stderr, flush=True)

    try:
        servers, _ = build_world()
        main_srv = servers["main"].start()
        meta_path = capture_template(main_srv)

        # -- server: the main server, then the ones that get poisoned
        for c in server_cases:
            if not sel(c.id):
                continue
            if not main_srv.alive():
                main_srv = servers["main"].start()
            row = run_scase(c, main_srv)
            emit(row)
            if c.restart_after_hang and (row.outcome == "no answer" or not main_srv.alive()):
                main_srv.stop()
                main_srv = servers["main"].start()
        main_srv.stop()

        if any(sel(c.id) for c in auth_cases()):
            tok_out = ROOT / "token-out"
            (ROOT / "token").write_text(TOKEN + "\n")
            tsrv = SpoServer("token", tok_out, ("--token-file", str(ROOT / "token")))
            tsrv.start(ready=False)
            _wait_ready(tsrv, {"Authorization": f"Bearer {TOKEN}"})
            for c in auth_cases():
                if sel(c.id):
                    emit(run_scase(c, tsrv))
            tsrv.stop()
        for cid, desc, content, mode in token_case_runs():
            if sel(cid):
                emit(run_token_case(cid, desc, content, mode))
        if sel("srv-json-debug"):
            emit(run_json_debug())
        if any(sel(c.id) for c in gallery_cases()):
            gout = ROOT / "gallery-out"
            gout.mkdir()
            first = next(iter(sorted(q for q in (ROOT / "main-out").glob("*.png") if q.is_file() and not q.is_symlink())))
            shutil.copy(first, gout / first.name)
            shutil.copy(first.with_suffix(".json"), gout / first.with_suffix(".json").name)
            gsrv = SpoServer("gallery", gout)
            gsrv.start(ready=False)
            for c in gallery_cases():
                if not sel(c.id):
                    continue
                if not gsrv.alive():
                    gsrv.start(ready=False)
                row = run_scase(c, gsrv)
                emit(row)
                if row.outcome == "no answer" or not gsrv.alive() or gsrv.hwm_mb() > RSS_BOUND_MB:
                    gsrv.stop()  # a fresh one for the next case: this one is blocked or bloated
                    for leftover in ("zz.json", "zero.json", "big.json"):
                        q = gout / leftover
                        if q.exists() or q.is_symlink():
                            _unblock_fifo(q) if stat.S_ISFIFO(os.lstat(q).st_mode) else None
                            q.unlink()
            gsrv.stop()

        # -- client: a lying server, and a second host that records what reaches it
        liar = start_liar()
        liar_url = f"http://127.0.0.1:{liar.server_address[1]}"
        try:
            other = start_liar("127.0.0.2")
        except OSError:
            other = start_liar("localhost")
        other_url = f"http://{other.server_address[0]}:{other.server_address[1]}/__other__"
        for c in client_cases(other_url):
            if sel(c.id):
                emit(run_ccase(c, liar_url, len(rows)))

        # -- parsers
        for c in infotext_cases() + syntax_cases() + roundtrip_cases(meta_path):
            if sel(c.id):
                emit(run_pcase(c))
        LIES["honest"] = {}
        for c in file_cases():
            if sel(c.id):
                emit(run_fcase(c, liar_url))
        liar.shutdown()
        other.shutdown()
    except Exception as e:  # a bug of this script: reported as such, and the rows so far are kept
        import traceback

        traceback.print_exc()
        emit(Row("HARNESS-ERROR", "harness", f"{type(e).__name__}: {e}", verdict="harness error"))
    finally:
        for srv in SpoServer.started:
            srv.stop()
    total = time.perf_counter() - t_all

    text = report(rows, total)
    if out_md:
        out_md.parent.mkdir(parents=True, exist_ok=True)
        out_md.write_text(text, encoding="utf-8")
        print(f"wrote {out_md}", file=sys.stderr)
    if json_out:
        json_out.write_text(json.dumps([{k: v for k, v in r.__dict__.items() if k != "base"} for r in rows],
                                       indent=1, default=clean, ensure_ascii=True))
    sys.stdout.write(text)
    if not os.environ.get("SPO_HOSTILE_KEEP"):
        shutil.rmtree(ROOT, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.verdict in ("defect", "harness error") for r in rows) else 0


def _schedulers() -> list[str]:
    from spo_cli import presets

    return [n for n in presets.SCHEDULERS if n != "default"]


def md(text) -> str:
    return clean(text).replace("|", "\\|").replace("\n", " ").replace("`", "'")


def report(rows: list[Row], total: float) -> str:
    import subprocess as sp

    try:
        commit = sp.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = "?"
    lines = [f"# spo hostile run, round two ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             f"Commit {commit}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
             f"{len(rows)} cases in {total / 60:.1f} min; every child under RLIMIT_AS {AS_LIMIT // GiB} GiB; "
             f"peak RSS bound {RSS_BOUND_MB} MB.", "",
             "Verdicts: **defect** = Traceback, 'Unexpected', HTTP 5xx, hang (past the case's deadline), memory over "
             "the bound, or a silent wrong result checked per case; **poor message** = the right refusal said "
             "badly (wrong exit code, no message, raw warning); **good** otherwise. For the server, CPU and RSS are "
             "the server's (its CPU during the case, its high-water mark so far); for a child, its own.", ""]
    areas = sorted({r.area for r in rows}, key=["server", "client", "parsers", "harness"].index)
    verdicts = ["good", "poor message", "defect"]
    lines += ["| area | cases | good | poor message | defect |", "|---|---:|---:|---:|---:|"]
    for a in areas:
        rs = [r for r in rows if r.area == a]
        lines.append(f"| {a} | {len(rs)} | " + " | ".join(str(sum(r.verdict == v for r in rs)) for v in verdicts) + " |")
    lines.append(f"| **all** | **{len(rows)}** | " + " | ".join(f"**{sum(r.verdict == v for r in rows)}**" for v in verdicts) + " |")
    lines += ["", f"Tracebacks: {sum(r.tb for r in rows)}; 'Unexpected': {sum(r.unexpected for r in rows)}; hangs: "
              f"{sum('hang' in ' '.join(r.why) for r in rows)}; over the memory bound: "
              f"{sum('RSS' in ' '.join(r.why) or 'MemoryError' in ' '.join(r.why) for r in rows)}.", ""]
    defects = [r for r in rows if r.verdict == "defect"]
    if defects:
        lines += ["## Defects", ""]
        lines += [f"- `{r.id}` ({md(r.input)}): {md('; '.join(w.split(': ', 1)[1] for w in r.why if w.startswith('defect')))}"
                  for r in defects]
        lines.append("")
    lines += ["## All cases", "",
              "| # | area | case | input | outcome | message | tb/unexp. | wall s | cpu s | peak RSS MB | files | verdict |",
              "|---:|---|---|---|---|---|---|---:|---:|---:|---|---|"]
    for i, r in enumerate(rows, 1):
        flags = ("tb" if r.tb else "") + ("/" if r.tb and r.unexpected else "") + ("unexp." if r.unexpected else "")
        cpu = "" if r.cpu_s is None else f"{r.cpu_s:.2f}"
        rss = "" if r.rss_mb is None else f"{r.rss_mb:,.0f}"
        verdict = r.verdict + (f" ({'; '.join(r.why)})" if r.why else "")
        lines.append(f"| {i} | {r.area} | `{md(r.id)}` | {md(r.input[:90])} | {md(r.outcome)} | {md(r.message)} | "
                     f"{flags} | {r.wall_s:.2f} | {cpu} | {rss} | {md(r.files)} | {md(verdict[:300])} |")
    return "\n".join(lines) + "\n"


def selftest() -> int:
    """The verdict rules on canned inputs (no spo run): what keeps a broken rule from passing for a fixed bug."""
    global ROOT
    ROOT = Path(tempfile.mkdtemp(prefix="spo-hostile2-selftest-"))
    try:
        assert judge(Row("a", "x", ""), []).verdict == "good"
        assert judge(Row("a", "x", ""), [("poor", "p")]).verdict == "poor message"
        assert judge(Row("a", "x", ""), [("poor", "p"), ("defect", "d")]).verdict == "defect"
        assert judge(Row("a", "x", "", tb=True), []).verdict == "defect"
        assert judge(Row("a", "x", "", rss_mb=RSS_BOUND_MB + 1), []).verdict == "defect"
        assert judge(Row("a", "x", "", rss_mb=RSS_BOUND_MB - 1), []).verdict == "good"
        assert UNEXPECTED.search("error: Unexpected TypeError: x. Please report it")
        assert not UNEXPECTED.search("not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig))")
        assert a1111_schedule("Steps: 1, Sampler: DPM++ 2M, CFG scale: 5") == ("DPM++ 2M", "Karras")
        assert a1111_schedule("Steps: 1, Sampler: DPM++ 2M, Schedule type: Uniform, Seed: 1") == ("DPM++ 2M", "Uniform")
        assert a1111_schedule("Sampler: DPM++ 2M SDE Karras, Seed: 1") == ("DPM++ 2M SDE", "Karras")
        assert a1111_schedule("Sampler: Euler a, Seed: 1") == ("Euler a", "Uniform")
        assert _a1111_reads({"ok": True, "value": {"written": "Sampler: DPM++ 2M, Seed: 1", "read": "dpm++2m"}},
                            "dpm++2m")
        assert not _a1111_reads({"ok": True, "value": {"written": "Sampler: DPM++ 2M Karras, Seed: 1",
                                                       "read": "dpm++2m-karras"}}, "dpm++2m-karras")
        assert not _a1111_reads({"ok": True, "value": {"written": "Sampler: DPM++ 2M, Schedule type: Uniform",
                                                       "read": "dpm++2m"}}, "dpm++2m")
        assert SHELL_SPECIAL.search("a`b") and SHELL_SPECIAL.search("a$b") and SHELL_SPECIAL.search("a\nb")
        assert not SHELL_SPECIAL.search("20261202-a-red-fox-s42.png")
        assert one_line("warning: w\nerror: the real problem\n") == "error: the real problem"
        assert clean("a\ud800b") == "a\\ud800b"
        assert _url_line('INFO: x\n{"url": "http://127.0.0.1:1"}\n') == "http://127.0.0.1:1"
        out = ROOT / "out"
        out.mkdir()
        (out / "x.png").write_bytes(png_of(16, 24))
        (out / "x.json").write_text(json.dumps({"width": 64, "height": 64}))
        assert any("sidecar says 64×64" in why for _, why in check_written(out, 1, (64, 64)))
        assert any("2 asked" in why for _, why in check_written(out, 2, None))
        (out / "x.png").write_bytes(png_of(64, 64))
        assert check_written(out, 1, (64, 64)) == []
        from PIL import Image

        with Image.open(io.BytesIO(big_png(300, 200, {"parameters": "p"}))) as im:
            assert im.size == (300, 200) and im.text["parameters"] == "p"
        p = run_proc([PY, "-c", "import time; time.sleep(30)"], ROOT, dict(os.environ), deadline=0.5)
        assert p.hang and p.rc is None and p.wall < 5
        p = run_proc([PY, "-c", "x = bytearray(4 << 30)"], ROOT, dict(os.environ), deadline=20)
        assert not p.hang and p.rc == 1 and "MemoryError" in p.err
        assert ("defect", "MemoryError: the read is unbounded (stopped by RLIMIT_AS)") in base_problems(p, 20)
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)
    print("selftest: the verdict rules hold")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--selftest":
        sys.exit(selftest())
    if len(sys.argv) == 4 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("run it as: python benchmarks/hostile.py --round2 --out benchmarks/results/DATE-cpu-hostile-round2.md")

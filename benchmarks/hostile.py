"""Hostile and careless inputs against the real `spo` CLI, each in a fresh sandbox, checked against
five rules (and, where a case says so, what its message must name).

    python benchmarks/hostile.py [--json rows.json] [--only REGEX] [--keep] [--list]
    python benchmarks/hostile.py --round2 --out benchmarks/results/DATE-cpu-hostile-round2.md [--only REGEX]

`--round2` runs the second round instead (issue 20: `spo serve`, the `--server` client against a lying
server, the parsers); its cases and rules are in `hostile_round2.py`.

Every case runs `python -m spo_cli ...` in a subprocess with the tiny random models in a private
offline Hugging Face cache (`common.offline_cache()`), `--device cpu` and tiny sizes wherever a run
must generate, cwd set to a fresh empty sandbox and its output folder inside it. Rules:

1. no "Unexpected" and no "Traceback" on stderr (a Traceback is allowed with --debug);
2. the exit code is the expected one (2 bad input, 1 failed run, 0 success, 3 `batch --skip-invalid`
   that skipped lines, 130/143 after SIGINT/SIGTERM);
3. nothing is written outside the case's own --out folder: the sandbox (less --out), the HF cache,
   HF_HOME, HOME and the case's TMPDIR are listed before and after;
4. no lost images: every "ok" image of OUT/manifest.jsonl exists and decodes, every image on disk
   decodes and has its .json sidecar;
5. bad input fails fast: a case expected to exit 2 finishes in under 6 s;
6. (case checks) what the case's message must name, post-run checks of a case (manifest statuses,
   files that must survive, pixels of a replay), no spo temporary files left after a run that ended.

A case whose expectation is this script's opinion rather than the README's or the brief's is marked
soft: a miss there is a "note", not a VIOLATION. Progress goes to stderr, the table to stdout; the
exit status is 1 when any case is a VIOLATION.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))
from common import offline_cache  # noqa: E402

FAST_LIMIT_S = 6.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TINY = {"--device": "cpu", "--width": "64", "--height": "64", "--steps": "2"}
SPO_TMP = ".spo-tmp"
MERGED_REPO = "models--SPO-Diffusion-Models--SPO-SDXL_4k-p_10ep"

ROOT: Path  # everything this run makes (sandboxes, logs, fixtures, a HOME)
WORK: Path  # the offline cache of common.offline_cache(): hub/ and repos/
BASE_ENV: dict[str, str]
FX: dict[str, Path] = {}  # fixtures made by the fixture cases: spo PNG + sidecar, a compare grid


# ---------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    cat: str
    args: list  # after `python -m spo_cli`; bytes items go to argv as raw bytes
    expect: tuple | None  # exit codes accepted; None: any
    out: str | None = "out"  # the --out folder relative to the sandbox ("." is the sandbox itself)
    env: dict = field(default_factory=dict)  # overrides; None removes the variable
    stdin: bytes | None = None
    setup: Callable | None = None  # setup(ctx): files in the sandbox, env changes
    run: Callable | None = None  # run(ctx) -> Result, for signals, concurrency, pipes
    must: tuple = ()  # regexes the whitespace-collapsed stderr must match (rule 6)
    post: Callable | None = None  # post(ctx, res) -> [problem, ...] (rule 6)
    soft: bool = False  # the expected code is this script's opinion: a miss is a note
    timeout: float = 240
    max_s: float | None = None  # a case's own time limit (rule 6)
    needs: str | None = None  # a fixture in FX
    show_warning: bool = False  # on success, show the first warning instead of stdout
    temp_ok: bool = False  # spo temporary files may remain in --out (a SIGKILLed run)


@dataclass
class Ctx:
    case: Case
    cdir: Path
    sb: Path
    tmp: Path
    env: dict
    log: Path
    out: Path | None
    watch: list = field(default_factory=list)  # extra roots to list before/after


@dataclass
class Result:
    rc: int | str
    stdout: str
    stderr: str
    elapsed: float
    na: str | None = None  # why the case could not be run at all
    extra: list = field(default_factory=list)  # problems found by a custom runner


def g(prompt, *extra, out: str | None = "out", tiny: bool = True, cmd: str = "generate") -> list:
    """`generate PROMPT` with the tiny settings, less any option that `extra` sets itself."""
    args = [cmd] + ([prompt] if prompt is not None else [])
    mine = {e for e in extra if isinstance(e, str) and e.startswith("--")}
    for k, v in (TINY if tiny else {}).items():
        if k not in mine:
            args += [k, v]
    if out is not None and "--out" not in mine:
        args += ["--out", out]
    return args + list(extra)


def b(file, *extra, out="out"):
    return g(file, *extra, out=out, cmd="batch")


def write(ctx: Ctx, rel: str, data, mode: str = "w") -> Path:
    p = ctx.sb / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        p.write_bytes(data)
    else:
        p.write_text(data, encoding="utf-8")
    return p


def writer(rel: str, data):
    return lambda ctx: write(ctx, rel, data)


def jsonl(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


def copy_model(ctx: Ctx, rel: str = "m") -> Path:
    dst = ctx.sb / rel
    shutil.copytree(WORK / "repos" / "merged", dst)
    return dst


def local_model(change: Callable[[Path], None]):
    def setup(ctx):
        change(copy_model(ctx))
    return setup


def index_only(index) -> Callable:
    text = index if isinstance(index, str) else json.dumps(index)
    return writer("m/model_index.json", text)


def deep_json(n: int = 100_000) -> str:
    return "[" * n + "]" * n


def with_cache(mutate: Callable[[Path], None] | None = None, empty: bool = False):
    """A private copy of the offline cache (or an empty one) for this case, damaged by `mutate`."""
    def setup(ctx):
        cache = ctx.cdir / "hub"
        if empty:
            cache.mkdir()
        else:
            shutil.copytree(WORK / "hub", cache, symlinks=True)
        if mutate:
            mutate(cache)
        ctx.env["HF_HUB_CACHE"] = str(cache)
        ctx.env["HF_HOME"] = str(ctx.cdir / "hf-home")
    return setup


def merged_file(cache: Path, rel: str) -> Path:
    snap = next((cache / MERGED_REPO / "snapshots").iterdir())
    return snap / rel


def truncate_blob(rel: str):
    def mutate(cache):
        blob = Path(os.path.realpath(merged_file(cache, rel)))
        size = blob.stat().st_size
        with open(blob, "r+b") as f:
            f.truncate(size // 2)
    return mutate


def delete_blob(rel: str):
    return lambda cache: Path(os.path.realpath(merged_file(cache, rel))).unlink()


def garbage_blob(rel: str, data: bytes):
    return lambda cache: Path(os.path.realpath(merged_file(cache, rel))).write_bytes(data)


def sidecar(change: Callable[[dict], object] | None = None, raw: str | bytes | None = None, name="x.json"):
    """A copy of the fixture sidecar, changed by `change(meta)`, or raw text."""
    def setup(ctx):
        if raw is not None:
            write(ctx, name, raw)
            return
        meta = json.loads(FX["gen_json"].read_text())
        change(meta)
        write(ctx, name, json.dumps(meta, allow_nan=True))
    return setup


def setitem(**kv):
    def change(meta):
        for k, v in kv.items():
            node = meta
            *path, last = k.split("__")
            for p in path:
                node = node[p]
            node[last] = v
    return change


def fixture_copy(key: str, rel: str, transform: Callable[[bytes], bytes] | None = None):
    def setup(ctx):
        data = FX[key].read_bytes()
        write(ctx, rel, transform(data) if transform else data)
    return setup


def png_bytes(text: dict | None = None, size=(64, 64)) -> bytes:
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for k, v in (text or {}).items():
        info.add_itxt(k, v) if k == "spo-cli" else info.add_text(k, v)
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Post-run checks (rule 6) and the custom runners


def manifest(ctx: Ctx) -> list[dict] | None:
    p = ctx.out / "manifest.jsonl" if ctx.out else None
    if not p or not p.exists():
        return None
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def expect_rows(**want):
    """Post check: manifest status counts, e.g. ok=2, skipped=2."""
    def post(ctx, res):
        rows = manifest(ctx)
        if rows is None:
            return ["no manifest.jsonl in --out"]
        have = {}
        for r in rows:
            have[r["status"]] = have.get(r["status"], 0) + 1
        return [f"manifest has {have.get(k, 0)} '{k}' row(s), expected {v}" for k, v in want.items()
                if have.get(k, 0) != v]
    return post


def post_ddim(ctx, res):
    rows = manifest(ctx)
    if rows is None:
        return ["no manifest.jsonl in --out"]
    probs = []
    for r in rows:
        want = "failed" if r.get("line") == 2 else "ok"
        if r["status"] != want:
            probs.append(f"manifest line {r.get('line')} is '{r['status']}', expected '{want}'")
    if not any(r.get("line") == 2 and r.get("error") for r in rows):
        probs.append("the failed row has no error text")
    return probs


def post_stopped(n_images: int):
    def post(ctx, res):
        rows = manifest(ctx)
        if rows is None:
            return ["no manifest.jsonl in --out after the signal"]
        probs = []
        if len(rows) != n_images:
            probs.append(f"manifest has {len(rows)} rows, expected {n_images}")
        if not any(r["status"] == "pending" for r in rows):
            probs.append("no 'pending' row: the run was not stopped part-way (signal too late?)")
        return probs
    return post


def post_user_files(ctx, res):
    probs = []
    for name, data in USER_FILES.items():
        p = ctx.out / name
        if not p.exists():
            probs.append(f"the user's file {name} in --out was deleted")
        elif p.read_bytes() != data:
            probs.append(f"the user's file {name} in --out was changed")
    return probs


def post_same_pixels(ctx, res):
    from PIL import Image, ImageChops

    made = [p for p in (ctx.out.glob("*.png") if ctx.out and ctx.out.is_dir() else [])]
    if len(made) != 1:
        return [f"expected 1 image in --out, found {len(made)}"]
    with Image.open(made[0]) as a, Image.open(FX["gen_png"]) as b_:
        if a.size != b_.size or ImageChops.difference(a.convert("RGB"), b_.convert("RGB")).getbbox():
            return ["the replayed image differs from the original pixels"]
    return []


def post_json_stdout(ctx, res):
    try:
        json.loads(res.stdout)
        return []
    except ValueError as e:
        return [f"--json stdout is not JSON ({e})"]


def post_no_raw_escape(ctx, res):
    if "\x1b" in res.stdout or "\x1b" in res.stderr:
        return ["note: a raw ESC character from the prompt reached the terminal (stdout/stderr)"]
    return []


def post_all_of(*posts):
    def post(ctx, res):
        return [p for f in posts for p in f(ctx, res)]
    return post


def spawn(ctx: Ctx, args: list, tag: str = "", stdout=None):
    """Start spo in the case's sandbox; stdout and stderr to log files (or `stdout`)."""
    fo = stdout if stdout is not None else open(f"{ctx.log}{tag}.out", "wb")
    fe = open(f"{ctx.log}{tag}.err", "wb")
    p = subprocess.Popen([sys.executable, "-m", "spo_cli", *args], cwd=ctx.sb, env=ctx.env,
                         stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True)
    p._files = (fo, fe)  # type: ignore[attr-defined]
    return p


def finish(ctx: Ctx, p, tag: str = "", timeout: float = 240) -> tuple[int | str, str, str]:
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        rc = "timeout"
    for f in p._files:  # type: ignore[attr-defined]
        if hasattr(f, "close"):
            f.close()
    out = Path(f"{ctx.log}{tag}.out")
    return rc, (out.read_text("utf-8", "replace") if out.exists() else ""), \
        Path(f"{ctx.log}{tag}.err").read_text("utf-8", "replace")


def wait_for(cond: Callable[[], bool], timeout: float, proc=None) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def first_image(out: Path) -> Callable[[], bool]:
    return lambda: out.is_dir() and any(p.suffix == ".png" and not p.name.startswith(".") for p in out.iterdir())


def signal_run(sigs: tuple, when: str = "image", delay: float = 0.0):
    """Start the case's command, wait for the first image (or the folder lock), then send `sigs`."""
    def run(ctx: Ctx) -> Result:
        t0 = time.perf_counter()
        p = spawn(ctx, ctx.case.args)
        cond = first_image(ctx.out) if when == "image" else (lambda: (ctx.out / ".spo-lock-owner").exists())
        extra = []
        if not wait_for(cond, 180, p):
            extra.append(f"the run never reached '{when}' before it ended (signal not sent)")
        else:
            time.sleep(delay)
            for i, s in enumerate(sigs):
                if i:
                    time.sleep(0.3)
                if p.poll() is None:
                    os.kill(p.pid, s)
        rc, out, err = finish(ctx, p, timeout=180)
        return Result(rc, out, err, time.perf_counter() - t0, extra=extra)
    return run


def concurrent_run(ctx: Ctx) -> Result:
    """Batch A holds --out; batch B on the same --out must refuse at once; then A is stopped."""
    a = spawn(ctx, ctx.case.args, ".first")
    extra = []
    if not wait_for(lambda: (ctx.out / ".spo-lock-owner").exists(), 60, a):
        extra.append("the first batch never took the folder lock")
    t0 = time.perf_counter()
    bp = spawn(ctx, ctx.case.args)
    rc, out, err = finish(ctx, bp, timeout=120)
    elapsed = time.perf_counter() - t0
    if a.poll() is None:
        os.kill(a.pid, signal.SIGINT)
    arc, _, aerr = finish(ctx, a, ".first", timeout=120)
    if arc != 130:
        extra.append(f"the first batch, stopped with SIGINT, exited {arc} (expected 130)")
    if "Traceback" in aerr or "Unexpected" in aerr:
        extra.append("the first batch printed a traceback / 'Unexpected' when stopped")
    if not (ctx.out / "manifest.jsonl").exists():
        extra.append("no manifest after the first batch was stopped")
    return Result(rc, out, err, elapsed, extra=extra)


def kill_and_resume(ctx: Ctx) -> Result:
    """SIGKILL a batch part-way, then run it again: every image exactly once, nothing left over."""
    t0 = time.perf_counter()
    p = spawn(ctx, ctx.case.args, ".killed")
    extra = []
    if not wait_for(first_image(ctx.out), 180, p):
        extra.append("the first run never wrote an image (SIGKILL not sent)")
    elif p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    finish(ctx, p, ".killed", timeout=60)
    before = sorted(x.name for x in ctx.out.iterdir()) if ctx.out.is_dir() else []
    q = spawn(ctx, ctx.case.args)
    rc, out, err = finish(ctx, q, timeout=240)
    imgs = sorted(x.name for x in ctx.out.glob("*.png"))
    if len(imgs) != 4:
        extra.append(f"after the rerun there are {len(imgs)} images, expected 4 ({imgs})")
    rows = manifest(ctx) or []
    if sum(r["status"] == "ok" for r in rows) != 4:
        extra.append("the rerun's manifest does not list 4 ok images")
    if not any(n.startswith(SPO_TMP) for n in before):
        pass  # the kill may land between writes: nothing to clean up then
    return Result(rc, out, err, time.perf_counter() - t0, extra=extra)


def broken_pipe_run(ctx: Ctx) -> Result:
    """stdout is a pipe whose reader is gone (`spo models --json | true`)."""
    r, w = os.pipe()
    os.close(r)
    t0 = time.perf_counter()
    p = spawn(ctx, ctx.case.args, stdout=w)
    os.close(w)
    rc, _, err = finish(ctx, p)
    return Result(rc, "", err, time.perf_counter() - t0)


def dev_full_run(ctx: Ctx) -> Result:
    """stdout is /dev/full: every write fails with ENOSPC (`spo models > /dev/full`)."""
    f = open("/dev/full", "wb")
    t0 = time.perf_counter()
    p = spawn(ctx, ctx.case.args, stdout=f)
    rc, _, err = finish(ctx, p)
    return Result(rc, "", err, time.perf_counter() - t0)


class Server:
    """A loopback 'Hub' that is broken in one way: it accepts and never answers, or answers garbage."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            if self.mode == "garbage":
                try:
                    c.recv(65536)
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
                              b"Connection: close\r\n\r\n{not json!}")
                    c.close()
                except OSError:
                    pass

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"


SERVERS: dict[str, Server] = {}


def hub(mode: str):
    def setup(ctx):
        if mode not in SERVERS:
            SERVERS[mode] = Server(mode)
        ctx.env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=SERVERS[mode].url)
    return setup


# ---------------------------------------------------------------------------------------------
# The case list


USER_FILES = {".my-notes.part": b"half a thought\n", "notes.txt": b"keep me\n"}
# A dead run's lock files (spo's own names: spo may replace them, but must not be stopped by them).
STALE_LOCK = {".spo-lock": b"", ".spo-lock-owner": b'{"pid": 999999, "host": "gone", "command": "spo batch", '
                                                    b'"since": "2020-01-01T00:00:00+00:00"}'}


def user_files(ctx):
    for name, data in {**USER_FILES, **STALE_LOCK}.items():
        write(ctx, f"out/{name}", data)
    write(ctx, "p.txt", "a red fox\n")


def cases() -> list[Case]:
    C = Case
    N, S, T = "generate/number", "generate/text", "generate/choice"
    O, M, BA, R, CO, D = "generate/out", "generate/model", "batch", "replay", "compare", "download etc."
    L, DC, X = "local model", "damaged cache", "misc"
    big = "a " * 60_000  # 120,000 characters: the largest argv string Linux passes is 128 KiB
    two_mb = "a fox " * 350_000
    hostile_prompt = "../../../../tmp/pwn/../x [/] [bold]\x1b[2J\x1b]0;owned\x07 🦊 \u202egnp.exe \u0301 ☃"
    sev = [
        {"prompt": "a red fox"}, {"prompt": "a cat"}, {"prompt": "a dog"},
        {"prompt": "a bird"}, {"prompt": "a tree"}, {"prompt": "a house"},
    ]
    six = jsonl(*sev)
    return [
        # -- fixtures (real runs whose files later cases use) ---------------------------------------
        C("fx-generate", "fixture", g("a red fox in fresh snow", "--seed", "42"), (0,),
          post=lambda ctx, res: keep_fixture_generate(ctx)),
        C("fx-compare", "fixture", g("a cat", "--spo", "--base", "--seeds", "1", "--cell-size", "32", cmd="compare"),
          (0,), post=lambda ctx, res: keep_fixture_grid(ctx)),

        # -- generate: numbers -------------------------------------------------------------------
        C("g-steps-0", N, g("a cat", "--steps", "0"), (2,)),
        C("g-steps-neg", N, g("a cat", "--steps", "-5"), (2,)),
        C("g-steps-huge", N, g("a cat", "--steps", "100000"), (2,)),
        C("g-steps-float", N, g("a cat", "--steps", "2.5"), (2,)),
        C("g-steps-word", N, g("a cat", "--steps", "ten"), (2,)),
        C("g-steps-empty", N, g("a cat", "--steps", ""), (2,)),
        C("g-n-0", N, g("a cat", "-n", "0"), (2,)),
        C("g-n-neg", N, g("a cat", "-n", "-1"), (2,)),
        C("g-n-huge", N, g("a cat", "-n", "1000000000"), (2,)),
        C("g-n-int64-overflow", N, g("a cat", "-n", "99999999999999999999999"), (2,)),
        C("g-bs-0", N, g("a cat", "--batch-size", "0"), (2,)),
        C("g-bs-neg", N, g("a cat", "--batch-size", "-2"), (2,)),
        C("g-bs-huge", N, g("a cat", "--batch-size", "1000"), (2,)),
        C("g-seed-neg", N, g("a cat", "--seed", "-1"), (2,)),
        C("g-seed-2^40", N, g("a cat", "--seed", str(2**40)), (2,)),
        C("g-seed-max-n2", N, g("a cat", "--seed", str(2**32 - 1), "-n", "2"), (2,)),
        C("g-seed-hex", N, g("a cat", "--seed", "0x10"), (2,)),
        C("g-seed-max-ok", N, g("a cat", "--seed", str(2**32 - 1)), (0,)),
        C("g-width-0", N, g("a cat", "--width", "0"), (2,)),
        C("g-width-neg", N, g("a cat", "--width", "-64"), (2,)),
        C("g-width-huge", N, g("a cat", "--width", "100000"), (2,)),
        C("g-width-100", N, g("a cat", "--width", "100"), (2,)),
        C("g-height-65", N, g("a cat", "--height", "65"), (2,)),
        C("g-height-0", N, g("a cat", "--height", "0"), (2,)),
        C("g-height-neg", N, g("a cat", "--height", "-8"), (2,)),
        C("g-height-huge", N, g("a cat", "--height", "100000"), (2,)),
        C("g-4096x4096", N, g("a cat", "--width", "4096", "--height", "4096"), (2,)),
        C("g-8x8-no-out", N, g("a cat", "--width", "8", "--height", "8", out=None), (0,), out="outputs"),
        C("g-72x64", N, g("a cat", "--width", "72", "--height", "64"), (0,)),
        C("g-guidance-nan", N, g("a cat", "--guidance", "nan"), (2,)),
        C("g-guidance-inf", N, g("a cat", "--guidance", "inf"), (2,)),
        C("g-guidance--inf", N, g("a cat", "--guidance", "-inf"), (2,)),
        C("g-guidance-1e309", N, g("a cat", "--guidance", "1e309"), (2,)),
        C("g-guidance-neg", N, g("a cat", "--guidance", "-1"), (2,)),
        C("g-guidance-101", N, g("a cat", "--guidance", "101"), (2,)),
        C("g-guidance-word", N, g("a cat", "--guidance", "high"), (2,)),
        C("g-guidance-0-neg", N, g("a cat", "--guidance", "0", "--negative", "blurry"), (0,)),

        # -- generate: text --------------------------------------------------------------------------
        C("g-prompt-empty", S, g(""), (2,)),
        C("g-prompt-space", S, g("  \t\n  "), (2,)),
        C("g-prompt-missing", S, ["generate", "--device", "cpu", "--out", "out"], (2,)),
        C("g-prompt-120k", S, g(big), (2,)),
        C("g-prompt-2MB-argv", S, g(two_mb), (2,)),
        C("g-prompt-nul-argv", S, g("a\x00cat"), (2,)),
        C("g-prompt-latin1", S, g(b"caf\xe9"), (2,)),
        C("g-negative-latin1", S, g("a cat", "--negative", b"\xff\xfe"), (2,)),
        C("g-prompt-dash", S, g("-a cat"), (2,)),
        C("g-prompt-hostile", S, g(hostile_prompt), (0,), post=post_no_raw_escape, soft=False),
        C("g-prompt-long-5k", S, g(("a red fox [/] in snow " * 250).strip()), (0,), show_warning=True,
          must=(r"77 tokens",)),
        C("g-markup-scheduler", S, g("a cat", "--scheduler", "[/]"), (2,)),
        C("g-markup-model", S, g("a cat", "--model", "[/bold]"), (2,)),
        C("g-columns-0", S, g("a cat", "--steps", "0"), (2,), env={"COLUMNS": "0"}),
        C("g-columns-junk", S, g("a cat", "--steps", "0"), (2,), env={"COLUMNS": "-7", "LINES": "x"}),
        C("g-ascii-locale", S, g("a cat", "--scheduler", "évé"), (2,),
          env={"LC_ALL": "C", "LANG": "C", "PYTHONIOENCODING": "ascii"}),
        C("g-debug-traceback-ok", S, g("a cat", "--steps", "0", "--debug"), (2,)),

        # -- generate: choices ---------------------------------------------------------------------
        C("g-scheduler-foo", T, g("a cat", "--scheduler", "foo"), (2,)),
        C("g-scheduler-partial", T, g("a cat", "--scheduler", "dpm++"), (2,)),
        C("g-device-foo", T, g("a cat", "--device", "foo"), (2,)),
        C("g-device-cuda", T, g("a cat", "--device", "cuda"), (2,), must=(r"--device cpu",)),
        C("g-device-cuda99", T, g("a cat", "--device", "cuda:99"), (2,)),
        C("g-device-mps", T, g("a cat", "--device", "mps"), (2,)),
        C("g-device-space", T, g("a cat", "--device", "cpu "), (2,)),
        C("g-gendev-cuda", T, g("a cat", "--generator-device", "cuda"), (2,), must=(r"--generator-device cpu",)),
        C("g-gendev-auto", T, g("a cat", "--generator-device", "auto"), (2,)),
        C("g-gendev-mps", T, g("a cat", "--generator-device", "mps"), (2,)),
        C("g-dtype-fp8", T, g("a cat", "--dtype", "fp8"), (2,)),
        C("g-dtype-fp16-cpu", T, g("a cat", "--dtype", "fp16"), (0,), show_warning=True, must=(r"warning:.*fp16|float16",)),
        C("g-format-gif", T, g("a cat", "--image-format", "gif"), (2,)),
        C("g-format-empty", T, g("a cat", "--image-format", ""), (2,)),
        C("g-format-WEBP-batch", T, g("a cat", "--image-format", ".WEBP", "-n", "3", "--batch-size", "2"), (0,)),
        C("g-offload-model-cpu", T, g("a cat", "--offload", "model"), (2,), must=(r"--offload",)),
        C("g-offload-foo", T, g("a cat", "--offload", "foo"), (2,)),
        C("g-lora-scale-default-model", T, g("a cat", "--lora-scale", "0.5"), (2,)),
        C("g-lora-scale-nan", T, g("a cat", "--model", "spo-lora", "--lora-scale", "nan"), (2,)),
        C("g-lora-scale-inf", T, g("a cat", "--model", "spo-lora", "--lora-scale", "inf"), (2,)),
        C("g-lora-scale-5", T, g("a cat", "--model", "spo-lora", "--lora-scale", "5"), (0,), show_warning=True,
          must=(r"warning:.*lora-scale 5",)),
        C("g-lora-file-alone", T, g("a cat", "--lora-file", "x.safetensors"), (2,), soft=True),
        C("g-sigint", T, g("a cat", "-n", "3", "--steps", "3"), (130,), run=signal_run((signal.SIGINT,))),
        C("g-sigterm", T, g("a cat", "-n", "3", "--steps", "3"), (143, -15), run=signal_run((signal.SIGTERM,))),

        # -- generate: --out ----------------------------------------------------------------------
        C("g-out-is-file", O, g("a cat", "--out", "afile"), (2,), out=None, setup=writer("afile", "x")),
        C("g-out-under-file", O, g("a cat", "--out", "afile/sub"), (2,), out=None, setup=writer("afile", "x")),
        C("g-out-proc", O, g("a cat", "--out", "/proc/x"), (2,), out=None),
        C("g-out-sys", O, g("a cat", "--out", "/sys/x"), (2,), out=None),
        C("g-out-dev-null", O, g("a cat", "--out", "/dev/null"), (2,), out=None),
        C("g-out-empty-string", O, g("a cat", "--out", ""), (2,), out=".", soft=True),
        C("g-out-dangling-link", O, g("a cat", "--out", "link"), (2,), out=None,
          setup=lambda ctx: os.symlink(ctx.cdir / "elsewhere" / "dir", ctx.sb / "link")),
        C("g-out-name-too-long", O, g("a cat", "--out", "x" * 300), (2,), out=None),

        # -- generate: models, LoRAs, VAEs ----------------------------------------------------------
        C("g-model-missing-dir", M, g("a cat", "--model", "./nope"), (2,)),
        C("g-model-file", M, g("a cat", "--model", "model.safetensors"), (2,),
          setup=writer("model.safetensors", os.urandom(4096))),
        C("g-model-no-index", M, g("a cat", "--model", "./m"), (2,), setup=writer("m/unet/config.json", "{}")),
        C("g-model-garbage-index", M, g("a cat", "--model", "./m"), (1,), setup=index_only("{{ garbage")),
        C("g-model-index-array", M, g("a cat", "--model", "./m"), (1,), setup=index_only("[]")),
        C("g-model-index-deep", M, g("a cat", "--model", "./m"), (1,), setup=index_only(deep_json())),
        C("g-model-not-sdxl", M, g("a cat", "--model", "./m"), (1,),
          setup=index_only({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
          must=(r"not an SDXL",)),
        C("g-model-custom-class", M, g("a cat", "--model", "./m"), (1,),
          setup=index_only({"_class_name": ["pipeline", "MyPipeline"], "unet": ["diffusers", "UNet2DConditionModel"]}),
          must=(r"custom",)),
        C("g-model-custom-part", M, g("a cat", "--model", "./m"), (1,),
          setup=index_only({"_class_name": "StableDiffusionXLPipeline", "unet": ["evil_pkg", "EvilUNet"]}),
          must=(r"custom",)),
        C("g-model-unknown-repo", M, g("a cat", "--model", "nobody/no-such-model"), (1,),
          must=(r"offline|not cached|spo download",)),
        C("g-model-bad-id", M, g("a cat", "--model", "not a repo!!"), (2,)),
        C("g-model-url", M, g("a cat", "--model", "https://huggingface.co/SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep"),
          (2,)),
        C("g-model-empty", M, g("a cat", "--model", ""), (2,)),
        C("g-model-typo", M, g("a cat", "--model", "sp0"), (2,), must=(r"spo-lora",)),
        C("g-revision-missing", M, g("a cat", "--revision", "no-such-branch"), (1,)),
        C("g-revision-traversal", M, g("a cat", "--revision", "../../../../../../etc/hostname"), (1, 2)),
        C("g-revision-local", M, g("a cat", "--model", "./m", "--revision", "v2"), (2,), soft=True,
          setup=lambda ctx: copy_model(ctx)),
        C("g-lora-bin", M, g("a cat", "--lora", "x.bin"), (2,), setup=writer("x.bin", b"pickle")),
        C("g-lora-missing", M, g("a cat", "--lora", "missing.safetensors"), (2,)),
        C("g-lora-garbage", M, g("a cat", "--lora", "junk.safetensors"), (1, 2),
          setup=writer("junk.safetensors", os.urandom(2048))),
        C("g-lora-dir", M, g("a cat", "--lora", "./adir"), (2,), setup=writer("adir/x", "x")),
        C("g-lora-repo-no-file", M, g("a cat", "--lora", "some/lora"), (2,), must=(r"--lora-file",)),
        C("g-lora-repo-offline", M, g("a cat", "--lora", "some/lora", "--lora-file", "x.safetensors"), (1,)),
        C("g-vae-nonsense", M, g("a cat", "--vae", "nonsense"), (2,)),
        C("g-vae-missing-dir", M, g("a cat", "--vae", "./novae"), (2,)),
        C("g-vae-repo-offline", M, g("a cat", "--vae", "nobody/vae"), (1,)),
        C("g-empty-cache", M, g("a cat"), (1,), setup=with_cache(empty=True), must=(r"spo download spo",)),
        C("g-online-refused-cached", M, g("a cat"), (0,), show_warning=True,
          env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}),
        C("g-online-blackhole-cached", M, g("a cat"), (0,), setup=hub("blackhole"), show_warning=True, max_s=90,
          timeout=120),

        # -- local model folders ------------------------------------------------------------------
        C("lm-no-unet-weights", L, g("a cat", "--model", "./m"), (1,),
          setup=local_model(lambda m: (m / "unet/diffusion_pytorch_model.safetensors").unlink())),
        C("lm-unet-bin-only", L, g("a cat", "--model", "./m"), (1,),
          setup=local_model(lambda m: (m / "unet/diffusion_pytorch_model.safetensors").rename(
              m / "unet/diffusion_pytorch_model.bin")), must=(r"safetensors",)),
        C("lm-unet-truncated", L, g("a cat", "--model", "./m"), (1,),
          setup=local_model(lambda m: os.truncate(m / "unet/diffusion_pytorch_model.safetensors", 1000)),
          must=(r"unet/diffusion_pytorch_model\.safetensors",)),
        C("lm-unet-link-out", L, g("a cat", "--model", "./m"), (1,),
          setup=local_model(lambda m: ((m / "unet/diffusion_pytorch_model.safetensors").unlink(),
                                       os.symlink("/etc/hostname", m / "unet/diffusion_pytorch_model.safetensors")))),
        C("lm-bad-unet-config", L, g("a cat", "--model", "./m"), (1,),
          setup=local_model(lambda m: (m / "unet/config.json").write_text('{"sample_size": "huge", "in_channels": -4}'))),

        # -- damaged cache --------------------------------------------------------------------------
        C("dc-unet-truncated", DC, g("a cat"), (1,),
          setup=with_cache(truncate_blob("unet/diffusion_pytorch_model.safetensors")),
          must=(r"unet/diffusion_pytorch_model\.safetensors", r"spo download spo\b.*--force")),
        C("dc-blob-deleted", DC, g("a cat"), (1,), setup=with_cache(delete_blob("text_encoder/model.safetensors")),
          must=(r"text_encoder/model\.safetensors", r"--force")),
        C("dc-index-garbage", DC, g("a cat"), (1,), setup=with_cache(garbage_blob("model_index.json", b"\xff\x00junk")),
          must=(r"model_index\.json", r"--force")),
        C("dc-models", DC, ["models"], (0,), setup=with_cache(truncate_blob("unet/diffusion_pytorch_model.safetensors")),
          must=(r"damaged",)),
        C("dc-doctor", DC, ["doctor", "--device", "cpu"], (1,), soft=True,
          setup=with_cache(truncate_blob("unet/diffusion_pytorch_model.safetensors")), must=(r"--force",)),
        C("dc-download-force-offline", DC, ["download", "spo", "--dtype", "fp32", "--force"], (1,),
          setup=with_cache(truncate_blob("unet/diffusion_pytorch_model.safetensors")), must=(r"HF_HUB_OFFLINE",)),

        # -- batch ------------------------------------------------------------------------------------
        C("b-missing-file", BA, b("nope.txt"), (2,)),
        C("b-directory", BA, b("adir"), (2,), setup=writer("adir/x.txt", "a cat\n")),
        C("b-empty-file", BA, b("empty.txt"), (2,), setup=writer("empty.txt", "")),
        C("b-only-comments", BA, b("c.txt"), (2,), setup=writer("c.txt", "# a\n\n   \n# b\n")),
        C("b-binary", BA, b("bin.txt"), (2,), setup=writer("bin.txt", os.urandom(4096))),
        C("b-latin1", BA, b("l1.txt"), (2,), setup=writer("l1.txt", "a café\nnaïve\n".encode("latin-1"))),
        C("b-utf16", BA, b("u16.txt"), (2,), setup=writer("u16.txt", "a cat\n".encode("utf-16"))),
        C("b-txt-2MB-line", BA, b("big.txt"), (2,), setup=writer("big.txt", two_mb + "\n")),
        C("b-txt-nul", BA, b("nul.txt"), (2,), setup=writer("nul.txt", b"a\x00cat\n")),
        C("b-stdin-empty", BA, b("-"), (2,), stdin=b""),
        C("b-stdin-binary", BA, b("-"), (2,), stdin=b"\xff\xfe\x00garbage\x80"),
        C("b-prompt-format-csv", BA, b("p.txt", "--prompt-format", "csv"), (2,), setup=writer("p.txt", "a cat\n")),
        C("b-n-0", BA, b("p.txt", "-n", "0"), (2,), setup=writer("p.txt", "a cat\n")),
        C("b-n-neg", BA, b("p.txt", "-n", "-3"), (2,), setup=writer("p.txt", "a cat\n")),
        C("b-bs-0", BA, b("p.txt", "--batch-size", "0"), (2,), setup=writer("p.txt", "a cat\n")),
        C("b-seed-overflow", BA, b("p.txt", "--seed", str(2**32 - 1)), (2,), setup=writer("p.txt", "a cat\na dog\n")),
        C("b-out-is-file", BA, b("p.txt", "--out", "afile"), (2,), out=None,
          setup=lambda ctx: (write(ctx, "p.txt", "a cat\n"), write(ctx, "afile", "x"))),
        *[C(f"b-j-{name}", BA, b("p.jsonl"), (2,), setup=writer("p.jsonl", line)) for name, line in [
            ("prompt-int", jsonl({"prompt": 5})),
            ("prompt-missing", jsonl({"negative_prompt": "x"})),
            ("prompt-null", jsonl({"prompt": None})),
            ("steps-str", jsonl({"prompt": "a", "steps": "10"})),
            ("steps-0", jsonl({"prompt": "a", "steps": 0})),
            ("steps-100000", jsonl({"prompt": "a", "steps": 100000})),
            ("width-neg", jsonl({"prompt": "a", "width": -64})),
            ("guidance-neg", jsonl({"prompt": "a", "guidance": -3})),
            ("steps-float", jsonl({"prompt": "a", "steps": 10.0})),
            ("steps-bool", jsonl({"prompt": "a", "steps": True})),
            ("seed-neg", jsonl({"prompt": "a", "seed": -1})),
            ("seed-2^64", jsonl({"prompt": "a", "seed": 2**64})),
            ("guidance-NaN", '{"prompt": "a", "guidance": NaN}\n'),
            ("guidance-Infinity", '{"prompt": "a", "guidance": Infinity}\n'),
            ("guidance-1e999", '{"prompt": "a", "guidance": 1e999}\n'),
            ("n-huge", jsonl({"prompt": "a", "num_images": 1_000_000_000})),
            ("n-0", jsonl({"prompt": "a", "num_images": 0})),
            ("n-true", jsonl({"prompt": "a", "num_images": True})),
            ("unknown-key", jsonl({"prompt": "a", "stepz": 3})),
            ("name-dotdot", jsonl({"prompt": "a", "name": "../evil"})),
            ("name-abs", jsonl({"prompt": "a", "name": "/tmp/evil"})),
            ("name-dots", jsonl({"prompt": "a", "name": ".."})),
            ("name-backslash", jsonl({"prompt": "a", "name": "..\\evil"})),
            ("name-nul", jsonl({"prompt": "a", "name": "a\u0000b"})),
            ("name-300", jsonl({"prompt": "a", "name": "x" * 300})),
            ("name-empty", jsonl({"prompt": "a", "name": ""})),
            ("name-dup", jsonl({"prompt": "a", "name": "same"}, {"prompt": "b", "name": "same"})),
            ("name-collides-auto", jsonl({"prompt": "a cat", "name": "00002-a-dog-s1"}, {"prompt": "a dog"})),
            ("name-collides-index", jsonl({"prompt": "a", "name": "x", "num_images": 2}, {"prompt": "b", "name": "x-1"})),
            ("deep-100k", deep_json() + "\n"),
            ("deep-in-object", '{"prompt": "a", "negative_prompt": ' + deep_json() + "}\n"),
            ("top-array", "[1, 2]\n"),
            ("null-line", "null\n"),
            ("trailing-garbage", '{"prompt": "a"} xyz\n'),
            ("width-100", jsonl({"prompt": "a", "width": 100})),
            ("size-8192", jsonl({"prompt": "a", "width": 8192, "height": 8192})),
            ("scheduler-foo", jsonl({"prompt": "a", "scheduler": "foo"})),
            ("scheduler-null", jsonl({"prompt": "a", "scheduler": None})),
            ("negative-int", jsonl({"prompt": "a", "negative_prompt": 1})),
            ("prompt-nul", jsonl({"prompt": "a\u0000b"})),
            ("prompt-surrogate", '{"prompt": "a \\ud800 b"}\n'),
            ("prompt-2MB", jsonl({"prompt": two_mb})),
            ("gendev-foo", jsonl({"prompt": "a", "generator_device": "gpu"})),
        ]],
        C("b-j-gendev-cuda", BA, b("p.jsonl"), (2,), setup=writer("p.jsonl", jsonl({"prompt": "a", "generator_device": "cuda"})),
          must=(r"--generator-device cpu|generator.device",)),
        C("b-skip-invalid", BA, b("p.jsonl", "--skip-invalid"), (3,),
          setup=writer("p.jsonl", jsonl({"prompt": "a red fox"}, {"prompt": 5}, {"prompt": "a cat"},
                                        '{"prompt": "a", "guidance": NaN}')),
          post=expect_rows(ok=2, skipped=2)),
        C("b-ddim-1000-steps", BA, b("p.jsonl"), (1,),
          setup=writer("p.jsonl", jsonl({"prompt": "a red fox"}, {"prompt": "a cat", "scheduler": "ddim", "steps": 1000},
                                        {"prompt": "a dog"})),
          post=post_ddim),
        C("b-bom-crlf", BA, b("p.txt"), (0,), setup=writer("p.txt", b"\xef\xbb\xbfa red fox\r\n# c\r\n\r\na cat\r\n"),
          post=expect_rows(ok=2)),
        C("b-user-files-survive", BA, b("p.txt"), (0,), setup=user_files, post=post_user_files),
        C("b-two-at-once", BA, b("p.jsonl"), (2,), setup=writer("p.jsonl", six), run=concurrent_run,
          must=(r"in use",)),
        C("b-sigint", BA, b("p.jsonl", "--steps", "3"), (130,), setup=writer("p.jsonl", six),
          run=signal_run((signal.SIGINT,)), post=post_stopped(6)),
        C("b-sigterm", BA, b("p.jsonl", "--steps", "3"), (143,), setup=writer("p.jsonl", six),
          run=signal_run((signal.SIGTERM,)), post=post_stopped(6)),
        C("b-sigint-twice", BA, b("p.jsonl", "--steps", "3"), (130,), setup=writer("p.jsonl", six),
          run=signal_run((signal.SIGINT, signal.SIGINT)), post=post_stopped(6)),
        C("b-sigint-while-loading", BA, b("p.jsonl"), (130,), setup=writer("p.jsonl", six),
          run=signal_run((signal.SIGINT,), when="lock", delay=1.5), post=post_stopped(6)),
        C("b-sigterm-while-loading", BA, b("p.jsonl"), (143,), setup=writer("p.jsonl", six),
          run=signal_run((signal.SIGTERM,), when="lock", delay=1.5), post=post_stopped(6)),
        C("b-sigkill-then-rerun", BA, b("p.jsonl", "--steps", "3"), (0,), setup=writer("p.jsonl", jsonl(*sev[:4])),
          run=kill_and_resume),

        # -- replay ------------------------------------------------------------------------------------
        C("r-missing", R, ["replay", "nope.png", "--out", "out"], (2,)),
        C("r-folder", R, ["replay", "adir", "--out", "out"], (2,), setup=writer("adir/x", "x")),
        C("r-plain-png", R, ["replay", "plain.png", "--out", "out"], (2,), setup=writer("plain.png", png_bytes())),
        C("r-a1111-png", R, ["replay", "a1111.png", "--out", "out"], (2,), setup=writer("a1111.png", png_bytes({
            "parameters": "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, "
                          "Size: 64x64, Model hash: abc"}))),
        C("r-png-deep-chunk", R, ["replay", "deep.png", "--out", "out"], (2,),
          setup=writer("deep.png", png_bytes({"spo-cli": deep_json()}))),
        C("r-png-chunk-not-json", R, ["replay", "bad.png", "--out", "out"], (2,),
          setup=writer("bad.png", png_bytes({"spo-cli": "{not json"}))),
        C("r-truncated-png", R, ["replay", "trunc.png", "--out", "out"], (2,), needs="gen_png",
          setup=fixture_copy("gen_png", "trunc.png", lambda d: d[: len(d) // 2])),
        C("r-zero-byte-png", R, ["replay", "zero.png", "--out", "out"], (2,), setup=writer("zero.png", b"")),
        C("r-text-named-png", R, ["replay", "fake.png", "--out", "out"], (2,), setup=writer("fake.png", "hello")),
        C("r-json-empty", R, ["replay", "x.json", "--out", "out"], (2,), setup=writer("x.json", "")),
        C("r-json-latin1", R, ["replay", "x.json", "--out", "out"], (2,), setup=writer("x.json", '{"prompt": "caf\xe9"}'.encode("latin-1"))),
        C("r-json-array", R, ["replay", "x.json", "--out", "out"], (2,), setup=writer("x.json", "[]")),
        C("r-json-deep", R, ["replay", "x.json", "--out", "out"], (2,), setup=writer("x.json", deep_json())),
        *[C(f"r-json-{name}", R, ["replay", "x.json", "--out", "out"], (2,), needs="gen_json", setup=sidecar(change),
            must=must) for name, change, must in [
            ("prompt-list", setitem(prompt=["a", "cat"]), ()),
            ("seed-float", setitem(seed=42.5), ()),
            ("scheduler-string", setitem(scheduler="euler"), ()),
            ("guidance-NaN", setitem(guidance=float("nan")), ()),
            ("schema-9", setitem(schema="spo-cli/9"), (r"spo-cli/9",)),
            ("schema-missing", lambda m: m.pop("schema"), ()),
            ("steps-huge", setitem(steps=100000), ()),
            ("width-77", setitem(width=77), ()),
            ("prompt-nul", setitem(prompt="a\u0000cat"), ()),
            ("prompt-2MB", setitem(prompt=two_mb), ()),
            ("model-request-missing", lambda m: m.pop("model_request"), ()),
            ("model-request-list", setitem(model_request=[1, 2]), ()),
            ("model-etc", setitem(model_request__model="/etc", model__source="local"), ()),
            ("lora-scale-NaN", setitem(model_request__model="spo-lora", model_request__lora_scale=float("nan"),
                                       lora={"id": "SPO-Diffusion-Models/SPO-SDXL_4k-p_10ep_LoRA", "source": "hub",
                                             "file": "spo_sdxl_10ep_4k-data_lora_diffusers.safetensors",
                                             "scale": float("nan"), "revision": None, "commit": None}), ()),
            ("dtype-fp8", setitem(dtype="fp8"), ()),
            ("gendev-cuda", setitem(generator_device="cuda"), (r"--generator-device cpu",)),
        ]],
        C("r-grid-png", R, ["replay", "grid.png", "--out", "out"], (2,), needs="grid_png",
          setup=fixture_copy("grid_png", "grid.png"), must=(r"cells/",)),
        C("r-grid-json", R, ["replay", "grid.json", "--out", "out"], (2,), needs="grid_json",
          setup=fixture_copy("grid_json", "grid.json")),
        C("r-lora-scale-no-lora", R, ["replay", "shot.png", "--lora-scale", "0.7", "--out", "out"], (2,),
          needs="gen_png", setup=fixture_copy("gen_png", "shot.png")),
        C("r-override-steps-0", R, ["replay", "shot.png", "--steps", "0", "--out", "out"], (2,), needs="gen_png",
          setup=fixture_copy("gen_png", "shot.png")),
        C("r-override-gendev-cuda", R, ["replay", "shot.png", "--generator-device", "cuda", "--out", "out"], (2,),
          needs="gen_png", setup=fixture_copy("gen_png", "shot.png"), must=(r"--generator-device cpu",)),
        C("r-same-pixels", R, ["replay", "shot.png", "--out", "out"], (0,), needs="gen_png",
          setup=fixture_copy("gen_png", "shot.png"), post=post_same_pixels),

        # -- compare ---------------------------------------------------------------------------------
        C("c-no-columns", CO, g("a cat", "--no-base", "--no-spo", cmd="compare"), (2,)),
        C("c-dup-labels", CO, g("a cat", "--model", "spo", "--label", "X", "--model", "base", "--label", "X",
                                cmd="compare"), (2,)),
        C("c-dup-scales", CO, g("a cat", "--lora-scales", "1,1", cmd="compare"), (2,)),
        C("c-scales-word", CO, g("a cat", "--lora-scales", "0,abc", cmd="compare"), (2,)),
        C("c-scales-nan", CO, g("a cat", "--lora-scales", "nan", cmd="compare"), (2,)),
        C("c-scales-empty-item", CO, g("a cat", "--lora-scales", "0,,1", cmd="compare"), (2,)),
        C("c-scales-commas", CO, g("a cat", "--lora-scales", ",", cmd="compare"), (2,)),
        C("c-seeds-word", CO, g("a cat", "--seeds", "1,x", cmd="compare"), (2,)),
        C("c-seeds-neg", CO, g("a cat", "--seeds", "-1", cmd="compare"), (2,)),
        C("c-seeds-huge", CO, g("a cat", "--seeds", str(2**40), cmd="compare"), (2,)),
        C("c-seeds-empty", CO, g("a cat", "--seeds", ",", cmd="compare"), (2,)),
        C("c-lora-scale-no-spo-lora", CO, g("a cat", "--lora-scale", "0.5", cmd="compare"), (2,)),
        C("c-revision-no-model", CO, g("a cat", "--revision", "abc", cmd="compare"), (2,)),
        C("c-cell-size-0", CO, g("a cat", "--cell-size", "0", cmd="compare"), (2,)),
        C("c-cell-size-neg", CO, g("a cat", "--cell-size", "-32", cmd="compare"), (2,)),
        C("c-rows-per-page-0", CO, g("a cat", "--rows-per-page", "0", cmd="compare"), (2,)),
        C("c-rows-per-page-neg", CO, g("a cat", "--rows-per-page", "-1", cmd="compare"), (2,)),
        C("c-cell-size-huge", CO, g("a cat", "--cell-size", "100000", cmd="compare"), (2,)),
        C("c-no-prompt", CO, g(None, cmd="compare"), (2,)),
        C("c-prompts-missing", CO, g(None, "--prompts", "nope.txt", cmd="compare"), (2,)),
        C("c-label-alone", CO, g("a cat", "--label", "x", cmd="compare"), (2,)),
        C("c-label-empty", CO, g("a cat", "--model", "spo", "--label", "", cmd="compare"), (2,)),
        C("c-n-0", CO, g("a cat", "-n", "0", cmd="compare"), (2,)),
        C("c-hostile-label", CO, g("a cat", "--model", "spo", "--label", "../../x [/] \x1b[2J", "--seeds", "3",
                                   "--cell-size", "32", cmd="compare"), (0,), post=post_no_raw_escape),

        # -- download / models / doctor ---------------------------------------------------------------
        C("d-refused", D, ["download"], (1,), env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
          setup=with_cache(empty=True), must=(r"refused",), max_s=6),
        C("d-no-such-host", D, ["download", "spo-lora"], (1,),
          env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://no-such-host.invalid"},
          setup=with_cache(empty=True), must=(r"no-such-host\.invalid",), max_s=6),
        C("d-endpoint-not-url", D, ["download"], (1,), env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "not a url"},
          setup=with_cache(empty=True), max_s=6),
        C("d-blackhole-hub", D, ["download"], (1,), setup=lambda ctx: (with_cache(empty=True)(ctx), hub("blackhole")(ctx)),
          max_s=60, timeout=120),
        C("d-garbage-hub", D, ["download"], (1,), setup=lambda ctx: (with_cache(empty=True)(ctx), hub("garbage")(ctx)),
          max_s=30),
        C("d-dtype-fp8", D, ["download", "--dtype", "fp8"], (2,)),
        C("d-dtype-auto", D, ["download", "--dtype", "auto"], (2,)),
        C("d-bad-id", D, ["download", "not a repo!!"], (2,)),
        C("d-offline-unknown", D, ["download", "nobody/nothing"], (1,), setup=with_cache(empty=True),
          must=(r"HF_HUB_OFFLINE",)),
        C("m-empty-cache", D, ["models"], (0,), setup=with_cache(empty=True)),
        C("m-json-empty-cache", D, ["models", "--json"], (0,), setup=with_cache(empty=True), post=post_json_stdout),
        C("m-cache-is-file", D, ["models"], (0, 1),
          setup=lambda ctx: (write(ctx, "cachefile", "x"), ctx.env.update(HF_HUB_CACHE=str(ctx.sb / "cachefile")))),
        C("m-broken-pipe", D, ["models", "--json"], None, run=broken_pipe_run),
        C("m-stdout-dev-full", D, ["models"], (1,), run=dev_full_run),
        C("doc-empty-offline", D, ["doctor", "--device", "cpu"], (1,), setup=with_cache(empty=True),
          must=(r"Next step", r"spo download")),
        C("doc-device-cuda", D, ["doctor", "--device", "cuda"], (1, 2)),

        # -- misc ------------------------------------------------------------------------------------------
        C("x-no-args", X, [], (0, 2)),
        C("x-unknown-command", X, ["generat", "a cat"], (2,)),
        C("x-unknown-option", X, g("a cat", "--stepz", "3"), (2,)),
        C("x-version", X, ["--version"], (0,)),
        C("x-help", X, ["generate", "--help"], (0,)),
    ]


def keep_fixture_generate(ctx: Ctx) -> list[str]:
    pngs = sorted(ctx.out.glob("*.png"))
    if len(pngs) != 1:
        return [f"fixture: expected 1 PNG, found {len(pngs)}"]
    dst = ROOT / "fixtures"
    dst.mkdir(exist_ok=True)
    FX["gen_png"] = Path(shutil.copy(pngs[0], dst / "shot.png"))
    FX["gen_json"] = Path(shutil.copy(pngs[0].with_suffix(".json"), dst / "shot.json"))
    return []


def keep_fixture_grid(ctx: Ctx) -> list[str]:
    grids = sorted(ctx.out.glob("*-grid*.png"))
    if not grids:
        return ["fixture: no grid PNG"]
    dst = ROOT / "fixtures"
    dst.mkdir(exist_ok=True)
    FX["grid_png"] = Path(shutil.copy(grids[0], dst / "grid.png"))
    j = sorted(ctx.out.glob("*-grid.json"))
    if j:
        FX["grid_json"] = Path(shutil.copy(j[0], dst / "grid.json"))
    return []


# ---------------------------------------------------------------------------------------------
# Running and judging


def is_under(p: Path, root: Path) -> bool:
    try:
        p.relative_to(root)
        return True
    except ValueError:
        return False


def snapshot(roots: list[Path], excludes: list[Path]) -> dict:
    snap = {}
    for root in roots:
        if not os.path.lexists(root):
            snap[str(root)] = ("absent",)
            continue
        if any(is_under(root, e) for e in excludes):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dp = Path(dirpath)
            keep = []
            for name in dirnames + filenames:
                p = dp / name
                if any(p == e or is_under(p, e) for e in excludes):
                    continue
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode):
                    snap[str(p)] = ("link", os.readlink(p))
                elif stat.S_ISDIR(st.st_mode):
                    snap[str(p)] = ("dir",)
                    if name in dirnames:
                        keep.append(name)
                else:
                    snap[str(p)] = ("file", st.st_size, st.st_mtime_ns)
            dirnames[:] = [d for d in dirnames if d in keep]
    return snap


def diff(before: dict, after: dict) -> list[str]:
    out = []
    for k in sorted(set(before) | set(after)):
        if k not in before:
            out.append(f"new {k}")
        elif k not in after:
            out.append(f"removed {k}")
        elif before[k] != after[k]:
            out.append(f"changed {k}")
    return out


def check_images(out: Path | None, temp_ok: bool) -> tuple[list[str], list[str]]:
    """(rule 4 problems, rule 6 problems) for an output folder."""
    from PIL import Image

    r4, r6 = [], []
    if out is None or not out.is_dir():
        return r4, r6
    for p in sorted(out.rglob("*")):
        if p.name.startswith(SPO_TMP):
            if not temp_ok:
                r6.append(f"spo temporary file left in --out: {p.relative_to(out)}")
            continue
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            if not p.with_suffix(".json").exists():
                r4.append(f"{p.relative_to(out)} has no .json sidecar")
            try:
                with Image.open(p) as im:
                    im.load()
            except Exception as e:
                r4.append(f"{p.relative_to(out)} does not decode ({type(e).__name__})")
    m = out / "manifest.jsonl"
    if m.exists():
        seen = {}
        for n, line in enumerate(m.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                r4.append(f"manifest line {n} is not JSON")
                continue
            if row.get("status") != "ok":
                continue
            f = out / str(row.get("file"))
            if row.get("file") in seen:
                r4.append(f"manifest rows {seen[row['file']]} and {n} are both 'ok' with the same file {row['file']}")
            seen[row.get("file")] = n
            if not f.exists():
                r4.append(f"manifest says ok but {row.get('file')} is missing")
                continue
            try:
                with Image.open(f) as im:
                    im.load()
            except Exception as e:
                r4.append(f"manifest says ok but {row.get('file')} does not decode ({type(e).__name__})")
            if not (out / str(row.get("sidecar"))).exists():
                r4.append(f"manifest says ok but the sidecar {row.get('sidecar')} is missing")
    return r4, r6


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def cut(text: str, n: int = 110) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def first_message(case: Case, res: Result, ctx: Ctx) -> str:
    err = ANSI.sub("", res.stderr)
    lines = err.splitlines()

    def paragraph(start: int, first: str) -> str:
        take = [first]
        for ln in lines[start + 1:]:
            if not ln.strip() or re.match(r"\s*(warning:|error:|✓|Next step)", ln) or re.search("[━┏┃│└┌]", ln):
                break
            take.append(ln)
        return collapse(" ".join(take))

    def first(kind: str, prefix: str = "") -> str | None:
        for i, ln in enumerate(lines):
            m = re.match(rf"\s*{kind}:\s*(.*)", ln)
            if m and not (kind == "warning" and "far from SDXL's training size" in ln):
                return prefix + paragraph(i, m.group(1))
        return None

    msg = None
    if res.na:
        msg = res.na
    elif res.rc == 0 and case.show_warning:
        msg = first("warning", "(ok) warning: ")
    if msg is None and res.rc == 0:
        line = next((ln for ln in res.stdout.splitlines() if ln.strip()), None)
        msg = collapse(line) if line else "(ok)"
    if msg is None:
        msg = first("error")
    if msg is None and isinstance(res.rc, int) and res.rc < 0:
        msg = f"(killed by signal {-res.rc}; no message)"
    if msg is None:
        msg = first("warning", "warning: ")
    if msg is None and res.rc != 0 and not err.strip() and res.stdout.strip():
        msg = "(stdout) " + collapse(next(ln for ln in res.stdout.splitlines() if ln.strip()))
    if msg is None and "─ Error ─" in err:
        box = err.split("─ Error ─", 1)[1].splitlines()[1:]
        msg = collapse(" ".join(ln.strip(" │╰╯─") for ln in box if "│" in ln))
    if msg is None:
        tail = [ln for ln in lines if ln.strip()]
        msg = collapse(tail[-1]) if tail else "(no message)"
    msg = msg.replace(str(ctx.sb) + "/", "").replace(str(ctx.sb), ".").replace(str(ROOT), "$ROOT")
    msg = msg.replace(str(WORK), "$CACHE")
    return cut(msg)


def short_cmd(case: Case) -> str:
    parts = []
    for a in case.args:
        if isinstance(a, bytes):
            parts.append(repr(a))
            continue
        s = a if len(a) <= 40 else f"{a[:16]}…<{len(a):,} chars>"
        s = s.encode("unicode_escape").decode("ascii") if any(ord(c) < 32 or 0x7f <= ord(c) < 0xa0 for c in s) else s
        parts.append(shlex.quote(s))
    env = " ".join(f"{k}={v}" for k, v in case.env.items() if v is not None)
    if case.run is not None and case.run.__name__ != "run":
        extra = f"  [{case.run.__name__}]"
    elif case.run is not None:
        extra = "  [signals]"
    else:
        extra = ""
    stdin = " < stdin" if case.stdin is not None else ""
    return cut(((env + " ") if env else "") + "spo " + " ".join(parts) + stdin + extra, 150)


def default_run(ctx: Ctx) -> Result:
    case = ctx.case
    t0 = time.perf_counter()
    try:
        fo, fe = open(f"{ctx.log}.out", "wb"), open(f"{ctx.log}.err", "wb")
        p = subprocess.Popen([sys.executable, "-m", "spo_cli", *case.args], cwd=ctx.sb, env=ctx.env,
                             stdin=subprocess.PIPE if case.stdin is not None else subprocess.DEVNULL,
                             stdout=fo, stderr=fe, start_new_session=True)
    except (OSError, ValueError) as e:
        why = ("E2BIG: Linux refuses one argv string over 128 KiB, so this cannot reach spo"
               if isinstance(e, OSError) and e.errno == 7 else
               f"{type(e).__name__}: {e} (argv cannot carry this; tested through files instead)")
        return Result("n/a", "", "", 0.0, na=why)
    if case.stdin is not None:
        try:
            p.stdin.write(case.stdin)
        except BrokenPipeError:
            pass
        p.stdin.close()
    p._files = (fo, fe)  # type: ignore[attr-defined]
    rc, out, err = finish(ctx, p, timeout=case.timeout)
    return Result(rc, out, err, time.perf_counter() - t0)


def run_case(n: int, case: Case) -> dict:
    cdir = ROOT / "cases" / f"{n:03d}-{case.id}"
    sb, tmp = cdir / "sb", cdir / "tmp"
    sb.mkdir(parents=True)
    tmp.mkdir()
    env = dict(BASE_ENV, TMPDIR=str(tmp))
    for k, v in case.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    out = None if case.out is None else (sb if case.out == "." else sb / case.out)
    ctx = Ctx(case, cdir, sb, tmp, env, ROOT / "logs" / f"{n:03d}-{case.id}", out)
    row = {"n": n, "id": case.id, "category": case.cat, "command": short_cmd(case),
           "expected": "any" if case.expect is None else "|".join(str(e) for e in case.expect)}
    if case.needs and case.needs not in FX:
        row.update(exit="-", message=f"skipped: fixture {case.needs} missing", verdict="skipped", problems=[],
                   elapsed_s=0)
        return row
    if case.setup:
        case.setup(ctx)
    roots = [cdir, Path(env["HF_HUB_CACHE"]), Path(env.get("HF_HOME", ROOT / "no-hf-home")), Path(env["HOME"])]
    excludes = [tmp] + ([out] if out is not None else [])
    before = snapshot(roots, excludes)
    res = (case.run or default_run)(ctx)
    after = snapshot(roots, excludes)

    hard, soft = [], []
    if res.na:
        row.update(exit="n/a", message=cut(res.na), verdict="n/a", problems=[], elapsed_s=0)
        return row
    err = res.stderr
    debug = "--debug" in case.args
    if "Unexpected" in err:
        hard.append("r1: 'Unexpected' on stderr")
    if "Traceback" in err and not debug:
        hard.append("r1: a Traceback on stderr")
    if res.rc not in (0, "timeout") and not ANSI.sub("", err).strip() and not res.stdout.strip() \
            and case.run is None:
        hard.append("r6: failed with no message at all (the README: every failure is one paragraph on stderr)")
    if "Exception ignored" in err:
        hard.append("r1: 'Exception ignored' on stderr")
    if case.expect is not None and res.rc not in case.expect:
        (soft if case.soft else hard).append(f"r2: exit {res.rc}, expected {row['expected']}")
    changes = diff(before, after)
    leftovers = [str(p.relative_to(tmp)) for p in tmp.rglob("*")] if tmp.exists() else []
    if changes:
        hard.append("r3: written outside --out: " + "; ".join(
            c.replace(str(ROOT), "$ROOT").replace(str(WORK), "$CACHE") for c in changes[:4])
            + (f" (+{len(changes) - 4} more)" if len(changes) > 4 else ""))
    if leftovers:
        hard.append("r3: left in TMPDIR: " + ", ".join(leftovers[:4]))
    r4, r6 = check_images(out, case.temp_ok)
    hard += ["r4: " + p for p in r4]
    hard += ["r6: " + p for p in r6]
    if case.expect == (2,) and res.elapsed > FAST_LIMIT_S:
        (soft if case.soft and res.rc != 2 else hard).append(f"r5: exit-2 case took {res.elapsed:.1f} s (limit {FAST_LIMIT_S:g} s)")
    if case.max_s is not None and res.elapsed > case.max_s:
        hard.append(f"r6: took {res.elapsed:.1f} s (limit for this case {case.max_s:g} s)")
    flat = collapse(ANSI.sub("", err))
    for pat in case.must:
        if not re.search(pat, flat):
            hard.append(f"r6: stderr does not match /{pat}/")
    hard += ["r6: " + p for p in res.extra]
    for p in case.post(ctx, res) if case.post else []:
        (soft if p.startswith("note:") else hard).append(p if p.startswith("note:") else "r6: " + p)
    if case.out == "." and res.rc == 0:
        soft.append("wrote its images into the current directory")
    verdict = "VIOLATION" if hard else ("note" if soft else "ok")
    row.update(exit=res.rc, message=first_message(case, res, ctx), verdict=verdict, problems=hard + soft,
               elapsed_s=round(res.elapsed, 2))
    return row


def md(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main() -> int:
    global ROOT, WORK, BASE_ENV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write the rows as JSON here")
    ap.add_argument("--only", help="run only the cases whose id matches this regex (fixtures always run)")
    ap.add_argument("--keep", action="store_true", help="keep the sandboxes, logs and cache")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--round2", action="store_true", help="run round two (server, client, parsers) instead")
    ap.add_argument("--out", type=Path, help="--round2: write the markdown table here")
    args = ap.parse_args()
    if args.round2:
        import hostile_round2

        return hostile_round2.main(args.out, args.only, args.list, args.json)

    all_cases = cases()
    ids = [c.id for c in all_cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids: {dup}"
    if args.list:
        for c in all_cases:
            print(f"{c.id:32} {c.cat:16} {'|'.join(map(str, c.expect or ())) or 'any'}")
        print(f"{len(all_cases)} cases")
        return 0
    selected = [c for c in all_cases if c.cat == "fixture" or not args.only or re.search(args.only, c.id)]

    ROOT = Path(tempfile.mkdtemp(prefix="spo-hostile-"))
    (ROOT / "logs").mkdir()
    (ROOT / "home").mkdir()
    print(f"building the tiny offline cache … (work in {ROOT})", file=sys.stderr)
    WORK, env = offline_cache()
    BASE_ENV = {k: v for k, v in env.items() if not k.startswith(("HF_ENDPOINT", "HF_TOKEN"))}
    BASE_ENV["HOME"] = str(ROOT / "home")
    BASE_ENV.pop("XDG_CACHE_HOME", None)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], env=BASE_ENV, check=True)
    torch_s = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spo_cli", "--version"], env=BASE_ENV, check=True, capture_output=True)
    version_s = time.perf_counter() - t
    load = os.getloadavg()

    rows = []
    t_all = time.perf_counter()
    for n, case in enumerate(selected, 1):
        print(f"[{n:3d}/{len(selected)}] {case.id:34}", end=" ", file=sys.stderr, flush=True)
        try:
            row = run_case(n, case)
        except Exception as e:  # a bug in this script: report it as such, never as spo's
            import traceback

            traceback.print_exc()
            row = {"n": n, "id": case.id, "category": case.cat, "command": short_cmd(case),
                   "expected": "|".join(map(str, case.expect or ())), "exit": "-",
                   "message": f"HARNESS ERROR {type(e).__name__}: {e}", "verdict": "harness-error",
                   "problems": [], "elapsed_s": 0}
        rows.append(row)
        print(f"exit {row['exit']!s:>4} ({row['elapsed_s']:6.1f} s) {row['verdict']}"
              + (f"  {row['problems']}" if row["problems"] else ""), file=sys.stderr, flush=True)
    total = time.perf_counter() - t_all

    print("| # | category | case | exit | expected | message | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        verdict = r["verdict"] + (f" ({'; '.join(r['problems'])})" if r["problems"] else "")
        print(f"| {r['n']} | {md(r['category'])} | `{md(r['id'])}` | {md(r['exit'])} | {md(r['expected'])} | "
              f"{md(r['message'])} | {md(cut(verdict, 400))} |")
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    print()
    print(f"**{len(rows)} cases**: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
          + f"  (in {total / 60:.1f} min; `python -c 'import torch'` took {torch_s:.1f} s, `spo --version` "
          f"{version_s:.1f} s, load average {load[0]:.2f} at the start, {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "counts": counts, "torch_import_s": round(torch_s, 2),
                                         "spo_version_s": round(version_s, 2), "loadavg": load}, indent=2))
    for s in SERVERS.values():
        s.sock.close()
    if args.keep:
        print(f"kept {ROOT} and {WORK}", file=sys.stderr)
    else:
        shutil.rmtree(ROOT, ignore_errors=True)
        shutil.rmtree(WORK, ignore_errors=True)
    return 1 if counts.get("VIOLATION") else 0


if __name__ == "__main__":
    sys.exit(main())

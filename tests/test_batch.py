"""`spo batch` end to end on the tiny pipelines: files, resume, signals, failures, two processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import HANG, SPO_CLI
from spo_cli.cli import app

pytestmark = pytest.mark.slow  # pipelines and subprocesses: not in the fast tier

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "prompts.txt"
TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]
# For tests about files, names and resuming rather than pixels: the smallest image the tiny models make.
SMALL = ["--width", "16", "--height", "16", "--steps", "1", "--device", "cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def pngs(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.png"))


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def assert_complete(out: Path, expected: int) -> None:
    """Every image exactly once, each with its sidecar, nothing temporary left."""
    images = pngs(out)
    assert len(images) == expected
    assert sorted(p.name for p in out.glob("*.json")) == sorted(n[:-4] + ".json" for n in images)
    assert leftovers(out) == []
    rows = manifest(out)
    assert len(rows) == expected and {r["status"] for r in rows} == {"ok"}
    assert sorted(r["file"] for r in rows) == images


def leftovers(out: Path) -> list[str]:
    """Hidden files other than the folder lock, which stays (a lock file is reused, never deleted)."""
    return sorted(p.name for p in out.glob(".*") if p.name != ".spo-lock")


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_examples_prompts_run_through_batch(hub_cache, out):
    r = invoke("batch", str(EXAMPLES), *SMALL, "--batch-size", "4", "--seed", "1000", "--out", str(out), "--json",
               "--quiet")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert (summary["total"], summary["generated"], summary["failed"]) == (20, 20, 0)
    assert_complete(out, 20)
    rows = manifest(out)
    assert [r["seed"] for r in rows] == list(range(1000, 1020))
    assert rows[0]["file"].startswith("00003-a-child-and-a-penguin") and rows[0]["line"] == 3
    meta = json.loads((out / rows[0]["sidecar"]).read_text())
    assert meta["batch"] == {"source": str(EXAMPLES), "line": 3, "index": 0} and meta["batch_size"] == 4
    assert meta["spec_hash"] == rows[0]["job"]


def test_jsonl_per_line_settings_and_names(hub_cache, tmp_path, out):
    f = write(tmp_path, "eval.jsonl", "\n".join([
        json.dumps({"prompt": "a red fox", "name": "fox", "num_images": 2, "seed": 50}),
        json.dumps({"prompt": "a castle", "steps": 3, "guidance": 7.5, "negative_prompt": "fog",
                    "scheduler": "euler-a", "width": 72, "height": 64}),
        "# a comment",
        json.dumps({"prompt": "a boat"}),
    ]))
    r = invoke("batch", str(f), *TINY, "--seed", "7", "--out", str(out), "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert pngs(out) == ["00002-a-castle-s9.png", "00004-a-boat-s10.png", "fox-0.png", "fox-1.png"]
    castle = json.loads((out / "00002-a-castle-s9.json").read_text())
    assert (castle["steps"], castle["guidance"], castle["negative_prompt"]) == (3, 7.5, "fog")
    assert (castle["width"], castle["height"], castle["scheduler"]["name"]) == (72, 64, "euler-a")
    fox = [json.loads((out / f"fox-{i}.json").read_text()) for i in (0, 1)]
    assert [m["seed"] for m in fox] == [50, 51] and fox[0]["steps"] == 2  # the command line's default
    with Image.open(out / "00002-a-castle-s9.png") as im:
        assert im.size == (72, 64)


def test_stdin(hub_cache, out):
    r = CliRunner().invoke(app, ["batch", "-", *TINY, "--out", str(out), "--json"], input="a fox\n# x\na cat\n")
    assert r.exit_code == 0, r.output
    assert pngs(out) == ["00001-a-fox-s0.png", "00003-a-cat-s1.png"]
    assert json.loads(r.stdout)["generated"] == 2
    assert json.loads((out / "00001-a-fox-s0.json").read_text())["batch"]["source"] == "<stdin>"


def test_bad_lines_are_all_reported_and_nothing_runs(hub_cache, tmp_path, out):
    f = write(tmp_path, "bad.jsonl", "\n".join([
        json.dumps({"prompt": "fine"}),
        json.dumps({"prompt": "typo", "stpes": 3}),
        "{not json",
        json.dumps({"prompt": "escape", "name": "../../etc/x"}),
        json.dumps({"prompt": "size", "width": 100}),
    ]))
    r = invoke("batch", str(f), *TINY, "--out", str(out))
    assert r.exit_code == 2
    err = " ".join(r.stderr.split())
    for line, words in ((2, "unknown key 'stpes'"), (3, "not valid JSON"), (4, "'name' \"../../etc/x\" is not a plain file name"),
                        (5, "'width' must be a positive multiple of 8, not 100")):
        assert f"{f}:{line}: {words}" in err
    assert "4 bad line(s)" in err and "Loading" not in err and "Traceback" not in r.output
    assert not out.exists()


def test_skip_invalid_runs_the_rest(hub_cache, tmp_path, out):
    f = write(tmp_path, "bad.jsonl", json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"prompt": 3}) + "\n")
    r = invoke("batch", str(f), *TINY, "--out", str(out), "--skip-invalid")
    assert r.exit_code == 3, r.output  # made what it could; not everything that was asked
    assert f"{f}:2:" in r.stderr and pngs(out) == ["00001-fine-s0.png"]
    assert "1 line(s) skipped as invalid" in r.stderr
    rows = manifest(out)
    assert [(r["line"], r["status"]) for r in rows] == [(1, "ok"), (2, "skipped")]
    assert "'prompt' must be a string" in rows[1]["error"]
    summary = json.loads(invoke("batch", str(f), *TINY, "--out", str(out), "--skip-invalid", "--json").stdout)
    assert (summary["skipped_lines"], summary["skipped"]) == (1, [f"{f}:2"])
    quiet = invoke("batch", str(f), *TINY, "--out", str(out), "--skip-invalid", "-q")
    assert quiet.exit_code == 3 and "skipped as invalid" in quiet.stderr  # survives -q


def test_resume_after_a_partial_run_makes_only_what_is_missing(hub_cache, out):
    args = ["batch", str(EXAMPLES), *SMALL, "--batch-size", "3", "--out", str(out), "--json", "--quiet"]
    assert invoke(*args).exit_code == 0
    rows = manifest(out)
    # Lose four finished images in the ways a crash or a power cut can: image gone, sidecar gone, both
    # gone, image cut short with its sidecar intact.
    (out / rows[0]["file"]).unlink()
    (out / rows[5]["sidecar"]).unlink()
    (out / rows[9]["file"]).unlink()
    (out / rows[9]["sidecar"]).unlink()
    cut = out / rows[12]["file"]
    cut.write_bytes(cut.read_bytes()[:200])
    # A user's own hidden file that looks temporary: a run must delete only its own.
    (out / ".my-notes.part").write_text("mine")
    (out / ".x.png.abc123.part").write_text("also mine")
    lost = {rows[i]["file"] for i in (0, 5, 9, 12)}
    kept = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in rows if r["file"] in pngs(out)
            and r["file"] not in lost}
    r = invoke(*args)
    summary = json.loads(r.stdout)
    assert (summary["generated"], summary["already_done"]) == (4, 16)
    assert (out / ".my-notes.part").read_text() == "mine" and (out / ".x.png.abc123.part").exists()
    (out / ".my-notes.part").unlink()
    (out / ".x.png.abc123.part").unlink()
    assert_complete(out, 20)
    assert all((out / f).stat().st_mtime_ns == t for f, t in kept.items())  # untouched
    assert {r["file"] for r in manifest(out) if not r["resumed"]} == lost


def test_a_changed_setting_is_regenerated_not_skipped(hub_cache, tmp_path, out):
    prompts = write(tmp_path, "p.txt", "a fox\na cat\na boat\n")
    base = ["batch", str(prompts), "--width", "16", "--height", "16", "--device", "cpu", "--out", str(out),
            "--json", "--quiet"]
    assert invoke(*base, "--steps", "2").exit_code == 0
    before = {f: pixels(out / f) for f in pngs(out)}
    summary = json.loads(invoke(*base, "--steps", "3").stdout)
    assert (summary["generated"], summary["already_done"]) == (3, 0)
    assert_complete(out, 3)  # same names, replaced, no duplicates
    assert all(json.loads(p.read_text())["steps"] == 3 for p in out.glob("*.json"))
    assert any(not np.array_equal(before[f], pixels(out / f)) for f in before)
    # unchanged settings: nothing to do
    assert json.loads(invoke(*base, "--steps", "3").stdout)["generated"] == 0
    # --overwrite: everything again
    assert json.loads(invoke(*base, "--steps", "3", "--overwrite").stdout)["generated"] == 3


def test_batch_images_equal_generate(hub_cache, tmp_path, out):
    f = write(tmp_path, "p.txt", "a red fox in fresh snow\na lighthouse in a storm\n")
    assert invoke("batch", str(f), *TINY, "-n", "2", "--seed", "40", "--batch-size", "4", "--out",
                  str(out / "b4")).exit_code == 0
    assert invoke("batch", str(f), *TINY, "-n", "2", "--seed", "40", "--out", str(out / "b1")).exit_code == 0
    g = json.loads(invoke("generate", "a red fox in fresh snow", *TINY, "--seed", "40", "-n", "2", "--out",
                          str(out / "gen"), "--json", "--quiet").stdout)
    # batch size 1 is the same pipeline call as generate: identical pixels
    for w, name in zip(g, ["00001-a-red-fox-in-fresh-snow-s40.png", "00001-a-red-fox-in-fresh-snow-s41.png"]):
        assert np.array_equal(pixels(w["image"]), pixels(out / "b1" / name))
    # batch size 4 rounds differently, never by more than 1/255
    assert pngs(out / "b4") == pngs(out / "b1")
    worst = max(np.abs(pixels(out / "b4" / n) - pixels(out / "b1" / n)).max() for n in pngs(out / "b1"))
    assert worst <= 1


def test_a_failing_job_is_recorded_and_the_batch_goes_on(hub_cache, tmp_path, out):
    f = write(tmp_path, "f.jsonl", "\n".join([
        json.dumps({"prompt": "fine one"}),
        json.dumps({"prompt": "too many", "scheduler": "ddim", "steps": 1000}),  # DDIM cannot: a real failure
        json.dumps({"prompt": "fine two"}),
    ]))
    args = ["batch", str(f), *TINY, "--out", str(out)]
    r = invoke(*args)
    assert r.exit_code == 1
    err = " ".join(r.stderr.split())
    assert f"{f}:2" in err and "ddim scheduler cannot run 1000 steps" in err and "Traceback" not in r.output
    rows = manifest(out)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "cannot run 1000 steps" in rows[1]["error"]
    assert pngs(out) == ["00001-fine-one-s0.png", "00003-fine-two-s2.png"]
    # a rerun retries only the failed one
    r = invoke(*args, "--json", "--quiet")
    assert r.exit_code == 1
    summary = json.loads(r.stdout)
    assert (summary["generated"], summary["already_done"], summary["failed"]) == (0, 2, 1)


LONG = 10  # images, one per pipeline call: enough to stop part-way, few enough to finish quickly


def long_batch(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    prompts = write(tmp_path, "long.txt", "".join(f"a red fox number {i}\n" for i in range(LONG)))
    return [*SPO_CLI, "batch", str(prompts), *TINY, "--out", str(out), *extra]


def _wait_for_images(out: Path, n: int, proc: subprocess.Popen, timeout: float = HANG) -> None:
    deadline = time.monotonic() + timeout
    while len(list(out.glob("[!.]*.json"))) < n:  # finished pairs: the sidecar is written last
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no images appeared"
        time.sleep(0.02)


def assert_stopped_cleanly(out: Path) -> list[dict]:
    rows = manifest(out)
    done = [r for r in rows if r["status"] == "ok"]
    assert 2 <= len(done) < LONG and {r["status"] for r in rows} <= {"ok", "pending"}
    assert sorted(r["file"] for r in done) == pngs(out)  # nothing partial, nothing unrecorded
    assert leftovers(out) == []
    return done


@pytest.mark.early
def test_sigint_stops_cleanly_and_rerun_completes(hub_cache, tmp_path, out):
    cmd = long_batch(tmp_path, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_images(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=HANG)
    assert proc.returncode == 130, stderr
    assert "Stopped early" in stdout and "Traceback" not in stderr
    done = assert_stopped_cleanly(out)
    r = invoke(*cmd[3:], "--json", "--quiet")  # the rerun in this process: no second start-up
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["already_done"] == len(done)
    assert_complete(out, LONG)


def test_sigterm_stops_after_the_call_in_flight_with_143(hub_cache, tmp_path, out, monkeypatch):
    # A real SIGTERM to this process, sent as the third pipeline call starts (the signal path is the
    # same as in a separate process; the SIGINT test above runs one).
    import os

    from spo_cli import engine

    run, started = engine.Engine.run, []

    def run_and_signal(self, batch, on_step=None):
        started.append(len(batch))
        if len(started) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return run(self, batch, on_step)

    monkeypatch.setattr(engine.Engine, "run", run_and_signal)
    r = invoke(*long_batch(tmp_path, out)[3:])
    assert r.exit_code == 143, r.output
    assert "Stopped early" in r.stdout and len(started) == 3  # the call in flight finished; no fourth
    assert len(assert_stopped_cleanly(out)) == 3


def test_second_ctrl_c_abandons_the_call_in_flight(hub_cache, tmp_path, out, monkeypatch):
    # Both signals arrive during the first pipeline call (from its step callback, so at a known
    # moment): the first asks to stop after the call, the second abandons it. Nothing of the call
    # is written, and the manifest still says what is left.
    import os

    from spo_cli import render

    def step(self, done, total):
        if done in (1, 2):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(render.NoProgress, "step", step)
    prompts = write(tmp_path, "p.txt", "a fox\na cat\na boat\n")
    r = invoke("batch", str(prompts), *TINY, "--batch-size", "3", "--out", str(out), "--quiet")
    assert r.exit_code == 130, r.output
    assert "Stopping after the pipeline call in flight" not in r.stdout
    assert pngs(out) == [] and leftovers(out) == []
    assert [row["status"] for row in manifest(out)] == ["pending"] * 3


@pytest.mark.early
def test_sigkill_then_resume_leaves_every_image_exactly_once(hub_cache, tmp_path, out):
    cmd = long_batch(tmp_path, out)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_images(out, 3, proc)
    proc.kill()
    proc.wait()
    r = invoke(*cmd[3:], "--json", "--quiet")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["already_done"] >= 3
    assert_complete(out, LONG)


# Several processes under torchrun (one node and two): tests/test_distributed.py.


@pytest.mark.early
def test_accelerate_launch_shares_the_work(hub_cache, tmp_path, out):
    # accelerate's multi-process launcher (named --multi_gpu, gloo on a CPU machine) sets the same
    # torch.distributed variables as torchrun.
    f = tmp_path / "p.txt"
    f.write_text("a fox\na cat\na boat\na tree\n")
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
         "-m", "spo_cli", "batch", str(f), *TINY, "--out", str(out), "--json"],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["generated"] == 4
    assert_complete(out, 4)
    ranks = sorted(json.loads(p.read_text())["batch"]["rank"] for p in out.glob("0*.json"))
    assert ranks == [0, 0, 1, 1]


def test_a_second_run_on_the_same_folder_is_refused(hub_cache, tmp_path, out):
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from spo_cli.outputs.files import FolderLock\n"
         f"with FolderLock(Path({str(out)!r}), 'spo batch'):\n    print('held', flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        prompts = write(tmp_path, "p.txt", "a fox\n")
        for command in (["batch", str(prompts)], ["compare", "a fox", "--seeds", "1"]):
            r = invoke(*command, *TINY, "--out", str(out))
            msg = " ".join(r.stderr.split())
            assert r.exit_code == 2, r.output
            assert f"{out} is in use by another spo run (spo batch, process {holder.pid} on" in msg
        assert pngs(out) == []
    finally:
        holder.kill()
        holder.wait()


def test_the_manifest_is_written_when_the_run_fails(hub_cache, tmp_path, out, monkeypatch):
    import errno

    from spo_cli.outputs import files

    prompts = write(tmp_path, "p.txt", "a fox\na cat\n")
    # The model is not there: nothing can run, and the manifest says so for every image.
    r = invoke("batch", str(prompts), *TINY, "--model", "someorg/not-cached", "--out", str(out / "a"))
    assert r.exit_code == 1
    rows = manifest(out / "a")
    assert [row["status"] for row in rows] == ["pending", "pending"]
    assert all("someorg/not-cached" in row["error"] for row in rows)

    # The disk fills up while writing images: the run stops, says so, and still leaves its manifest.
    real_replace = files.os.replace

    def full(src, dst):
        if str(dst).endswith(".png"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", full)
    r = invoke("batch", str(prompts), *TINY, "--out", str(out / "b"))
    assert r.exit_code == 1 and "disk is full" in " ".join(r.stderr.split())
    assert {row["status"] for row in manifest(out / "b")} <= {"pending", "failed"}
    assert pngs(out / "b") == [] and leftovers(out / "b") == []

"""`spo eval`, `compare` and `batch` under torchrun: the cells shared out over ranks, on one machine and
on two rendezvous "nodes" (two torchrun agents on loopback, c10d, gloo on the CPU).

A run under several ranks must make the same report as one process on the same cells (the JSON
byte for byte, timings left out), render each cell exactly once (the ranks' records say who made
what), reuse what an earlier run finished, and fail naming the rank that failed, without hanging.
Each torchrun launch costs seconds of interpreter and model start-up on a small machine, so every
test makes one launch and checks all it can on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import HANG
from PIL import Image
from typer.testing import CliRunner

from spo_cli.cli import app
from spo_cli.distributed import RECORDS
from spo_cli.outputs import metadata

# early: about 40 s of subprocesses in one worker, started first so that it runs beside the rest.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed"), pytest.mark.early]

TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]
# One thread per rank, and for the one-process reference too: the same arithmetic, so the same pixels.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def score_cache(tmp_path_factory) -> None:
    """The tiny scorer repos in the session's HF cache (the one scorer these tests use)."""
    from spo_cli import tiny
    from spo_cli.scores import tiny as score_tiny

    cache = Path(os.environ["HF_HUB_CACHE"])
    for repo, src in score_tiny.save_repos(tmp_path_factory.mktemp("score-repos")).items():
        tiny.add_to_cache(cache, repo, src)


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def invoke(*args: str):
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code == 0, r.output
    return r


def without(data, keys=("elapsed_s",)):
    """`data` less its timings (and any other `keys`), at any depth: what must not depend on the ranks."""
    if isinstance(data, dict):
        return {k: without(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [without(v, keys) for v in data]
    return data


def same_bytes(a: dict, b: dict, keys=("elapsed_s",)) -> None:
    assert metadata.dumps(without(a, keys)) == metadata.dumps(without(b, keys))


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def same_images(one: Path, two: Path, pattern: str) -> int:
    names = sorted(p.relative_to(one) for p in one.glob(pattern))
    assert names and names == sorted(p.relative_to(two) for p in two.glob(pattern))
    for n in names:
        assert np.array_equal(pixels(one / n), pixels(two / n)), n
    return len(names)


def records(out: Path, step: str) -> dict[int, dict]:
    found = {}
    for p in sorted((out / RECORDS).glob(f"{step}-*.json")):
        rec = json.loads(p.read_text())
        found[rec["rank"]] = rec
    return found


def exactly_once(out: Path, expected: set[str]) -> dict[int, list[str]]:
    """Every cell in `expected` was made by exactly one rank, and no other; each rank made some."""
    made = {k: rec["made"] for k, rec in records(out, "render").items()}
    assert sorted(made) == [0, 1] and all(made.values()), made
    every = [c for cells in made.values() for c in cells]
    assert len(every) == len(set(every)) and set(every) == expected
    return made


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_one_node(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, "--standalone", "--nproc-per-node", "2", *args], capture_output=True, text=True,
                          env=ENV, timeout=HANG)


def on_two_nodes(*args: str) -> list[tuple[int, str, str]]:
    """Two torchrun agents, one process each, meeting at a c10d rendezvous on loopback as two machines
    would; (exit code, stdout, stderr) of each."""
    endpoint = f"127.0.0.1:{free_port()}"
    agents = [subprocess.Popen([*RUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                "--rdzv-endpoint", endpoint, "--rdzv-id", "spo-test", "--node-rank", str(n), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
              for n in (0, 1)]
    try:
        outs = [a.communicate(timeout=HANG) for a in agents]
        return [(a.returncode, o, e) for a, (o, e) in zip(agents, outs)]
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()


def one_json(stdouts: list[str]) -> dict:
    """Only the first rank prints: one JSON object over all the agents' output."""
    printed = [s for s in stdouts if s.strip()]
    assert len(printed) == 1, stdouts
    return json.loads(printed[0])


def test_eval_on_two_nodes_makes_the_report_of_one_process(hub_cache, score_cache, tmp_path, one_thread):
    """Two nodes of one rank each: every cell made once, scores shared out (one per scorer call), and
    report.json byte for byte that of one process but for its timing; every cell's pixels alike."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox in fresh snow\na cat on the moon\n")
    args = ["eval", str(prompts), "--seeds", "0", *TINY, "--metric", "pickscore", "--score-batch-size", "1"]
    one = invoke(*args, "--out", str(tmp_path / "one"), "--json", "--quiet")
    nodes = on_two_nodes("-m", "spo_cli", *args, "--out", str(tmp_path / "two"), "--json")
    assert [code for code, _, _ in nodes] == [0, 0], [err[-3000:] for _, _, err in nodes]
    report = one_json([o for _, o, _ in nodes])
    reference = json.loads(one.stdout)
    assert report["images"] == {"rendered": 4, "reused": 0, "failed": 0, "scored": 4}
    same_bytes(report, reference)
    same_bytes(json.loads((tmp_path / "two" / "report.json").read_text()),
               json.loads((tmp_path / "one" / "report.json").read_text()))
    assert (tmp_path / "two" / "report.md").read_text() == (tmp_path / "one" / "report.md").read_text()
    assert same_images(tmp_path / "one", tmp_path / "two", "cells/*/*.png") == 4
    cells = {f"{p.parent.name}/{p.stem}" for p in (tmp_path / "one" / "cells").glob("*/*.png")}
    exactly_once(tmp_path / "two", cells)
    scored = records(tmp_path / "two", "score")
    assert sorted(r["scored"] for r in scored.values()) == [2, 2]  # four calls of one, dealt 2 and 2
    # The first rank says what one process would (64² is far from SDXL's size); the other, nothing.
    first, other = sorted(nodes, key=lambda node: not node[1].strip())
    assert "warning: 64×64 is far from SDXL" in first[2] and "warning:" not in other[2] and "error:" not in other[2]


# Rank 1 cannot set up its models (a GPU gone, a node whose cache lacks a file): here, a fault
# put in before the command runs, on that rank only.
FAULTY_RANK = """
import os, sys
from spo_cli import bank
if os.environ["RANK"] == "1":
    def broken(self, *args, **kwargs):
        raise RuntimeError("injected: this rank's device is gone")
    bank.Bank.engine = broken
from spo_cli.cli import app
app(sys.argv[1:], prog_name="spo")
"""


def test_compare_on_two_ranks_names_a_failed_rank_then_resumes_to_the_grid_of_one_process(hub_cache, score_cache,
                                                                                         tmp_path, one_thread):
    """compare --score of a sweep (the issue's `--base --spo --x steps=… --score`) under two ranks.
    First rank 1 cannot set up its models: rank 0 finishes its share (kept), then names rank 1 and why,
    and every rank stops instead of waiting for it; no grid or index from half a comparison. The rerun
    reuses rank 0's cells on every rank and makes the rest once each; index, sweep report, grid page
    and cells as one process makes them."""
    args = ["compare", "a lighthouse in a storm", "--seeds", "1-2", "--width", "64", "--height", "64", "--device",
            "cpu", "--base", "--spo", "--x", "steps=1,2", "--score", "--metric", "pickscore"]
    one = json.loads(invoke(*args, "--out", str(tmp_path / "one"), "--json", "--quiet").stdout)
    out = tmp_path / "two"

    script = tmp_path / "faulty.py"
    script.write_text(FAULTY_RANK)
    r = on_one_node(str(script), *args, "--out", str(out))
    assert r.returncode != 0
    host = socket.gethostname()
    said = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    named = f"error: Rank 1 of 2 (on {host}) failed: Unexpected RuntimeError: injected: this rank's device is gone"
    assert said == [named], r.stderr[-3000:]
    # no traceback of ours (torchrun's agent prints its own, ending in ChildFailedError), nothing on stdout
    assert r.stderr.count("Traceback") == r.stderr.count("raise ChildFailedError") and r.stdout == ""
    assert not list(out.glob("*-grid*")) and not list(out.glob("*-report*"))
    recs = records(out, "render")
    assert recs[1]["error"].endswith("this rank's device is gone") and recs[1]["made"] == []
    kept = recs[0]["made"]
    assert recs[0]["error"] is None and len(kept) == 4  # every other call of the eight
    assert sorted(f"{p.parent.name}/{p.stem}" for p in (out / "cells").glob("*/*.png")) == sorted(kept)

    two = on_one_node("-m", "spo_cli", *args, "--out", str(out), "--json", "--quiet")
    assert two.returncode == 0, two.stderr[-3000:]
    summary = json.loads(two.stdout)
    assert (summary["rendered"], summary["reused"], summary["failed"]) == (4, 4, 0)
    # How each process set the models up (its log, the bytes it read) and what it made is the run's, not
    # the result's: one process rendered all eight.
    facts = ("elapsed_s", "setup", "bytes_loaded")
    same_bytes(summary, one, facts + ("grid", "index", "reports", "rendered", "reused"))  # paths: in each --out
    (two_index,) = out.glob("*-grid.json")
    (one_index,) = (tmp_path / "one").glob("*-grid.json")
    index = json.loads(two_index.read_text())
    same_bytes(index, json.loads(one_index.read_text()), facts + ("rendered", "reused"))
    assert {line.split(":")[0] for line in index["setup"]} == {"rank 0", "rank 1"}
    assert index["sweep"]["versus"] == "model" and len(index["sweep"]["cells"]) == 8
    (report,) = out.glob("*-report.md")
    assert report.read_text() == (tmp_path / "one" / report.name).read_text()
    assert same_images(tmp_path / "one", out, "*-grid.png") == 1
    assert same_images(tmp_path / "one", out, "cells/*/*.png") == 8
    # Made once each, by one rank: every cell but those the failed run's rank 0 left, which all reused.
    cells = {c["image"][len("cells/"):-len(".png")] for line in index["cells"] for c in line}
    assert set(kept) < cells
    exactly_once(out, cells - set(kept))


def test_batch_on_two_nodes_makes_each_image_once_as_one_process_does(hub_cache, tmp_path, one_thread):
    """Two nodes sharing a prompt file (the README's Slurm example, on loopback): each image made once,
    by the rank the round-robin deal gives its call, with one process's pixels; the manifest written by
    the first rank. Text to image and edits in one file: the edits' inputs are copied once
    (--keep-inputs) by whichever rank gets there first, and their pixels do not depend on the rank."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "fox.png")
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (8, 8, 24, 24))
    mask.save(tmp_path / "mask.png")
    lines = [{"prompt": f"a lighthouse number {i}"} for i in range(4)] + [
        {"prompt": "a fox in snow", "image": "fox.png", "strength": 0.5},
        {"prompt": "a red scarf", "image": "fox.png", "mask": "mask.png"}]
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["batch", str(prompts), "--width", "32", "--height", "32", "--steps", "2", "--device", "cpu",
            "--batch-size", "2", "--seed", "500", "--keep-inputs"]
    invoke(*args, "--out", str(tmp_path / "one"), "--quiet")
    out = tmp_path / "two"
    nodes = on_two_nodes("-m", "spo_cli", *args, "--out", str(out), "--json")
    assert [code for code, _, _ in nodes] == [0, 0], [err[-3000:] for _, _, err in nodes]
    summary = one_json([o for _, o, _ in nodes])
    assert (summary["generated"], summary["failed"], summary["pending"]) == (6, 0, 0)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in rows) == sorted(p.name for p in out.glob("*.png"))
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == 6
    assert same_images(tmp_path / "one", out, "*.png") == 6
    # Four calls (two of two lighthouses, one per edit), dealt round-robin; each image written by its rank alone.
    ranks = {r["line"]: json.loads((out / r["sidecar"]).read_text())["batch"] for r in rows}
    assert [ranks[n]["rank"] for n in range(1, 7)] == [0, 0, 1, 1, 0, 1]
    assert {b["world_size"] for b in ranks.values()} == {2}
    assert sorted(p.name for p in (out / "inputs").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "inputs").iterdir())

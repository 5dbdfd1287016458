"""A run shared by several processes (torchrun, accelerate launch) without a process group: what every
rank must agree on before anything loads, and distributed.Team's meeting points in one process.

Each rank parses the command line and reads the prompt file itself, and they share out the list of
cells they build: anything drawn or read differently on each (a -1 seed, standard input) is refused."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from spo_cli.cli import app
from tests.conftest import HANG


@pytest.fixture
def two_ranks(monkeypatch):
    """This process as rank 0 of 2, as torchrun says it in the environment (no process group is formed:
    every case here is refused before one would be)."""
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)


def refused(args: list[str], said: str, stdin: str | None = None) -> str:
    r = CliRunner().invoke(app, args, input=stdin)
    assert r.exit_code == 2, r.output
    assert said in " ".join(r.output.split()), r.output
    assert "Traceback" not in r.output
    return r.output


RANDOM = "A random seed (-1) cannot be used under torchrun or accelerate launch: each of the 2 processes"
STDIN = "Standard input (-) cannot be the prompt file under torchrun or accelerate launch"
TINY = ["--width", "64", "--height", "64", "--steps", "2", "--device", "cpu"]


@pytest.mark.parametrize("args", [
    ["compare", "a fox", "--base", "--spo", "--seed", "-1"],
    ["compare", "a fox", "--base", "--spo", "--seeds", "1,-1"],
    ["compare", "a fox", "--base", "--spo", "--x", "seed=-1,3"],
    ["eval", "{prompts}", "--seeds", "-1"],
    ["batch", "{prompts}", "--seed", "-1"],
])
def test_a_random_seed_is_refused_when_ranks_share_the_run(two_ranks, tmp_path, args):
    """Each rank would draw its own: different cells on each, some made twice, some never."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    refused([a.replace("{prompts}", str(prompts)) for a in args] + TINY + ["--out", str(tmp_path / "out")], RANDOM)
    assert not (tmp_path / "out").exists()


def test_a_prompt_line_with_a_random_seed_is_refused_naming_it(two_ranks, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a fox"}) + "\n" + json.dumps({"prompt": "a cat", "seed": -1}) + "\n")
    for cmd in (["batch", str(prompts)], ["compare", "--prompts", str(prompts), "--base", "--spo"]):
        out = refused(cmd + TINY + ["--out", str(tmp_path / "out")], RANDOM)
        assert "p.jsonl:2" in out


@pytest.mark.parametrize("args", [["batch", "-"], ["eval", "-"], ["compare", "--prompts", "-", "--base", "--spo"]])
def test_stdin_is_refused_when_ranks_share_the_run(two_ranks, tmp_path, args):
    """torchrun's processes inherit one stdin: each would read a part of it, or none."""
    refused(args + TINY + ["--out", str(tmp_path / "out")], STDIN, stdin="a fox\na cat\n")


def test_every_command_starts_as_one_process(two_ranks, tmp_path, monkeypatch):
    """After a shared run refused in this process, a command that does not share out its work (generate,
    serve) draws -1 as ever: here generate draws it, then refuses --steps 0."""
    refused(["batch", "-"] + TINY, STDIN, stdin="a fox\n")
    monkeypatch.setenv("WORLD_SIZE", "1")
    out = refused(["generate", "a fox", "--seed", "-1", "--steps", "0", "--out", str(tmp_path / "g")], "steps")
    assert "random seed" not in out


class Said:
    """The UI's error line, as Team.check uses it."""

    def __init__(self):
        self.errors: list[str] = []

    def error(self, text: str) -> None:
        self.errors.append(text)


def test_a_record_that_cannot_be_written_fails_its_rank_at_the_meeting_not_before(tmp_path):
    """A full disk at a meeting point: the rank goes to the barrier with the error instead of raising
    past it (the others would wait for it there), and the first rank names it and why."""
    from spo_cli.distributed import RECORDS, Rank, Team

    (tmp_path / RECORDS).write_text("a file where the records' folder goes")  # every write into it fails
    team = Team(Rank(0, 2), tmp_path)
    records = team.meet("render", {"made": []})  # no process group in this process: the barrier is a no-op
    # its own reason (the first rank says it), not the others' view of it (a record missing)
    assert str(tmp_path / RECORDS) in records[0]["error"] and "missing or damaged" not in records[0]["error"]
    assert "missing or damaged" in records[1]["error"]  # rank 1 wrote none either, here
    ui = Said()
    with pytest.raises(SystemExit) as stop:
        team.check(ui, records)
    assert stop.value.code != 0 and ui.errors[0].startswith("Rank 0 of 2 (on ")
    assert team.step(lambda: "work") is None  # and it works no more


def test_the_ranks_meet_over_gloo_on_gpus_too(monkeypatch):
    """Barriers are all the ranks share: over gloo, one fails as soon as a peer is gone, where NCCL's can
    wait for its timeout (48 hours here); the GPU is still this rank's own (set before the group)."""
    import atexit

    import torch
    import torch.distributed as dist

    from spo_cli import distributed

    seen = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.append(("group", backend)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.append(("device", str(d))))
    monkeypatch.setattr(atexit, "register", lambda fn: None)
    distributed.init("cuda:3")
    assert seen == [("device", "cuda:3"), ("group", "gloo")]


def test_a_rank_that_lists_other_work_stops_the_run_before_anything_renders(hub_cache, tmp_path, monkeypatch):
    """Rank 0 of 2 in this process; rank 1 simulated at each barrier by copying rank 0's records, its plan
    changed (a node whose cache holds another revision of a model, or another prompt file at the same
    path: its spec hashes, so its list and its deal, differ). Dealt out, the two lists would leave cells
    unmade and make others twice; the first meeting after the listing stops both, naming rank 1."""
    from spo_cli import distributed

    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(distributed, "init", lambda device: None)  # no process group: rank 1 is simulated
    records = tmp_path / "out" / distributed.RECORDS
    steps = []

    def peer_barrier():
        for mine in records.glob("*-0.json"):
            step = mine.name[:-len("-0.json")]
            rec = json.loads(mine.read_text())
            if step == "plan":
                rec["plan"] = "0" * 64
            (records / f"{step}-1.json").write_text(json.dumps({**rec, "rank": 1}))
            steps.append(step)

    monkeypatch.setattr(distributed, "barrier", peer_barrier)
    r = CliRunner().invoke(app, ["compare", "a fox", "--base", "--spo", "--seeds", "1,2", "--width", "64",
                                 "--height", "64", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert r.exit_code == 1, r.output
    said = " ".join(r.output.split())
    assert "Rank 1 of 2 (on " in said and "it lists other work than rank 0" in said, r.output
    assert "plan" in steps and "render" not in steps and not list((tmp_path / "out").glob("cells/*/*.png"))


def test_a_batch_rank_that_lists_other_work_stops_the_run_before_anything_renders(hub_cache, tmp_path,
                                                                                   monkeypatch):
    """batch as compare above: rank 1 (simulated) lists other images, so the deal would leave some unmade
    and make others twice; the plan meeting stops both ranks, naming rank 1, and nothing is rendered."""
    from spo_cli import distributed

    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(distributed, "init", lambda device: None)
    out = tmp_path / "out"
    records, steps = out / distributed.RECORDS, []

    def peer_barrier():
        for mine in records.glob("*-0.json"):
            step = mine.name[:-len("-0.json")]
            rec = json.loads(mine.read_text())
            if step == "plan" and step not in steps:
                rec["plan"] = "0" * 64
                steps.append(step)
            (records / f"{step}-1.json").write_text(json.dumps({**rec, "rank": 1}))

    monkeypatch.setattr(distributed, "barrier", peer_barrier)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\na cat\n")
    r = CliRunner().invoke(app, ["batch", str(prompts), "--width", "64", "--height", "64", "--steps", "1",
                                 "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 1, r.output
    said = " ".join(r.output.split())
    assert "Rank 1 of 2 (on " in said and "it lists other work than rank 0" in said, r.output
    assert steps == ["plan"] and not list(out.glob("*.png"))


def test_the_batch_plan_digest_holds_every_image_and_what_is_left():
    from spo_cli.cli.batch import plan_digest

    images, left = [("fox-1", "a"), ("cat-1", "b")], ["cat-1"]
    assert len({plan_digest(images, left), plan_digest([("fox-1", "a"), ("cat-1", "c")], left),  # another revision
                plan_digest(images, ["fox-1", "cat-1"]),  # an image another rank found finished
                plan_digest(images[::-1], left)}) == 4


def test_the_plan_digest_holds_every_cell_and_what_is_left():
    from types import SimpleNamespace as Of

    from spo_cli.comparison import plan_digest

    columns, rows = [Of(folder="base"), Of(folder="spo")], [Of(stem="fox-1"), Of(stem="fox-2")]
    hashes, todo = [["a", "b"], ["c", "d"]], [[0, 1], [1]]
    digest = plan_digest(columns, rows, hashes, todo)
    assert len({digest, plan_digest(columns, rows, [["a", "b"], ["c", "e"]], todo),  # another revision, seed, …
                plan_digest(columns, rows, hashes, [[0, 1], [0, 1]]),  # another cell found finished
                plan_digest(columns, [Of(stem="fox-1"), Of(stem="cat-2")], hashes, todo),
                plan_digest(columns[::-1], rows, hashes, todo)}) == 5


PEER_GONE = """
import os, sys
from spo_cli import distributed
distributed.JOIN_TIMEOUT_S = 2
try:
    distributed.init("cpu")
except BaseException as e:
    print(type(e).__name__, " ".join(getattr(e, "message", str(e)).split()))
    sys.exit(4)
if os.environ["RANK"] == "1":
    os._exit(3)  # a rank gone outside any Team step: raised, killed, or stopped by its node's torchrun
try:
    distributed.barrier()
except BaseException as e:
    print(type(e).__name__, " ".join(getattr(e, "message", str(e)).split()))
"""


@pytest.mark.slow
def test_a_rank_gone_fails_the_others_meeting_saying_so(tmp_path):
    """Two processes in a gloo group (as torchrun starts them, without its agent); rank 1 exits: rank 0's
    next barrier ends at once, in spo's words (not 'Unexpected RuntimeError … please report it')."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "gone.py"
    script.write_text(PEER_GONE)
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script)], env={**env, "RANK": str(k), "LOCAL_RANK": str(k)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    try:
        out = [p.communicate(timeout=HANG) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert procs[1].returncode == 3
    assert out[0][0].startswith("SpoError Another process of this run stopped before this meeting point"), out[0]


@pytest.mark.slow
def test_a_rank_that_never_joins_ends_the_wait_for_it(tmp_path):
    """Rank 1 of 2 stopped before joining (its machine lacked a file): rank 0 waits for it a bounded time
    (2 s here, an hour in a run), not for the meeting points' 48 hours, and says what to look for."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "alone.py"
    script.write_text(PEER_GONE)
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=HANG)
    assert r.returncode == 4 and r.stdout.startswith("SpoError Not every process of this run joined it"), r


def test_a_meeting_waits_far_longer_than_joining(monkeypatch):
    """Joining waits an hour for every rank; a meeting point waits for the slowest shard (a rank done
    early waits there for hours): the group's own timeout is the hour, so the barrier sets its own."""
    import datetime

    import torch.distributed as dist

    from spo_cli import distributed

    waited = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "monitored_barrier", lambda timeout, wait_all_ranks: waited.append(timeout))
    distributed.barrier()
    assert waited == [datetime.timedelta(hours=48)] and distributed.JOIN_TIMEOUT_S == 3600


def test_a_shared_run_leaves_no_refusal_behind(two_ranks):
    """What a command refused as one of several ranks, code called after it in the same process draws."""
    from spo_cli import validate

    refused(["batch", "-"] + TINY, STDIN, stdin="a fox\n")
    assert validate.seeds("-1")[0] >= 0


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "2", "RANK": "2"},
                                 {"WORLD_SIZE": "two", "RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "-1"},
                                 {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x"}])
def test_a_distributed_environment_that_names_no_rank_is_refused(monkeypatch, tmp_path, env):
    """WORLD_SIZE left in a shell without RANK, or a RANK past it: no share is this process's own."""
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    refused(["batch", str(tmp_path / "p.txt")] + TINY, "The environment describes no process of a distributed run")


def test_one_process_and_a_launcher_rank(monkeypatch):
    from spo_cli.distributed import Rank, rank_info

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert rank_info() == Rank()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_info() == Rank()
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_info() == Rank(7, 8, 3)

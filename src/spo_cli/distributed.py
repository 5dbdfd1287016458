"""Several processes sharing one run (torchrun, accelerate launch): who we are, our shares, and meeting points.

`rank_info` reads the environment the launchers set and imports nothing; the others import
torch.distributed when called, and do nothing in a single process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int | None = None  # which GPU of this machine, under a launcher

    @property
    def first(self) -> bool:
        return self.rank == 0

    @property
    def several(self) -> bool:
        return self.world > 1


def rank_info() -> Rank:
    """This process's place in the run, from the variables torchrun and accelerate launch set."""
    env = {k: os.environ.get(k, "").strip() for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    # Set by a launcher, or left in a shell or a job's spec by hand: a wrong one would deal this
    # process a share that is not its own, or none.
    if not env["WORLD_SIZE"] or env["WORLD_SIZE"] == "1":
        return Rank()
    world, rank, local = (int(v) if v.isdigit() and len(v) < 7 else None for v in env.values())
    if world is None or rank is None or not rank < world or (env["LOCAL_RANK"] and local is None):
        from spo_cli.errors import UsageError

        shown = ", ".join(f"{k}={v!r}" for k, v in env.items())
        raise UsageError(f"The environment describes no process of a distributed run ({shown}): WORLD_SIZE and "
                         "RANK must be whole numbers, RANK below WORLD_SIZE.",
                         "Start the command with torchrun or accelerate launch, or unset WORLD_SIZE to run one "
                         "process.")
    return Rank(rank, world, local or 0)


JOIN_TIMEOUT_S = 3600  # every rank has started and checked its input: an hour covers a slow node's start
MEET_TIMEOUT_S = 48 * 3600  # a shard of --paper on a slow GPU, while a rank whose shard is done waits


def init(device: str) -> None:
    """Join the process group torchrun / accelerate launch describe in the environment."""
    import atexit
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # gloo on GPUs too: the ranks only ever meet at barriers (what they did goes through files), and a
    # gloo barrier fails as soon as a peer's connection closes (a rank that raised, was killed, or was
    # stopped by its node's torchrun), where an NCCL barrier on a peer gone away may wait until the
    # timeout below, and NCCL guesses which GPU to run a barrier on.
    # Forming the group waits at most this long for every rank to arrive: a rank that stopped before
    # joining (its node lacks a file the others have) would otherwise keep the other machines waiting
    # for the barriers' timeout. The barriers have their own, long one (see barrier).
    try:
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=JOIN_TIMEOUT_S))
    except RuntimeError as e:  # torch's DistStoreError: "Timed out after … waiting for clients. 1/2 clients joined."
        from spo_cli.errors import SpoError

        raise SpoError(f"Not every process of this run joined it within {JOIN_TIMEOUT_S // 60} minutes "
                       f"({str(e)[:300]}).", "One that stopped before joining said why in its own output (a file "
                       "missing on its machine, an option it refused); fix that and run the same command again "
                       "on every machine.") from None
    # Left to the interpreter, the group is torn down late and torch warns about it on every rank.
    atexit.register(shutdown)


def join(requested_device: str) -> None:
    """Under a launcher, join the process group now, before anything that may fail on one node only
    (the folder lock, files missing from one node's cache). A rank that exits before the group has
    formed leaves ranks on other machines waiting for it until JOIN_TIMEOUT_S: torchrun stops the
    other processes of a failed process's own machine, not those of other machines. Once the
    group has formed, a rank that exits closes its connections and the others' next barrier fails."""
    rank = rank_info()
    if not rank.several:
        return
    from spo_cli import engine

    init(engine.pick_device(requested_device, rank.local_rank)[0])


def barrier() -> None:
    import datetime

    if "torch" not in sys.modules:  # no process group without torch (a --server client never imports it)
        return
    import torch.distributed as dist

    if dist.is_initialized():
        try:
            # A rank that finishes its shard early waits for the others here: allow long runs. gloo
            # names a rank that does not come in time.
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=MEET_TIMEOUT_S), wait_all_ranks=True)
        except RuntimeError as e:  # gloo: a peer's connection closed; it said why itself, we can only say that
            from spo_cli.errors import SpoError

            raise SpoError(f"Another process of this run stopped before this meeting point ({str(e)[:300]}).",
                           "Its own error, in its output or in torchrun's report, says which one and why; fix that "
                           "and run the same command again: what is finished is reused.") from None


def shutdown() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def deal(items: list, rank: Rank) -> list:
    """This rank's share of a list every rank builds alike: items rank, rank + world, … (round-robin,
    so that a list sorted by cost spreads its costly items over all ranks)."""
    return items[rank.rank::rank.world]


def digest(plan) -> str:
    """A plan every rank builds from its own inputs (JSON-able), in 64 hex digits: what ranks compare
    before they deal out work, so that a rank whose files differ stops the run instead of dealing
    another list."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(plan).encode()).hexdigest()


# What each rank did in a step, beside the run's outputs: written before a meeting point, read by
# every rank after it, and kept until the next run starts (the record of who made what).
RECORDS = ".spo-ranks"
_RECORD_MAX_BYTES = 64 << 20  # a rank lists the cells it made: far below this for the largest sweep


class Team:
    """The ranks of one run going through the same steps and meeting points.

    A step that raises on one rank (a model that will not load on that node, a GPU out of memory)
    is recorded, and that rank goes on through every later meeting point without working: were it
    to exit, the others would wait at the next barrier until torchrun tore the run down, and no one
    would say which rank failed or why. At the next `meet` every rank learns of the failure; the
    first rank names it, and all stop. In a single process a step simply raises.
    """

    def __init__(self, rank: Rank, folder, *, debug: bool = False):
        self.rank = rank
        self.folder = folder / RECORDS
        self.debug = debug
        self.error: str | None = None
        self.exit_code = 0

    def clear(self) -> None:
        """The first rank, before any other starts: an earlier run's records go."""
        if self.rank.first and self.folder.is_dir():
            for p in self.folder.glob("*.json"):
                p.unlink(missing_ok=True)

    def step(self, fn):
        """fn(), or None once this rank has failed (a failure is recorded, under several ranks)."""
        if self.error is not None:
            return None
        try:
            return fn()
        except Exception as e:
            if not self.rank.several:
                raise
            self._fail(e)
            return None

    def _fail(self, e: Exception) -> None:
        """Record this rank's failure (the first only: later steps do not run)."""
        if self.error is not None:
            return
        from spo_cli.errors import translate

        if self.debug:
            import traceback

            traceback.print_exception(e)
        err = translate(e)
        self.error = err.paragraph() if err else f"Unexpected {type(e).__name__}: {e}"
        self.exit_code = err.exit_code if err else 1

    def wait(self) -> None:
        if self.rank.several:
            barrier()

    def meet(self, step: str, record: dict) -> list[dict]:
        """Write this rank's record of `step`, wait for every rank, and read every rank's, in rank order."""
        import socket

        own = {**record, "rank": self.rank.rank, "host": socket.gethostname(), "error": self.error,
               "exit_code": self.exit_code}
        if not self.rank.several:
            return [own]
        from spo_cli.outputs import files, metadata

        try:
            files.atomic_write(self._path(step, self.rank.rank), (metadata.dumps(own, indent=None) + "\n").encode(),
                               overwrite=True)
        except Exception as e:  # a full disk, a lost mount: raised here, the others would wait at the barrier
            self._fail(e)
            own = {**own, "error": self.error, "exit_code": self.exit_code}
        barrier()
        # Our own record as we know it: the others see ours as missing, and name this rank.
        return [own if k == self.rank.rank else self._read(step, k) for k in range(self.rank.world)]

    def check(self, ui, records: list[dict]) -> None:
        """Stop every rank when one failed; the first rank names those that did, and why (each
        different reason once: a model missing on every node is one line, not one per rank)."""
        failed = [r for r in records if r["error"] is not None]
        if not failed:
            return
        if self.rank.first:
            by_error: dict[str, list[dict]] = {}
            for r in failed:
                by_error.setdefault(r["error"], []).append(r)
            for error, recs in by_error.items():
                ranks = ", ".join(str(r["rank"]) for r in recs)
                hosts = ", ".join(dict.fromkeys(r["host"] for r in recs))
                plural = "s" if len(recs) > 1 else ""
                ui.error(f"Rank{plural} {ranks} of {self.rank.world} (on {hosts}) failed: {error}")
        # Said before any rank exits: torchrun stops the others as soon as one exits with an error.
        barrier()
        # Said already; every rank exits with the first failure's code (2 for bad input, as in one process).
        from spo_cli.errors import EXIT_FAILURE

        code = failed[0].get("exit_code")
        raise SystemExit(code if type(code) is int and 0 < code < 128 else EXIT_FAILURE)

    def agree(self, ui, records: list[dict], key: str, why: str) -> None:
        """Stop every rank when one's `key` differs from the first rank's (`why` says what that means),
        as `check` stops them for a failure; a rank that failed is left to `check`."""
        if records[0]["error"] is not None:
            return
        differ = [{**r, "error": why, "exit_code": None} for r in records
                  if r["error"] is None and r.get(key) != records[0].get(key)]
        self.check(ui, differ)

    def _path(self, step: str, k: int):
        return self.folder / f"{step}-{k}.json"

    def _read(self, step: str, k: int) -> dict:
        """Rank k's record, checked: it is a file in the output folder, which anyone may have touched."""
        import json

        path = self._path(step, k)
        gone = {"rank": k, "host": "?", "error": f"its record {path} is missing or damaged."}
        try:
            if not path.is_file() or path.stat().st_size > _RECORD_MAX_BYTES:
                return gone
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, ValueError, RecursionError):
            return gone
        if (not isinstance(data, dict) or data.get("rank") != k or not isinstance(data.get("host"), str)
                or len(data["host"]) > 255 or not isinstance(data.get("error"), (str, type(None)))
                or len(data["error"] or "") > 20_000):
            return gone
        return data

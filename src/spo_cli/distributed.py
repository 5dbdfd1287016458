"""Several processes sharing one batch (torchrun, accelerate launch): who we are, and meeting points.

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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str) -> None:
    """Join the process group torchrun / accelerate launch describe in the environment."""
    import datetime

    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    # A rank that finishes its shard early waits for the others at the final barrier: allow long runs.
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=datetime.timedelta(hours=48))


def barrier() -> None:
    if "torch" not in sys.modules:  # no process group without torch (a --server client never imports it)
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()

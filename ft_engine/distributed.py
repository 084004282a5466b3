"""Where this process stands in a run of several (accelerate launch / torchrun), and the few
collective answers the engine needs from all of them.

The launcher sets RANK, WORLD_SIZE and LOCAL_RANK; the process group itself is created by
accelerate when the Trainer's arguments are built. Before that only the environment answers,
which is enough to know who writes the run directory: global rank 0, the only process that
does (rundir.FollowerRunDir for the others).

Every function here is a no-op answer in a single process, so the one-process path runs no
collective at all.
"""

from __future__ import annotations

import os

import torch


def rank() -> int:
    """This process's global rank (0 when not launched distributed)."""
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    """How many processes train this run (1 when not launched distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def is_main() -> bool:
    return rank() == 0


def _ready() -> bool:
    return world_size() > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo (the CPU backend) only CPU ones
    if torch.cuda.is_available() and torch.distributed.get_backend() != "gloo":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(*values: float) -> list[float]:
    """Each value summed over every process (one all-reduce for all of them). Every process
    must call it at the same point, with as many values."""
    if not _ready():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def any_across(flag: bool) -> bool:
    """True when any process says True: the processes of a run must agree to stop at the same
    step, or those that go on wait forever for the ones that stopped."""
    return sum_across(1.0 if flag else 0.0)[0] > 0


def max_across(value: float) -> float:
    if not _ready():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return float(t.item())


def gather_values(value: float) -> list[float]:
    """Every process's value, in rank order (one per process)."""
    if not _ready():
        return [float(value)]
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    out = [torch.zeros_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t)
    return [float(x.item()) for x in out]


def broadcast_text(text: str | None) -> str:
    """Rank 0's text on every process (the run directory's name, for the other nodes)."""
    if not _ready():
        return text or ""
    box = [text if is_main() else None]
    torch.distributed.broadcast_object_list(box, src=0, device=_device())
    return box[0] or ""

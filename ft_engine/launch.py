"""How a run's processes are started: `python -m ft_engine train-run RUN_DIR` for one process,
the same under `accelerate launch` (torch.distributed.run underneath) for two or more.

Every run trains in processes of its own, never in the studio's (issue 12): a crash or an
out-of-memory kill ends the run, not the app, and all the memory a run used goes back to the
system when its processes end (a long-lived process on a CPU keeps what glibc freed).

The launch is written as an accelerate config file beside the run (LAUNCH_FILE), and accelerate
gets only that: a user's own default accelerate config (~/.cache/huggingface/accelerate) is
never read into a run, and the file says exactly how the run was started.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import RunConfig, device_count, lean_needs_one_process
from .errors import UserError

LAUNCH_FILE = "accelerate_launch.yaml"
# torch.distributed.run's own default; a node-0 launch on one machine picks a free port instead
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class Launch:
    """Where and how many: `processes` per node (one GPU each), `nodes` machines."""

    processes: int = 1
    nodes: int = 1
    node_rank: int = 0
    main_address: str = "127.0.0.1"
    main_port: int = 0  # 0: a free port, found on this machine (one node only)

    @property
    def total(self) -> int:
        return self.processes * self.nodes

    @property
    def distributed(self) -> bool:
        return self.total > 1

    def check(self) -> "Launch":
        problems = []
        if self.nodes < 1:
            problems.append(f"--nodes must be >= 1, got {self.nodes}")
        if not 0 <= self.node_rank < max(self.nodes, 1):
            problems.append(f"--node-rank must be from 0 to {self.nodes - 1} (this machine's place among "
                            f"--nodes {self.nodes}), got {self.node_rank}")
        if self.nodes > 1 and not self.main_address:
            problems.append("--main-address is needed with --nodes 2 or more: the host name or IP address of "
                            "the machine started with --node-rank 0, reachable from every other")
        if self.nodes > 1 and not 1 <= self.main_port <= 65535:
            problems.append(f"--main-port must be a port from 1 to 65535 that every node can reach on the main "
                            f"address (e.g. {DEFAULT_PORT}), got {self.main_port}")
        if problems:
            raise UserError("; ".join(problems))
        return self


def visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_for(cfg: RunConfig, gpus: int | None = None) -> int:
    """How many processes `cfg` trains with on this machine: `devices` resolved (`auto`: every
    visible GPU, 1 on a CPU). More than the GPUs there are is refused, since two processes on
    one GPU only fight over its memory. On a CPU any number is allowed: the processes share
    the cores (gloo backend), which is how the multi-process paths are tested without GPUs,
    up to one process per core."""
    gpus = visible_gpus() if gpus is None else gpus
    wanted = device_count(cfg)
    n = (gpus or 1) if wanted is None else wanted
    if gpus and n > gpus:
        raise UserError(f"devices {n} asks for more GPUs than this machine shows ({gpus}): use devices auto "
                        f"or at most {gpus}")
    cores = os.cpu_count() or 1
    if not gpus and n > cores:
        raise UserError(f"devices {n} on a machine without GPUs starts {n} processes on its {cores} CPU cores: "
                        f"use at most {cores} (each process needs a core of its own), or devices 1")
    if n > 1 and cfg.optimizer == "adamw_lean":
        raise UserError(lean_needs_one_process(n))
    return n


def accelerate_config(launch: Launch, cpu: bool) -> dict:
    """The accelerate config file's content for `launch` (accelerate config's own keys)."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        # MULTI_GPU means "torch.distributed.run": on a machine without GPUs the ranks find no
        # CUDA and accelerate sets them up as MULTI_CPU on gloo
        "distributed_type": "MULTI_GPU",
        "num_processes": launch.total,
        "num_machines": launch.nodes,
        "machine_rank": launch.node_rank,
        "main_process_ip": launch.main_address,
        "main_process_port": launch.main_port or _free_port(),
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        # precision and FSDP come from the Trainer's arguments (training.training_arguments), as
        # in a one-process run, not from the launcher
        "mixed_precision": "no",
        "use_cpu": False,
        "debug": False,
        "downcast_bf16": "no",
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }


def _free_port() -> int:
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(run_path: Path | None, launch: Launch, supervisor_pid: int | None = None,
            config_file: Path | None = None) -> list[str]:
    """The command line that trains the prepared run at `run_path` (rundir; None on a node
    other than 0, whose processes get the run from node 0); with 2+ processes the accelerate
    config is written to `config_file` (default: LAUNCH_FILE in the run)."""
    rank_command = ["-m", "ft_engine", "train-run", *([str(run_path)] if run_path is not None else [])]
    if supervisor_pid is not None:
        rank_command += ["--supervisor", str(supervisor_pid)]
    if not launch.distributed:
        return [sys.executable, *rank_command]
    target = config_file or run_path / LAUNCH_FILE
    target.write_text(yaml.safe_dump(accelerate_config(launch, cpu=not visible_gpus()), sort_keys=False),
                      encoding="utf-8")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(target), *rank_command]


def environment(launch: Launch, base: dict[str, str] | None = None) -> dict[str, str]:
    """The processes' environment: this one's, with output unbuffered (train.log follows the
    run live) and, on a CPU, the cores split between the processes of this node (each would
    otherwise start one thread per core, and they would take turns on every core)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if launch.processes > 1 and not visible_gpus():
        cores = os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // launch.processes))
    return env

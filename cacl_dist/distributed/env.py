"""Process-group set-up from torchrun/SLURM-style environment variables.

A plain `python -m cacl_dist.train` is a world of one process and never touches
torch.distributed; under torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
the process group is created with NCCL on CUDA and gloo on the CPU.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cacl_dist.distributed import comm
from cacl_dist.errors import UserError

log = logging.getLogger("cacl_dist")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None in a single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None


def pick_device(preference: str, local_rank: int) -> torch.device:
    """Resolve 'auto' | 'cpu' | 'cuda' to a concrete device for this process.

    The local rank picks the GPU, modulo the number of visible GPUs: processes share a GPU when
    there are more of them than GPUs, which only gloo allows (``check_gpus_per_node``).
    """
    if preference == "cpu":
        return torch.device("cpu")
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise UserError("run.device is 'cuda' but no CUDA device is visible; use run.device=cpu or auto")
    if has_cuda:
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def check_gpus_per_node(backend: str, local_world_size: int, local_rank: int) -> None:
    """NCCL needs one GPU per process: more processes on a node than visible GPUs is a one-line ValueError.

    gloo may share a GPU between processes (``pick_device`` maps the local rank modulo the GPU
    count), which is useful for testing a multi-process run on a one-GPU machine.
    """
    if backend != "nccl":
        return
    gpus = torch.cuda.device_count()
    procs = max(local_world_size, local_rank + 1)
    if procs > gpus:
        raise UserError(
            f"{procs} processes on this node (--nproc_per_node / LOCAL_WORLD_SIZE) but only {gpus} GPU(s) "
            f"visible: NCCL needs one GPU per process; start at most --nproc_per_node={gpus}, or set "
            "dist.backend=gloo to share a GPU between processes for testing")


def init_distributed(device: str = "auto", backend: str = "auto", timeout_min: float = 30.0) -> DistEnv:
    """Create the process group when WORLD_SIZE > 1 and return this process's DistEnv.

    Under NCCL a gloo side group with the same timeout carries the small control messages of the
    rank-0-only phases (see ``comm.run_on_main``), so a rank that waits for rank 0 gives up after
    ``timeout_min`` with an error naming what it waited for, instead of being aborted by NCCL's
    watchdog without one.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if world_size <= 1:
        return DistEnv(0, 1, 0, dev, None)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise UserError("dist.backend is 'nccl' but training runs on the CPU; use dist.backend=gloo or auto")
    check_gpus_per_node(backend, _env_int("LOCAL_WORLD_SIZE", local_rank + 1), local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        timeout = datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout)
        if backend == "nccl":
            comm.set_control_group(dist.new_group(backend="gloo", timeout=timeout))
    return DistEnv(rank, world_size, local_rank, dev, backend)


def shutdown_distributed() -> None:
    """Destroy the process group if one exists."""
    comm.set_control_group(None)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

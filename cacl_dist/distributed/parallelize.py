"""How the model runs on this process's device and across processes.

One place for the layout of the two branches: BatchNorm statistics groups (ghost or synchronised
BatchNorm, `model.bn_group_size` and `model.sync_bn`, see bn_groups.py), channels-last memory
format (of the model and of its input batches), cuDNN autotuning, DDP wrapping and torch.compile.
The BatchNorm groups fix what the model computes on any number of processes; everything else
changes speed, not values. cuDNN autotuning does nothing on the CPU, and DDP is skipped in a
single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cacl_dist.distributed.bn_groups import BNGroupLayout, group_reducer
from cacl_dist.distributed.env import DistEnv
from cacl_dist.distributed.group_bn import convert_to_group_bn


@dataclass(frozen=True)
class ParallelSettings:
    """How the branches run (train.* and dist.* keys), as requested in the config; the BatchNorm groups come
    as a :class:`BNGroupLayout` (:func:`cacl_dist.config.validate_for_world`)."""

    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    deterministic: bool = False
    ddp_bucket_view: bool = True
    ddp_static_graph: bool = True

    @classmethod
    def from_config(cls, cfg) -> ParallelSettings:
        """Read the settings from a cacl_dist Config."""
        return cls(channels_last=cfg.train.channels_last,
                   compile=cfg.train.compile, cudnn_benchmark=cfg.train.cudnn_benchmark,
                   deterministic=cfg.train.deterministic,
                   ddp_bucket_view=cfg.dist.ddp_bucket_view, ddp_static_graph=cfg.dist.ddp_static_graph)

    @property
    def static_graph(self) -> bool:
        """DDP's static-graph mode as applied: torch.compile splits DDP graphs at bucket boundaries,
        so compiled branches keep DDP's dynamic mode."""
        return self.ddp_static_graph and not self.compile

    def describe(self, device: torch.device) -> str:
        """The settings in effect on `device`, for one log line."""
        on_cuda = device.type == "cuda"
        cudnn = (self.cudnn_benchmark and not self.deterministic) if on_cuda else "n/a (CPU)"
        deterministic = self.deterministic if on_cuda else "n/a (CPU)"
        return (f"channels-last {self.channels_last}, torch.compile {self.compile}, DDP bucket view "
                f"{self.ddp_bucket_view} / static graph {self.static_graph}, cuDNN benchmark {cudnn}, "
                f"deterministic kernels {deterministic}")


def configure_backends(device: torch.device, settings: ParallelSettings) -> None:
    """Process-wide switches on CUDA: cuDNN autotuning, or deterministic kernels (nothing to do on the CPU).

    Deterministic cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first call; it is set here
    unless the environment already sets it.
    """
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(settings.cudnn_benchmark) and not settings.deterministic
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def prepare_model(model: nn.Module, env: DistEnv, layout: BNGroupLayout, settings: ParallelSettings) -> nn.Module:
    """Realise the BatchNorm statistics groups of `layout` and set the memory format, in place.

    Ghost groups or groups synchronised over a process subgroup replace the BatchNorm layers by
    GroupBatchNorm (same parameters and buffers); plain and per-process groups keep them.
    Creating the subgroups is collective: every rank calls this.
    """
    if layout.converts:
        model = convert_to_group_bn(model, layout.groups_per_process, group_reducer(layout, env.rank))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def parallelize(branch: nn.Module, env: DistEnv, settings: ParallelSettings) -> nn.Module:
    """`branch` as the training step calls it: DDP-wrapped with several processes, then compiled if asked.

    The DDP bucket view lets gradients live in the all-reduce buckets (no copy, less memory); the
    static graph declares that every parameter gets a gradient in every step, so the all-reduces
    overlap more. Both are exact. The compiled wrapper shares the branch's parameters.
    """
    module = branch
    if env.world_size > 1:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        module = DistributedDataParallel(branch, device_ids=device_ids, static_graph=settings.static_graph,
                                         gradient_as_bucket_view=settings.ddp_bucket_view)
    return torch.compile(module) if settings.compile else module


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a B x C x H x W batch to `device` (asynchronously from pinned memory), channels-last if asked."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


__all__ = ["ParallelSettings", "configure_backends", "parallelize", "prepare_model", "to_input"]

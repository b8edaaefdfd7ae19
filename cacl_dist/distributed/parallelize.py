"""How the model runs on this process's device and across processes.

One place for the layout of the two branches: SyncBatchNorm, channels-last memory format (of
the model and of its input batches), cuDNN autotuning, DDP wrapping and torch.compile. All of
it changes speed, not values; GPU-only options fall back with one log line on the CPU, and DDP
is skipped in a single process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .env import DistEnv

log = logging.getLogger("cacl_dist")


@dataclass(frozen=True)
class ParallelSettings:
    """The layout keys of a run (train.* and dist.*), as requested in the config."""

    sync_bn: bool = False
    channels_last: bool = False
    compile: bool = False
    cudnn_benchmark: bool = True
    ddp_bucket_view: bool = True
    ddp_static_graph: bool = True

    @classmethod
    def from_config(cls, cfg) -> ParallelSettings:
        """Read the settings from a cacl_dist Config."""
        return cls(sync_bn=cfg.model.sync_bn, channels_last=cfg.train.channels_last, compile=cfg.train.compile,
                   cudnn_benchmark=cfg.train.cudnn_benchmark, ddp_bucket_view=cfg.dist.ddp_bucket_view,
                   ddp_static_graph=cfg.dist.ddp_static_graph)

    @property
    def static_graph(self) -> bool:
        """DDP's static-graph mode as applied: torch.compile splits DDP graphs at bucket boundaries,
        so compiled branches keep DDP's dynamic mode."""
        return self.ddp_static_graph and not self.compile

    def describe(self, device: torch.device) -> str:
        """The settings in effect on `device`, for one log line."""
        cudnn = self.cudnn_benchmark if device.type == "cuda" else "n/a (CPU)"
        return (f"channels-last {self.channels_last}, torch.compile {self.compile}, DDP bucket view "
                f"{self.ddp_bucket_view} / static graph {self.static_graph}, cuDNN benchmark {cudnn}")


def configure_backends(device: torch.device, settings: ParallelSettings) -> None:
    """Process-wide switches: cuDNN autotuning on CUDA (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(settings.cudnn_benchmark)


def prepare_model(model: nn.Module, env: DistEnv, settings: ParallelSettings) -> nn.Module:
    """Convert BatchNorm to SyncBatchNorm (CUDA, several processes) and set the memory format in place."""
    if settings.sync_bn:
        if env.device.type != "cuda":
            log.info("model.sync_bn needs CUDA; training on %s with plain BatchNorm", env.device)
        elif env.world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
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

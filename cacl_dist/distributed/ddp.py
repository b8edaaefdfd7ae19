"""DDP wrapping that is a no-op in a single process."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .env import DistEnv


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """Wrap `module` in DDP when the job has several processes; return it unchanged otherwise."""
    if env.world_size == 1:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, DistributedDataParallel)


__all__ = ["wrap_ddp", "unwrap", "is_wrapped"]

"""DDP wrapping that is a no-op in a single process."""

from __future__ import annotations

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .env import DistEnv


def wrap_ddp(module: nn.Module, env: DistEnv, bucket_view: bool = True, static_graph: bool = True) -> nn.Module:
    """Wrap `module` in DDP when the job has several processes; return it unchanged otherwise.

    ``bucket_view`` lets gradients live in DDP's all-reduce buckets (no copy, less memory);
    ``static_graph`` declares that every parameter gets a gradient in every step, which lets DDP
    schedule its all-reduces with more overlap. Both are exact: they change no value.
    """
    if env.world_size == 1:
        return module
    device_ids = [env.device.index] if env.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, gradient_as_bucket_view=bucket_view,
                                   static_graph=static_graph)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (or the module itself)."""
    return module.module if isinstance(module, DistributedDataParallel) else module


def is_wrapped(module: nn.Module) -> bool:
    return isinstance(module, DistributedDataParallel)


__all__ = ["wrap_ddp", "unwrap", "is_wrapped"]

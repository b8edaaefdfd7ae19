"""Collectives that are the identity in a single process.

Math modules never call these; the trainer gathers and reduces, then passes tensors in.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _comm_device(tensor: torch.Tensor) -> torch.device:
    """NCCL needs CUDA tensors; gloo takes CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0, in rank order; rows may differ per rank."""
    if not is_distributed():
        return tensor
    dev = _comm_device(tensor)
    local = tensor.detach().to(dev).contiguous()
    size = torch.tensor([local.shape[0]], device=dev, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = local.new_zeros((longest,) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:n] for p, n in zip(parts, counts)], dim=0)
    return out.to(tensor.device)


class PendingGather:
    """An all-gather in flight; :meth:`wait` returns the rank-ordered concatenation."""

    def __init__(self, work, parts: list[torch.Tensor], device: torch.device):
        self._work, self._parts, self._device = work, parts, device

    def wait(self) -> torch.Tensor:
        """Wait for the gather (on NCCL only the current CUDA stream waits, not the host)."""
        if self._work is not None:
            self._work.wait()
        out = self._parts[0] if len(self._parts) == 1 else torch.cat(self._parts, dim=0)
        return out.to(self._device)


def all_gather_start(tensor: torch.Tensor) -> PendingGather:
    """Start gathering a tensor of the same shape from every rank, without waiting for it.

    Unlike :func:`all_gather_cat` there is no size exchange (no host synchronisation), so every
    rank must pass the same shape, e.g. its equal share of the global batch. Work queued
    between this call and ``wait()`` (the backward pass) overlaps with the transfer.
    """
    if not is_distributed():
        return PendingGather(None, [tensor.detach()], tensor.device)
    dev = _comm_device(tensor)
    local = tensor.detach().to(dev).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    work = dist.all_gather(parts, local, async_op=True)
    return PendingGather(work, parts, tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of the tensor over ranks (a new tensor on the input's device)."""
    if not is_distributed():
        return tensor
    dev = _comm_device(tensor)
    buf = tensor.detach().to(dev).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of the tensor over ranks."""
    return all_reduce_sum(tensor) / world_size()


def broadcast_tensor(tensor: torch.Tensor, src: int = 0, what: str = "a tensor") -> torch.Tensor:
    """Rank `src`'s tensor on every rank (shape and dtype must agree); fails loudly on timeout."""
    if not is_distributed():
        return tensor
    dev = _comm_device(tensor)
    buf = tensor.detach().to(dev).contiguous().clone()
    try:
        dist.broadcast(buf, src=src)
    except RuntimeError as exc:
        raise RuntimeError(
            f"rank {rank()} gave up waiting for {what} from rank {src}: {exc}. Rank {src} failed or is "
            "slower than dist.timeout_min allows; check its log, or raise dist.timeout_min") from exc
    return buf.to(tensor.device)


def broadcast_object(obj: Any, src: int = 0, what: str = "an object") -> Any:
    """Rank `src`'s picklable object on every rank."""
    if not is_distributed():
        return obj
    payload = pickle.dumps(obj) if rank() == src else b""
    length = broadcast_tensor(torch.tensor([len(payload)], dtype=torch.int64), src, what)
    data = torch.zeros(int(length.item()), dtype=torch.uint8)
    if rank() == src:
        data = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
    data = broadcast_tensor(data, src, what)
    return pickle.loads(data.numpy().tobytes())


def barrier() -> None:
    if is_distributed():
        dist.barrier()

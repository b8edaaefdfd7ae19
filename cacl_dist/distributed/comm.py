"""Collectives that are the identity in a single process.

Math modules never call these; the trainer gathers and reduces, then passes tensors in.

Small control messages (objects, the outcome of rank-0-only work) travel over the *control
group*: the default group under gloo, a gloo side group under NCCL (set up by
``env.init_distributed``). Gloo honours the process-group timeout (``dist.timeout_min``) with
a Python error, which is turned into one naming what the rank waited for; NCCL's watchdog
would instead abort the process without saying which phase hung.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

_control_group = None  # a gloo group beside an NCCL default group; None: the default group


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


def gather_cat(tensor: torch.Tensor, dst: int = 0, device: torch.device | str | None = None) -> torch.Tensor | None:
    """On rank `dst`: every rank's tensor concatenated along dim 0 in rank order (rows may differ per
    rank), on `device` (default: the input's device). None on the other ranks.

    Unlike :func:`all_gather_cat` only rank `dst` receives the rows, so the others never hold the
    whole tensor (e.g. both memory banks when a checkpoint is written).
    """
    out_device = tensor.device if device is None else torch.device(device)
    if not is_distributed():
        return tensor.to(out_device)
    dev = _comm_device(tensor)
    local = tensor.detach().to(dev).contiguous()
    size = torch.tensor([local.shape[0]], device=dev, dtype=torch.int64)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = local.new_zeros((max(counts),) + tuple(local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in counts] if rank() == dst else None
    dist.gather(padded, parts, dst=dst)
    if parts is None:
        return None
    return torch.cat([p[:n].to(out_device) for p, n in zip(parts, counts)], dim=0)


def set_control_group(group) -> None:
    """Use `group` (a gloo process group) for control messages; None: the default group."""
    global _control_group
    _control_group = group


def _gave_up(what: str, src: int | None, exc: BaseException) -> RuntimeError:
    """The error of a rank that waited longer than the timeout (`src` None: for any other rank)."""
    who = f"rank {src}" if src is not None else "the other ranks"
    detail = " ".join(str(exc).split())
    return RuntimeError(
        f"rank {rank()} gave up waiting for {what} from {who}: {detail}. {who.capitalize()} failed or "
        f"{'is' if src is not None else 'are'} slower than dist.timeout_min allows; check the logs, or raise "
        "dist.timeout_min")


def broadcast_object(obj: Any, src: int = 0, what: str = "an object") -> Any:
    """Rank `src`'s picklable object on every rank (over the control group; fails loudly on timeout).

    Tensors inside `obj` should be on the CPU: a CUDA tensor would arrive on the same device
    index on every rank.
    """
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    try:
        dist.broadcast_object_list(box, src=src, group=_control_group)
    except RuntimeError as exc:
        raise _gave_up(what, src, exc) from exc
    return box[0]


def _failure(exc: Exception) -> tuple[type, str]:
    """(exception class, message) of a failure, as it travels to the other ranks."""
    cls = type(exc)
    try:
        pickle.loads(pickle.dumps(cls))
    except Exception:  # a class the other ranks cannot import: they raise a RuntimeError
        cls = RuntimeError
    return cls, str(exc)


def _rebuild(cls: type, message: str) -> Exception:
    """The failure of another rank as an exception of the same class and message (else RuntimeError)."""
    try:
        exc = cls(message)
        if isinstance(exc, Exception) and str(exc) == message:
            return exc
    except Exception:
        pass
    return RuntimeError(message)


def run_everywhere(fn: Callable[[], T], what: str) -> T:
    """Every rank runs `fn`; if it raised on any rank, every rank raises that failure.

    Returns this rank's own result. The first failing rank (lowest number) decides the error:
    that rank re-raises its own exception, the others an exception of the same class and
    message, so all ranks stop at the same point with the same one-line message instead of
    some of them waiting in the next collective until the timeout. `fn` may itself hold
    collectives that every rank joins. `what` names the phase in the timeout message.
    """
    if not is_distributed():
        return fn()
    result, error, failure = None, None, None
    try:
        result = fn()
    except Exception as exc:  # shared with the other ranks below
        error, failure = exc, _failure(exc)
    outcomes: list = [None] * world_size()
    try:
        dist.all_gather_object(outcomes, failure, group=_control_group)
    except RuntimeError as exc:
        if error is not None:
            raise error
        raise _gave_up(what, 0 if rank() != 0 else None, exc) from exc
    for failed_rank, outcome in enumerate(outcomes):
        if outcome is not None:
            if failed_rank == rank():
                raise error
            raise _rebuild(*outcome)
    return result


def run_on_main(fn: Callable[[], T], what: str) -> T:
    """Rank 0 runs `fn` (which must hold no collective) and every rank returns its result.

    A failure on rank 0 reaches every rank at once and all of them raise it (same class and
    message); a rank 0 that hangs makes the others give up after ``dist.timeout_min`` with an
    error naming `what`. The result travels pickled over the control group, so tensors in it
    should be on the CPU.
    """
    if not is_distributed():
        return fn()
    result = run_everywhere(lambda: fn() if rank() == 0 else None, what)
    return broadcast_object(result, src=0, what=what)


def any_rank(flag: bool, what: str = "the stop decision") -> bool:
    """True on every rank when `flag` is true on at least one (a one-number CPU all-reduce over the control
    group: cheap enough for every training step, and it never waits for a device)."""
    if not is_distributed():
        return bool(flag)
    box = torch.tensor([1 if flag else 0], dtype=torch.int32)
    try:
        dist.all_reduce(box, op=dist.ReduceOp.MAX, group=_control_group)
    except RuntimeError as exc:
        raise _gave_up(what, None, exc) from exc
    return bool(box.item())


def barrier() -> None:
    if is_distributed():
        dist.barrier()

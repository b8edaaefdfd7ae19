"""Which rows each rank owns: plain arithmetic, no communication.

Math and data modules may import this (it never touches torch.distributed).
"""

from __future__ import annotations


def shard_bounds(num_total: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[start, end)`` owned by ``rank``: contiguous, sizes differing by at most one.

    The first ``num_total % world_size`` ranks get one extra row; the shards of ranks
    0..world_size-1 cover ``0..num_total`` in order.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must lie in [0, {world_size}), got {rank!r}")
    if num_total < 0:
        raise ValueError(f"num_total must be >= 0, got {num_total!r}")
    base, extra = divmod(num_total, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


__all__ = ["shard_bounds"]

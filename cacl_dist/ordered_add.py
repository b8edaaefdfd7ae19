"""Index-add in a fixed order on every device (pure torch, no communication).

``out.index_add_(0, index, values)`` adds ``values[i]`` into ``out[index[i]]``. On a CPU the
additions run one after the other in the order of i, so a float64 sum is reproducible bit for
bit; on CUDA they are atomic additions in whatever order the threads arrive, so two runs may
differ in the last bits, and so may every decision taken on the sums. :func:`index_add_` keeps
the CPU's ``index_add_`` (sequential already) and, on other devices, runs
:func:`ordered_index_add_`: the same sums, in the same order, without atomics.
"""

from __future__ import annotations

import torch


def adds_unordered(device: torch.device) -> bool:
    """Whether ``index_add_`` on ``device`` may add in a varying order (every device but the CPU)."""
    return torch.device(device).type != "cpu"


def index_add_(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[index[i]] += values[i]`` along dim 0 for i = 0, 1, ..., in that order; returns ``out``.

    Equal bit for bit to ``out.index_add_(0, index, values)`` on a CPU, and reproducible on
    every device (see :func:`ordered_index_add_`).
    """
    if adds_unordered(out.device):
        return ordered_index_add_(out, index, values)
    return out.index_add_(0, index, values)


def ordered_index_add_(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """:func:`index_add_` without atomics: sorted segments summed one element after the other.

    The positions are sorted stably by target, so each target's values keep their order; each
    target becomes one segment, its current value first, and ``torch.segment_reduce`` adds a
    segment's elements in order (one thread per segment and column; the data are made 2-D,
    where that kernel is the sequential one). The result equals the CPU's sequential
    ``index_add_`` bit for bit. All shapes are fixed by ``len(index)``, so nothing waits for the
    device. ``values`` must have the dtype of ``out`` and shape ``(len(index),) + out.shape[1:]``.
    """
    count = index.numel()
    if count == 0:
        return out
    assert values.dtype == out.dtype and values.shape[0] == count, "values must match out and index"
    device = out.device
    width = values[0].numel()
    index = index.to(device=device, dtype=torch.int64)
    values = values.to(device).reshape(count, width)
    target, order = torch.sort(index, stable=True)
    position = torch.arange(count, device=device)
    first = torch.ones(count, dtype=torch.bool, device=device)
    first[1:] = target[1:] != target[:-1]
    segment = torch.cumsum(first, 0) - 1  # segment of each sorted position
    num_segments = segment[-1:] + 1
    # Where the next segment starts, for every position: a running minimum from the end.
    later_starts = torch.full((count,), count, dtype=torch.int64, device=device)
    later_starts[:-1] = torch.where(first[1:], position[1:], count)
    next_start = torch.cummin(later_starts.flip(0), 0).values.flip(0)
    # Layout: segment s is [out[its target], its values in order]; a scratch slot at the end
    # takes the unused head writes; the last segment pads the unused tail.
    size = 2 * count + 1
    buffer = torch.empty((size, width), dtype=values.dtype, device=device)
    slot = position + segment + 1
    buffer[slot] = values[order]
    head = torch.where(first, slot - 1, torch.full_like(slot, size - 1))
    rows = out.view(out.shape[0], width)  # a view: out must be contiguous
    buffer[head] = rows[target]
    lengths = torch.zeros(count + 1, dtype=torch.int64, device=device)
    lengths[:count] = torch.where(first, next_start - position + 1, 0)
    lengths[count:] = size - count - num_segments
    sums = torch.segment_reduce(buffer, "sum", lengths=lengths, unsafe=True)
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
    # Every position of a segment writes that segment's sum: equal values, so no race matters.
    rows[target] = sums[start]
    return out

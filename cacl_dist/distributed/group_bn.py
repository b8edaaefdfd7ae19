"""BatchNorm whose training statistics come from groups of a fixed number of images.

A batch of ``b`` images on one process is normalised in ``G`` runs of ``b / G`` consecutive images,
each with its own mean and variance (ghost BatchNorm), or, with a ``reducer``, as one run whose
statistics are summed over the processes of its group (synchronised BatchNorm). Either way the
statistics group is a fixed number of images, whatever the number of processes; see
:mod:`cacl_dist.distributed.bn_groups` for how a group size becomes ``G`` or a process subgroup, and
docs/method.md section 1 for the formulas.

This module does not import ``torch.distributed``: a reducer is any object with ``size`` (processes
in the group) and ``all_reduce(tensor)`` (an in-place sum over them), so the same code runs on gloo,
NCCL, or without any process group.

Running statistics follow the DataParallel rule: they are updated from the statistics of the
process's first group only. On rank 0 that is group 0 of the global batch (the first ``g`` images),
so rank 0 holds the same running statistics on any number of processes; the trainer copies them to
the other ranks before evaluating (:func:`cacl_dist.distributed.bn_groups.broadcast_bn_buffers`).
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

#: The BatchNorm layers :func:`convert_to_group_bn` replaces (public classes only).
PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class GroupReducer(Protocol):
    """What a synchronised group needs from the processes that share it."""

    size: int
    """Number of processes in the group (each holds the same number of images)."""

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Replace `tensor` in place by its sum over the processes of the group."""


def _group_dims(ndim: int) -> tuple[int, ...]:
    """The dimensions of a ``(G, m, C, *spatial)`` view that one group's statistics reduce over."""
    return (1, *range(3, ndim))


def _per_channel(stat_GC: torch.Tensor, ndim: int) -> torch.Tensor:
    """``(G, C)`` statistics shaped to broadcast against a ``(G, m, C, *spatial)`` view."""
    return stat_GC.reshape(stat_GC.shape[0], 1, stat_GC.shape[1], *([1] * (ndim - 3)))


class _GroupBatchNormFn(torch.autograd.Function):
    """Normalise each group of a ``(G, m, C, *spatial)`` view with its own statistics.

    Per-group means, variances and gradient sums are plain reductions over each group's images and
    pixels (``torch.var_mean`` and ``sum``: public operations that compute the same on every device,
    in any memory format). With a reducer (``G == 1``), the per-channel count, sum and sum of
    squares are summed over the group's processes in the forward (in float64, from each process's
    mean and variance, so the variance does not lose digits to the mean), and the per-channel sums
    of ``dy`` and ``dy * xhat`` in the backward. Returns ``(y, mean_GC, var_GC)``: the output in the
    input's dtype and the float32 group statistics (biased variance), the latter without gradient.
    """

    @staticmethod
    def forward(ctx, x_G, weight, bias, eps: float, reducer):
        groups, channels, ndim = x_G.shape[0], x_G.shape[2], x_G.dim()
        x32 = x_G.float()
        var_GC, mean_GC = torch.var_mean(x32, dim=_group_dims(ndim), correction=0)
        count = x_G.numel() // (groups * channels)
        if reducer is not None:
            assert groups == 1, "a synchronised group is the whole per-process batch"
            n = float(count)
            mean64, var64 = mean_GC[0].double(), var_GC[0].double()
            sums = torch.cat([mean64.new_full((1,), n), n * mean64, n * (var64 + mean64 * mean64)])
            reducer.all_reduce(sums)
            total = sums[0]
            mean64 = sums[1:1 + channels] / total
            var64 = (sums[1 + channels:] / total - mean64 * mean64).clamp_min(0.0)
            mean_GC, var_GC = mean64.float()[None], var64.float()[None]
            count = count * reducer.size
        invstd_GC = torch.rsqrt(var_GC + eps)
        scale_GC = invstd_GC if weight is None else invstd_GC * weight.float()
        shift_GC = -mean_GC * scale_GC
        if bias is not None:
            shift_GC = shift_GC + bias.float()
        y_G = torch.addcmul(_per_channel(shift_GC, ndim), x32, _per_channel(scale_GC, ndim)).to(x_G.dtype)
        ctx.save_for_backward(x_G, weight, mean_GC, invstd_GC)
        ctx.count, ctx.reducer, ctx.eps = count, reducer, eps
        ctx.mark_non_differentiable(mean_GC, var_GC)
        return y_G, mean_GC, var_GC

    @staticmethod
    @once_differentiable
    def backward(ctx, dy_G, _grad_mean, _grad_var):
        x_G, weight, mean_GC, invstd_GC = ctx.saved_tensors
        ndim, dims = x_G.dim(), _group_dims(x_G.dim())
        x32, dy32 = x_G.float(), dy_G.float()
        # the two per-group sums: sum(dy) and sum(dy * xhat) = invstd * sum(dy * (x - mean))
        sum_dy_GC = dy32.sum(dims)
        centred = x32 - _per_channel(mean_GC, ndim)
        sum_dy_xhat_GC = centred.mul_(dy32).sum(dims) * invstd_GC
        del centred
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[1]:
            grad_weight = sum_dy_xhat_GC.sum(0).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_bias = sum_dy_GC.sum(0).to(dy_G.dtype)
        if ctx.reducer is not None:  # the input gradient needs the sums of the whole group
            both = torch.cat([sum_dy_GC, sum_dy_xhat_GC], dim=1)
            ctx.reducer.all_reduce(both)
            sum_dy_GC, sum_dy_xhat_GC = both.chunk(2, dim=1)
        # grad_x = scale * (dy - mean(dy) - xhat * mean(dy * xhat)), xhat = (x - mean) * invstd,
        # written as scale * dy + slope * x + offset: two fused passes over the batch
        scale_GC = invstd_GC if weight is None else invstd_GC * weight.float()
        slope_GC = -scale_GC * invstd_GC * (sum_dy_xhat_GC / ctx.count)
        offset_GC = -scale_GC * (sum_dy_GC / ctx.count) - slope_GC * mean_GC
        grad_x = torch.addcmul(_per_channel(offset_GC, ndim), x32, _per_channel(slope_GC, ndim))
        grad_x.addcmul_(dy32, _per_channel(scale_GC, ndim))
        return grad_x.to(x_G.dtype), grad_weight, grad_bias, None, None


def _group_batch_norm_synced(x_G, weight, bias, eps, reducer):
    """The synchronised path, kept out of torch.compile graphs (it calls collectives)."""
    return _GroupBatchNormFn.apply(x_G, weight, bias, eps, reducer)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "disable"):
    _group_batch_norm_synced = torch.compiler.disable(_group_batch_norm_synced)


class GroupBatchNorm(nn.BatchNorm2d):
    """BatchNorm (1d or 2d input) with training statistics over groups of a fixed number of images.

    Args:
        groups_per_process: in training, the per-process batch is split into this many runs of
            consecutive images, each normalised with its own statistics (1: the whole batch).
        reducer: an object summing tensors over the processes of one group (see
            :class:`GroupReducer`), or None. With a reducer ``groups_per_process`` must be 1.

    The parameters, buffers and state-dict keys are those of ``nn.BatchNorm1d/2d``. In eval mode,
    or in training with one unsynchronised group, it is plain BatchNorm. It is an ``nn.BatchNorm2d``
    (so code that looks for BatchNorm layers finds it) whose own forward also takes ``B x C`` input;
    every path goes through public functions (``F.batch_norm`` and the group function above).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, groups_per_process: int = 1,
                 reducer: GroupReducer | None = None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        if groups_per_process < 1:
            raise ValueError(f"groups_per_process must be at least 1, got {groups_per_process}")
        if reducer is not None and groups_per_process != 1:
            raise ValueError("a synchronised BatchNorm group takes the whole per-process batch; "
                             f"got groups_per_process={groups_per_process} with a reducer")
        self.groups_per_process = int(groups_per_process)
        self.reducer = reducer

    def _grouped(self) -> bool:
        return self.training and (self.groups_per_process > 1 or self.reducer is not None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` (``B x C`` or ``B x C x H x W``); group statistics in training, running ones in eval."""
        if x.dim() < 2:
            raise ValueError(f"GroupBatchNorm expects a batch of shape (B, C, ...), got {tuple(x.shape)}")
        if not self._grouped():
            return self._plain(x)
        groups = self.groups_per_process
        if x.shape[0] % groups:
            raise ValueError(f"a batch of {x.shape[0]} images does not split into {groups} BatchNorm groups "
                             "(model.bn_group_size); every training step must feed the per-process batch")
        x_G = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
        if self.reducer is None:
            y_G, mean_GC, var_GC = _GroupBatchNormFn.apply(x_G, self.weight, self.bias, self.eps, None)
            count = x_G[0].numel() // x.shape[1]
        else:
            y_G, mean_GC, var_GC = _group_batch_norm_synced(x_G, self.weight, self.bias, self.eps, self.reducer)
            count = x_G.numel() // x.shape[1] * self.reducer.size
        if self.track_running_stats:
            self._update_running_stats(mean_GC[0], var_GC[0], count)
        return y_G.reshape(x.shape)

    def _plain(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.BatchNorm`` semantics: batch statistics in training (or without running ones), else running ones."""
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        keep_running = not self.training or self.track_running_stats
        return F.batch_norm(x, self.running_mean if keep_running else None, self.running_var if keep_running else None,
                            self.weight, self.bias, use_batch, factor, self.eps)

    @torch.no_grad()
    def _update_running_stats(self, mean_C: torch.Tensor, var_C: torch.Tensor, count: int) -> None:
        """Move the running statistics towards the first group's mean and unbiased variance."""
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average, as nn.BatchNorm does
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        unbiased = var_C * (count / max(count - 1, 1))
        self.running_mean.mul_(1.0 - factor).add_(mean_C.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)

    def extra_repr(self) -> str:
        synced = "" if self.reducer is None else f", synchronised over {self.reducer.size} processes"
        return f"{super().extra_repr()}, groups_per_process={self.groups_per_process}{synced}"


def convert_to_group_bn(module: nn.Module, groups_per_process: int, reducer: GroupReducer | None) -> nn.Module:
    """Replace every BatchNorm layer of `module` by a :class:`GroupBatchNorm` with the same tensors.

    The new layers share the old ones' parameters (frozen ones stay frozen) and buffers, so the
    optimiser, state dicts and checkpoints see no difference. Returns the converted module (a
    new object when `module` itself is a BatchNorm layer).
    """
    converted = module
    if isinstance(module, PLAIN_BATCH_NORMS) and not isinstance(module, GroupBatchNorm):
        converted = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats, groups_per_process, reducer)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_to_group_bn(child, groups_per_process, reducer))
    return converted


__all__ = ["PLAIN_BATCH_NORMS", "GroupBatchNorm", "GroupReducer", "convert_to_group_bn"]

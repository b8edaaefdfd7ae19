"""BatchNorm statistics groups of a fixed size, realised on this world size.

``model.bn_group_size`` = g images per statistics group; each process holds ``b = B / W`` images of
the global batch B. Groups are runs of g consecutive images of the global batch, so they hold
whole identity blocks of the sampler when K divides g. On W processes:

- ``b > g``: ghost BatchNorm, ``b / g`` groups inside each process;
- ``b == g``: plain BatchNorm, one group per process;
- ``b < g``: synchronised BatchNorm over ``g / b`` consecutive ranks (a process subgroup);
- ``g == 0``: whatever each process holds (statistics change with W).

``model.sync_bn`` puts every rank into one group (the global batch). :func:`bn_group_layout` is
plain arithmetic (its ValueError is the one start-up line for a group that does not fit the
world size); :func:`group_reducer` creates the process subgroups and :func:`broadcast_bn_buffers`
copies rank 0's running statistics to every rank (both collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cacl_dist.distributed.group_bn import PLAIN_BATCH_NORMS


@dataclass(frozen=True)
class BNGroupLayout:
    """How the BatchNorm statistics group of a recipe is realised on `world_size` processes."""

    group_size: int
    """Images per statistics group (0: each process's batch)."""
    per_process: int
    """Images per process and step, b."""
    world_size: int
    """Number of processes, W."""
    groups_per_process: int = 1
    """Ghost groups inside one process (1: none)."""
    ranks_per_group: int = 1
    """Consecutive ranks whose statistics are summed (1: none)."""

    @property
    def mode(self) -> str:
        """'per-process', 'ghost', 'plain' or 'synced'."""
        if self.group_size == 0:
            return "per-process"
        if self.groups_per_process > 1:
            return "ghost"
        return "synced" if self.ranks_per_group > 1 else "plain"

    @property
    def converts(self) -> bool:
        """Whether the model's BatchNorm layers are replaced (ghost or synchronised groups)."""
        return self.mode in ("ghost", "synced")

    def group_ranks(self, rank: int) -> range:
        """The ranks that share `rank`'s statistics group."""
        start = rank - rank % self.ranks_per_group
        return range(start, start + self.ranks_per_group)

    def describe(self) -> str:
        """One log line: the group and how this world size realises it."""
        processes = "1 process" if self.world_size == 1 else f"{self.world_size} processes"
        per = f"{self.per_process} images per process on {processes}"
        if self.mode == "per-process":
            return (f"BatchNorm statistics over each process's batch ({per}; model.bn_group_size 0): they change "
                    "with the number of processes; set model.bn_group_size to fix them")
        how = {"ghost": f"ghost BatchNorm, {self.groups_per_process} groups per process",
               "plain": "plain BatchNorm, one group per process",
               "synced": f"synchronised over {self.ranks_per_group} consecutive ranks"}[self.mode]
        return f"BatchNorm statistics over groups of {self.group_size} images ({per}): {how}"


def bn_group_layout(group_size: int, global_batch: int, world_size: int, sync_bn: bool = False) -> BNGroupLayout:
    """The layout of `group_size` images per group for `global_batch` split over `world_size` processes.

    ``sync_bn`` makes the whole global batch one group. Raises ValueError (one line naming the keys)
    when neither the per-process batch nor the group divides the other.
    """
    if world_size < 1 or global_batch % world_size:
        raise ValueError(f"train.batch_size {global_batch} does not split over {world_size} processes; "
                         "choose a multiple of the number of processes")
    per_process = global_batch // world_size
    if sync_bn:
        return BNGroupLayout(global_batch, per_process, world_size, ranks_per_group=world_size)
    if group_size == 0:
        return BNGroupLayout(0, per_process, world_size)
    if per_process % group_size == 0:
        return BNGroupLayout(group_size, per_process, world_size, groups_per_process=per_process // group_size)
    if group_size % per_process == 0 and world_size % (group_size // per_process) == 0:
        return BNGroupLayout(group_size, per_process, world_size, ranks_per_group=group_size // per_process)
    raise ValueError(
        f"model.bn_group_size {group_size} does not fit {per_process} images per process (train.batch_size "
        f"{global_batch} on {world_size} processes): one must divide the other; change the process count or "
        "train.batch_size")


class ProcessGroupSum:
    """Sums tensors over one torch.distributed process group (a :class:`GroupReducer`)."""

    def __init__(self, group, size: int):
        self.group, self.size = group, int(size)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Replace `tensor` in place by its sum over the group (CUDA tensors on NCCL, CPU ones on gloo)."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.group)


def group_reducer(layout: BNGroupLayout, rank: int) -> ProcessGroupSum | None:
    """The reducer of `rank`'s synchronised group, or None when groups are not synchronised.

    Collective: every rank must call it (each subgroup is created by all ranks, in order).
    """
    if layout.ranks_per_group <= 1:
        return None
    if layout.ranks_per_group == layout.world_size:
        return ProcessGroupSum(dist.group.WORLD, layout.world_size)
    mine = None
    for start in range(0, layout.world_size, layout.ranks_per_group):
        ranks = list(range(start, start + layout.ranks_per_group))
        group = dist.new_group(ranks)
        if rank in ranks:
            mine = group
    assert mine is not None
    return ProcessGroupSum(mine, layout.ranks_per_group)


def _running_stats(model: nn.Module) -> list[torch.Tensor]:
    return [buf for module in model.modules() if isinstance(module, PLAIN_BATCH_NORMS) and module.track_running_stats
            for buf in (module.running_mean, module.running_var)]


def broadcast_bn_buffers(model: nn.Module) -> None:
    """Copy rank 0's BatchNorm running statistics into every rank's `model` (one broadcast; no-op alone).

    Rank 0 holds the statistics of the global batch's first group, the ones a single process
    would hold; the others may hold their own group's last update.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    buffers = _running_stats(model)
    if not buffers:
        return
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flat = torch.cat([buf.detach().reshape(-1).to(device, torch.float32) for buf in buffers])
    dist.broadcast(flat, src=0)
    offset = 0
    for buf in buffers:
        buf.copy_(flat[offset:offset + buf.numel()].view_as(buf))
        offset += buf.numel()


__all__ = ["BNGroupLayout", "ProcessGroupSum", "bn_group_layout", "broadcast_bn_buffers", "group_reducer"]

"""One epoch's global batches as one rank uses them: host and device indices, seeds, its share.

Every rank plans the same global batches (see :mod:`cacl_dist.data.sampler`), so each rank
knows the dataset indices of the whole global batch without asking the others. The training
step uses the device copy to update the memory banks without gathering indices; the host copy
tells the bank update how often an index repeats in a batch, so the update never reads device
tensors back; the input pipeline loads this rank's share of every batch, in plan order, with
the augmentation seeds the plan gave each sample.

:func:`plan_epoch` is the one way to make a plan from pseudo labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cacl_dist.data.sampler import GlobalBatches, IdentitySampler, rank_share


@dataclass(frozen=True)
class EpochPlan:
    """The global batches of one epoch and this rank's share of each.

    ``indices`` and ``aug_seeds`` are (iters x B) on the host, ``indices_dev`` the same indices on
    the training device, ``max_repeats`` (iters,) the largest number of times one index occurs in
    each batch, and ``local_columns`` this rank's contiguous columns of every batch.
    """

    indices: np.ndarray
    aug_seeds: np.ndarray
    indices_dev: torch.Tensor
    max_repeats: np.ndarray
    local_columns: slice

    @classmethod
    def build(cls, plan: GlobalBatches, rank: int, world_size: int,
              device: torch.device | str = "cpu") -> EpochPlan:
        """The plan of ``rank`` of ``world_size`` (ValueError when the batch does not split evenly)."""
        indices = plan.indices
        local_columns = rank_share(int(indices.shape[1]), rank, world_size)
        max_repeats = np.array([np.unique(row, return_counts=True)[1].max() if row.size else 0 for row in indices],
                               dtype=np.int64)
        return cls(indices, plan.aug_seeds, torch.from_numpy(indices).to(device), max_repeats, local_columns)

    @property
    def num_iters(self) -> int:
        """Number of global batches (training steps) in the epoch."""
        return int(self.indices.shape[0])

    @property
    def local_indices(self) -> np.ndarray:
        """This rank's dataset indices of every batch, (iters x B / world_size)."""
        return self.indices[:, self.local_columns]

    @property
    def local_seeds(self) -> np.ndarray:
        """This rank's augmentation seeds of every batch, (iters x B / world_size)."""
        return self.aug_seeds[:, self.local_columns]


def plan_epoch(labels: np.ndarray, camids: np.ndarray | None, *, epoch: int, num_iters: int, batch_size: int,
               num_instances: int, seed: int, num_clusters: int, rank: int = 0, world_size: int = 1,
               device: torch.device | str = "cpu", sampler: str = "cacl") -> EpochPlan:
    """The identity sampler's plan of ``epoch`` under the pseudo ``labels``, for ``rank``.

    ``sampler`` is the sampling policy (:class:`~cacl_dist.data.sampler.IdentitySampler`).

    Raises ValueError when a planned image has a label outside ``[0, num_clusters)``, so the
    training steps can skip that check.
    """
    plan = IdentitySampler(labels, camids, batch_size, num_instances, seed, sampler).plan(epoch, num_iters)
    planned = np.asarray(labels)[plan.indices]
    if planned.size and (planned.min() < 0 or planned.max() >= num_clusters):
        raise ValueError(f"epoch {epoch + 1} plans images whose pseudo labels lie outside [0, {num_clusters}); "
                         "the labels and the cluster centres disagree")
    return EpochPlan.build(plan, rank, world_size, device)


def check_batch_order(indices: torch.Tensor, expected: np.ndarray) -> None:
    """Raise RuntimeError unless the loader's ``indices`` equal ``expected`` (reads them back)."""
    if not np.array_equal(indices.cpu().numpy(), expected):
        raise RuntimeError("the input pipeline delivered a batch that differs from this rank's slice of the "
                           "epoch plan; the memory-bank update relies on the plan's order")


__all__ = ["EpochPlan", "check_batch_order", "plan_epoch"]

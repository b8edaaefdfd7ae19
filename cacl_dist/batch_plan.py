"""The epoch's global batches as the training step sees them: indices on host and device.

Every rank plans the same global batches (see ``data/sampler.py``), so each rank knows the
dataset indices of the whole global batch without asking the others. The step uses that to
update the memory banks without gathering indices, and the host copy tells the bank update how
many times an index repeats in a batch, so the update never reads device tensors back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .data.factory import camera_ids
from .data.layouts import ReidDataset
from .data.sampler import IdentitySampler


@dataclass
class GlobalBatches:
    """One epoch's plan: ``indices`` (iters x B) on the host, ``indices_dev`` on the device, and
    ``max_repeats`` (iters,), the largest number of times one index occurs in each batch."""

    indices: np.ndarray
    indices_dev: torch.Tensor
    max_repeats: np.ndarray


def plan_global_batches(labels: np.ndarray, dataset: ReidDataset, *, epoch: int, num_iters: int, batch_size: int,
                        num_instances: int, seed: int, num_clusters: int, device: torch.device) -> GlobalBatches:
    """The same plan the epoch loader reads (same sampler, same seed); labels checked once here.

    Raises ValueError when a planned image has a label outside ``[0, num_clusters)``, so the
    steps can skip that check.
    """
    sampler = IdentitySampler(labels, camera_ids(dataset), batch_size, num_instances, seed)
    indices = sampler.plan(epoch, num_iters).indices
    planned = labels[indices]
    if planned.size and (planned.min() < 0 or planned.max() >= num_clusters):
        raise ValueError(f"epoch {epoch + 1} plans images whose pseudo labels lie outside [0, {num_clusters}); "
                         "the labels and the cluster centres disagree")
    max_repeats = np.array([np.unique(row, return_counts=True)[1].max() if row.size else 0 for row in indices],
                           dtype=np.int64)
    return GlobalBatches(indices, torch.from_numpy(indices).to(device), max_repeats)


def check_batch_order(indices: torch.Tensor, expected: np.ndarray, force: bool = False) -> None:
    """Raise RuntimeError unless the loader's indices equal this rank's slice of the plan.

    Checked when the indices are on the CPU (free) or when ``force`` is set (reads them back).
    """
    if indices.device.type == "cpu" or force:
        if not np.array_equal(indices.cpu().numpy(), expected):
            raise RuntimeError("the input pipeline delivered a batch that differs from this rank's slice of the "
                               "epoch plan; the memory-bank update relies on the plan's order")


__all__ = ["GlobalBatches", "check_batch_order", "plan_global_batches"]

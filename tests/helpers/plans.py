"""Epoch-plan helpers for the data tests."""

from __future__ import annotations

import numpy as np

from cacl_dist.data.sampler import rank_share


def rank_slice(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The share of ``rank`` along the last axis of ``batch`` (a global batch of size B)."""
    return batch[..., rank_share(batch.shape[-1], rank, world_size)]

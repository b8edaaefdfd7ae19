"""Dense views of the sparse clustering outputs, for comparison with the dense reference."""

from __future__ import annotations

import numpy as np


def dense_from_pairs(rows, cols, dists, num_points: int) -> np.ndarray:
    """(N, N) float64 matrix with the pairs filled in, 1 elsewhere and 0 on the diagonal."""
    out = np.ones((num_points, num_points))
    out[rows.cpu().numpy(), cols.cpu().numpy()] = dists.cpu().numpy()
    np.fill_diagonal(out, 0.0)
    return out


def knn_topk(feats_ND, k: int, block_size=None, precision: str = "auto", margin: int = 32, device=None) -> tuple:
    """The package's neighbour search (:func:`~cacl_dist.clustering.knn.knn_topk_unit`) on plain features:
    numpy or torch (N, D), L2-normalised here, on `device` (default: the input's)."""
    from cacl_dist.clustering.knn import knn_topk_unit
    from cacl_dist.clustering.unit_rows import UnitRows

    return knn_topk_unit(UnitRows(feats_ND, device), k, block_size, precision, margin)

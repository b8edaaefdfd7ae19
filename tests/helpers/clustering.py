"""Dense views of the sparse clustering outputs, for comparison with the dense reference."""

from __future__ import annotations

import numpy as np


def dense_from_pairs(rows, cols, dists, num_points: int) -> np.ndarray:
    """(N, N) float64 matrix with the pairs filled in, 1 elsewhere and 0 on the diagonal."""
    out = np.ones((num_points, num_points))
    out[rows.cpu().numpy(), cols.cpu().numpy()] = dists.cpu().numpy()
    np.fill_diagonal(out, 0.0)
    return out

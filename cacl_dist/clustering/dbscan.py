"""DBSCAN on a precomputed distance matrix, scikit-learn backend (docs/method.md section 4.2).

Core points have at least ``min_samples`` points (themselves included, since d_ii = 0) within
distance ``eps`` (inclusive). Clusters are the connected components of core points; a border
point joins the cluster of a core point within ``eps``; everything else is an outlier (-1).
"""

import numpy as np
import torch
from sklearn.cluster import DBSCAN


def as_distance_matrix(dist, name: str = "dist") -> np.ndarray:
    """Return ``dist`` (numpy array or torch tensor) as a numpy array after validating it.

    The matrix must be square, finite and non-negative; otherwise ValueError.
    """
    if isinstance(dist, torch.Tensor):
        dist = dist.detach().cpu().numpy()
    dist = np.asarray(dist)
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(
            f"{name} must be a square (N, N) distance matrix, got shape {dist.shape}; "
            "pass the pairwise distances between all N points."
        )
    if not np.issubdtype(dist.dtype, np.floating):
        dist = dist.astype(np.float64)
    if not np.all(np.isfinite(dist)):
        raise ValueError(f"{name} contains NaN or infinite values; fix the distance computation.")
    if dist.size and dist.min() < 0:
        raise ValueError(
            f"{name} has negative entries (min {float(dist.min())}); distances must be >= 0."
        )
    return dist


def dbscan_precomputed(dist, eps: float, min_samples: int) -> np.ndarray:
    """Cluster N points from their (N, N) distance matrix; return int64 labels, -1 = outlier.

    Args:
        dist: square, finite, non-negative distances with a zero diagonal.
        eps: neighbourhood radius (a pair at distance exactly ``eps`` are neighbours).
        min_samples: neighbours (the point itself included) needed to be a core point.
    """
    dist = as_distance_matrix(dist)
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}.")
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)):
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}.")
    if min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}.")
    if dist.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    model = DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed")
    return model.fit_predict(dist).astype(np.int64)

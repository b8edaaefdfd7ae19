"""DBSCAN on a sparse radius graph in torch (CPU or CUDA), equal to scikit-learn's result.

The graph is a symmetric edge list (rows, cols, dists) without self pairs; a pair that is not
listed is farther than ``eps``. As in :func:`~cacl_dist.clustering.dbscan.dbscan_precomputed`:

- a point counts itself, so it is core when ``1 + #{j : d_ij <= eps} >= min_samples``;
- clusters are the connected components of core points over edges with d <= eps, found by
  vectorised hooking (every edge pulls the larger of its two labels down to the smaller) and
  pointer jumping, repeated until every core edge joins equal labels;
- clusters are numbered by their smallest core index, which is the order scikit-learn's scan
  (points in ascending index, a depth-first search from each unlabelled core point) starts
  them;
- a border point (not core, within eps of a core point) takes the smallest cluster number
  among its core neighbours. This is exactly scikit-learn's choice for a border point that
  touches several clusters: its search finishes one cluster before starting the next, and the
  first search to reach the point labels it. The result is identical to scikit-learn's, ties
  included, whenever the distances are symmetric.

``dists <= eps`` is evaluated in the dtype of ``dists`` (scikit-learn compares a float32
matrix with eps in float32), so pass the float32 distances to reproduce the reference.
"""

import numpy as np
import torch


def _check(rows, cols, dists, num_points, eps, min_samples) -> None:
    """Raise ValueError for unusable inputs, naming the bad value."""
    if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 0:
        raise ValueError(f"num_points must be a non-negative integer, got {num_points!r}.")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a positive finite number, got {eps!r}.")
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)) or min_samples < 1:
        raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}.")
    if not (rows.shape == cols.shape == dists.shape) or rows.ndim != 1:
        raise ValueError(
            f"rows, cols and dists must be 1-D of equal length, got shapes {tuple(rows.shape)}, "
            f"{tuple(cols.shape)} and {tuple(dists.shape)}."
        )
    if rows.numel() and (int(rows.min()) < 0 or int(max(rows.max(), cols.max())) >= num_points
                         or int(cols.min()) < 0):
        raise ValueError(f"edge indices must lie in [0, {num_points}); got an index outside it.")


def connected_components(rows: torch.Tensor, cols: torch.Tensor, num_points: int) -> torch.Tensor:
    """Return, for every point, the smallest point index of its connected component.

    ``rows``/``cols`` is an undirected edge list (each edge may appear once or in both
    directions). Vectorised: hooking with ``scatter_reduce(amin)`` plus pointer jumping.
    """
    parent = torch.arange(num_points, device=rows.device)
    if rows.numel() == 0:
        return parent
    while True:
        pu, pv = parent[rows], parent[cols]
        differ = pu != pv
        if not bool(differ.any()):
            return parent
        low, high = torch.minimum(pu, pv)[differ], torch.maximum(pu, pv)[differ]
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:  # pointer jumping until every point points at a root
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand


def dbscan_sparse(rows, cols, dists, num_points: int, eps: float, min_samples: int) -> torch.Tensor:
    """Cluster ``num_points`` points from a sparse symmetric distance graph.

    Args:
        rows, cols, dists: 1-D tensors (or arrays) of the listed pairs i != j and their
            distances; unlisted pairs count as farther than ``eps``.
        num_points: N.
        eps: neighbourhood radius (inclusive), compared in the dtype of ``dists``.
        min_samples: neighbours needed to be core, the point itself included.

    Returns:
        (N,) int64 labels on the device of ``rows``: 0..m-1 numbered by smallest core index,
        -1 for outliers; equal to scikit-learn's DBSCAN on the dense matrix.
    """
    rows, cols, dists = (torch.as_tensor(t) for t in (rows, cols, dists))
    _check(rows, cols, dists, num_points, eps, min_samples)
    device = rows.device
    if not torch.is_floating_point(dists):
        dists = dists.to(torch.float64)
    within = dists <= torch.tensor(eps, dtype=dists.dtype, device=dists.device)
    rows, cols = rows[within].long(), cols[within].long()
    degree = 1 + torch.bincount(rows, minlength=num_points)
    core = degree >= min_samples
    labels = torch.full((num_points,), -1, dtype=torch.int64, device=device)
    if not bool(core.any()):
        return labels
    core_edge = core[rows] & core[cols]
    root = connected_components(rows[core_edge], cols[core_edge], num_points)
    roots = torch.unique(root[core])  # ascending smallest core index = scikit-learn's order
    cluster_of_root = torch.full((num_points,), -1, dtype=torch.int64, device=device)
    cluster_of_root[roots] = torch.arange(roots.numel(), device=device)
    labels[core] = cluster_of_root[root[core]]
    border_edge = core[rows] & ~core[cols]
    border = torch.full((num_points,), num_points, dtype=torch.int64, device=device)
    border.scatter_reduce_(0, cols[border_edge], labels[rows[border_edge]], reduce="amin")
    reached = (~core) & (border < num_points)
    labels[reached] = border[reached]
    return labels

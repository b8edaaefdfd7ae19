"""Cluster refinement by over-segmentation from a dense distance matrix (docs/method.md section 4.3).

A raw DBSCAN cluster C is compared with a tighter DBSCAN of the same points: its sub-clusters
are its intersections with the tight clusters, each tight outlier being a sub-cluster of its
own. The rules (``ClusterParams.refine_score``: ``official``, ``paper``, ``paper_all``) are
stated in :mod:`cacl_dist.clustering.refine_rules`, which takes the decisions; this module
computes the per-point distance sums they read, row by row from the matrix. Kept points keep
their raw cluster id; removed points and raw outliers are labelled -1.
"""

import numpy as np
import torch

from cacl_dist.clustering.dbscan import as_distance_matrix
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.refine_rules import SUMS, LabelSets, decide, refine_groups

ROW_BLOCK = 256
"""Rows of the matrix handled at once (a few ROW_BLOCK x N float64 temporaries)."""


def _as_labels(labels, name: str, num_points: int) -> np.ndarray:
    """Return ``labels`` as an int64 vector of length ``num_points``; ValueError otherwise."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != num_points:
        raise ValueError(
            f"{name} must be a 1-D vector with one label per point ({num_points}), "
            f"got shape {array.shape}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if array.size and array.min() < -1:
        raise ValueError(f"{name} may use -1 for outliers but no other negative label.")
    return array


def dense_point_sums(dist: np.ndarray, labels: LabelSets, rows: np.ndarray) -> dict:
    """The sums of :data:`~cacl_dist.clustering.refine_rules.SUMS` for the points ``rows``.

    Returns ``{name: (values, listed)}``, (N,) float64 tensors, zero outside ``rows``: for each
    row i, the entries d_ik (k != i) of the selection that are not exactly 1, added in
    increasing k (a running sum, as an index-add over a row-sorted pair list adds them), and
    their number.
    """
    num_points = dist.shape[0]
    graw, gtight = labels.graw.numpy(), labels.gtight.numpy()
    out = {name: (np.zeros(num_points), np.zeros(num_points)) for name in SUMS}
    columns = np.arange(num_points)
    for lo in range(0, rows.size, ROW_BLOCK):
        block_rows = rows[lo:lo + ROW_BLOCK]
        block = np.asarray(dist[block_rows], dtype=np.float64)
        listed = (block != 1.0) & (columns[None, :] != block_rows[:, None])
        same_raw = graw[block_rows, None] == graw[None, :]
        same_tight = gtight[block_rows, None] == gtight[None, :]
        selections = {"cluster": same_raw, "cross": same_raw & ~same_tight, "partner": same_raw ^ same_tight}
        for name in SUMS:
            chosen = selections[name] & listed
            out[name][0][block_rows] = np.cumsum(np.where(chosen, block, 0.0), axis=1)[:, -1]
            out[name][1][block_rows] = chosen.sum(axis=1)
    return {name: (torch.from_numpy(values), torch.from_numpy(listed)) for name, (values, listed) in out.items()}


def refine_clusters(dist, raw_labels, tight_labels, params: ClusterParams = ClusterParams()) -> tuple:
    """Remove poorly attached sub-clusters (paper rules) or points (``official``) from the raw clusters.

    Args:
        dist: (N, N) distance matrix the clusters were computed from (its diagonal is not read).
        raw_labels: (N,) DBSCAN labels at ``eps``, -1 for outliers.
        tight_labels: (N,) DBSCAN labels at ``eps_tight`` (< eps), -1 for outliers.
        params: ``refine_score`` (and ``ratio_cluster`` for ``official``), see
            :mod:`cacl_dist.clustering.refine_rules`.

    Returns:
        (refined_labels, num_removed): int64 labels where kept points carry their raw cluster
        id and removed points and raw outliers carry -1; num_removed counts the points that
        refinement took out of raw clusters (raw outliers not included).
    """
    dist = as_distance_matrix(dist)
    num_points = dist.shape[0]
    raw = torch.from_numpy(_as_labels(raw_labels, "raw_labels", num_points))
    tight = torch.from_numpy(_as_labels(tight_labels, "tight_labels", num_points))
    if num_points == 0 or not bool((raw >= 0).any()):
        return raw.numpy().copy(), 0
    rows = np.flatnonzero(refine_groups(raw, tight, params).numpy() >= 0)
    sums = dense_point_sums(dist, LabelSets.build(raw, tight), rows)
    return decide(raw, tight, sums, params)

"""Cluster refinement by over-segmentation (docs/method.md section 4.3).

A raw DBSCAN cluster C is split into sub-clusters by a tighter DBSCAN: the intersections of C
with the tight clusters, plus one sub-cluster per point of C that is a tight outlier. Each
sub-cluster C_j is kept in C or removed from it by comparing how far it lies from the rest of
C with the average spread of C:

- D(C): mean distance over the ordered pairs (a, b) of C.
- D(C_j | C): mean distance from the members of C_j to the members of C outside C_j.

Two scoring rules are offered (``ClusterParams.refine_score``):

- ``"paper"``: D(C) averages the |C| (|C| - 1) pairs with a != b; keep C_j iff
  D(C_j | C) < D(C).
- ``"official"`` (the authors' released code): D(C) divides the full |C|^2 sum (diagonal
  included) by |C|^2; score = D(C_j | C) * |C_j| / |C \\ C_j|; keep C_j iff score <= D(C).

A raw cluster made of a single sub-cluster is kept whole. Kept points keep their raw cluster
id; removed points and raw outliers are labelled -1.
"""

import numpy as np

from cacl_dist.clustering.dbscan import as_distance_matrix
from cacl_dist.clustering.params import ClusterParams


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


def sub_clusters(members: np.ndarray, tight_labels: np.ndarray) -> list:
    """Split the point indices ``members`` of one raw cluster into its sub-clusters.

    Members sharing a tight cluster form one sub-cluster; every member that is a tight
    outlier (-1) is a sub-cluster of its own. Returns a list of index arrays, ordered by the
    first member of each sub-cluster.
    """
    groups = {}
    for point in members:
        tight = int(tight_labels[point])
        key = ("outlier", int(point)) if tight == -1 else ("tight", tight)
        groups.setdefault(key, []).append(int(point))
    return [np.array(group, dtype=np.int64) for group in groups.values()]


def cluster_spread(dist: np.ndarray, members: np.ndarray, score: str) -> float:
    """Return D(C) for the cluster ``members`` under the given scoring rule."""
    block = np.asarray(dist[np.ix_(members, members)], dtype=np.float64)
    size = members.size
    if score == "paper":
        off_diagonal_sum = block.sum() - np.trace(block)
        return float(off_diagonal_sum / (size * (size - 1)))
    return float(block.sum() / (size * size))


def keep_sub_cluster(
    dist: np.ndarray, part: np.ndarray, rest: np.ndarray, spread: float, score: str
) -> bool:
    """Decide whether sub-cluster ``part`` stays in its cluster (``rest`` = C minus part)."""
    separation = float(np.asarray(dist[np.ix_(part, rest)], dtype=np.float64).mean())
    if score == "paper":
        return separation < spread
    official_score = separation * part.size / rest.size
    return official_score <= spread


def refine_clusters(dist, raw_labels, tight_labels, params: ClusterParams = ClusterParams()) -> tuple:
    """Remove poorly attached sub-clusters from every raw cluster.

    Args:
        dist: (N, N) distance matrix the clusters were computed from.
        raw_labels: (N,) DBSCAN labels at ``eps``, -1 for outliers.
        tight_labels: (N,) DBSCAN labels at ``eps_tight`` (< eps), -1 for outliers.
        params: ``params.refine_score`` is the scoring rule, see the module docstring.

    Returns:
        (refined_labels, num_removed): int64 labels where kept points carry their raw cluster
        id and removed points and raw outliers carry -1; num_removed counts the points that
        refinement took out of raw clusters (raw outliers not included).
    """
    score = params.refine_score
    dist = as_distance_matrix(dist)
    num_points = dist.shape[0]
    raw = _as_labels(raw_labels, "raw_labels", num_points)
    tight = _as_labels(tight_labels, "tight_labels", num_points)

    refined = raw.copy()
    num_removed = 0
    for cluster_id in np.unique(raw[raw >= 0]):
        members = np.flatnonzero(raw == cluster_id)
        parts = sub_clusters(members, tight)
        if len(parts) == 1:
            continue
        spread = cluster_spread(dist, members, score)
        for part in parts:
            rest = np.setdiff1d(members, part)
            assert rest.size > 0, "a cluster with several sub-clusters has points outside each"
            if not keep_sub_cluster(dist, part, rest, spread, score):
                refined[part] = -1
                num_removed += part.size
    return refined, num_removed

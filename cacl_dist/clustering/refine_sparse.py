"""Cluster refinement from a sparse distance graph (docs/method.md section 4.3), no dense blocks.

Same decisions as :func:`~cacl_dist.clustering.refine.refine_clusters`. The graph lists pairs
i != j with their distance; every pair that is not listed has distance exactly 1 (for the
Jaccard distance: the supports of V'[i] and V'[j] do not meet). The graph must list every
pair with d < 1 inside each raw cluster; pairs across raw clusters are ignored. So for a raw
cluster C with sub-clusters C_j:

- sum over ordered pairs a != b of C = (sum of listed distances inside C)
  + (|C| (|C| - 1) - number of listed pairs inside C) * 1;
- sum from C_j to C \\ C_j = (listed distances from C_j to the rest of C)
  + (|C_j| |C \\ C_j| - their number) * 1.

All sums are scatter-adds over the edge list in float64, in edge order on every device
(:func:`cacl_dist.reduce.index_add_`). The reference sums the same float32
distances in another order, so a decision can differ only when a score equals D(C) to within
float64 rounding (about 1e-16 relative).
"""

import numpy as np
import torch

from cacl_dist.clustering.params import ClusterParams
from cacl_dist.reduce import index_add_


def sub_cluster_ids(raw: torch.Tensor, tight: torch.Tensor) -> torch.Tensor:
    """Return a sub-cluster id per point: equal ids <=> same raw cluster and same tight cluster.

    A point of a raw cluster that is a tight outlier gets an id of its own; raw outliers get
    -1. Ids are 0..s-1.
    """
    num_points = raw.shape[0]
    idx = torch.arange(num_points, device=raw.device)
    span = int(tight.max()) + 2 if num_points else 1
    key = torch.where(tight >= 0, raw * span + tight, raw.max() * span + span + idx)
    key = torch.where(raw >= 0, key, torch.full_like(key, -1))
    out = torch.full_like(raw, -1)
    member = raw >= 0
    _, out[member] = torch.unique(key[member], return_inverse=True)
    return out


def refine_sparse(rows, cols, dists, raw_labels, tight_labels, params: ClusterParams = ClusterParams()) -> tuple:
    """Remove poorly attached sub-clusters from every raw cluster, from a sparse graph.

    Args:
        rows, cols, dists: listed pairs (i != j, both directions) and their distances, which
            should be the values the reference matrix holds (float32 for the Jaccard matrix);
            unlisted pairs have distance 1.
        raw_labels, tight_labels: (N,) DBSCAN labels at eps and eps_tight, -1 for outliers.
        params: ``params.refine_score`` is the scoring rule (see :mod:`cacl_dist.clustering.refine`).

    Returns:
        (refined_labels, num_removed) as :func:`~cacl_dist.clustering.refine.refine_clusters`:
        int64 labels (numpy) with removed points and raw outliers at -1, and the number of
        points refinement removed.
    """
    score = params.refine_score
    rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
    device = rows.device
    dists = torch.as_tensor(dists).to(device=device, dtype=torch.float64)
    raw = torch.as_tensor(np.asarray(raw_labels) if not isinstance(raw_labels, torch.Tensor)
                          else raw_labels).long().to(device)
    tight = torch.as_tensor(np.asarray(tight_labels) if not isinstance(tight_labels, torch.Tensor)
                            else tight_labels).long().to(device)
    if raw.ndim != 1 or tight.shape != raw.shape:
        raise ValueError(
            f"raw_labels and tight_labels must be 1-D of equal length, got shapes "
            f"{tuple(raw.shape)} and {tuple(tight.shape)}."
        )
    refined = raw.clone()
    if not bool((raw >= 0).any()):
        return refined.cpu().numpy(), 0
    num_clusters = int(raw.max()) + 1
    sub = sub_cluster_ids(raw, tight)
    num_subs = int(sub.max()) + 1
    member = raw >= 0
    cluster_size = torch.bincount(raw[member], minlength=num_clusters).to(torch.float64)
    sub_size = torch.bincount(sub[member], minlength=num_subs).to(torch.float64)
    sub_cluster = torch.zeros(num_subs, dtype=torch.int64, device=device)
    sub_cluster[sub[member]] = raw[member]
    subs_per_cluster = torch.bincount(sub_cluster, minlength=num_clusters)

    inside = (raw[rows] == raw[cols]) & (raw[rows] >= 0) & (rows != cols)
    r, c, d = rows[inside], cols[inside], dists[inside]
    pair_sum = index_add_(torch.zeros(num_clusters, dtype=torch.float64, device=device), raw[r], d)
    pair_count = torch.bincount(raw[r], minlength=num_clusters).to(torch.float64)
    cross = sub[r] != sub[c]
    cross_sum = index_add_(torch.zeros(num_subs, dtype=torch.float64, device=device), sub[r][cross], d[cross])
    cross_count = torch.bincount(sub[r][cross], minlength=num_subs).to(torch.float64)

    ordered_pairs = cluster_size * (cluster_size - 1)
    total = pair_sum + (ordered_pairs - pair_count)  # unlisted pairs add 1 each
    if score == "paper":
        spread = total / ordered_pairs.clamp(min=1)
    else:
        spread = total / (cluster_size * cluster_size)
    rest_size = cluster_size[sub_cluster] - sub_size
    cross_pairs = sub_size * rest_size
    separation = (cross_sum + (cross_pairs - cross_count)) / cross_pairs.clamp(min=1)
    if score == "paper":
        keep = separation < spread[sub_cluster]
    else:
        keep = separation * sub_size / rest_size.clamp(min=1) <= spread[sub_cluster]
    keep |= subs_per_cluster[sub_cluster] == 1  # a cluster of one sub-cluster stays whole
    removed = member & ~keep[sub.clamp(min=0)]
    refined[removed] = -1
    return refined.cpu().numpy(), int(removed.sum())

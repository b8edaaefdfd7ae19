"""Cluster refinement from a sparse distance graph (docs/method.md section 4.3), no dense blocks.

Same decisions as :func:`~cacl_dist.clustering.refine.refine_clusters`, bit for bit. The graph
lists pairs i != j with their distance; every pair that is not listed has distance exactly 1
(for the Jaccard distance: the supports of V'[i] and V'[j] do not meet). It must list every
pair with d < 1 inside each group of :func:`~cacl_dist.clustering.refine_rules.refine_groups`;
other pairs are not read.

The per-point sums of :mod:`cacl_dist.clustering.refine_rules` are scatter-adds over the pairs
sorted by row, then column, in float64 and in that order on every device
(:func:`cacl_dist.ordered_add.index_add_`): the order in which the dense path adds a matrix row. The
pairs that are not listed, and listed pairs at distance exactly 1, add 1 each, counted from the
label sizes; so the sums, and every decision, equal the dense ones.
"""

import numpy as np
import torch

from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.refine_rules import SUMS, LabelSets, decide, pair_selections
from cacl_dist.ordered_add import index_add_


def _labels_tensor(labels, device) -> torch.Tensor:
    array = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    return array.long().to(device)


def sparse_point_sums(rows, cols, dists, labels: LabelSets) -> dict:
    """The sums of :data:`~cacl_dist.clustering.refine_rules.SUMS` from the listed pairs.

    Returns ``{name: (values, listed)}``, (N,) float64 tensors: per point, the listed distances
    of the selection that are not exactly 1, added in increasing column, and their number.
    """
    num_points = labels.graw.numel()
    device = labels.graw.device
    order = torch.argsort(rows * num_points + cols)
    rows, cols, dists = rows[order], cols[order], dists[order]
    listed = (rows != cols) & (dists != 1.0)
    rows, cols, dists = rows[listed], cols[listed], dists[listed]
    out = {}
    for name, chosen in pair_selections(labels, rows, cols).items():
        values = index_add_(torch.zeros(num_points, dtype=torch.float64, device=device), rows[chosen], dists[chosen])
        out[name] = (values, torch.bincount(rows[chosen], minlength=num_points).to(torch.float64))
    assert set(out) == set(SUMS)
    return out


def refine_sparse(rows, cols, dists, raw_labels, tight_labels, params: ClusterParams = ClusterParams()) -> tuple:
    """Refinement of the raw clusters from a sparse graph; see :func:`~cacl_dist.clustering.refine.refine_clusters`.

    Args:
        rows, cols, dists: listed pairs (i != j, both directions) and their distances, which
            should be the values the reference matrix holds (float32 for the Jaccard matrix);
            unlisted pairs have distance 1.
        raw_labels, tight_labels: (N,) DBSCAN labels at eps and eps_tight, -1 for outliers.
        params: ``refine_score`` (and ``ratio_cluster``), see :mod:`cacl_dist.clustering.refine_rules`.

    Returns:
        (refined_labels, num_removed) as :func:`~cacl_dist.clustering.refine.refine_clusters`:
        int64 labels (numpy) with removed points and raw outliers at -1, and the number of
        points refinement removed.
    """
    rows, cols = torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
    device = rows.device
    dists = torch.as_tensor(dists).to(device=device, dtype=torch.float64)
    raw, tight = _labels_tensor(raw_labels, device), _labels_tensor(tight_labels, device)
    if raw.ndim != 1 or tight.shape != raw.shape:
        raise ValueError(
            f"raw_labels and tight_labels must be 1-D of equal length, got shapes "
            f"{tuple(raw.shape)} and {tuple(tight.shape)}."
        )
    if not bool((raw >= 0).any()):
        return raw.cpu().numpy(), 0
    labels = LabelSets.build(raw, tight)
    return decide(raw, tight, sparse_point_sums(rows, cols, dists, labels), params)

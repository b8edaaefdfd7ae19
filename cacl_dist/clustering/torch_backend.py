"""The "torch" clustering backend: sparse Jaccard graph -> sparse DBSCAN -> sparse refinement.

Exact counterpart of the reference pipeline in :mod:`cacl_dist.clustering.pseudo_labels`
that never builds an N x N matrix and runs on CPU or CUDA. The reference stores the Jaccard
matrix in float32 and scikit-learn compares it with eps in float32; the graph here keeps the
float64 distances whose float32 rounding can be within eps, and DBSCAN and refinement use
those float32-rounded values, so the decisions are the reference's.
"""

import numpy as np
import torch

from cacl_dist.clustering.dbscan_sparse import dbscan_sparse
from cacl_dist.clustering.jaccard_sparse import encode_features, jaccard_pairs
from cacl_dist.clustering.refine_sparse import refine_sparse, sub_cluster_ids
from cacl_dist.clustering.unit_rows import UnitRows


def _float32_ceiling(value: float) -> float:
    """Smallest float64 above every float64 whose float32 rounding is <= float32(value)."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def cluster_sparse(feats, k1: int, k2: int, eps: float, min_samples: int, eps_tight: float,
                   refine: bool, refine_score: str, device=None,
                   budget=None, dbscan=dbscan_sparse, neighbours=None) -> tuple:
    """Return (raw_labels, refined_labels, num_removed) as int64 numpy arrays / int.

    ``device`` defaults to the device of a torch input; ``budget`` bounds the float64
    entries of the per-block temporaries (see :mod:`cacl_dist.clustering.jaccard_sparse`);
    ``dbscan`` clusters the sparse graph (:func:`dbscan_sparse`, or
    :func:`~cacl_dist.clustering.cuml_backend.dbscan_cuml`); ``neighbours`` are precomputed
    (sims, idx) of the k1 nearest neighbours (see :func:`encode_features`).
    """
    units = UnitRows(feats, device)
    num_points = units.num_points
    encoding = encode_features(units, k1, k2, budget=budget, neighbours=neighbours)
    del units
    rows, cols, dists = jaccard_pairs(encoding, _float32_ceiling(eps), budget=budget)
    dists32 = dists.to(torch.float32)
    raw = dbscan(rows, cols, dists32, num_points, eps, min_samples)
    if not refine:
        return raw.cpu().numpy(), raw.cpu().numpy(), 0
    tight = dbscan(rows, cols, dists32, num_points, eps_tight, min_samples)
    del rows, cols, dists, dists32
    # Only raw clusters with several sub-clusters need their inner distances (d < 1).
    sub = sub_cluster_ids(raw, tight)
    groups = raw.clone()
    member = raw >= 0
    if bool(member.any()):
        owner = torch.zeros(int(sub.max()) + 1, dtype=torch.int64, device=raw.device)
        owner[sub[member]] = raw[member]
        subs_per_cluster = torch.bincount(owner, minlength=int(raw.max()) + 1)
        groups[member & (subs_per_cluster[raw.clamp(min=0)] == 1)] = -1
    if not bool((groups >= 0).any()):  # no raw cluster splits: nothing to refine
        return raw.cpu().numpy(), raw.cpu().numpy(), 0
    rows, cols, dists = jaccard_pairs(encoding, -1.0, groups=groups, budget=budget)
    refined, num_removed = refine_sparse(rows, cols, dists.to(torch.float32), raw, tight,
                                         score=refine_score)
    return raw.cpu().numpy(), refined, num_removed

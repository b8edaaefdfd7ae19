"""The sparse clustering path ("torch" and "cuml" backends): Jaccard graph -> DBSCAN -> refinement.

Exact counterpart of the dense reference (:mod:`cacl_dist.clustering.reference`) that never
builds an N x N matrix and runs on the device of the features (CPU or CUDA). The reference
stores the Jaccard matrix in float32 and scikit-learn compares it with eps in float32; the
graph here keeps the float64 distances whose float32 rounding can be within eps, and DBSCAN
and refinement use those float32-rounded values, so the decisions are the reference's.

The first step, the k1-nearest-neighbour search, can be shared: :func:`neighbours_of_rows`
searches the neighbours of a range of rows, and the concatenation over all ranges, handed to
:func:`cluster_sparse`, replaces its own search (same result).
"""

import numpy as np
import torch

from cacl_dist.clustering.cuml_backend import dbscan_cuml
from cacl_dist.clustering.dbscan_sparse import dbscan_sparse
from cacl_dist.clustering.inputs import check_k_parameters
from cacl_dist.clustering.jaccard_sparse import encode_features, jaccard_pairs
from cacl_dist.clustering.knn import knn_topk_unit
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.refine_rules import refine_groups
from cacl_dist.clustering.refine_sparse import refine_sparse
from cacl_dist.clustering.unit_rows import UnitRows
from cacl_dist.runs.logs import StageBar

STAGES = ("neighbours", "Jaccard", "DBSCAN", "refinement")
"""The stages of a clustering round, each with its own progress bar when asked for."""


def stage_bar(stage: str, enabled: bool, unit: str = "blocks") -> StageBar:
    """The progress bar of one of :data:`STAGES` ('clustering 2/4: Jaccard'), silent unless ``enabled``."""
    return StageBar(f"clustering {STAGES.index(stage) + 1}/{len(STAGES)}: {stage}", enabled, unit)


def _float32_ceiling(value: float) -> float:
    """Smallest float64 above every float64 whose float32 rounding is <= float32(value)."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


def neighbours_of_rows(feats, params: ClusterParams, rows: tuple, block_size=None, show_progress: bool = False) -> tuple:
    """(sims, idx) of the ``params.k1`` nearest neighbours of rows start..stop among all rows of ``feats``.

    ``rows=(start, stop)``; the results for consecutive row ranges concatenate to the
    ``neighbours`` that :func:`cluster_sparse` accepts. ``block_size``: rows per block of the
    search (see :func:`~cacl_dist.clustering.knn.knn_topk_unit`). ``show_progress``: a bar of the search.
    """
    assert params.takes_neighbours, f"backend {params.backend!r} does not take precomputed neighbours"
    with stage_bar("neighbours", show_progress) as bar:
        return knn_topk_unit(UnitRows(feats), params.k1, block_size=block_size, rows=rows, bar=bar)


def cluster_sparse(feats, params: ClusterParams, neighbours=None, show_progress: bool = False) -> tuple:
    """Return (raw_labels, refined_labels, num_removed) as int64 numpy arrays / int.

    ``feats``: (N, D) numpy array or torch tensor, clustered on its device (CPU for numpy).
    DBSCAN runs on the sparse graph (:func:`dbscan_sparse`), or through cuML for
    ``params.backend == "cuml"`` (:func:`~cacl_dist.clustering.cuml_backend.dbscan_cuml`).
    ``neighbours``: (sims, idx) of the k1 nearest neighbours of every row when already
    computed (see :func:`neighbours_of_rows`). ``show_progress``: one bar per stage (:data:`STAGES`).
    """
    dbscan = dbscan_cuml if params.backend == "cuml" else dbscan_sparse
    units = UnitRows(feats)
    num_points = units.num_points
    check_k_parameters(params.k1, params.k2, num_points)
    if neighbours is None:
        with stage_bar("neighbours", show_progress) as bar:
            neighbours = knn_topk_unit(units, params.k1, bar=bar)
    with stage_bar("Jaccard", show_progress, unit="rows") as bar:
        encoding = encode_features(units, params.k1, params.k2, neighbours=neighbours)
        del units
        rows, cols, dists = jaccard_pairs(encoding, _float32_ceiling(params.eps), bar=bar)
    with stage_bar("DBSCAN", show_progress, unit="runs") as bar:
        bar.add_total(2 if params.refine else 1)
        dists32 = dists.to(torch.float32)
        raw = dbscan(rows, cols, dists32, num_points, params.eps, params.min_samples)
        bar.update()
        if not params.refine:
            return raw.cpu().numpy(), raw.cpu().numpy(), 0
        tight = dbscan(rows, cols, dists32, num_points, params.eps_tight, params.min_samples)
        bar.update()
    del rows, cols, dists, dists32
    with stage_bar("refinement", show_progress, unit="rows") as bar:
        # Only the points whose decision reads distances need their pairs (d < 1) within their group.
        groups = refine_groups(raw, tight, params)
        if not bool((groups >= 0).any()):  # every raw cluster stays whole: nothing to refine
            return raw.cpu().numpy(), raw.cpu().numpy(), 0
        rows, cols, dists = jaccard_pairs(encoding, -1.0, groups=groups, bar=bar)
        refined, num_removed = refine_sparse(rows, cols, dists.to(torch.float32), raw, tight, params)
    return raw.cpu().numpy(), refined, num_removed

"""Pseudo-label assembly: Jaccard distance -> DBSCAN -> refinement -> labels (docs/method.md section 4).

:func:`cluster_features` runs the whole reference pipeline on one process and returns a
:class:`ClusterResult`. Distribution (gathering the bank, broadcasting the labels) is the
caller's job; nothing here talks to other processes.
"""

import time
from dataclasses import dataclass

import numpy as np

from cacl_dist.clustering.cuml_backend import dbscan_cuml
from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.dbscan_sparse import dbscan_sparse
from cacl_dist.clustering.jaccard_reference import jaccard_distance_reference
from cacl_dist.clustering.refine import REFINE_SCORES, refine_clusters
from cacl_dist.clustering.torch_backend import cluster_sparse

OUTLIER_POLICIES = ("singleton", "drop")
BACKENDS = ("torch", "sklearn", "cuml")


@dataclass
class ClusterResult:
    """Outcome of one clustering round."""

    labels: np.ndarray
    """(N,) int64 pseudo labels 0..num_clusters-1; -1 only for points dropped by 'drop'."""
    num_clusters: int
    """m': number of distinct labels >= 0 (singleton clusters included)."""
    num_raw_clusters: int
    """Number of DBSCAN clusters at ``eps`` before refinement."""
    num_outliers: int
    """Number of raw DBSCAN outliers at ``eps``."""
    num_refined_away: int
    """Number of points that refinement removed from their raw cluster."""
    backend: str
    """Name of the backend that computed distances and clusters."""
    seconds: float
    """Wall-clock time of the whole round."""


def _check_choice(option: str, value, allowed: tuple) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{option} must be one of {list(allowed)}, got {value!r}.")


def assign_labels(refined_labels: np.ndarray, outliers: str = "singleton") -> np.ndarray:
    """Turn refined labels (cluster ids and -1) into consecutive pseudo labels.

    Clusters are renumbered 0..m-1 in the order of their first appearance. With
    ``outliers="singleton"`` every -1 point then gets a new label of its own (m, m+1, ...,
    in index order); with ``outliers="drop"`` -1 points keep -1.
    """
    _check_choice("outliers", outliers, OUTLIER_POLICIES)
    refined = np.asarray(refined_labels)
    if refined.ndim != 1:
        raise ValueError(f"refined_labels must be a 1-D vector, got shape {refined.shape}.")
    if refined.size and not np.issubdtype(refined.dtype, np.integer):
        raise ValueError(f"refined_labels must hold integers, got dtype {refined.dtype}.")
    refined = refined.astype(np.int64)
    if refined.size and refined.min() < -1:
        raise ValueError("refined_labels may use -1 for outliers but no other negative label.")

    labels = np.full(refined.shape, -1, dtype=np.int64)
    in_cluster = refined >= 0
    cluster_ids, first_index = np.unique(refined[in_cluster], return_index=True)
    ids_by_appearance = cluster_ids[np.argsort(first_index)]
    new_id = {int(old): new for new, old in enumerate(ids_by_appearance)}
    labels[in_cluster] = [new_id[int(old)] for old in refined[in_cluster]]
    if outliers == "singleton":
        loose = np.flatnonzero(~in_cluster)
        labels[loose] = len(ids_by_appearance) + np.arange(loose.size)
    return labels


def _cluster_dense(feats, k1, k2, eps, min_samples, eps_tight, refine, refine_score) -> tuple:
    """The reference pipeline on the dense matrix: (raw_labels, refined_labels, num_removed)."""
    dist = jaccard_distance_reference(feats, k1=k1, k2=k2)
    raw = dbscan_precomputed(dist, eps, min_samples)
    if not refine:
        return raw, raw, 0
    tight = dbscan_precomputed(dist, eps_tight, min_samples)
    refined, num_removed = refine_clusters(dist, raw, tight, score=refine_score)
    return raw, refined, num_removed


def cluster_features(
    feats,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    eps_tight: float = 0.58,
    refine: bool = True,
    refine_score: str = "paper",
    outliers: str = "singleton",
    backend: str = "sklearn",
    device=None,
    neighbours=None,
) -> ClusterResult:
    """Compute pseudo labels for the rows of ``feats`` (numpy array or torch tensor, (N, D)).

    Pipeline: exact Jaccard distance (k1, k2) -> DBSCAN (eps, min_samples) -> DBSCAN
    (eps_tight, min_samples) -> refinement (``refine_score``) -> :func:`assign_labels`
    (``outliers``). ``refine=False`` skips the tight DBSCAN and the refinement.

    ``backend="sklearn"`` is the dense reference (N x N matrices, scikit-learn DBSCAN);
    ``backend="torch"`` computes the same labels from a sparse graph on ``device`` (default:
    the device of a torch input, else CPU), see :mod:`cacl_dist.clustering.torch_backend`;
    ``backend="cuml"`` is that graph with RAPIDS cuML's DBSCAN (CUDA, optional extra), see
    :mod:`cacl_dist.clustering.cuml_backend`. These two accept ``neighbours``: the (sims, idx)
    of the k1 nearest neighbours when already computed (by the ranks together, for instance).
    """
    _check_choice("backend", backend, BACKENDS)
    _check_choice("refine_score", refine_score, REFINE_SCORES)
    _check_choice("outliers", outliers, OUTLIER_POLICIES)
    if refine and eps_tight > eps:
        raise ValueError(
            f"eps_tight={eps_tight} is larger than eps={eps}; refinement over-segments with a "
            "tighter radius, so set eps_tight <= eps (the default is eps - 0.02)."
        )
    start = time.perf_counter()
    if backend in ("torch", "cuml"):
        dbscan = dbscan_cuml if backend == "cuml" else dbscan_sparse
        raw, refined, num_removed = cluster_sparse(
            feats, k1, k2, eps, min_samples, eps_tight, refine, refine_score, device=device,
            dbscan=dbscan, neighbours=neighbours,
        )
    else:
        if neighbours is not None:
            raise ValueError("precomputed neighbours are used by the sparse backends only (torch, cuml).")
        raw, refined, num_removed = _cluster_dense(
            feats, k1, k2, eps, min_samples, eps_tight, refine, refine_score
        )
    labels = assign_labels(refined, outliers=outliers)
    return ClusterResult(
        labels=labels,
        num_clusters=int(labels.max()) + 1 if np.any(labels >= 0) else 0,
        num_raw_clusters=int(np.unique(raw[raw >= 0]).size),
        num_outliers=int(np.count_nonzero(raw == -1)),
        num_refined_away=int(num_removed),
        backend=backend,
        seconds=time.perf_counter() - start,
    )

"""Pseudo labels from features: the one entry :func:`cluster` (docs/method.md section 4).

:func:`cluster` runs the pipeline of ``params.backend`` (the sparse path of
:mod:`cacl_dist.clustering.torch_backend`, or the dense reference of
:mod:`cacl_dist.clustering.reference`), turns the refined clusters into consecutive labels
(:func:`assign_labels`) and returns a :class:`ClusterResult`. Distribution (gathering the bank,
sharing the neighbour search, broadcasting the labels) is the caller's job; nothing here talks
to other processes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cacl_dist.clustering.names import AUTO
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.reference import cluster_dense
from cacl_dist.clustering.torch_backend import cluster_sparse


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
    raw_labels: np.ndarray | None = None
    """(N,) int64 DBSCAN labels at ``eps`` before refinement, -1 for outliers (cluster ids as DBSCAN numbered them)."""
    refined_labels: np.ndarray | None = None
    """(N,) int64 labels after refinement, before numbering: the raw id for kept points, -1 for outliers and
    for the points refinement removed."""

    @property
    def num_multi_clusters(self) -> int:
        """Pseudo clusters of two or more images."""
        sizes = np.bincount(self.labels[self.labels >= 0])
        return int(np.count_nonzero(sizes >= 2))

    @property
    def num_singletons(self) -> int:
        """Pseudo clusters of one image (outliers made singletons among them)."""
        sizes = np.bincount(self.labels[self.labels >= 0])
        return int(np.count_nonzero(sizes == 1))


def assign_labels(refined_labels: np.ndarray, params: ClusterParams = ClusterParams()) -> np.ndarray:
    """Turn refined labels (cluster ids and -1) into consecutive pseudo labels.

    Clusters are renumbered 0..m-1 in the order of their first appearance. With
    ``params.outliers == "singleton"`` every -1 point then gets a new label of its own (m, m+1,
    ..., in index order); with ``"drop"`` -1 points keep -1.
    """
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
    if params.outliers == "singleton":
        loose = np.flatnonzero(~in_cluster)
        labels[loose] = len(ids_by_appearance) + np.arange(loose.size)
    return labels


def cluster(feats, params: ClusterParams, neighbours=None, show_progress: bool = False) -> ClusterResult:
    """Compute pseudo labels for the rows of ``feats`` (numpy array or torch tensor, (N, D)).

    Pipeline: exact Jaccard distance (k1, k2) -> DBSCAN (eps, min_samples) -> DBSCAN
    (eps_tight, min_samples) -> refinement (``refine_score``) -> :func:`assign_labels`
    (``outliers``), all read from ``params``; ``refine=False`` skips the tight DBSCAN and the
    refinement. The sparse backends (torch, cuml) compute on the device of a torch input (CPU
    for numpy) and accept ``neighbours``: the (sims, idx) of the k1 nearest neighbours of every
    row when already computed, for instance by the ranks together (see
    :func:`~cacl_dist.clustering.torch_backend.neighbours_of_rows`). ``show_progress`` draws a progress
    bar per stage (neighbours, Jaccard, DBSCAN, refinement); the caller enables it on one process only.
    """
    start = time.perf_counter()
    if params.backend == AUTO:
        params = params.resolved()
    if params.takes_neighbours:
        raw, refined, num_removed = cluster_sparse(feats, params, neighbours=neighbours, show_progress=show_progress)
    elif neighbours is not None:
        raise ValueError("precomputed neighbours are used by the sparse backends only (torch, cuml).")
    else:
        raw, refined, num_removed = cluster_dense(feats, params, show_progress)
    labels = assign_labels(refined, params)
    return ClusterResult(
        labels=labels,
        num_clusters=int(labels.max()) + 1 if np.any(labels >= 0) else 0,
        num_raw_clusters=int(np.unique(raw[raw >= 0]).size),
        num_outliers=int(np.count_nonzero(raw == -1)),
        num_refined_away=int(num_removed),
        backend=params.backend,
        seconds=time.perf_counter() - start,
        raw_labels=np.asarray(raw, dtype=np.int64),
        refined_labels=np.asarray(refined, dtype=np.int64),
    )

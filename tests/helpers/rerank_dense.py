"""Dense k-reciprocal re-ranking (Zhong et al., CVPR 2017): the (Q + G)^2 float64 version, the tests' oracle.

The same algorithm as :mod:`cacl_dist.evaluation.rerank_sparse` (docs/method.md section 7),
written with dense matrices from the clustering reference's building blocks: every point's
k1 + 1 nearest points (itself first, ties by index), the k-reciprocal and expansion sets of
:func:`~cacl_dist.clustering.jaccard_reference.expansion_sets`, ``V[i, j] = exp(-o_ij)``
normalised over the set, query expansion over k2 neighbours and the Jaccard rows of the queries.
It serves as a cross-check of the sparse version and for small sets; memory grows as
(Q + G)^2 (about 4.3 GB at Market-1501's Q + G = 19,281 and 70 GB at MSMT17's 93,820).
"""

import numpy as np
import scipy.sparse

from cacl_dist.clustering.inputs import as_float64_features, check_k_parameters
from cacl_dist.clustering.jaccard_reference import (
    expansion_sets,
    gram_matrix,
    jaccard_rows,
    k_nearest_neighbours,
)


def original_distance(all_feats: np.ndarray) -> np.ndarray:
    """Return the (N, N) float64 squared Euclidean distances, each row divided by its max.

    The matrix is symmetric, so the row maximum is also the column maximum. A row whose
    maximum is 0 (all points identical) is left at 0.
    """
    squared_norms = np.einsum("ij,ij->i", all_feats, all_feats)
    dist = gram_matrix(all_feats)
    dist *= -2.0
    dist += squared_norms[:, None] + squared_norms[None, :]
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    row_max = dist.max(axis=1, keepdims=True)
    dist /= np.where(row_max > 0, row_max, 1.0)
    return dist


def _encoding(original: np.ndarray, neighbours: np.ndarray, k1: int, k2: int) -> scipy.sparse.csr_matrix:
    """V (exp(-o) normalised over each expansion set), then the mean over the first k2 neighbours."""
    num_points = original.shape[0]
    sets = expansion_sets(neighbours, k1)
    rows = np.repeat(np.arange(num_points), [s.size for s in sets])
    cols = np.concatenate(sets)
    weights = np.exp(-original[rows, cols])
    totals = np.bincount(rows, weights=weights, minlength=num_points)
    encoding = scipy.sparse.csr_matrix((weights / totals[rows], (rows, cols)), shape=(num_points, num_points))
    if k2 > 1:
        heads = neighbours[:, :k2]
        summing = scipy.sparse.csr_matrix(
            (np.ones(heads.size), (np.repeat(np.arange(num_points), k2), heads.reshape(-1))),
            shape=(num_points, num_points))
        encoding = (summing @ encoding).tocsr() / k2
    encoding = scipy.sparse.csr_matrix(encoding)
    encoding.eliminate_zeros()
    encoding.sort_indices()
    return encoding


def k_reciprocal_rerank(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Return the (Q, G) float64 re-ranked distance between query and gallery features.

    Args:
        q_feats: (Q, D) query features, numpy array or torch tensor (not re-normalised).
        g_feats: (G, D) gallery features.
        k1: the k-reciprocal sets are searched among the k1 + 1 nearest points (i included).
        k2: query-expansion width (1 disables it); must be <= k1.
        lambda_value: weight of the original distance, in [0, 1]; 1 returns the original
            (row-normalised squared Euclidean) distance, 0 the pure Jaccard distance.
    """
    query = as_float64_features(q_feats, "q_feats")
    gallery = as_float64_features(g_feats, "g_feats")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"q_feats has feature_dim {query.shape[1]} but g_feats has {gallery.shape[1]}; "
            "extract both with the same model."
        )
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must lie in [0, 1], got {lambda_value!r}.")
    num_query = query.shape[0]
    all_feats = np.concatenate([query, gallery], axis=0)
    check_k_parameters(k1, k2, all_feats.shape[0])

    original = original_distance(all_feats)
    neighbours = k_nearest_neighbours(original, k1 + 1)
    encoding = _encoding(original, neighbours, k1, k2)
    jaccard = jaccard_rows(encoding, np.arange(num_query))[:, num_query:]
    return jaccard * (1.0 - lambda_value) + original[:num_query, num_query:] * lambda_value

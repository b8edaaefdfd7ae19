"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) written plainly, one point at a time.

The oracle of the evaluation tests: every step as the algorithm describes it, dense float64
matrices and Python loops, nothing shared with the package. The only choice the algorithm
leaves open is the order of equal distances in a row (it sorts with a non-stable sort);
here a point comes first in its own row and equal distances keep increasing index order.
"""

from __future__ import annotations

import numpy as np


def original_distance(feats: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, divided column-wise by the column maximum, then transposed."""
    sq = (feats * feats).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (feats @ feats.T)
    dist = np.maximum(dist, 0.0)
    np.fill_diagonal(dist, 0.0)
    return np.transpose(dist / np.max(dist, axis=0))


def initial_ranking(original: np.ndarray) -> np.ndarray:
    """Every row's points by increasing distance: itself first, ties by index."""
    keys = original.copy()
    np.fill_diagonal(keys, -np.inf)
    return np.argsort(keys, axis=1, kind="stable")


def reciprocal_set(ranking: np.ndarray, i: int, k: int) -> np.ndarray:
    """Points among the k + 1 nearest of i that have i among their own k + 1 nearest."""
    forward = ranking[i, :k + 1]
    backward = ranking[forward, :k + 1]
    return forward[np.any(backward == i, axis=1)]


def standard_rerank(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                    return_jaccard: bool = False):
    """(Q, G) re-ranked distances; with ``return_jaccard`` also the (Q, G) Jaccard distances."""
    query = np.asarray(q_feats, dtype=np.float64)
    gallery = np.asarray(g_feats, dtype=np.float64)
    num_query = query.shape[0]
    feats = np.concatenate([query, gallery])
    num_points = feats.shape[0]
    original = original_distance(feats)
    ranking = initial_ranking(original)
    half = int(np.around(k1 / 2))

    encoding = np.zeros((num_points, num_points))
    for i in range(num_points):
        own = reciprocal_set(ranking, i, k1)
        expansion = own
        for candidate in own:
            theirs = reciprocal_set(ranking, candidate, half)
            if len(np.intersect1d(theirs, own)) > 2.0 / 3.0 * len(theirs):
                expansion = np.append(expansion, theirs)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        encoding[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        encoding = np.stack([np.mean(encoding[ranking[i, :k2]], axis=0) for i in range(num_points)])

    holders = [np.flatnonzero(encoding[:, k]) for k in range(num_points)]  # inverted index
    jaccard = np.zeros((num_query, num_points))
    for i in range(num_query):
        shared = np.zeros(num_points)
        for k in np.flatnonzero(encoding[i]):
            shared[holders[k]] += np.minimum(encoding[i, k], encoding[holders[k], k])
        jaccard[i] = 1.0 - shared / (2.0 - shared)
    final = jaccard * (1.0 - lambda_value) + original[:num_query] * lambda_value
    if return_jaccard:
        return final[:, num_query:], jaccard[:, num_query:]
    return final[:, num_query:]

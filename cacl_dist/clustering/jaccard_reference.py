"""Exact k-reciprocal Jaccard distance, written for clarity (docs/method.md section 4.1).

This module is the oracle for faster implementations and is also used directly on small data.
It builds dense N x N matrices, so memory grows as N^2 (peak about 2.6 GB at N = 13,000,
D = 2048; about 35 s on two CPU cores).

The building blocks are public because the evaluation re-ranking (Zhong et al. 2017) uses the
same math on a different distance:

- :func:`k_nearest_neighbours`: R(i), the k1 nearest points of every point, itself first.
- :func:`expansion_sets`: E(i), the k-reciprocal sets with the 2/3 expansion rule.
- :func:`k_reciprocal_encoding`: V' (softmax encoding over E(i), then query expansion).
- :func:`jaccard_rows`: d_ij = 1 - S_ij / (2 - S_ij) with S_ij = sum_k min(V'_ik, V'_jk).

The neighbour search and the encoding work on a dense "encoding distance" matrix where
smaller means closer. For the CACL Jaccard distance that matrix is 2 - 2 <x_i, x_j> on
L2-normalised features, which orders neighbours exactly as cosine similarity does.
"""

import numpy as np
import scipy.sparse

from cacl_dist.clustering.inputs import as_float64_features, check_k_parameters

# Rows of the distance matrix processed together when searching neighbours.
_ROW_BLOCK = 1024


def l2_normalise_rows(feats: np.ndarray, name: str = "feats") -> np.ndarray:
    """Return a copy of ``feats`` with every row scaled to unit Euclidean norm.

    Raises ValueError if a row is all zeros (its direction, hence its cosine, is undefined).
    """
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    zero_rows = np.flatnonzero(norms[:, 0] == 0)
    if zero_rows.size:
        raise ValueError(
            f"{name} has {zero_rows.size} all-zero row(s) (first at index {zero_rows[0]}); "
            "cosine similarity is undefined for them. Remove those images or fix their features."
        )
    return feats / norms


def gram_matrix(feats: np.ndarray) -> np.ndarray:
    """Return the (N, N) float64 matrix of inner products <x_i, x_j> of the rows of ``feats``.

    Computed one block of rows at a time (general matrix products): besides bounding the
    temporaries, this avoids the symmetric rank-k BLAS path that ``feats @ feats.T`` takes,
    which crashes some OpenBLAS builds for N around 23,000 and more.
    """
    num_points = feats.shape[0]
    gram = np.empty((num_points, num_points), dtype=np.float64)
    for start in range(0, num_points, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, num_points)
        np.matmul(feats[start:stop], feats.T, out=gram[start:stop])
    return gram


def k_nearest_neighbours(dist: np.ndarray, k1: int) -> np.ndarray:
    """Return R(i) for every row: an (N, k1) int64 array of neighbour indices, closest first.

    Point i itself is always at rank 0. Ties in distance are broken by the smaller index,
    so the result is deterministic. ``dist`` is a dense (N, N) matrix, smaller = closer.
    """
    num_points = dist.shape[0]
    neighbours = np.empty((num_points, k1), dtype=np.int64)
    for start in range(0, num_points, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, num_points)
        block = np.array(dist[start:stop], dtype=np.float64)
        rows = np.arange(stop - start)
        block[rows, rows + start] = -np.inf  # self first, whatever its distance
        # Every entry at or below the k1-th smallest value is a candidate; there are at least
        # k1 of them (more only on ties). Sorting just the candidates stably by distance keeps
        # ascending index order among equal distances.
        threshold = np.partition(block, k1 - 1, axis=1)[:, k1 - 1]
        for row in rows:
            candidates = np.flatnonzero(block[row] <= threshold[row])
            order = np.argsort(block[row, candidates], kind="stable")
            neighbours[start + row] = candidates[order[:k1]]
    return neighbours


def _reciprocal_mask(neighbours: np.ndarray, k: int) -> tuple:
    """Return (heads, mask) describing K(i, k) for every i.

    heads[i] = R_k(i), the first min(k + 1, k1) entries of R(i); mask[i, r] is True iff
    heads[i, r] belongs to K(i, k), i.e. i is also in R_k(heads[i, r]).
    """
    length = min(k + 1, neighbours.shape[1])
    heads = neighbours[:, :length]
    heads_of_heads = heads[heads]  # (N, length, length): R_k(j) for each j in R_k(i)
    own_index = np.arange(neighbours.shape[0])[:, None, None]
    mask = np.any(heads_of_heads == own_index, axis=2)
    return heads, mask


def expansion_sets(neighbours: np.ndarray, k1: int) -> list:
    """Return E(i) for every point as a list of sorted int64 index arrays.

    E(i) = K(i, k1) united with every K(c, round(k1/2)), c in K(i, k1), whose overlap with
    K(i, k1) is more than 2/3 of |K(c, round(k1/2))|. ``round`` is Python's (half to even).
    """
    half_k = int(round(k1 / 2))
    full_heads, full_mask = _reciprocal_mask(neighbours, k1)
    half_heads, half_mask = _reciprocal_mask(neighbours, half_k)
    sets = []
    for i in range(neighbours.shape[0]):
        reciprocal = full_heads[i][full_mask[i]]  # K(i, k1)
        candidate_heads = half_heads[reciprocal]  # R_h(c) for every c in K(i, k1)
        candidate_mask = half_mask[reciprocal]  # which of them form K(c, h)
        in_reciprocal = np.isin(candidate_heads, reciprocal) & candidate_mask
        overlap = in_reciprocal.sum(axis=1)
        size = candidate_mask.sum(axis=1)
        accepted = 3 * overlap > 2 * size  # overlap > 2/3 |K(c, h)|, in exact integers
        added = candidate_heads[accepted][candidate_mask[accepted]]
        sets.append(np.union1d(reciprocal, added))
    return sets


def k_reciprocal_encoding(dist: np.ndarray, k1: int, k2: int) -> scipy.sparse.csr_matrix:
    """Return V', the query-expanded k-reciprocal encoding, as an (N, N) float64 CSR matrix.

    V[i, j] = softmax over j in E(i) of -dist[i, j], zero outside E(i). With k2 > 1 each row
    is replaced by the mean of the rows V[j] for j in the first k2 entries of R(i). Every row
    of V' sums to 1. ``dist`` is a dense (N, N) matrix, smaller = closer.
    """
    num_points = dist.shape[0]
    check_k_parameters(k1, k2, num_points)
    neighbours = k_nearest_neighbours(dist, k1)
    sets = expansion_sets(neighbours, k1)

    row_ids, col_ids, weights = [], [], []
    for i, members in enumerate(sets):
        logits = -np.asarray(dist[i, members], dtype=np.float64)
        logits -= logits.max()  # softmax is shift invariant; this avoids overflow
        exp_logits = np.exp(logits)
        row_ids.append(np.full(members.size, i, dtype=np.int64))
        col_ids.append(members)
        weights.append(exp_logits / exp_logits.sum())
    encoding = scipy.sparse.csr_matrix(
        (np.concatenate(weights), (np.concatenate(row_ids), np.concatenate(col_ids))),
        shape=(num_points, num_points),
    )
    if k2 > 1:
        # averaging[i, j] = 1/k2 for the first k2 neighbours j of i, so averaging @ V is the mean.
        averaging = scipy.sparse.csr_matrix(
            (
                np.full(num_points * k2, 1.0 / k2),
                (np.repeat(np.arange(num_points), k2), neighbours[:, :k2].reshape(-1)),
            ),
            shape=(num_points, num_points),
        )
        encoding = (averaging @ encoding).tocsr()
    encoding.eliminate_zeros()
    encoding.sort_indices()
    return encoding


def _concatenated_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return concatenate([arange(s, s + n) for s, n in zip(starts, lengths)]) without a loop."""
    total = int(lengths.sum())
    range_starts = np.cumsum(lengths) - lengths  # where each range begins in the output
    return np.repeat(starts - range_starts, lengths) + np.arange(total)


def jaccard_rows(encoding: scipy.sparse.csr_matrix, rows) -> np.ndarray:
    """Return the Jaccard distances d[rows, :] (float64, shape (len(rows), N)) from V'.

    S_ij = sum_k min(V'[i, k], V'[j, k]); d_ij = 1 - S_ij / (2 - S_ij), clamped at 0.
    Only points j that share a support column with i can have S_ij > 0, so each row is
    accumulated from the columns in the support of V'[i]; every other entry is exactly 1.
    The diagonal is not forced to 0 here (callers decide).
    """
    num_points = encoding.shape[1]
    by_row = encoding.tocsr()
    by_row.sort_indices()
    by_column = by_row.tocsc()
    by_column.sort_indices()
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((rows.size, num_points), dtype=np.float64)
    for out_row, i in enumerate(rows):
        start, stop = by_row.indptr[i], by_row.indptr[i + 1]
        support = by_row.indices[start:stop]
        own_values = by_row.data[start:stop]
        col_starts = by_column.indptr[support]
        col_lengths = by_column.indptr[support + 1] - col_starts
        positions = _concatenated_ranges(col_starts, col_lengths)
        partners = by_column.indices[positions]
        minima = np.minimum(np.repeat(own_values, col_lengths), by_column.data[positions])
        # Contributions are added in increasing column order for every pair, so S is
        # bitwise symmetric.
        overlap = np.bincount(partners, weights=minima, minlength=num_points)
        out[out_row] = np.maximum(1.0 - overlap / (2.0 - overlap), 0.0)
    return out


def jaccard_distance_reference(feats, k1: int = 30, k2: int = 6) -> np.ndarray:
    """Return the (N, N) float32 k-reciprocal Jaccard distance of the rows of ``feats``.

    Args:
        feats: (N, D) numpy array or torch tensor; rows are L2-normalised here (a no-op for
            the unit-norm memory bank rows CACL passes in).
        k1: size of R(i), the nearest-neighbour list including i itself.
        k2: query-expansion width; 1 disables query expansion.

    The matrix is symmetric, has a zero diagonal and values in [0, 1]; d_ij == 1 exactly
    when the supports of V'[i] and V'[j] do not meet.
    """
    unit = l2_normalise_rows(as_float64_features(feats))
    check_k_parameters(k1, k2, unit.shape[0])
    dist = gram_matrix(unit)  # cosine similarity, turned into 2 - 2 <x_i, x_j> in place
    dist *= -2.0
    dist += 2.0
    encoding = k_reciprocal_encoding(dist, k1, k2)
    del dist
    num_points = unit.shape[0]
    jaccard = np.empty((num_points, num_points), dtype=np.float32)
    for start in range(0, num_points, _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, num_points)
        jaccard[start:stop] = jaccard_rows(encoding, np.arange(start, stop))
    np.fill_diagonal(jaccard, 0.0)
    return jaccard

"""How well pseudo labels agree with true identities: pairwise precision/recall/F, ARI and NMI.

Pure numpy/scipy; nothing here talks to other processes or reads files. Every score compares a
predicted labelling with the true one through their contingency table (how many images of true
identity j fall in cluster i), so the cost is linear in the number of images.

Outliers: a predicted label -1 (a DBSCAN outlier, or a point dropped by ``outliers: drop``)
means "in no cluster", so every such point is scored as a cluster of its own, exactly as the
``singleton`` policy trains on it. True labels must be >= 0.

- Pairwise scores count pairs of images: precision = pairs put together that share an identity
  / pairs put together; recall = the same / pairs that share an identity; F = their harmonic
  mean. A labelling without any predicted (true) pair has precision (recall) 1 by convention.
- ARI (adjusted Rand index, Hubert and Arabie 1985): the Rand index corrected for chance, from
  the 2 x 2 pair confusion counts; 1.0 when both labellings put no pair in different sides.
- NMI: mutual information divided by the arithmetic mean of the two entropies (natural log);
  1.0 when neither labelling splits the data (both entropies 0), 0.0 when the information is 0.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse


QUALITY_KEYS = ("precision", "recall", "fscore", "ari", "nmi")
"""Names of the scores :func:`cluster_quality` returns, in the order they are reported."""


def _as_labels(labels, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of labels, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array.astype(np.int64)


def outliers_as_singletons(labels) -> np.ndarray:
    """``labels`` with every -1 replaced by a fresh label of its own (above the largest label)."""
    labels = _as_labels(labels, "labels").copy()
    loose = np.flatnonzero(labels < 0)
    start = int(labels.max()) + 1 if labels.size else 0
    labels[loose] = max(start, 0) + np.arange(loose.size)
    return labels


def contingency(pred, true) -> sparse.csr_matrix:
    """Sparse table n[i, j] = images with predicted label i and true label j (labels renumbered 0..)."""
    pred = outliers_as_singletons(pred)
    true = _as_labels(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"predicted and true labels differ in length: {pred.size} != {true.size}")
    if true.size and true.min() < 0:
        raise ValueError("true labels must be >= 0 (images of unknown identity cannot be scored)")
    _, rows = np.unique(pred, return_inverse=True)
    _, cols = np.unique(true, return_inverse=True)
    ones = np.ones(pred.size, dtype=np.int64)
    shape = (int(rows.max()) + 1 if rows.size else 0, int(cols.max()) + 1 if cols.size else 0)
    return sparse.coo_matrix((ones, (rows.ravel(), cols.ravel())), shape=shape).tocsr()


def _pairs(counts: np.ndarray) -> int:
    """Number of unordered pairs inside groups of the given sizes (exact Python integer)."""
    counts = np.asarray(counts, dtype=np.int64)
    return int((counts * (counts - 1) // 2).sum())


def pair_counts(table: sparse.spmatrix) -> tuple[int, int, int, int]:
    """(together_same, together_pred, together_true, total) pair counts of a contingency table."""
    cells = table.data if sparse.issparse(table) else np.asarray(table).ravel()
    num = int(np.asarray(table.sum()))
    same = _pairs(cells)
    pred = _pairs(np.asarray(table.sum(axis=1)).ravel())
    true = _pairs(np.asarray(table.sum(axis=0)).ravel())
    return same, pred, true, num * (num - 1) // 2


def pairwise_scores(pred, true) -> tuple[float, float, float]:
    """(precision, recall, F-score) over image pairs; see the module docstring."""
    same, pred_pairs, true_pairs, _ = pair_counts(contingency(pred, true))
    precision = same / pred_pairs if pred_pairs else 1.0
    recall = same / true_pairs if true_pairs else 1.0
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return float(precision), float(recall), float(fscore)


def adjusted_rand_index(pred, true) -> float:
    """Adjusted Rand index of two labellings (exact integer pair counts, then one division)."""
    same, pred_pairs, true_pairs, total = pair_counts(contingency(pred, true))
    # 2 x 2 pair confusion: tp together in both, fp only predicted, fn only true, tn in neither.
    tp, fp, fn = same, pred_pairs - same, true_pairs - same
    tn = total - tp - fp - fn
    if fp == 0 and fn == 0:
        return 1.0
    return float(2 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def _entropy(counts: np.ndarray, num: int) -> float:
    p = counts[counts > 0] / num
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(pred, true) -> float:
    """NMI with the arithmetic mean of the entropies as normaliser; see the module docstring."""
    table = contingency(pred, true).tocoo()
    num = int(table.sum())
    if num == 0 or table.shape[0] == table.shape[1] == 1:
        return 1.0
    row = np.asarray(table.sum(axis=1)).ravel().astype(np.float64)
    col = np.asarray(table.sum(axis=0)).ravel().astype(np.float64)
    cell = table.data.astype(np.float64)
    ratio = cell * num / (row[table.row] * col[table.col])
    mutual = float((cell / num * np.log(ratio)).sum())
    if mutual <= 0.0:
        return 0.0
    norm = 0.5 * (_entropy(row, num) + _entropy(col, num))
    return float(mutual / norm)


def cluster_quality(pred, true) -> dict[str, float]:
    """All scores of :data:`QUALITY_KEYS` for one predicted labelling against the true identities."""
    precision, recall, fscore = pairwise_scores(pred, true)
    return {"precision": precision, "recall": recall, "fscore": fscore,
            "ari": adjusted_rand_index(pred, true), "nmi": normalized_mutual_info(pred, true)}


def cluster_purity(members_true: np.ndarray) -> tuple[int, float]:
    """(majority identity, fraction of the members that carry it) of one cluster's true labels."""
    values, counts = np.unique(np.asarray(members_true), return_counts=True)
    best = int(np.argmax(counts))
    return int(values[best]), float(counts[best] / counts.sum())


__all__ = ["QUALITY_KEYS", "adjusted_rand_index", "cluster_purity", "cluster_quality", "contingency",
           "normalized_mutual_info", "outliers_as_singletons", "pair_counts", "pairwise_scores"]

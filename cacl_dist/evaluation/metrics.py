"""Retrieval metrics for person re-identification (docs/method.md section 7, Market-1501 protocol).

Pure numpy (torch tensors are accepted and converted); nothing here talks to other processes.
"""

import numpy as np
import torch

# Bound on the number of float64 temporaries per block (rows x columns).
_BLOCK_ELEMENTS = 1 << 22


def _to_numpy(value, name: str) -> np.ndarray:
    """Return ``value`` (numpy array, torch tensor or sequence) as a numpy array."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype != torch.float64:
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError(f"{name} must be numeric, got an object array.")
    return array


def _as_features(value, name: str) -> np.ndarray:
    """Return a finite (num, D) float feature matrix or raise ValueError."""
    array = _to_numpy(value, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (num_images, feature_dim), got {array.shape}.")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; check the feature extractor.")
    return array


def pairwise_distance(query_feats, gallery_feats) -> np.ndarray:
    """Return the (Q, G) float32 Euclidean distances between query and gallery rows.

    Computed as sqrt(max(|q|^2 + |g|^2 - 2 <q, g>, 0)) one block of query rows at a time, so
    the output is the only Q x G allocation. For unit-norm features this ranks exactly as
    cosine similarity does.
    """
    query = _as_features(query_feats, "query_feats")
    gallery = _as_features(gallery_feats, "gallery_feats")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"query_feats has feature_dim {query.shape[1]} but gallery_feats has "
            f"{gallery.shape[1]}; extract both with the same model."
        )
    compute_dtype = np.result_type(query.dtype, gallery.dtype, np.float32)
    query = query.astype(compute_dtype, copy=False)
    gallery = gallery.astype(compute_dtype, copy=False)
    gallery_sq = np.einsum("ij,ij->i", gallery, gallery)
    out = np.empty((query.shape[0], gallery.shape[0]), dtype=np.float32)
    block = max(1, _BLOCK_ELEMENTS // max(1, gallery.shape[0]))
    for start in range(0, query.shape[0], block):
        rows = query[start : start + block]
        squared = rows @ gallery.T
        squared *= -2.0
        squared += np.einsum("ij,ij->i", rows, rows)[:, None]
        squared += gallery_sq[None, :]
        np.maximum(squared, 0.0, out=squared)
        out[start : start + block] = np.sqrt(squared)
    return out


def _as_ids(value, name: str, length: int) -> np.ndarray:
    """Return an int64 id vector of the given length or raise ValueError."""
    array = _to_numpy(value, name)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(
            f"{name} must be a 1-D vector of length {length}, got shape {array.shape}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}.")
    return array.astype(np.int64)


def stable_argsort_rows(dist: np.ndarray) -> np.ndarray:
    """Return ``np.argsort(dist, axis=1, kind="stable")``: ties keep ascending column order.

    For float32 input (what :func:`pairwise_distance` returns) the same order is obtained
    about four times faster by sorting one int64 key per entry: the float's bits mapped to
    an integer with the same order, in the high 32 bits, and the column index in the low
    32 bits. NaN is not supported (callers reject it); -0.0 and 0.0 count as equal.
    """
    if dist.dtype != np.float32 or dist.shape[1] >= 2**31:
        return np.argsort(dist, axis=1, kind="stable")
    bits = (dist + np.float32(0.0)).view(np.int32)  # adding 0.0 turns -0.0 into 0.0
    # Negative floats order backwards as integers: flip their 31 magnitude bits.
    bits = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
    keys = (bits.astype(np.int64) << 32) | np.arange(dist.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    return keys & 0xFFFFFFFF


def _rank_block(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Per-query statistics for one block of queries (all arrays restricted to the block).

    Returns (valid, ap, inp, first_match_rank, cmc_hits) where ranks are 1-based positions in
    the gallery list after removing the same-pid-same-camera items.
    """
    order = stable_argsort_rows(dist)  # ties: lower gallery index first
    sorted_pids = g_pids[order]
    same_pid = sorted_pids == q_pids[:, None]
    junk = same_pid & (g_camids[order] == q_camids[:, None])
    kept = ~junk
    match = same_pid & kept
    rank = np.cumsum(kept, axis=1)  # 1-based rank of each kept item among kept items
    matches_so_far = np.cumsum(match, axis=1)
    num_matches = matches_so_far[:, -1]
    valid = num_matches > 0

    no_match_rank = np.iinfo(np.int64).max
    match_ranks = np.where(match, rank, no_match_rank)
    first_match_rank = match_ranks.min(axis=1)
    last_match_rank = np.where(match, rank, 0).max(axis=1)

    precision_at_match = np.where(match, matches_so_far / np.maximum(rank, 1), 0.0)
    safe_count = np.maximum(num_matches, 1)
    ap = precision_at_match.sum(axis=1) / safe_count
    inp = num_matches / np.maximum(last_match_rank, 1)
    cmc_hits = first_match_rank[:, None] <= np.arange(1, max_rank + 1)[None, :]
    return valid, ap, inp, first_match_rank, cmc_hits


def evaluate_ranking(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int = 10) -> dict:
    """Market-1501 protocol retrieval metrics for a (Q, G) distance matrix (smaller = closer).

    For every query, gallery items with the same pid and the same camera are removed; a query
    with no remaining correct match is skipped. Ties in distance rank the lower gallery index
    first.

    Returns a dict with fractions in [0, 1]: ``mAP`` (mean non-interpolated average precision),
    ``rank1``/``rank5``/``rank10`` (CMC), ``mINP`` (mean of num_matches / rank of the last
    correct match), ``cmc`` (np.ndarray of length ``max_rank``), and ``num_valid_queries``.
    Raises ValueError when shapes disagree or no query has a correct match.
    """
    dist = _to_numpy(dist, "dist")
    if dist.ndim != 2:
        raise ValueError(f"dist must be a (num_query, num_gallery) matrix, got shape {dist.shape}.")
    if np.isnan(dist).any():
        raise ValueError("dist contains NaN values; check the distance computation.")
    num_query, num_gallery = dist.shape
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}.")
    q_pids = _as_ids(q_pids, "q_pids", num_query)
    q_camids = _as_ids(q_camids, "q_camids", num_query)
    g_pids = _as_ids(g_pids, "g_pids", num_gallery)
    g_camids = _as_ids(g_camids, "g_camids", num_gallery)

    report_ranks = (1, 5, 10)
    block = max(1, _BLOCK_ELEMENTS // max(1, num_gallery))
    valid_parts, ap_parts, inp_parts, first_parts, cmc_parts = [], [], [], [], []
    for start in range(0, num_query, block):
        part = slice(start, start + block)
        valid, ap, inp, first, cmc_hits = _rank_block(
            dist[part], q_pids[part], g_pids, q_camids[part], g_camids, max_rank
        )
        valid_parts.append(valid)
        ap_parts.append(ap[valid])
        inp_parts.append(inp[valid])
        first_parts.append(first[valid])
        cmc_parts.append(cmc_hits[valid])
    num_valid = int(sum(int(v.sum()) for v in valid_parts))
    if num_valid == 0:
        raise ValueError(
            f"none of the {num_query} queries has a correct match in the gallery after removing "
            "same-pid-same-camera items; check that query and gallery pids and camera ids "
            "are aligned with the distance matrix."
        )
    first = np.concatenate(first_parts)
    result = {
        "mAP": float(np.concatenate(ap_parts).mean()),
        "mINP": float(np.concatenate(inp_parts).mean()),
        "cmc": np.concatenate(cmc_parts).mean(axis=0),
        "num_valid_queries": num_valid,
    }
    for k in report_ranks:
        result[f"rank{k}"] = float(np.mean(first <= k))
    return result

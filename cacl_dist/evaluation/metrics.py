"""Retrieval metrics for person re-identification (docs/method.md section 7, Market-1501 protocol).

The distances arrive as a whole (Q, G) matrix or as blocks of query rows, numpy or torch, on
any device; each block is ranked where it lies (:func:`match_ranks`, integer counting, on the
GPU for CUDA blocks) and only the ranks of the correct matches come back to the host, where
AP, CMC and INP are accumulated per query (:class:`RankingAccumulator`). So a CUDA block and
the same block on the CPU give bitwise the same metrics. Nothing here talks to other processes.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

# Bound on the number of float temporaries per block (rows x columns).
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
    cosine similarity does. (The evaluator does not store this matrix: it ranks float64
    blocks, see :mod:`cacl_dist.evaluation.distances`.)
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


def stable_argsort_rows(dist: np.ndarray) -> np.ndarray:
    """Each row's column order by increasing distance, ties by increasing column (gallery) index.

    The order the metrics rank by; used where a whole small distance matrix is shown or listed.
    """
    return np.argsort(np.asarray(dist), axis=1, kind="stable")


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


def _length(value, name: str) -> int:
    """Length of a 1-D id vector; raise ValueError for another shape."""
    array = _to_numpy(value, name)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D vector of ids, got shape {array.shape}.")
    return int(array.shape[0])


def match_ranks(dist_BG: torch.Tensor, q_pids_B: torch.Tensor, g_pids_G: torch.Tensor,
                q_cams_B: torch.Tensor, g_cams_G: torch.Tensor) -> tuple:
    """Ranks of the correct matches of a block of queries, computed where ``dist_BG`` lies.

    Gallery items with the query's pid and camera are removed (junk); the other items of the
    query's pid are its matches. The kept items are ordered by distance, equal distances by
    ascending gallery index (what a stable sort of the row gives), without sorting the row:
    the matches are sorted, every kept item counts the matches ordered before it (a batched
    binary search, then a correction for items whose distance equals a match's), and the rank
    of the t-th match is the number of kept items with at most t matches before them.

    Returns (num_matches_B, ranks_BM): int64, ``ranks_BM[b, t]`` the 1-based rank of the
    (t+1)-th match of query b among its kept items, for t < num_matches_B[b] (0 beyond).
    """
    num_rows, num_gallery = dist_BG.shape
    device = dist_BG.device
    same_pid = q_pids_B[:, None] == g_pids_G[None, :]
    junk = same_pid & (q_cams_B[:, None] == g_cams_G[None, :])
    match = same_pid & ~junk
    num_matches = match.sum(dim=1)
    width = int(num_matches.max()) if num_rows else 0
    if width == 0:
        return num_matches, torch.zeros((num_rows, 0), dtype=torch.int64, device=device)
    dist_BG = dist_BG.contiguous()
    rows, cols = torch.nonzero(match, as_tuple=True)  # row-major: columns ascend per row
    slot = torch.arange(rows.numel(), device=device) - (torch.cumsum(num_matches, 0) - num_matches)[rows]
    match_dist = torch.full((num_rows, width), torch.inf, dtype=dist_BG.dtype, device=device)
    match_dist[rows, slot] = dist_BG[rows, cols]
    match_col = torch.full((num_rows, width), num_gallery, dtype=torch.int64, device=device)
    match_col[rows, slot] = cols
    match_dist, order = torch.sort(match_dist, dim=1, stable=True)  # (distance, index) order
    match_col = torch.gather(match_col, 1, order)
    before = torch.searchsorted(match_dist, dist_BG)  # matches with a smaller distance
    _count_equal_matches_before(before, dist_BG, match_dist, match_col)
    before.masked_fill_(junk, width)  # junk items are not ranked
    flat = torch.arange(num_rows, device=device)[:, None] * (width + 1) + before
    counts = torch.bincount(flat.reshape(-1), minlength=num_rows * (width + 1))
    ranks = torch.cumsum(counts.view(num_rows, width + 1)[:, :width], dim=1)
    slots = torch.arange(width, device=device)[None, :]
    return num_matches, torch.where(slots < num_matches[:, None], ranks, 0)


def _count_equal_matches_before(before, dist_BG, match_dist, match_col) -> None:
    """Add to ``before`` the matches at the same distance as an item and with a smaller index.

    Such matches follow the item's binary-search position in (distance, index) order; every
    match meets itself here (and stops there), other items only on exact ties.
    """
    width = match_dist.shape[1]
    at = torch.gather(match_dist, 1, before.clamp(max=width - 1))
    rows, cols = torch.nonzero((before < width) & (at == dist_BG), as_tuple=True)
    if rows.numel() == 0:
        return
    pos = before[rows, cols]
    value = dist_BG[rows, cols]
    extra = torch.zeros_like(pos)
    active = torch.ones_like(pos, dtype=torch.bool)
    for _ in range(width):
        here = pos.clamp(max=width - 1)
        active &= (pos < width) & (match_dist[rows, here] == value) & (match_col[rows, here] < cols)
        if not bool(active.any()):
            break
        extra += active
        pos = pos + 1
    before[rows, cols] += extra


class RankingAccumulator:
    """AP, INP and first-match rank per query, filled block by block (any order, any device).

    ``add(start, dist_block)`` ranks queries start .. start + len(block) against the whole
    gallery; :meth:`result` returns the metrics once every query was added exactly once.
    """

    def __init__(self, q_pids, g_pids, q_camids, g_camids, max_rank: int = 10, histogram=None) -> None:
        if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
            raise ValueError(f"max_rank must be an integer >= 1, got {max_rank!r}.")
        self.num_query = _length(q_pids, "q_pids")
        self.num_gallery = _length(g_pids, "g_pids")
        self.q_pids = _as_ids(q_pids, "q_pids", self.num_query)
        self.q_camids = _as_ids(q_camids, "q_camids", self.num_query)
        self.g_pids = _as_ids(g_pids, "g_pids", self.num_gallery)
        self.g_camids = _as_ids(g_camids, "g_camids", self.num_gallery)
        self.max_rank = int(max_rank)
        self.ap = np.zeros(self.num_query)
        self.inp = np.zeros(self.num_query)
        self.first = np.zeros(self.num_query, dtype=np.int64)
        self.num_matches = np.zeros(self.num_query, dtype=np.int64)
        self.seen = np.zeros(self.num_query, dtype=bool)
        self.histogram = histogram  # a DistanceHistogram, filled with every block (optional)
        self._on_device: dict = {}

    def _ids(self, device: torch.device) -> tuple:
        """(q_pids, g_pids, q_camids, g_camids) as int64 tensors on ``device``, cached."""
        if device not in self._on_device:
            self._on_device[device] = tuple(
                torch.from_numpy(a).to(device) for a in (self.q_pids, self.g_pids, self.q_camids, self.g_camids))
        return self._on_device[device]

    def add(self, start: int, dist_block) -> None:
        """Rank the queries start .. start + rows of ``dist_block`` ((rows, G), smaller = closer)."""
        block = dist_block if isinstance(dist_block, torch.Tensor) else torch.from_numpy(
            np.ascontiguousarray(_to_numpy(dist_block, "dist")))
        if block.ndim != 2 or block.shape[1] != self.num_gallery:
            raise ValueError(f"a distance block must have shape (rows, {self.num_gallery}) (one column per "
                             f"gallery item), got {tuple(block.shape)}.")
        if block.dtype not in (torch.float32, torch.float64):
            block = block.double()
        stop = start + block.shape[0]
        if not 0 <= start <= stop <= self.num_query or self.seen[start:stop].any():
            raise ValueError(f"distance block of query rows {start}..{stop} is out of range or repeats rows "
                             f"(there are {self.num_query} queries); give every query row exactly once.")
        if bool(torch.isnan(block).any()):
            raise ValueError("dist contains NaN values; check the distance computation.")
        q_pids, g_pids, q_cams, g_cams = self._ids(block.device)
        num_matches, ranks = match_ranks(block, q_pids[start:stop], g_pids, q_cams[start:stop], g_cams)
        if self.histogram is not None:
            self.histogram.add(block, q_pids[start:stop], g_pids, q_cams[start:stop], g_cams)
        num_matches, ranks = num_matches.cpu().numpy(), ranks.cpu().numpy()
        found = np.arange(1, ranks.shape[1] + 1)[None, :]
        safe = np.maximum(ranks, 1)
        precision = np.where(ranks > 0, found / safe, 0.0)
        count = np.maximum(num_matches, 1)
        last = safe[np.arange(ranks.shape[0]), np.maximum(num_matches - 1, 0)] if ranks.shape[1] else count
        self.ap[start:stop] = precision.sum(axis=1) / count
        self.inp[start:stop] = num_matches / last
        self.first[start:stop] = ranks[:, 0] if ranks.shape[1] else 0
        self.num_matches[start:stop] = num_matches
        self.seen[start:stop] = True

    def result(self) -> dict:
        """The metrics (see :func:`evaluate_ranking`); raises ValueError when rows are missing."""
        if not self.seen.all():
            missing = int(np.flatnonzero(~self.seen)[0])
            raise ValueError(f"no distances were given for query row {missing} (of {self.num_query}); "
                             "the blocks must cover every query.")
        valid = self.num_matches > 0
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ValueError(
                f"none of the {self.num_query} queries has a correct match in the gallery after removing "
                "same-pid-same-camera items; check that query and gallery pids and camera ids "
                "are aligned with the distance matrix."
            )
        first = self.first[valid]
        cmc_hits = first[:, None] <= np.arange(1, self.max_rank + 1)[None, :]
        result = {
            "mAP": float(self.ap[valid].mean()),
            "mINP": float(self.inp[valid].mean()),
            "cmc": cmc_hits.mean(axis=0),
            "num_valid_queries": num_valid,
        }
        for k in (1, 5, 10):
            result[f"rank{k}"] = float(np.mean(first <= k))
        if self.histogram is not None:
            result["distance_histogram"] = self.histogram.result()
        return result


def _matrix_blocks(dist, num_gallery: int) -> Iterable:
    """(start, block) pairs of a whole (Q, G) matrix, about ``_BLOCK_ELEMENTS`` entries each."""
    step = max(1, _BLOCK_ELEMENTS // max(1, num_gallery))
    for start in range(0, dist.shape[0], step):
        yield start, dist[start:start + step]


def _is_block_list(value) -> bool:
    """Whether a list or tuple holds (start, block) pairs rather than matrix rows."""
    return bool(value) and all(isinstance(item, tuple) and len(item) == 2 and isinstance(
        item[1], (np.ndarray, torch.Tensor)) for item in value)


def evaluate_ranking(dist, q_pids, g_pids, q_camids, g_camids, max_rank: int = 10, histogram=None) -> dict:
    """Market-1501 protocol retrieval metrics of query-gallery distances (smaller = closer).

    ``dist`` is a (Q, G) matrix (numpy array or torch tensor, any device) or an iterable of
    ``(start, block)`` pairs: ``block`` holds the distances of queries start .. start + rows to
    the whole gallery (numpy or torch; CUDA blocks are ranked on the GPU), and together the
    blocks cover every query once. Only per-query results are kept, never Q x G.

    For every query, gallery items with the same pid and the same camera are removed; a query
    with no remaining correct match is skipped. Ties in distance rank the lower gallery index
    first.

    Returns a dict with fractions in [0, 1]: ``mAP`` (mean non-interpolated average precision),
    ``rank1``/``rank5``/``rank10`` (CMC), ``mINP`` (mean of num_matches / rank of the last
    correct match), ``cmc`` (np.ndarray of length ``max_rank``), and ``num_valid_queries``; with
    ``histogram`` (a :class:`~cacl_dist.evaluation.distance_histogram.DistanceHistogram`) also
    ``distance_histogram``, its counts.
    Raises ValueError when shapes disagree or no query has a correct match.
    """
    if isinstance(dist, (np.ndarray, torch.Tensor)) or (isinstance(dist, (list, tuple)) and not _is_block_list(dist)):
        if not isinstance(dist, torch.Tensor):
            dist = _to_numpy(dist, "dist")
        if dist.ndim != 2:
            raise ValueError(f"dist must be a (num_query, num_gallery) matrix, got shape {tuple(dist.shape)}.")
        num_query, num_gallery = dist.shape
        _as_ids(q_pids, "q_pids", num_query)
        _as_ids(g_pids, "g_pids", num_gallery)
        dist = _matrix_blocks(dist, num_gallery)
    accumulator = RankingAccumulator(q_pids, g_pids, q_camids, g_camids, max_rank, histogram)
    for start, block in dist:
        accumulator.add(int(start), block)
    return accumulator.result()

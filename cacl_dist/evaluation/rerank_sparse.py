"""Exact k-reciprocal re-ranking (Zhong et al., CVPR 2017) without a (Q + G)^2 matrix.

The standard algorithm (docs/method.md section 7) over the Q + G points, in the order the
work is done here:

1. :func:`~cacl_dist.evaluation.neighbours.neighbours_and_row_max`: one blocked pass over all
   pairs gives each point's largest squared distance ``m_i`` (the divisor of its row of the
   original distance ``o_ij = d_ij / m_i``) and its k1 + 1 nearest points, itself first.
2. :func:`~cacl_dist.clustering.jaccard_sparse.expansion_pairs` (the clustering's code, given
   k1 + 1 neighbours) builds the k-reciprocal sets from the first k1 + 1 entries and the
   expansion sets from the first round(k1/2) + 1; a candidate's set is added when it shares
   more than 2/3 of its members with the point's set.
3. The encoding ``V[i, j] = exp(-o_ij) / sum_E(i) exp(-o_ik)`` on those pairs, then the query
   expansion: the mean of the rows of the first k2 neighbours (the point included), as sparse
   rows.
4. Per block of queries: ``S_qg = sum_k min(V_qk, V_gk)`` through the column lists of the
   gallery rows of V (pairs that share no column keep S = 0, a Jaccard distance of exactly 1),
   the Jaccard distance ``1 - S / (2 - S)`` and the final distance
   ``(1 - lambda) * jaccard + lambda * o_qg`` with ``o_qg`` from a blocked matrix product.

:meth:`SparseReranker.blocks` yields the final distances one block of query rows at a time, to
be ranked as they come (:func:`~cacl_dist.evaluation.metrics.evaluate_ranking`). Memory: the
features in float64, a few numbers per point and per non-zero of V, and one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from cacl_dist.clustering.inputs import check_k_parameters
from cacl_dist.clustering.jaccard_sparse import expansion_pairs
from cacl_dist.evaluation.distances import FeatureRows, default_block_rows
from cacl_dist.evaluation.neighbours import neighbours_and_row_max, row_scale

# Contributions min(V_qk, V_gk) summed per block of query rows.
CPU_WORK = 1 << 21
CUDA_WORK = 1 << 26


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking parameters: neighbours k1, query expansion k2, weight lambda."""

    k1: int = 20
    """Each point's k-reciprocal set is searched among its k1 + 1 nearest points (itself included)."""
    k2: int = 6
    """Query expansion averages the encodings of the k2 nearest points (itself included); 1 disables it."""
    lambda_value: float = 0.3
    """Weight of the original distance in the final distance; 1 - lambda goes to the Jaccard distance."""

    def __post_init__(self) -> None:
        for name in ("k1", "k2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"re-ranking {name} must be an integer >= 1, got {value!r}.")
        if self.k2 > self.k1:
            raise ValueError(f"re-ranking k2={self.k2} is larger than k1={self.k1}; choose k2 <= k1.")
        if not 0.0 <= float(self.lambda_value) <= 1.0:
            raise ValueError(f"re-ranking lambda_value must lie in [0, 1], got {self.lambda_value!r}.")

    @classmethod
    def from_config(cls, eval_cfg) -> RerankParams | None:
        """The parameters of ``eval.rerank_*``, or None when ``eval.rerank`` is off."""
        if not eval_cfg.rerank:
            return None
        return cls(eval_cfg.rerank_k1, eval_cfg.rerank_k2, eval_cfg.rerank_lambda)


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """arange(s, s + n) for every (s, n), concatenated, without a Python loop."""
    total = int(lengths.sum())
    first = torch.cumsum(lengths, 0) - lengths
    return torch.repeat_interleave(starts - first, lengths, output_size=total) + torch.arange(
        total, device=starts.device)


def _row_pointers(sorted_rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """CSR row pointers (num_rows + 1,) of entries whose row ids ascend."""
    crow = torch.zeros(num_rows + 1, dtype=torch.int64, device=sorted_rows.device)
    torch.cumsum(torch.bincount(sorted_rows, minlength=num_rows), 0, out=crow[1:])
    return crow


def _lookup(keys_sorted: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> tuple:
    """(found, value) of ``queries`` among ``keys_sorted`` (value 0 where not found)."""
    pos = torch.searchsorted(keys_sorted, queries).clamp_(max=keys_sorted.numel() - 1)
    found = keys_sorted[pos] == queries
    return found, torch.where(found, values[pos], torch.zeros((), dtype=values.dtype, device=values.device))


class SparseReranker:
    """Re-ranked query-gallery distances of ``q_feats`` and ``g_feats``, block by block.

    Args:
        q_feats, g_feats: (Q, D) and (G, D) features, numpy or torch (not re-normalised).
        params: :class:`RerankParams` (k1 20, k2 6, lambda 0.3 by default).
        device: where to compute (default: the query tensor's device, CPU for numpy).
        block: side of the square blocks of the all-pairs pass (default: by device).
    """

    def __init__(self, q_feats, g_feats, params: RerankParams | None = None, device=None,
                 block: int | None = None) -> None:
        self.params = params or RerankParams()
        self.rows = FeatureRows(q_feats, g_feats, device)
        self.device = self.rows.device
        num_points = self.rows.num_points
        check_k_parameters(self.params.k1, self.params.k2, num_points)
        row_max, self.neighbours, cand_dist, cand_index = neighbours_and_row_max(
            self.rows, self.params.k1 + 1, block=block)
        self.scale = row_scale(row_max)
        self.crow, self.cols, self.values = self._encoding(cand_dist, cand_index)
        self._gallery_columns()

    def _encoding(self, cand_dist, cand_index) -> tuple:
        """V after query expansion, as CSR (crow, cols, values), columns ascending per row."""
        num_points = self.rows.num_points
        rows, cols = expansion_pairs(self.neighbours, self.params.k1)  # sorted by row, then column
        keys = rows * num_points + cols
        own = torch.arange(num_points, device=self.device)[:, None]
        known_keys, order = torch.sort((own * num_points + cand_index).reshape(-1))
        found, squared = _lookup(known_keys, cand_dist.reshape(-1)[order], keys)
        missing = torch.nonzero(~found & (rows != cols)).flatten()
        squared[missing] = self.rows.pair_squared(rows[missing], cols[missing])
        squared[rows == cols] = 0.0
        weights = torch.exp(-(squared / self.scale[rows]))
        totals = torch.zeros(num_points, dtype=torch.float64, device=self.device).index_add_(0, rows, weights)
        values = weights / totals[rows]
        crow = _row_pointers(rows, num_points)
        if self.params.k2 == 1:
            return crow, cols, values
        return self._query_expansion(crow, cols, values)

    def _query_expansion(self, crow, cols, values) -> tuple:
        """Row i becomes the mean of the rows of its first k2 neighbours (summed in rank order)."""
        num_points, k2 = self.rows.num_points, self.params.k2
        heads = self.neighbours[:, :k2]
        row_len = crow[1:] - crow[:-1]
        budget = CUDA_WORK if self.device.type == "cuda" else CPU_WORK
        step = max(1, budget // max(1, k2 * int(row_len.max())))
        parts = ([], [], [])
        for lo in range(0, num_points, step):
            hi = min(lo + step, num_points)
            sources = heads[lo:hi].reshape(-1)  # (i, r) row-major: r ascends for every i
            lengths = row_len[sources]
            pos = _ranges(crow[sources], lengths)
            owner = torch.repeat_interleave(torch.arange(lo, hi, device=self.device).repeat_interleave(k2), lengths)
            unique, inverse = torch.unique(owner * num_points + cols[pos], sorted=True, return_inverse=True)
            summed = torch.zeros(unique.shape[0], dtype=torch.float64, device=self.device)
            summed.index_add_(0, inverse, values[pos])
            parts[0].append(unique // num_points)
            parts[1].append(unique % num_points)
            parts[2].append(summed / k2)
        rows = torch.cat(parts[0])
        return _row_pointers(rows, num_points), torch.cat(parts[1]), torch.cat(parts[2])

    def _gallery_columns(self) -> None:
        """Column lists of the gallery rows of V: gallery indices ascending within a column."""
        num_query, num_points = self.rows.num_query, self.rows.num_points
        row_len = self.crow[1:] - self.crow[:-1]
        entry_rows = torch.repeat_interleave(torch.arange(num_points, device=self.device), row_len)
        gallery = entry_rows >= num_query
        g_rows, g_cols, g_values = entry_rows[gallery] - num_query, self.cols[gallery], self.values[gallery]
        order = torch.argsort(g_cols * self.rows.num_gallery + g_rows)
        self.col_ptr = _row_pointers(g_cols[order], num_points)
        self.col_rows, self.col_values = g_rows[order], g_values[order]
        col_len = self.col_ptr[1:] - self.col_ptr[:-1]
        per_entry = col_len[self.cols[:self.crow[num_query]]]
        self.query_work = torch.zeros(num_query + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(torch.zeros(num_query, dtype=torch.int64, device=self.device).index_add_(
            0, entry_rows[:self.crow[num_query]], per_entry), 0, out=self.query_work[1:])

    def overlap(self, lo: int, hi: int) -> torch.Tensor:
        """S of queries lo..hi with the whole gallery, (hi - lo, G) float64 (0 where no column is shared).

        A pair's contributions are added in increasing column order.
        """
        num_gallery = self.rows.num_gallery
        start, stop = int(self.crow[lo]), int(self.crow[hi])
        cols, values = self.cols[start:stop], self.values[start:stop]
        local = torch.repeat_interleave(torch.arange(hi - lo, device=self.device), self.crow[lo + 1:hi + 1]
                                        - self.crow[lo:hi])
        lengths = self.col_ptr[cols + 1] - self.col_ptr[cols]
        pos = _ranges(self.col_ptr[cols], lengths)
        minima = torch.minimum(torch.repeat_interleave(values, lengths), self.col_values[pos])
        flat = torch.repeat_interleave(local, lengths) * num_gallery + self.col_rows[pos]
        out = torch.zeros((hi - lo) * num_gallery, dtype=torch.float64, device=self.device)
        return out.index_add_(0, flat, minima).view(hi - lo, num_gallery)

    def block(self, lo: int, hi: int) -> torch.Tensor:
        """Final distances of queries lo..hi to the whole gallery, (hi - lo, G) float64."""
        lam = float(self.params.lambda_value)
        overlap = self.overlap(lo, hi)
        jaccard = 1.0 - overlap / (2.0 - overlap)
        original = self.rows.query_gallery(lo, hi) / self.scale[lo:hi, None]
        return jaccard * (1.0 - lam) + original * lam

    def _block_ends(self, block_rows: int | None) -> list:
        """Query-row block bounds: at most ``block_rows`` rows and about the work budget each."""
        num_query = self.rows.num_query
        rows_cap = block_rows or default_block_rows(self.device, self.rows.num_gallery)
        budget = CUDA_WORK if self.device.type == "cuda" else CPU_WORK
        work = self.query_work
        bounds, lo = [], 0
        while lo < num_query:
            by_work = int(torch.searchsorted(work, work[lo] + budget, right=True)) - 1
            hi = min(num_query, lo + rows_cap, max(lo + 1, by_work))
            bounds.append((lo, hi))
            lo = hi
        return bounds

    def blocks(self, block_rows: int | None = None) -> Iterator[tuple]:
        """(start, block): the final distances, a block of query rows at a time, in row order."""
        for lo, hi in self._block_ends(block_rows):
            yield lo, self.block(lo, hi)

    def jaccard_pairs(self) -> tuple:
        """(query, gallery, jaccard): every pair with S > 0 (Jaccard < 1), on the CPU.

        Every other query-gallery pair has a Jaccard distance of exactly 1.
        """
        parts = ([], [], [])
        for lo, hi in self._block_ends(None):
            overlap = self.overlap(lo, hi)
            q, g = torch.nonzero(overlap, as_tuple=True)
            s = overlap[q, g]
            parts[0].append((q + lo).cpu())
            parts[1].append(g.cpu())
            parts[2].append((1.0 - s / (2.0 - s)).cpu())
        return tuple(torch.cat(p) for p in parts)


__all__ = ["RerankParams", "SparseReranker"]

"""Exact k-reciprocal Jaccard distance as a sparse pair list, never N x N (docs/method.md section 4.1).

Same math as :mod:`cacl_dist.clustering.jaccard_reference`, vectorised in torch (CPU or CUDA):

1. :func:`~cacl_dist.clustering.knn.knn_topk_unit`: R(i), blocked matmul + top-k.
2. :func:`expansion_pairs`: E(i) as sorted (row, column) pairs. Reciprocity "i in R_k(j)" is
   a sorted search of the key j * N + i among the keys i * N + R_k(i); the 2/3 rule counts,
   per candidate c, how many members of K(c, round(k1/2)) are keys of K(i, k1).
3. :func:`sparse_encoding`: V' in CSR form (softmax over E(i) of -(2 - 2 <x_i, x_j>) in
   float64, then the mean of the rows of the first k2 neighbours).
4. :func:`jaccard_pairs`: S_ij = sum_k min(V'_ik, V'_jk) only for pairs sharing a support
   column k, through the column (CSC) lists of V'. S is symmetric, so each pair is summed once
   (j > i), a block of rows at a time, into a (rows x (N - first row)) buffer whose size is
   bounded by ``budget``, and then mirrored.

d_ij = 1 exactly for every pair not returned, so the pair list is exact, not approximate.
"""

from dataclasses import dataclass

import torch

from cacl_dist.clustering.inputs import check_k_parameters
from cacl_dist.clustering.knn import knn_topk_unit
from cacl_dist.clustering.unit_rows import UnitRows
from cacl_dist.ordered_add import index_add_

# Entries of the per-block temporaries: small on CPU (cache-resident blocks are several times
# faster there), large on CUDA (fewer kernel launches).
CPU_BUDGET = 1 << 18
CUDA_BUDGET = 1 << 26


def default_budget(device) -> int:
    """Default ``budget`` for computations on ``device``."""
    return CUDA_BUDGET if torch.device(device).type == "cuda" else CPU_BUDGET


@dataclass
class SparseEncoding:
    """V' in CSR form: the non-zeros of row i are ``cols[crow[i]:crow[i+1]]`` (ascending)."""

    crow: torch.Tensor
    """(N + 1,) int64 row pointers."""
    cols: torch.Tensor
    """(nnz,) int64 column indices, ascending within every row."""
    values: torch.Tensor
    """(nnz,) float64 values; every row sums to 1."""

    @property
    def num_points(self) -> int:
        """N, the number of rows (and columns)."""
        return self.crow.shape[0] - 1


def _is_member(sorted_keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Return a boolean tensor: which ``queries`` occur in the ascending ``sorted_keys``."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries, dtype=torch.bool)
    pos = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    return sorted_keys[pos] == queries


def reciprocal_mask(neighbours_NK: torch.Tensor, k: int) -> tuple:
    """Return (heads, mask): heads = R_k(i) (first min(k+1, k1) entries); mask marks K(i, k)."""
    num_points = neighbours_NK.shape[0]
    length = min(k + 1, neighbours_NK.shape[1])
    heads = neighbours_NK[:, :length]
    own = torch.arange(num_points, device=heads.device)[:, None]
    keys, _ = torch.sort((own * num_points + heads).reshape(-1))
    mask = _is_member(keys, heads * num_points + own)
    return heads, mask


def _ranges(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenation of arange(s, s + n) over (starts, lengths), without a Python loop."""
    total = int(lengths.sum())
    offsets = torch.cumsum(lengths, 0) - lengths
    return torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(
        total, device=starts.device
    )


def expansion_pairs(neighbours_NK: torch.Tensor, k1: int) -> tuple:
    """Return E(i) for all i as (rows, cols) int64, sorted by row then column.

    E(i) = K(i, k1) united with every K(c, round(k1/2)), c in K(i, k1), whose overlap with
    K(i, k1) is more than 2/3 of |K(c, round(k1/2))| (exact integer test 3 * overlap > 2 * size).
    """
    num_points = neighbours_NK.shape[0]
    half_k = int(round(k1 / 2))
    full_heads, full_mask = reciprocal_mask(neighbours_NK, k1)
    half_heads, half_mask = reciprocal_mask(neighbours_NK, half_k)
    owner, rank = torch.nonzero(full_mask, as_tuple=True)
    members = full_heads[owner, rank]  # c in K(i, k1), pairs (owner=i, c)
    reciprocal_keys, _ = torch.sort(owner * num_points + members)
    cand = half_heads[members]  # (P, h+1): R_h(c)
    cand_mask = half_mask[members]  # which form K(c, h)
    inside = _is_member(reciprocal_keys, owner[:, None] * num_points + cand) & cand_mask
    accepted = 3 * inside.sum(dim=1) > 2 * cand_mask.sum(dim=1)
    added_mask = cand_mask & accepted[:, None]
    added_keys = (owner[:, None] * num_points + cand)[added_mask]
    keys = torch.unique(torch.cat([reciprocal_keys, added_keys]))  # sorted
    return keys // num_points, keys % num_points


def _csr_from_sorted_rows(rows: torch.Tensor, num_points: int) -> torch.Tensor:
    """Row pointers (N + 1,) of a COO whose ``rows`` are sorted ascending."""
    counts = torch.bincount(rows, minlength=num_points)
    crow = torch.zeros(num_points + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow


def _expansion_similarity(units, rows, cols, neighbours_NK, sims_NK) -> torch.Tensor:
    """<x_i, x_j> for the E pairs: from the neighbour search where j is in R(i), else computed."""
    if sims_NK is None:
        return units.pair_similarity(rows, cols)
    num_points = units.num_points
    own = torch.arange(num_points, device=rows.device)[:, None]
    known_keys, order = torch.sort((own * num_points + neighbours_NK).reshape(-1))
    known_sims = sims_NK.reshape(-1)[order]
    keys = rows * num_points + cols
    pos = torch.searchsorted(known_keys, keys).clamp_(max=known_keys.numel() - 1)
    found = known_keys[pos] == keys
    out = torch.where(found, known_sims[pos], torch.zeros((), dtype=torch.float64, device=rows.device))
    missing = torch.nonzero(~found).flatten()
    out[missing] = units.pair_similarity(rows[missing], cols[missing])
    return out


def sparse_encoding(units: UnitRows, neighbours_NK: torch.Tensor, k1: int, k2: int,
                    budget=None, sims_NK=None) -> SparseEncoding:
    """Return V' (softmax encoding over E(i), query-expanded over the first k2 neighbours).

    ``units`` are the unit rows (:class:`UnitRows`), ``neighbours_NK`` R(i) with at least k1 columns,
    ``sims_NK`` (optional) their similarities, reused for the pairs of E(i) inside R(i).
    Matches :func:`~cacl_dist.clustering.jaccard_reference.k_reciprocal_encoding` up to
    float64 rounding.
    """
    num_points = units.num_points
    budget = budget or default_budget(units.device)
    rows, cols = expansion_pairs(neighbours_NK[:, :k1], k1)
    logits = -(2.0 - 2.0 * _expansion_similarity(units, rows, cols, neighbours_NK, sims_NK))
    row_max = torch.full((num_points,), -torch.inf, dtype=torch.float64, device=rows.device)
    row_max.scatter_reduce_(0, rows, logits, reduce="amax")
    weights = torch.exp(logits - row_max[rows])
    row_sum = index_add_(torch.zeros(num_points, dtype=torch.float64, device=rows.device), rows, weights)
    values = weights / row_sum[rows]
    crow = _csr_from_sorted_rows(rows, num_points)
    if k2 == 1:
        return SparseEncoding(crow, cols, values)
    return _query_expansion(SparseEncoding(crow, cols, values), neighbours_NK[:, :k2], budget)


def _query_expansion(encoding: SparseEncoding, heads_NK2: torch.Tensor, budget: int) -> SparseEncoding:
    """V'[i] = sum over r < k2 of V[heads[i, r]] / k2, added in rank order r, by row blocks."""
    num_points, k2 = heads_NK2.shape
    row_len = encoding.crow[1:] - encoding.crow[:-1]
    out_rows, out_cols, out_values = [], [], []
    step = max(1, budget // max(1, k2 * int(row_len.max())))
    for lo in range(0, num_points, step):
        hi = min(lo + step, num_points)
        sources = heads_NK2[lo:hi].reshape(-1)  # (i, r) in row-major order: r ascends per i
        lengths = row_len[sources]
        pos = _ranges(encoding.crow[sources], lengths)
        owner = torch.repeat_interleave(
            torch.arange(lo, hi, device=pos.device).repeat_interleave(k2), lengths
        )
        keys = owner * num_points + encoding.cols[pos]
        unique_keys, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        summed = index_add_(torch.zeros(unique_keys.shape[0], dtype=torch.float64, device=pos.device),
                            inverse, encoding.values[pos] * (1.0 / k2))
        out_rows.append(unique_keys // num_points)
        out_cols.append(unique_keys % num_points)
        out_values.append(summed)
    rows = torch.cat(out_rows)
    return SparseEncoding(_csr_from_sorted_rows(rows, num_points), torch.cat(out_cols),
                          torch.cat(out_values))


def jaccard_pairs(encoding: SparseEncoding, max_distance: float = 0.6, groups=None,
                  budget=None, bar=None) -> tuple:
    """Return (rows, cols, dists) for every pair i != j with S_ij > 0 and d_ij <= max_distance.

    Args:
        encoding: V' from :func:`sparse_encoding`.
        max_distance: keep pairs with d_ij <= max_distance (1 keeps every pair with S_ij > 0,
            i.e. every pair whose distance is not exactly 1).
        groups: optional (N,) int64 group ids; pairs with S_ij > 0 inside one group (id >= 0)
            are kept whatever their distance (used for refinement within raw clusters).
        budget: the per-block temporaries hold about ``budget`` entries (default: by device).
        bar: a :class:`~cacl_dist.runs.logs.StageBar` advanced by the rows done (optional).

    Returns:
        rows, cols: int64 (sorted by row then column; both (i, j) and (j, i) appear);
        dists: float64 d_ij = max(1 - S/(2-S), 0).
    """
    num_points = encoding.num_points
    device = encoding.cols.device
    budget = budget or default_budget(device)
    entry_rows = _row_ids(encoding)
    # Column lists (CSC) of V': rows holding column k, ascending. S_ij is symmetric, so each
    # entry (i, k) meets only the later rows j > i of column k: the rest of its column list.
    order = torch.argsort(encoding.cols * num_points + entry_rows)
    col_rows = entry_rows[order]
    col_values = encoding.values[order]
    col_ptr = _csr_from_sorted_rows(encoding.cols[order], num_points)
    csc_pos = torch.empty_like(order)
    csc_pos[order] = torch.arange(order.numel(), device=device)
    later_start = csc_pos + 1
    later_len = col_ptr[encoding.cols + 1] - later_start
    work = torch.zeros(num_points + 1, dtype=torch.int64, device=device)
    torch.cumsum(torch.zeros(num_points, dtype=torch.int64, device=device).index_add_(
        0, entry_rows, later_len), 0, out=work[1:])  # work[i]: contributions of rows < i
    out = ([], [], [])
    lo = 0
    if bar is not None:
        bar.add_total(num_points)
    while lo < num_points:
        hi = _block_end(lo, num_points, work, budget)
        _jaccard_block(encoding, lo, hi, later_start, later_len, col_rows, col_values,
                       max_distance, groups, out)
        if bar is not None:
            bar.update(hi - lo)
        lo = hi
    if not out[0]:
        empty = torch.empty(0, dtype=torch.int64, device=device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.float64, device=device)
    upper_rows, upper_cols, upper_dists = (torch.cat(part) for part in out)
    # Both orientations, sorted by row then column.
    keys = torch.cat([upper_rows * num_points + upper_cols, upper_cols * num_points + upper_rows])
    keys, by_key = torch.sort(keys)
    dists = torch.cat([upper_dists, upper_dists])[by_key]
    return keys // num_points, keys % num_points, dists


def _row_ids(encoding: SparseEncoding) -> torch.Tensor:
    """Row index of every stored entry of ``encoding``."""
    row_len = encoding.crow[1:] - encoding.crow[:-1]
    return torch.repeat_interleave(torch.arange(encoding.num_points, device=row_len.device), row_len)


def _block_end(lo: int, num_points: int, work: torch.Tensor, budget: int) -> int:
    """End of the row block starting at ``lo`` that keeps both buffers within ``budget``."""
    by_buffer = lo + max(1, budget // max(1, num_points - lo))
    by_work = int(torch.searchsorted(work, work[lo] + budget, right=True)) - 1
    return min(num_points, by_buffer, max(lo + 1, by_work))


def _jaccard_block(encoding, lo, hi, later_start, later_len, col_rows, col_values, max_distance,
                   groups, out) -> None:
    """S_ij for rows lo <= i < hi and j > i, accumulated into a (hi-lo) x (N-lo) buffer."""
    num_points = encoding.num_points
    width = num_points - lo
    start, stop = int(encoding.crow[lo]), int(encoding.crow[hi])
    own_values = encoding.values[start:stop]
    local_rows = _row_ids_range(encoding, lo, hi)
    lengths = later_len[start:stop]
    pos = _ranges(later_start[start:stop], lengths)
    partners = col_rows[pos] - lo
    minima = torch.minimum(torch.repeat_interleave(own_values, lengths), col_values[pos])
    flat = torch.repeat_interleave(local_rows, lengths) * width + partners
    overlap = torch.zeros((hi - lo) * width, dtype=torch.float64, device=flat.device)
    # Contributions of a pair arrive in ascending column order and are added in that order, as
    # in the reference (on every device: see cacl_dist.ordered_add).
    index_add_(overlap, flat, minima)
    nz = torch.nonzero(overlap).flatten()
    s = overlap[nz]
    dists = torch.clamp(1.0 - s / (2.0 - s), min=0.0)
    rows = nz // width + lo
    cols = nz % width + lo
    keep = dists <= max_distance
    if groups is not None:
        keep |= (groups[rows] == groups[cols]) & (groups[rows] >= 0)
    out[0].append(rows[keep])
    out[1].append(cols[keep])
    out[2].append(dists[keep])


def _row_ids_range(encoding: SparseEncoding, lo: int, hi: int) -> torch.Tensor:
    """Local row index (0..hi-lo-1) of every stored entry of rows lo..hi."""
    lengths = encoding.crow[lo + 1:hi + 1] - encoding.crow[lo:hi]
    return torch.repeat_interleave(torch.arange(hi - lo, device=lengths.device), lengths)


def jaccard_sparse(feats, k1: int = 30, k2: int = 6, max_distance: float = 0.6,
                   block_size=None, budget=None, precision: str = "auto",
                   device=None) -> tuple:
    """Return (rows, cols, dists): all pairs i != j with Jaccard distance d_ij <= max_distance.

    Args:
        feats: (N, D) numpy array or torch tensor (rows are L2-normalised here).
        k1, k2: as in :func:`~cacl_dist.clustering.jaccard_reference.jaccard_distance_reference`.
        max_distance: largest distance kept; with max_distance >= 1 every pair with d_ij < 1
            (sharing a support element) is returned, all other pairs have d_ij = 1 exactly.
        block_size: rows per block of the neighbour search (see :func:`~cacl_dist.clustering.knn.knn_topk_unit`).
        budget: entries allowed per block of the Jaccard accumulation (default: by device).
        precision: neighbour-search matmul precision (see :func:`~cacl_dist.clustering.knn.knn_topk_unit`).
        device: where to compute (default: the input's device).

    Returns:
        int64 rows and cols (sorted by row, then column; both (i, j) and (j, i) appear) and
        float64 distances; all on the compute device.
    """
    units = UnitRows(feats, device)
    check_k_parameters(k1, k2, units.num_points)
    encoding = encode_features(units, k1, k2, block_size, budget, precision)
    return jaccard_pairs(encoding, max_distance, budget=budget)


def encode_features(units: UnitRows, k1: int, k2: int, block_size=None,
                    budget=None, precision: str = "auto", neighbours=None) -> SparseEncoding:
    """R(i) by blocked top-k, then V' (see :func:`sparse_encoding`), from the unit rows.

    ``neighbours``: (sims, idx) of :func:`~cacl_dist.clustering.knn.knn_topk_unit` with k1
    columns when already computed (for instance by several processes), else searched here.
    """
    check_k_parameters(k1, k2, units.num_points)
    if neighbours is None:
        neighbours = knn_topk_unit(units, k1, block_size=block_size, precision=precision)
    sims, neighbours = neighbours
    if tuple(neighbours.shape) != (units.num_points, k1) or sims.shape != neighbours.shape:
        raise ValueError(f"precomputed neighbours must be two ({units.num_points}, {k1}) tensors "
                         f"(one row per point, k1 columns); got {tuple(sims.shape)} and {tuple(neighbours.shape)}.")
    sims = sims.to(device=units.device, dtype=torch.float64)
    neighbours = neighbours.to(device=units.device, dtype=torch.int64)
    return sparse_encoding(units, neighbours, k1, k2, budget, sims_NK=sims)

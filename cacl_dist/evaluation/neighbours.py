"""Row maxima and nearest-neighbour lists over all Q + G points, without a (Q + G)^2 matrix.

The re-ranking's "original distance" divides every row of the squared Euclidean distance
matrix by the row's maximum, and its k-reciprocal sets need the nearest points of every point.
:func:`scan_points` gets both in one pass over the square blocks on and above the diagonal of
the distance matrix (the matrix is symmetric: each block serves its rows and, transposed, its
columns), keeping per point the running maximum and the ``width`` smallest distances.
:func:`rank_neighbours` orders those candidates.

Tie rule (the re-ranking sorts rows with a non-stable quicksort, so its tie order is not
defined): a point comes first in its own list, then the others by increasing normalised
distance ``d_ij / max_k d_ik``, equal values by increasing index. Candidates are chosen by raw
distance, which the division can only merge, never reorder; a row whose last chosen neighbour
ties with its largest candidate (a tie that may continue outside the candidates) is ranked again
from its full row of distances, so the lists are exact for any input.
"""

from __future__ import annotations

import torch

from cacl_dist.evaluation.distances import FeatureRows

# Rows (and columns) per square block of the scan: 32 MB of float64 on a CPU, 512 MB on a GPU.
CPU_SCAN_BLOCK = 2048
CUDA_SCAN_BLOCK = 8192


def default_scan_block(device) -> int:
    """Side of the square distance blocks of :func:`scan_points` on ``device``."""
    return CUDA_SCAN_BLOCK if torch.device(device).type == "cuda" else CPU_SCAN_BLOCK


def _merge(best_d, best_i, lo, hi, block, offset, by_column) -> None:
    """Fold the smallest entries of ``block`` (per row, or per column) into rows lo..hi."""
    width = best_d.shape[1]
    dim = 0 if by_column else 1
    values, index = torch.topk(block, min(width, block.shape[dim]), dim=dim, largest=False, sorted=False)
    if by_column:
        values, index = values.T, index.T
    merged_d = torch.cat([best_d[lo:hi], values], dim=1)
    merged_i = torch.cat([best_i[lo:hi], index + offset], dim=1)
    kept, where = torch.topk(merged_d, width, dim=1, largest=False, sorted=False)
    best_d[lo:hi] = kept
    best_i[lo:hi] = torch.gather(merged_i, 1, where)


def scan_points(rows: FeatureRows, width: int, block: int | None = None) -> tuple:
    """One pass over all pairs: (row_max_N, cand_dist_NW, cand_index_NW).

    ``row_max_N`` is the largest squared distance of each point to any point;
    ``cand_index_NW`` holds ``width`` (at most N - 1) points other than the point itself with
    the smallest squared distances ``cand_dist_NW``, in no particular order; every point left
    out is at least as far as all of them.
    """
    num_points, device = rows.num_points, rows.device
    width = min(width, num_points - 1)
    block = block or default_scan_block(device)
    best_d = torch.full((num_points, width), torch.inf, dtype=torch.float64, device=device)
    best_i = torch.zeros((num_points, width), dtype=torch.int64, device=device)
    row_max = torch.zeros(num_points, dtype=torch.float64, device=device)
    bounds = [(lo, min(lo + block, num_points)) for lo in range(0, num_points, block)]
    for a, (r_lo, r_hi) in enumerate(bounds):
        for c_lo, c_hi in bounds[a:]:
            dist = rows.squared(r_lo, r_hi, c_lo, c_hi)
            diagonal = r_lo == c_lo
            if diagonal:
                dist.fill_diagonal_(0.0)
            torch.maximum(row_max[r_lo:r_hi], dist.amax(dim=1), out=row_max[r_lo:r_hi])
            if not diagonal:
                torch.maximum(row_max[c_lo:c_hi], dist.amax(dim=0), out=row_max[c_lo:c_hi])
            if diagonal:
                dist.fill_diagonal_(torch.inf)  # a point is not its own candidate
            _merge(best_d, best_i, r_lo, r_hi, dist, c_lo, by_column=False)
            if not diagonal:
                _merge(best_d, best_i, c_lo, c_hi, dist, r_lo, by_column=True)
    return row_max, best_d, best_i


def row_scale(row_max: torch.Tensor) -> torch.Tensor:
    """The divisor of each row of the original distance: its maximum (1 where the maximum is 0)."""
    return torch.where(row_max > 0, row_max, torch.ones_like(row_max))


def rank_neighbours(rows: FeatureRows, row_max, cand_dist, cand_index, count: int) -> torch.Tensor:
    """The ``count`` nearest points of every point, itself first: (N, count) int64.

    Ordered by normalised distance, equal values by index (see the module docstring), from the
    candidates of :func:`scan_points`; rows whose order cannot be settled from the candidates
    are ranked from their full distance rows.
    """
    num_points, width = cand_dist.shape
    if not 1 <= count - 1 <= width:
        raise ValueError(f"count must lie in [2, {width + 1}] (the candidates per point plus itself), got {count}.")
    scale = row_scale(row_max)
    by_index, order = torch.sort(cand_index, dim=1)
    values = torch.gather(cand_dist, 1, order) / scale[:, None]
    values, order = torch.sort(values, dim=1, stable=True)
    ranked = torch.gather(by_index, 1, order)
    own = torch.arange(num_points, device=ranked.device)[:, None]
    out = torch.cat([own, ranked[:, :count - 1]], dim=1)
    if width < num_points - 1:
        redo = torch.nonzero(values[:, count - 2] == values[:, width - 1]).flatten()
        step = max(1, (1 << 22) // num_points)
        for lo in range(0, redo.numel(), step):
            index = redo[lo:lo + step]
            full = rows.squared_rows(index) / scale[index, None]
            full[torch.arange(index.numel(), device=full.device), index] = -torch.inf  # self first
            _, order = torch.sort(full, dim=1, stable=True)
            out[index] = order[:, :count]
    return out


def neighbours_and_row_max(rows: FeatureRows, count: int, margin: int = 16, block: int | None = None) -> tuple:
    """(row_max_N, neighbours_NC, cand_dist_NW, cand_index_NW): the scan and the ranked lists.

    ``margin`` extra candidates per point (beyond ``count - 1``) make full-row re-ranking rare
    and let callers look up more pair distances from the candidates.
    """
    row_max, cand_dist, cand_index = scan_points(rows, count - 1 + margin, block)
    return row_max, rank_neighbours(rows, row_max, cand_dist, cand_index, count), cand_dist, cand_index


__all__ = ["default_scan_block", "neighbours_and_row_max", "rank_neighbours", "row_scale", "scan_points"]

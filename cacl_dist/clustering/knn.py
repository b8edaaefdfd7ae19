"""Blocked k-nearest-neighbour search by cosine similarity, in torch (CPU or CUDA).

:func:`knn_topk_unit` returns R(i) of docs/method.md section 4.1 for every point without an N x N matrix.
The order equals :func:`~cacl_dist.clustering.jaccard_reference.k_nearest_neighbours` on the
reference's encoding distance 2 - 2 <x_i, x_j> (float64): the point itself first, then
ascending distance, equal distances by ascending index.

Precisions:

- ``"float64"``: strips of rows times all points, a float64 matrix product.
- ``"float32"`` (default on CPU), ``"tfloat32"`` (default on CUDA), ``"bfloat16"``: only the
  square blocks on and above the diagonal of X X^T are multiplied in that precision (half the
  work); each block updates the running top ``k + margin`` candidates of its rows and of its
  columns. The candidates are re-scored in float64 (a sampled matrix product) and re-ranked.
  A row is accepted only if a rigorous error bound of the low-precision product
  (:func:`error_bound`) proves that no point outside its candidates can enter its top k;
  the other rows are recomputed in float64. The ranks are therefore the float64 ranks in
  every mode.

Block and strip sizes come from a memory budget per device type
(:func:`~cacl_dist.clustering.blocks.plan_blocks`); a float64 strip is ranked in place, so it
costs 8 bytes per entry and nothing else of size rows x N.
"""

from contextlib import contextmanager

import numpy as np
import torch

from cacl_dist.clustering.blocks import plan_blocks
from cacl_dist.clustering.unit_rows import UnitRows

PRECISIONS = ("auto", "float64", "float32", "tfloat32", "bfloat16")


# Low-precision neighbour searches: (input dtype, input unit round-off, output unit round-off,
# TF32 allowed). TF32 rounds float32 inputs to 10 explicit mantissa bits; truncation is
# allowed for, hence 2^-10 rather than 2^-11.
LOW_PRECISION = {
    "float32": (torch.float32, 2.0 ** -24, 0.0, False),
    "tfloat32": (torch.float32, 2.0 ** -10, 0.0, True),
    "bfloat16": (torch.bfloat16, 2.0 ** -8, 2.0 ** -8, False),
}


def error_bound(precision: str, dim: int) -> float:
    """Upper bound of |<x, y>_computed - <x, y>| for unit rows x, y of length ``dim``.

    The low-precision rows are float32 features divided by a float32 norm (at most 3 float32
    unit round-offs from the exact unit row, see :meth:`UnitRows.low`), then rounded to the
    precision's format (u_in); the products and the sum are accumulated in float32 (the classic
    gamma_D bound, doubled to cover hardware that aligns partial sums by truncation) and the
    result is rounded to the output format (u_out). Valid because sum_i |x_i y_i| <= 1 for
    unit rows (Cauchy-Schwarz).
    """
    if precision not in LOW_PRECISION:
        raise ValueError(f"no error bound for precision {precision!r}")
    _, u_in, u_out, _ = LOW_PRECISION[precision]
    u32 = 2.0 ** -24
    u_in = u_in + 3 * u32 * (1 + u_in)
    gamma = dim * u32 / (1 - dim * u32)
    before_output = 2 * u_in + u_in * u_in + 2 * gamma * (1 + u_in) ** 2
    return before_output + u_out * (1 + before_output)


def _has_fp32_precision(matmul) -> bool:
    """Whether the cuBLAS settings offer ``fp32_precision`` (torch >= 2.9)."""
    try:
        matmul.fp32_precision
    except AttributeError:
        return False
    return True


@contextmanager
def _matmul_precision(allow_tf32: bool):
    """Set TF32 as asked and switch off reduced-precision bfloat16 reductions for a block.

    torch >= 2.9 sets TF32 through ``fp32_precision`` ("tf32" or "ieee"); there the legacy
    ``allow_tf32`` raises once anything used the new setting, so only the new one is touched.
    Older torch has only ``allow_tf32``. The previous settings are restored on exit.
    """
    matmul = torch.backends.cuda.matmul
    new_api = _has_fp32_precision(matmul)
    saved_tf32 = matmul.fp32_precision if new_api else matmul.allow_tf32
    saved_bf16 = matmul.allow_bf16_reduced_precision_reduction
    try:
        if new_api:
            matmul.fp32_precision = "tf32" if allow_tf32 else "ieee"
        else:
            matmul.allow_tf32 = allow_tf32
        matmul.allow_bf16_reduced_precision_reduction = False
        in_effect = (matmul.fp32_precision == "tf32") if new_api else bool(matmul.allow_tf32)
        if in_effect != allow_tf32:  # the error bound of the search assumes the precision asked for
            raise RuntimeError(f"the kNN search asked cuBLAS for {'TF32' if allow_tf32 else 'IEEE float32'} "
                               f"products, but the setting reads {'TF32' if in_effect else 'IEEE'} back")
        yield
    finally:
        if new_api:
            matmul.fp32_precision = saved_tf32
        else:
            matmul.allow_tf32 = saved_tf32
        matmul.allow_bf16_reduced_precision_reduction = saved_bf16


def tf32_in_effect(device) -> bool:
    """Whether float32 products on `device` run in TF32 under the search's TF32 setting.

    Measured, not read from a flag: a product of random 256 x 256 matrices is compared with its
    float64 value. TF32 keeps 10 mantissa bits (relative error ~1e-4), float32 23 (~1e-7), so the
    error tells which one ran (``NVIDIA_TF32_OVERRIDE=0`` or a GPU without TF32 gives IEEE). False
    on a CPU.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return False
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(256, 256, generator=gen, dtype=torch.float64), torch.rand(256, 256, generator=gen,
                                                                               dtype=torch.float64)
    with _matmul_precision(True):
        product = (a.float().to(device) @ b.float().to(device)).double().cpu()
    exact = a.float().double() @ b.float().double()
    return float(((product - exact).abs() / exact.abs()).max()) > 1e-5


def _block_pairs(num_points: int, block_size: int, start: int, stop: int) -> list:
    """(row_lo, row_hi, col_lo, col_hi, mirror) of the X X^T blocks a search multiplies.

    All rows: the blocks on and above the diagonal, each also used transposed (``mirror``).
    A row range: its rows against every column block.
    """
    blocks = [(lo, min(lo + block_size, num_points)) for lo in range(0, num_points, block_size)]
    if (start, stop) == (0, num_points):
        return [(r_lo, r_hi, c_lo, c_hi, c_lo != r_lo) for i, (r_lo, r_hi) in enumerate(blocks)
                for c_lo, c_hi in blocks[i:]]
    rows = [(lo, min(lo + block_size, stop)) for lo in range(start, stop, block_size)]
    return [(r_lo, r_hi, c_lo, c_hi, False) for r_lo, r_hi in rows for c_lo, c_hi in blocks]


def _candidates(units: UnitRows, dtype: torch.dtype, width: int, block_size: int,
                allow_tf32: bool, start: int, stop: int, bar=None) -> tuple:
    """The ``width`` largest low-precision similarities of rows start..stop (self as +inf).

    Each block of X X^T updates the running candidates of its rows and, for a mirrored block
    (see :func:`_block_pairs`), of its columns. Returns (sims, index) of shape
    (stop - start, width), sorted by descending similarity within a row.
    """
    device = units.device
    best_sims = torch.full((stop - start, width), -torch.inf, dtype=torch.float32, device=device)
    best_index = torch.zeros((stop - start, width), dtype=torch.int64, device=device)

    def offer(lo, hi, block, other_lo, by_column):
        floor = best_sims[lo - start:hi - start].min(dim=1).values
        top = _entries_above(block, floor, width, by_column)
        if top is None:
            return
        sims = torch.cat([best_sims[lo - start:hi - start], top[0]], dim=1)
        index = torch.cat([best_index[lo - start:hi - start], top[1] + other_lo], dim=1)
        kept, where = torch.topk(sims, width, dim=1, sorted=False)
        best_sims[lo - start:hi - start] = kept
        best_index[lo - start:hi - start] = torch.gather(index, 1, where)

    row_tile = (None, None)
    pairs = _block_pairs(units.num_points, block_size, start, stop)
    if bar is not None:
        bar.add_total(len(pairs))
    with _matmul_precision(allow_tf32):
        for row_lo, row_hi, col_lo, col_hi, mirror in pairs:
            if row_tile[0] != row_lo:
                row_tile = (row_lo, units.low(row_lo, row_hi, dtype))
            same = (col_lo, col_hi) == (row_lo, row_hi)
            col_tile = row_tile[1] if same else units.low(col_lo, col_hi, dtype)
            block = (row_tile[1] @ col_tile.T).float()
            if max(row_lo, col_lo) < min(row_hi, col_hi):  # the block holds self pairs
                own = torch.arange(max(row_lo, col_lo), min(row_hi, col_hi), device=device)
                block[own - row_lo, own - col_lo] = torch.inf  # self comes first
            offer(row_lo, row_hi, block, col_lo, by_column=False)
            if mirror:
                offer(col_lo, col_hi, block, row_lo, by_column=True)
            if bar is not None:
                bar.update()
    best_sims, order = torch.sort(best_sims, dim=1, descending=True)
    return best_sims, torch.gather(best_index, 1, order)


def _entries_above(block_RC: torch.Tensor, floor: torch.Tensor, width: int, by_column: bool):
    """The entries of each row of ``block_RC`` (each column if ``by_column``) above that row's
    ``floor`` (the smallest of its running candidates), at most ``width`` per row, as
    (values, indices) padded with -inf; None if there are none.

    Once the candidates are filled, few entries pass, so collecting them is much cheaper than
    a top-k over the whole block; while some are still empty (floor -inf), a top-k it is.
    """
    block = block_RC.T if by_column else block_RC
    if bool(torch.isneginf(floor).any()):
        return torch.topk(block, min(width, block.shape[1]), dim=1, sorted=False)
    hits = block_RC > (floor[None, :] if by_column else floor[:, None])  # contiguous either way
    rows, cols = torch.nonzero(hits, as_tuple=True)  # row-major: rows ascending
    values = block_RC[rows, cols]
    owner, member = (cols, rows) if by_column else (rows, cols)
    if by_column:
        owner, order = torch.sort(owner, stable=True)
        member, values = member[order], values[order]
    counts = torch.bincount(owner, minlength=floor.shape[0])
    most = int(counts.max()) if owner.numel() else 0
    if most == 0:
        return None
    if most > width:
        return torch.topk(block, min(width, block.shape[1]), dim=1, sorted=False)
    slot = torch.arange(owner.numel(), device=owner.device) - (torch.cumsum(counts, 0) - counts)[owner]
    out_values = torch.full((floor.shape[0], most), -torch.inf, dtype=block.dtype, device=block.device)
    out_index = torch.zeros((floor.shape[0], most), dtype=torch.int64, device=block.device)
    out_values[owner, slot] = values
    out_index[owner, slot] = member
    return out_values, out_index


def _low_precision_rank(units, k, margin, precision, block_size, start=0, stop=None, bar=None):
    """Rank every row from low-precision candidates re-scored in float64.

    Only the candidates that can still reach the top k (low-precision similarity within twice
    the error bound of the k-th) are re-scored. Returns (index_NK, sims_NK, exact_N): the
    float64 ranking, the float64 similarities, and which rows are proven exact (the others
    must be recomputed).
    """
    num_points = units.num_points
    stop = num_points if stop is None else stop
    width = min(num_points, k + margin)
    dtype, _, _, allow_tf32 = LOW_PRECISION[precision]
    bound = error_bound(precision, units.dim)
    cand_sims, cand = _candidates(units, dtype, width, block_size, allow_tf32, start, stop, bar)
    rescore = cand_sims >= cand_sims[:, k - 1:k].to(torch.float64) - 2 * bound  # a prefix per row
    own = torch.arange(start, stop, device=cand.device)[:, None].expand_as(cand)
    exact = torch.full(cand.shape, -2.0, dtype=torch.float64, device=cand.device)  # distance 6
    exact[rescore] = units.pair_similarity(own[rescore], cand[rescore])
    exact_dist = 2.0 - 2.0 * exact
    exact_dist[cand == own] = -torch.inf
    order, where = _rank_block_candidates(exact_dist, cand, k)
    order_sims = torch.gather(exact, 1, where)
    num_rescored = rescore.sum(dim=1, keepdim=True)
    proven = _unscored_are_farther(cand_sims, num_rescored, exact_dist, k, bound)
    if width == num_points:  # no point outside the candidates: fully re-scored rows are exact
        proven |= num_rescored[:, 0] == width
    return order, order_sims, proven


def _unscored_are_farther(cand_sims, num_rescored, exact_dist, k, bound) -> torch.Tensor:
    """Rows where every point not re-scored is provably farther than the exact k-th distance.

    Such a point (inside the candidates or outside them) has a low-precision similarity at most
    that of the first candidate not re-scored (or of the smallest candidate, if all were).
    """
    width = cand_sims.shape[1]
    first_unscored = torch.gather(cand_sims, 1, num_rescored.clamp(max=width - 1))[:, 0]
    lower = 2.0 - 2.0 * (first_unscored.to(torch.float64) + bound)
    kth_exact = torch.kthvalue(exact_dist, k, dim=1).values
    return lower > kth_exact


def _rank_block_candidates(dist_BW, cand_BW, k):
    """Order candidate columns by (distance, index); return the first k indices and positions.

    Returns (index_BK, where_BK) with index_BK = cand_BW.gather(1, where_BK).
    """
    index, by_index = torch.sort(cand_BW, dim=1)
    values = torch.gather(dist_BW, 1, by_index)
    _, by_value = torch.sort(values, dim=1, stable=True)
    where = torch.gather(by_index, 1, by_value[:, :k])
    return torch.gather(cand_BW, 1, where), where


def knn_topk_unit(units: UnitRows, k: int, block_size=None,
                  precision: str = "auto", margin: int = 32, rows=None, bar=None) -> tuple:
    """Return (sims_NK, idx_NK): the k nearest points of every point by cosine similarity.

    Args:
        units: the (N, D) features as :class:`UnitRows` (rows L2-normalised, on the device to compute on).
        k: neighbours per point, the point itself included (at rank 0); 1 <= k <= N.
        block_size: rows per block: of the square low-precision blocks, or of the float64
            strips for ``precision="float64"`` (default: planned from a memory budget by
            :func:`~cacl_dist.clustering.blocks.plan_blocks`).
        precision: ``"float64"``; ``"float32"``, ``"tfloat32"`` or ``"bfloat16"`` (candidates
            in that precision, re-scored in float64, see the module docstring); ``"auto"``:
            tfloat32 on CUDA, float32 otherwise.
        margin: extra low-precision candidates per row re-scored in float64.
        rows: ``(start, stop)`` computes only those rows (against all points), so that processes
            can share the search: the concatenation of the row ranges equals the whole result.
        bar: a :class:`~cacl_dist.runs.logs.StageBar` told of every block searched (optional).

    Returns:
        sims_NK: float64 cosine similarities <x_i, x_idx[i, r]>; idx_NK: int64 indices,
        ordered as the reference orders the distance 2 - 2 <x_i, x_j> (ties by index).
    """
    num_points = units.num_points
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_points:
        raise ValueError(f"k must be an integer in [1, {num_points}] (the number of points), got {k!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    start, stop = (0, num_points) if rows is None else (int(rows[0]), int(rows[1]))
    if not 0 <= start <= stop <= num_points:
        raise ValueError(f"rows must be (start, stop) with 0 <= start <= stop <= {num_points}, got {rows!r}.")
    if precision == "auto":
        precision = "tfloat32" if units.device.type == "cuda" else "float32"
    plan = plan_blocks(num_points, units.dim, units.device.type, precision, tile=units.tile)
    if block_size is None:
        block_size = plan.search
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    if start == stop:
        return (torch.empty((0, k), dtype=torch.float64, device=units.device),
                torch.empty((0, k), dtype=torch.int64, device=units.device))
    if precision in LOW_PRECISION:
        idx, sims, exact = _low_precision_rank(units, k, margin, precision, block_size, start, stop, bar)
        redo = torch.nonzero(~exact).flatten()
        strip = plan.strip
    else:
        idx = torch.empty((stop - start, k), dtype=torch.int64, device=units.device)
        sims = torch.empty((stop - start, k), dtype=torch.float64, device=units.device)
        redo = torch.arange(stop - start, device=units.device)
        strip = block_size
    strips = range(0, redo.numel(), strip)
    if bar is not None:
        bar.add_total(len(strips))
    for lo in strips:  # float64 strips against all points
        local = redo[lo:lo + strip]
        idx[local], sims[local] = _rank_rows(units.similarity_rows(local + start), local + start, k,
                                             min(units.tile, num_points))
        if bar is not None:
            bar.update()
    return sims, idx


def _rank_rows(sims_RN: torch.Tensor, rows_R: torch.Tensor, k: int, chunk: int) -> tuple:
    """Rank the strip ``sims_RN`` (similarities of points ``rows_R`` to all N points).

    Returns (idx_RK, sims_RK): the k smallest distances 2 - 2 s of each row, self first, ties
    by ascending index, and their similarities. Works in place (self is set to +inf in
    ``sims_RN``) and never holds a second R x N array: the distance is a non-increasing
    function of s, so the k-th smallest distance is that of the k-th largest s, the entries
    at or below it (the candidates, ties included) are the largest values of s, and only they
    are turned into distances, compared ``chunk`` columns at a time.
    """
    local = torch.arange(rows_R.shape[0], device=sims_RN.device)
    own = sims_RN[local, rows_R].clone()
    sims_RN[local, rows_R] = torch.inf  # distance -inf: self comes first
    kth = 2.0 - 2.0 * torch.topk(sims_RN, k, dim=1, sorted=True).values[:, -1:]
    count = torch.zeros(rows_R.shape[0], dtype=torch.int64, device=sims_RN.device)
    for lo in range(0, sims_RN.shape[1], chunk):
        count += ((2.0 - 2.0 * sims_RN[:, lo:lo + chunk]) <= kth).sum(dim=1)
    values, index = torch.topk(sims_RN, int(count.max()), dim=1, sorted=False)
    idx, where = _rank_block_candidates(2.0 - 2.0 * values, index, k)
    sims = torch.gather(values, 1, where)
    sims[:, 0] = own
    return idx, sims

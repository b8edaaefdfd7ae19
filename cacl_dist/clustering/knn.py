"""Blocked k-nearest-neighbour search by cosine similarity, in torch (CPU or CUDA).

:func:`knn_topk` returns R(i) of METHOD section 4.1 for every point without an N x N matrix:
rows are processed ``block_size`` at a time against all points, so the largest temporary is
``block_size x N``. The order equals :func:`~cacl_dist.clustering.jaccard_reference.
k_nearest_neighbours` on the reference's encoding distance 2 - 2 <x_i, x_j> (float64): the
point itself first, then ascending distance, equal distances by ascending index.

Two precisions:

- ``"float64"``: the similarity block is a float64 matrix product (the default on CPU).
- ``"float32"``: the block is a float32 product (fast on GPU); the top ``k + margin``
  candidates of every row are re-scored in float64 and re-ranked. A row is accepted only if
  a rigorous error bound of the float32 product proves that no point outside its candidates
  can enter its top k; the other rows are recomputed in float64. The ranks are therefore the
  float64 ranks in both modes.
"""

import numpy as np
import torch

from cacl_dist.clustering.jaccard_reference import as_float64_features

PRECISIONS = ("auto", "float64", "float32")


def unit_features(feats, device=None) -> torch.Tensor:
    """Return the rows of ``feats`` (numpy or torch, (N, D)) L2-normalised, float64, on ``device``.

    ``device`` defaults to the device of a torch input (CPU for numpy). The normalisation is
    the reference's: the rows divided by their float64 Euclidean norms. Raises ValueError for
    a bad shape, non-finite values or an all-zero row.
    """
    if device is None:
        device = feats.device if isinstance(feats, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    if isinstance(feats, torch.Tensor) and feats.device.type != "cpu":
        tensor = feats.detach().to(dtype=torch.float64)
        if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
            raise ValueError(
                f"feats must be a non-empty 2-D array of shape (num_images, feature_dim); "
                f"got shape {tuple(tensor.shape)}. Pass one feature row per image."
            )
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError("feats contains NaN or infinite values; check the feature extractor.")
        norms = torch.linalg.vector_norm(tensor, dim=1, keepdim=True)
    else:
        array = as_float64_features(feats)
        tensor = torch.from_numpy(array)
        norms = torch.from_numpy(np.linalg.norm(array, axis=1, keepdims=True))
    zero_rows = torch.nonzero(norms[:, 0] == 0).flatten()
    if zero_rows.numel():
        raise ValueError(
            f"feats has {zero_rows.numel()} all-zero row(s) (first at index {int(zero_rows[0])}); "
            "cosine similarity is undefined for them. Remove those images or fix their features."
        )
    return (tensor / norms).to(device)


def _pair_similarity(unit_ND: torch.Tensor, rows_P: torch.Tensor, cols_P: torch.Tensor,
                     chunk: int = 1 << 22) -> torch.Tensor:
    """Return <x_r, x_c> in float64 for the index pairs (rows_P[p], cols_P[p])."""
    out = torch.empty(rows_P.shape[0], dtype=torch.float64, device=unit_ND.device)
    step = max(1, chunk // max(1, unit_ND.shape[1]))
    for lo in range(0, rows_P.shape[0], step):
        hi = min(lo + step, rows_P.shape[0])
        out[lo:hi] = (unit_ND[rows_P[lo:hi]] * unit_ND[cols_P[lo:hi]]).sum(dim=1)
    return out


def _float32_block(unit_ND, unit32_ND, start, stop, k, margin, error_bound):
    """Rank rows start..stop with a float32 product and a float64 re-check.

    Returns (index_BK, sims_BK, exact_B): the float64 ranking of the float32 candidates, their
    float64 similarities, and which rows are proven exact (the others must be recomputed).
    """
    num_points = unit_ND.shape[0]
    width = min(num_points, k + margin)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the error bound assumes true float32
    try:
        sims = unit32_ND[start:stop] @ unit32_ND.T
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    rows = torch.arange(stop - start, device=sims.device)
    sims[rows, rows + start] = torch.inf
    cand_sims, cand = torch.topk(sims, width, dim=1, largest=True, sorted=True)
    del sims
    block_rows = (rows + start)[:, None].expand_as(cand)
    exact = _pair_similarity(unit_ND, block_rows.reshape(-1), cand.reshape(-1)).view_as(cand)
    exact_dist = 2.0 - 2.0 * exact
    exact_dist[cand == block_rows] = -torch.inf
    order, where = _rank_block_candidates(exact_dist, cand, k)
    order_sims = torch.gather(exact, 1, where)
    if width == num_points:
        return order, order_sims, torch.ones(stop - start, dtype=torch.bool, device=cand.device)
    kth_exact = torch.kthvalue(exact_dist, k, dim=1).values
    # Every point outside the candidates has float32 similarity <= the last candidate's, so
    # its exact distance is at least 2 - 2 (s32_last + error_bound).
    outside_lower = 2.0 - 2.0 * (cand_sims[:, -1].to(torch.float64) + error_bound)
    return order, order_sims, outside_lower > kth_exact


def _rank_block_candidates(dist_BW, cand_BW, k):
    """Order candidate columns by (distance, index); return the first k indices and positions.

    Returns (index_BK, where_BK) with index_BK = cand_BW.gather(1, where_BK).
    """
    index, by_index = torch.sort(cand_BW, dim=1)
    values = torch.gather(dist_BW, 1, by_index)
    _, by_value = torch.sort(values, dim=1, stable=True)
    where = torch.gather(by_index, 1, by_value[:, :k])
    return torch.gather(cand_BW, 1, where), where


def knn_topk(feats_ND, k: int, block_size: int = 4096, precision: str = "auto",
             margin: int = 32, device=None) -> tuple:
    """Return (sims_NK, idx_NK): the k nearest points of every point by cosine similarity.

    Args:
        feats_ND: (N, D) numpy array or torch tensor; rows are L2-normalised here.
        k: neighbours per point, the point itself included (at rank 0); 1 <= k <= N.
        block_size: rows processed together; the largest temporary is block_size x N.
        precision: ``"float64"``, ``"float32"`` (float64 re-check, see the module docstring)
            or ``"auto"`` (float32 on CUDA, float64 otherwise).
        margin: extra float32 candidates per row re-scored in float64.
        device: where to compute (default: the input's device).

    Returns:
        sims_NK: float64 cosine similarities <x_i, x_idx[i, r]>; idx_NK: int64 indices,
        ordered as the reference orders the distance 2 - 2 <x_i, x_j> (ties by index).
    """
    return knn_topk_unit(unit_features(feats_ND, device), k, block_size, precision, margin)


def knn_topk_unit(unit_ND: torch.Tensor, k: int, block_size: int = 4096,
                  precision: str = "auto", margin: int = 32) -> tuple:
    """:func:`knn_topk` on rows that are already unit-norm float64 (see :func:`unit_features`)."""
    num_points = unit_ND.shape[0]
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_points:
        raise ValueError(f"k must be an integer in [1, {num_points}] (the number of points), got {k!r}.")
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}.")
    if precision == "auto":
        precision = "float32" if unit_ND.device.type == "cuda" else "float64"
    idx = torch.empty((num_points, k), dtype=torch.int64, device=unit_ND.device)
    sims = torch.empty((num_points, k), dtype=torch.float64, device=unit_ND.device)
    if precision == "float32":
        unit32 = unit_ND.to(torch.float32)
        dim = unit_ND.shape[1]
        unit_round_off = 2.0 ** -24
        # |fl32(<x, y>) - <x, y>| <= gamma_(D+2) for unit x, y (input rounding + any order).
        error_bound = (dim + 2) * unit_round_off / (1 - (dim + 2) * unit_round_off)
    for start in range(0, num_points, block_size):
        stop = min(start + block_size, num_points)
        if precision == "float32":
            order, order_sims, exact = _float32_block(unit_ND, unit32, start, stop, k, margin,
                                                      error_bound)
            idx[start:stop], sims[start:stop] = order, order_sims
            rows = torch.nonzero(~exact).flatten() + start
        else:
            rows = torch.arange(start, stop, device=unit_ND.device)
        if rows.numel():
            block_sims = unit_ND[rows] @ unit_ND.T
            idx[rows] = _rank_rows(2.0 - 2.0 * block_sims, rows, k)
            sims[rows] = torch.gather(block_sims, 1, idx[rows])
    return sims, idx


def _rank_rows(dist_RN: torch.Tensor, rows_R: torch.Tensor, k: int) -> torch.Tensor:
    """Return the (R, k) indices of the k smallest entries of each row, self first.

    ``dist_RN`` holds the distances of points ``rows_R`` to all N points and is modified in
    place (self set to -inf). Ties are broken by ascending index: every entry at or below the
    k-th smallest value is a candidate, and the candidates are sorted stably by index and
    then by value.
    """
    local = torch.arange(rows_R.shape[0], device=dist_RN.device)
    dist_RN[local, rows_R] = -torch.inf
    kth = torch.topk(dist_RN, k, dim=1, largest=False, sorted=True).values[:, -1:]
    num_candidates = int((dist_RN <= kth).sum(dim=1).max())
    values, index = torch.topk(dist_RN, num_candidates, dim=1, largest=False, sorted=False)
    return _rank_block_candidates(values, index, k)[0]

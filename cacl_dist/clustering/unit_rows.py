"""L2-normalised feature rows, produced tile by tile instead of stored.

The sparse clustering path needs the unit rows x_i / ||x_i|| in float64 (to rank and weigh
neighbours exactly as the reference does) and in a low precision (for the neighbour search).
Storing them would cost 12 bytes per feature value (16 GB at a million 2048-d features);
:class:`UnitRows` keeps only the caller's features and the float64 norms, and converts the
tiles a computation asks for. A tile equals the matching rows of the reference's
``feats.astype(float64) / norms``.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from cacl_dist.clustering.inputs import as_float64_features

# Rows per float64 tile: about 32 MB at D=2048 on a CPU, 512 MB on CUDA.
CPU_TILE = 2048
CUDA_TILE = 32768


class UnitRows:
    """The unit rows of a feature matrix (numpy or torch, (N, D)) on ``device``.

    ``device`` defaults to the device of a torch input (CPU for numpy). Raises ValueError for a
    bad shape, non-finite values or an all-zero row.
    """

    def __init__(self, feats, device=None, tile: int | None = None) -> None:
        if device is None:
            device = feats.device if isinstance(feats, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device)
        if isinstance(feats, torch.Tensor):
            raw = feats.detach().to(self.device)
            if raw.dtype not in (torch.float32, torch.float64):
                raw = raw.float()
        else:
            array = np.asarray(feats)
            if array.dtype not in (np.float32, np.float64):
                array = as_float64_features(array)
            raw = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:
            raise ValueError(
                f"feats must be a non-empty 2-D array of shape (num_images, feature_dim); "
                f"got shape {tuple(raw.shape)}. Pass one feature row per image."
            )
        self.raw = raw
        self._norms32 = None
        self.tile = tile or (CUDA_TILE if self.device.type == "cuda" else CPU_TILE)
        self.norms = torch.empty(raw.shape[0], dtype=torch.float64, device=self.device)
        for lo in range(0, raw.shape[0], self.tile):
            chunk = raw[lo:lo + self.tile].to(torch.float64)
            if not bool(torch.isfinite(chunk).all()):
                raise ValueError("feats contains NaN or infinite values; check the feature extractor "
                                 "output (e.g. a diverged model) before clustering.")
            self.norms[lo:lo + self.tile] = torch.linalg.vector_norm(chunk, dim=1)
        zero_rows = torch.nonzero(self.norms == 0).flatten()
        if zero_rows.numel():
            raise ValueError(
                f"feats has {zero_rows.numel()} all-zero row(s) (first at index {int(zero_rows[0])}); "
                "cosine similarity is undefined for them. Remove those images or fix their features."
            )

    @property
    def num_points(self) -> int:
        return self.raw.shape[0]

    @property
    def dim(self) -> int:
        return self.raw.shape[1]

    def float64(self, lo: int, hi: int) -> torch.Tensor:
        """Unit rows lo..hi in float64."""
        rows = self.raw[lo:hi].to(torch.float64, copy=True)
        return rows.div_(self.norms[lo:hi, None])

    def float64_at(self, index: torch.Tensor) -> torch.Tensor:
        """Unit rows ``index`` in float64."""
        return self.raw[index].to(torch.float64).div_(self.norms[index, None])

    def low(self, lo: int, hi: int, dtype: torch.dtype) -> torch.Tensor:
        """Unit rows lo..hi in ``dtype`` (float32 or lower), for the neighbour search.

        float32 features are divided by their float32 norms (two float32 roundings: within
        3 unit round-offs of the exact unit row, which the search's error bound allows for),
        then rounded to ``dtype``; float64 features are divided in float64 first.
        """
        if self.raw.dtype == torch.float32:
            if self._norms32 is None:
                self._norms32 = self.norms.float()
            return (self.raw[lo:hi] / self._norms32[lo:hi, None]).to(dtype)
        return self.float64(lo, hi).to(dtype)

    def similarity_rows(self, index: torch.Tensor) -> torch.Tensor:
        """<x_i, x_j> in float64 for the rows ``index`` against every point: (len(index), N)."""
        left = self.float64_at(index)
        out = torch.empty((index.shape[0], self.num_points), dtype=torch.float64, device=self.device)
        for lo in range(0, self.num_points, self.tile):
            hi = min(lo + self.tile, self.num_points)
            out[:, lo:hi] = left @ self.float64(lo, hi).T
        return out

    def pair_similarity(self, rows_P: torch.Tensor, cols_P: torch.Tensor) -> torch.Tensor:
        """<x_r, x_c> in float64 for the index pairs (rows_P[p], cols_P[p]), any order.

        Pairs are deduplicated and grouped by (row tile, column tile); each group is a sampled
        matrix product of two float64 tiles (only the requested entries of X X^T), so every
        feature row is read once per tile pair rather than twice per pair.
        """
        num_points, tile = self.num_points, self.tile
        if rows_P.numel() == 0:
            return torch.empty(0, dtype=torch.float64, device=self.device)
        keys, inverse = torch.unique(rows_P * num_points + cols_P, sorted=True, return_inverse=True)
        rows, cols = keys // num_points, keys % num_points
        num_tiles = -(-num_points // tile)
        row_tiles = torch.unique(rows // tile).numel()
        if 2 * keys.numel() < row_tiles * (1 + num_tiles) * tile:  # few pairs: gather their rows
            return self._gathered_products(rows, cols)[inverse]
        group = (rows // tile) * num_tiles + cols // tile
        group, order = torch.sort(group, stable=True)  # (row, col) order kept inside a group
        rows, cols = rows[order], cols[order]
        bounds = torch.nonzero(torch.diff(group)).flatten() + 1
        starts = [0] + bounds.tolist()
        ends = bounds.tolist() + [group.numel()]
        values = torch.empty(keys.shape[0], dtype=torch.float64, device=self.device)
        left_lo, left = None, None
        for a, b in zip(starts, ends):
            row_lo = int(rows[a]) // tile * tile
            col_lo = int(cols[a]) // tile * tile
            if row_lo != left_lo:  # groups come row tile by row tile
                left_lo, left = row_lo, self.float64(row_lo, min(row_lo + tile, num_points))
            right = left if col_lo == row_lo else self.float64(col_lo, min(col_lo + tile, num_points))
            values[order[a:b]] = _sampled_product(left, right, rows[a:b] - row_lo, cols[a:b] - col_lo)
        return values[inverse]

    def _gathered_products(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """<x_r, x_c> pair by pair from gathered rows (cheaper than tiles for few pairs)."""
        out = torch.empty(rows.shape[0], dtype=torch.float64, device=self.device)
        step = max(1, (1 << 22) // self.dim)
        for lo in range(0, rows.shape[0], step):
            hi = min(lo + step, rows.shape[0])
            out[lo:hi] = (self.float64_at(rows[lo:hi]) * self.float64_at(cols[lo:hi])).sum(dim=1)
        return out


def _sampled_product(left_RD, right_CD, rows, cols) -> torch.Tensor:
    """<left[r], right[c]> for pairs sorted by (row, column) without duplicates."""
    counts = torch.bincount(rows, minlength=left_RD.shape[0])
    crow = torch.zeros(left_RD.shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=crow[1:])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            mask = torch.sparse_csr_tensor(crow, cols, torch.zeros_like(cols, dtype=left_RD.dtype),
                                           size=(left_RD.shape[0], right_CD.shape[0]))
            return torch.sparse.sampled_addmm(mask, left_RD, right_CD.T, beta=0.0).values()
    except (RuntimeError, NotImplementedError):  # an older torch without this kernel on the device
        out = torch.empty(rows.shape[0], dtype=left_RD.dtype, device=left_RD.device)
        step = max(1, (1 << 20) // max(1, left_RD.shape[1]))
        for lo in range(0, rows.shape[0], step):
            hi = min(lo + step, rows.shape[0])
            out[lo:hi] = (left_RD[rows[lo:hi]] * right_CD[cols[lo:hi]]).sum(dim=1)
        return out

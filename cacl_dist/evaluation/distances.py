"""Squared Euclidean distances between query and gallery features, block by block, in float64.

:class:`FeatureRows` holds the Q + G feature rows (queries first) on one device in float64 and
hands out distance blocks, so that nothing of size Q x G or (Q + G)^2 is ever stored. Both
plain evaluation and re-ranking read their distances here, on the CPU or on the GPU: float64
keeps exact ties out of the ranking (float32 distances of thousands of gallery items tie
often), so a CUDA block ranks as the same block on the CPU does.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

# Entries of a (rows x gallery) float64 block: 32 MB on a CPU, 512 MB on a GPU.
CPU_BLOCK_ELEMENTS = 1 << 22
CUDA_BLOCK_ELEMENTS = 1 << 26


def default_block_rows(device, num_columns: int) -> int:
    """Query rows per distance block on ``device`` for ``num_columns`` gallery items."""
    budget = CUDA_BLOCK_ELEMENTS if torch.device(device).type == "cuda" else CPU_BLOCK_ELEMENTS
    return max(1, budget // max(1, num_columns))


def _checked(feats, name: str) -> torch.Tensor:
    """``feats`` (numpy or torch, (num, D)) as a tensor, shape checked; not converted yet."""
    if isinstance(feats, torch.Tensor):
        tensor = feats.detach()
    else:
        array = np.asarray(feats)
        if array.dtype == object or not (np.issubdtype(array.dtype, np.floating)
                                         or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(f"{name} must be a numeric (num_images, feature_dim) array, got dtype {array.dtype}.")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 2 or tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (num_images, feature_dim) array, got shape "
                         f"{tuple(tensor.shape)}.")
    return tensor


class FeatureRows:
    """Query and gallery features (queries first) on ``device`` in float64, with squared norms.

    ``device`` defaults to the query tensor's device (CPU for numpy). Distances are
    ``max(|x_i|^2 + |x_j|^2 - 2 <x_i, x_j>, 0)``, the inner products a float64 matrix product.
    """

    def __init__(self, q_feats, g_feats, device=None) -> None:
        if device is None:
            device = q_feats.device if isinstance(q_feats, torch.Tensor) else torch.device("cpu")
        self.device = torch.device(device)
        query, gallery = _checked(q_feats, "q_feats"), _checked(g_feats, "g_feats")
        if query.shape[1] != gallery.shape[1]:
            raise ValueError(f"q_feats has feature_dim {query.shape[1]} but g_feats has {gallery.shape[1]}; "
                             "extract both with the same model.")
        self.num_query = query.shape[0]
        self.num_gallery = gallery.shape[0]
        # Filled and checked a chunk of rows at a time: no second full-size temporary.
        self.feats = torch.empty((self.num_query + self.num_gallery, query.shape[1]), dtype=torch.float64,
                                 device=self.device)
        self.norms = torch.empty(self.num_points, dtype=torch.float64, device=self.device)
        step = max(1, CPU_BLOCK_ELEMENTS // (4 * query.shape[1]))
        for offset, part, name in ((0, query, "q_feats"), (self.num_query, gallery, "g_feats")):
            for lo in range(0, part.shape[0], step):
                hi = min(lo + step, part.shape[0])
                rows = self.feats[offset + lo:offset + hi]
                rows.copy_(part[lo:hi])
                if not bool(torch.isfinite(rows).all()):
                    raise ValueError(f"{name} contains NaN or infinite values; check the feature extractor.")
                self.norms[offset + lo:offset + hi] = torch.einsum("ij,ij->i", rows, rows)

    @property
    def num_points(self) -> int:
        """Q + G."""
        return self.feats.shape[0]

    def squared(self, row_lo: int, row_hi: int, col_lo: int, col_hi: int) -> torch.Tensor:
        """Squared distances of points row_lo..row_hi to points col_lo..col_hi (float64)."""
        gram = self.feats[row_lo:row_hi] @ self.feats[col_lo:col_hi].T
        out = self.norms[row_lo:row_hi, None] + self.norms[None, col_lo:col_hi]
        return out.sub_(gram, alpha=2.0).clamp_(min=0.0)

    def squared_rows(self, index: torch.Tensor) -> torch.Tensor:
        """Squared distances of the points ``index`` to all Q + G points, (len(index), Q + G)."""
        gram = self.feats[index] @ self.feats.T
        out = self.norms[index, None] + self.norms[None, :]
        return out.sub_(gram, alpha=2.0).clamp_(min=0.0)

    def query_gallery(self, lo: int, hi: int) -> torch.Tensor:
        """Squared distances of queries lo..hi to the whole gallery, (hi - lo, G)."""
        return self.squared(lo, hi, self.num_query, self.num_points)

    def pair_squared(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Squared distances of the point pairs (rows[p], cols[p]), a few thousand rows at a time."""
        out = torch.empty(rows.shape[0], dtype=torch.float64, device=self.device)
        step = max(1, CPU_BLOCK_ELEMENTS // self.feats.shape[1])
        for lo in range(0, rows.shape[0], step):
            r, c = rows[lo:lo + step], cols[lo:lo + step]
            inner = torch.einsum("ij,ij->i", self.feats[r], self.feats[c])
            out[lo:lo + step] = (self.norms[r] + self.norms[c]).sub_(inner, alpha=2.0).clamp_(min=0.0)
        return out


def plain_blocks(rows: FeatureRows, block_rows: int | None = None) -> Iterator[tuple]:
    """(start, block): squared query-gallery distances, ``block_rows`` queries at a time."""
    step = block_rows or default_block_rows(rows.device, rows.num_gallery)
    for lo in range(0, rows.num_query, step):
        yield lo, rows.query_gallery(lo, min(lo + step, rows.num_query))


__all__ = ["FeatureRows", "default_block_rows", "plain_blocks"]

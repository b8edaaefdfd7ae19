"""Augmentation choices drawn for a whole batch at once (the randomness of the DALI pipeline).

The torchvision pipeline draws every view's choices from a per-sample ``torch.Generator``
(:func:`cacl_dist.data.transforms.draw_view_params`); that costs about 0.1 ms per view in
Python, too slow to feed a GPU pipeline. Here the same distributions (flip with ``flip_p``,
crop offsets uniform in ``0 .. 2 * pad``, random erasing with ``erase_p`` and the same area /
log-aspect sampling with up to 100 tries) are computed for a whole batch with vectorised NumPy
from counter-based uniforms: uniform ``k`` of view ``v`` of a sample is a SplitMix64 hash of
(its augmentation seed, ``v``, ``k``). A sample's choices therefore depend only on its own
seed from the epoch plan, not on the batch or the rank that loads it, so 1 and N processes
see the same views; they are not the choices torchvision would draw from the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .transforms import AugmentParams, ViewParams

ERASE_TRIES = 100


@dataclass
class ViewBatch:
    """Choices of one view for ``n`` samples, in the conventions of :class:`ViewParams`."""

    flip: np.ndarray  # (n,) bool
    top: np.ndarray  # (n,) int64, 0 .. 2 * pad (row of the padded image where the crop starts)
    left: np.ndarray  # (n,) int64, 0 .. 2 * pad
    erase: np.ndarray  # (n, 4) int64: top, left, height, width; height = width = 0 when not erased

    def __len__(self) -> int:
        return int(self.flip.shape[0])

    def view(self, i: int) -> ViewParams:
        """The choices of sample ``i`` as a :class:`ViewParams` (for the torch reference ops)."""
        top, left, h, w = (int(v) for v in self.erase[i])
        return ViewParams(flip=bool(self.flip[i]), top=int(self.top[i]), left=int(self.left[i]),
                          erase=(top, left, h, w) if h > 0 else None)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NUM_UNIFORMS = 4 + 2 * ERASE_TRIES + 2  # flip, top, left, erase?, areas, aspects, erase top, erase left


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(aug_seeds: np.ndarray, view: int, count: int) -> np.ndarray:
    """(n, count) uniforms in [0, 1): row i depends only on ``aug_seeds[i]`` and ``view`` (0 or 1)."""
    seeds = np.asarray(aug_seeds).astype(np.int64).reshape(-1)
    if seeds.size and int(seeds.min()) < 0:
        raise ValueError(f"augmentation seeds must be non-negative, got {int(seeds.min())}")
    if view not in (0, 1):
        raise ValueError(f"view must be 0 or 1, got {view}")
    with np.errstate(over="ignore"):
        key = _splitmix(seeds.astype(np.uint64) * np.uint64(2) + np.uint64(view))
        counters = np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN
        bits = _splitmix(key[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def draw_view_batch(params: AugmentParams, aug_seeds: np.ndarray, view: int) -> ViewBatch:
    """Flip, crop offsets and erasing rectangles of view ``view`` for every seed in ``aug_seeds``."""
    u = sample_uniforms(aug_seeds, view, _NUM_UNIFORMS)
    n = u.shape[0]
    flip = u[:, 0] < params.flip_p
    span = 2 * params.pad + 1
    top = np.minimum((u[:, 1] * span).astype(np.int64), span - 1)
    left = np.minimum((u[:, 2] * span).astype(np.int64), span - 1)
    wants = u[:, 3] < params.erase_p
    height, width = params.height, params.width
    lo, hi = params.erase_scale
    log_lo, log_hi = math.log(params.erase_ratio[0]), math.log(params.erase_ratio[1])
    target = height * width * (lo + u[:, 4 : 4 + ERASE_TRIES] * (hi - lo))
    aspect = np.exp(log_lo + u[:, 4 + ERASE_TRIES : 4 + 2 * ERASE_TRIES] * (log_hi - log_lo))
    h_try = np.round(np.sqrt(target * aspect)).astype(np.int64)
    w_try = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (h_try > 0) & (h_try < height) & (w_try > 0) & (w_try < width)
    first = fits.argmax(axis=1)  # the first try that fits, as the sequential loop would take
    rows = np.arange(n)
    h, w = h_try[rows, first], w_try[rows, first]
    erased = wants & fits.any(axis=1)
    erase = np.zeros((n, 4), dtype=np.int64)
    erase[erased, 0] = (u[:, -2] * (height - h + 1)).astype(np.int64)[erased]
    erase[erased, 1] = (u[:, -1] * (width - w + 1)).astype(np.int64)[erased]
    erase[erased, 2] = h[erased]
    erase[erased, 3] = w[erased]
    return ViewBatch(flip=flip, top=top, left=left, erase=erase)

"""Augmentation choices drawn for a whole batch at once (the randomness of the DALI pipeline).

The torchvision pipeline draws every view's choices from a per-sample ``torch.Generator``
(:func:`cacl_dist.data.transforms.draw_view_params`); that costs about 0.1 ms per view in
Python, too slow to feed a GPU pipeline. Here the same distributions (flip with ``flip_p``,
crop offsets uniform in ``0 .. 2 * pad``, random erasing with ``erase_p`` and the same area /
log-aspect sampling with up to 100 tries) are drawn with vectorised NumPy from a generator
seeded by the batch's per-sample augmentation seeds. The choices are therefore deterministic
in (run seed, epoch, rank, world size) but are not the ones torchvision would draw for the
same seeds.
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


def batch_generator(aug_seeds: np.ndarray, view: int) -> np.random.Generator:
    """A generator for view ``view`` (0 or 1) of a batch, seeded by all of its per-sample seeds."""
    seeds = [int(s) for s in np.asarray(aug_seeds).reshape(-1)]
    if any(s < 0 for s in seeds):
        raise ValueError(f"augmentation seeds must be non-negative, got {min(seeds)}")
    return np.random.default_rng(np.random.SeedSequence([*seeds, len(seeds), int(view)]))


def draw_view_batch(params: AugmentParams, rng: np.random.Generator, n: int) -> ViewBatch:
    """Flip, crop offsets and erasing rectangles of one view for ``n`` samples."""
    flip = rng.random(n) < params.flip_p
    span = 2 * params.pad + 1
    top = rng.integers(0, span, n) if params.pad > 0 else np.zeros(n, dtype=np.int64)
    left = rng.integers(0, span, n) if params.pad > 0 else np.zeros(n, dtype=np.int64)
    erase = np.zeros((n, 4), dtype=np.int64)
    wants = rng.random(n) < params.erase_p
    height, width = params.height, params.width
    lo, hi = params.erase_scale
    log_lo, log_hi = math.log(params.erase_ratio[0]), math.log(params.erase_ratio[1])
    target = height * width * (lo + rng.random((n, ERASE_TRIES)) * (hi - lo))
    aspect = np.exp(log_lo + rng.random((n, ERASE_TRIES)) * (log_hi - log_lo))
    h_try = np.round(np.sqrt(target * aspect)).astype(np.int64)
    w_try = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (h_try > 0) & (h_try < height) & (w_try > 0) & (w_try < width)
    first = fits.argmax(axis=1)  # the first try that fits, as the sequential loop would take
    rows = np.arange(n)
    h, w = h_try[rows, first], w_try[rows, first]
    u_top, u_left = rng.random(n), rng.random(n)
    erased = wants & fits.any(axis=1)
    erase[erased, 0] = (u_top * (height - h + 1)).astype(np.int64)[erased]
    erase[erased, 1] = (u_left * (width - w + 1)).astype(np.int64)[erased]
    erase[erased, 2] = h[erased]
    erase[erased, 3] = w[erased]
    return ViewBatch(flip=flip, top=top.astype(np.int64), left=left.astype(np.int64), erase=erase)

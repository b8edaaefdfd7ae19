"""Augmentation choices drawn for a whole batch at once (the randomness of the DALI pipeline).

The torchvision pipeline draws every view's choices from a per-sample ``torch.Generator``
(:func:`cacl_dist.data.transforms.draw_view_params`); that costs about 0.1 ms per view in
Python, too slow for DALI's external source, which runs in the main process (the torch-gpu
pipeline draws them that way in its DataLoader workers instead). Here the same distributions (flip with ``flip_p``,
crop offsets uniform in ``0 .. 2 * pad``, random erasing with ``erase_p`` and the same area /
aspect sampling with up to 100 tries) are computed for a whole batch with vectorised NumPy
from counter-based uniforms: uniform ``k`` of view ``v`` of a sample is a SplitMix64 hash of
(its augmentation seed, ``v``, ``k``). A sample's choices therefore depend only on its own
seed from the epoch plan, not on the batch or the rank that loads it, so 1 and N processes
see the same views; they are not the choices torchvision would draw from the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacl_dist.data.transforms import AugmentParams, ViewParams

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
# Counter layout of a view's uniforms: flip, crop top, crop left, erase or not, then per erasing
# try its area and its aspect, then the erased rectangle's top and left.
_FLIP, _TOP, _LEFT, _ERASE = 0, 1, 2, 3
_AREA = 4
_ASPECT = _AREA + ERASE_TRIES
_BOX_TOP, _BOX_LEFT = _ASPECT + ERASE_TRIES, _ASPECT + ERASE_TRIES + 1
FIRST_TRIES = 8  # tries computed for every sample; the rest only for samples none of these fit


def _splitmix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def sample_uniforms(aug_seeds: np.ndarray, view: int, counters) -> np.ndarray:
    """(n, len(counters)) uniforms in [0, 1): entry (i, j) depends only on ``aug_seeds[i]``, ``view``
    (0 or 1) and ``counters[j]``, so any subset of a sample's stream can be computed alone."""
    seeds = np.asarray(aug_seeds).astype(np.int64).reshape(-1)
    if seeds.size and int(seeds.min()) < 0:
        raise ValueError(f"augmentation seeds must be non-negative, got {int(seeds.min())}")
    if view not in (0, 1):
        raise ValueError(f"view must be 0 or 1, got {view}")
    steps = (np.asarray(counters, dtype=np.uint64) + np.uint64(1)) * _GOLDEN
    with np.errstate(over="ignore"):
        key = _splitmix(seeds.astype(np.uint64) * np.uint64(2) + np.uint64(view))
        bits = _splitmix(key[:, None] + steps[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _erase_tries(params: AugmentParams, seeds: np.ndarray, view: int, tries: np.ndarray):
    """Heights, widths and fit masks of erasing tries ``tries`` (n x len(tries) each)."""
    lo, hi = params.erase_scale
    target = params.height * params.width * (lo + sample_uniforms(seeds, view, _AREA + tries) * (hi - lo))
    aspect = params.aspect(sample_uniforms(seeds, view, _ASPECT + tries))
    h = np.round(np.sqrt(target * aspect)).astype(np.int64)
    w = np.round(np.sqrt(target / aspect)).astype(np.int64)
    fits = (h > 0) & (h < params.height) & (w > 0) & (w < params.width)
    return h, w, fits


def draw_view_batch(params: AugmentParams, aug_seeds: np.ndarray, view: int) -> ViewBatch:
    """Flip, crop offsets and erasing rectangles of view ``view`` for every seed in ``aug_seeds``."""
    seeds = np.asarray(aug_seeds).astype(np.int64).reshape(-1)
    u = sample_uniforms(seeds, view, np.array([_FLIP, _TOP, _LEFT, _ERASE, _BOX_TOP, _BOX_LEFT]))
    n = seeds.size
    flip = u[:, 0] < params.flip_p
    span = 2 * params.pad + 1
    top = np.minimum((u[:, 1] * span).astype(np.int64), span - 1)
    left = np.minimum((u[:, 2] * span).astype(np.int64), span - 1)
    wanted = np.flatnonzero(u[:, 3] < params.erase_p)
    # The first try that fits, as the sequential loop takes it: most samples fit within the
    # first few tries, so the others are computed only for the samples that need them.
    h, w, fits = _erase_tries(params, seeds[wanted], view, np.arange(min(FIRST_TRIES, ERASE_TRIES)))
    late = np.flatnonzero(~fits.any(axis=1))
    if late.size and ERASE_TRIES > FIRST_TRIES:
        h_late, w_late, fits_late = _erase_tries(params, seeds[wanted[late]], view,
                                                 np.arange(FIRST_TRIES, ERASE_TRIES))
        pad_cols = ERASE_TRIES - FIRST_TRIES
        h, w, fits = (np.pad(x, ((0, 0), (0, pad_cols))) for x in (h, w, fits))
        h[late, FIRST_TRIES:], w[late, FIRST_TRIES:], fits[late, FIRST_TRIES:] = h_late, w_late, fits_late
    first = fits.argmax(axis=1)
    rows = np.arange(wanted.size)
    ok = fits.any(axis=1)
    erase = np.zeros((n, 4), dtype=np.int64)
    chosen, h, w = wanted[ok], h[rows, first][ok], w[rows, first][ok]
    erase[chosen, 0] = (u[chosen, 4] * (params.height - h + 1)).astype(np.int64)
    erase[chosen, 1] = (u[chosen, 5] * (params.width - w + 1)).astype(np.int64)
    erase[chosen, 2] = h
    erase[chosen, 3] = w
    return ViewBatch(flip=flip, top=top, left=left, erase=erase)

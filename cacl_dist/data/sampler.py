"""Identity sampler: global batches of P pseudo identities x K instances, the same on every rank.

An epoch is a stream of passes. A pass visits every pseudo identity once, in a shuffled order;
each identity contributes a block of one random anchor image followed by ``num_instances - 1``
(K - 1) more of its images. An identity with a single image contributes that image alone. Two
policies choose the K - 1 images and cut the stream (``policy``, config ``train.sampler``):

- ``cacl``: first distinct images from other cameras than the anchor's, then distinct
  same-camera images, and only with replacement when the identity has fewer than K images in
  all; the stream is cut into ``num_iters`` global batches of ``batch_size``, so a batch may
  span two passes and nothing is dropped.
- ``released`` (the authors' released code): K - 1 distinct images from the other cameras when
  there are at least K of them, else K - 1 drawn with replacement from them; without other
  cameras, the same from the anchor's camera (anchor excluded). Each pass is cut into whole
  batches and its last partial batch is dropped.

Everything is drawn from ``(seed, epoch)``, never from the rank, so all ranks plan the same
global batches and each takes its own slice with :func:`rank_share`. The draws are vectorised
over all blocks of all passes at once: the cost grows with ``num_iters * batch_size``, not with
the dataset size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cacl_dist.data.names import SAMPLERS
from cacl_dist.errors import UserError


@dataclass
class GlobalBatches:
    """The global batches of one epoch: dataset indices and one augmentation seed per image."""

    indices: np.ndarray  # (num_iters, batch_size) int64
    aug_seeds: np.ndarray  # (num_iters, batch_size) int64

    @property
    def num_iters(self) -> int:
        """Number of global batches in the plan."""
        return int(self.indices.shape[0])


def rank_share(size: int, rank: int, world_size: int) -> slice:
    """The columns of ``rank`` in a global batch of ``size``: a contiguous ``size // world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not valid for world size {world_size}; need 0 <= rank < world_size")
    if size % world_size:
        raise ValueError(
            f"the global batch size {size} is not divisible by the world size {world_size}; "
            "choose a batch size that is a multiple of the number of processes"
        )
    share = size // world_size
    return slice(rank * share, (rank + 1) * share)


class IdentitySampler:
    """Plans epochs of P x K identity batches from pseudo labels (``-1`` = not sampled this epoch).

    ``camids`` (same length as ``labels``) lets the sampler prefer other cameras than the anchor;
    ``None`` or all ``-1`` means unknown cameras (no preference). Partly unknown camera ids are
    treated as one more camera. ``policy`` is one of :data:`~cacl_dist.data.names.SAMPLERS`
    (see the module docstring).
    """

    def __init__(self, labels: np.ndarray, camids: np.ndarray | None, batch_size: int, num_instances: int, seed: int,
                 policy: str = "cacl"):
        labels = np.asarray(labels).astype(np.int64, copy=False)
        if labels.ndim != 1:
            raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
        if camids is None:
            camids = np.zeros_like(labels)
        camids = np.asarray(camids).astype(np.int64, copy=False)
        if camids.shape != labels.shape:
            raise ValueError(f"camids has shape {camids.shape} but labels has shape {labels.shape}; they must match")
        if batch_size < 1 or num_instances < 1:
            raise ValueError(f"batch_size={batch_size} and num_instances={num_instances} must both be at least 1")
        if seed < 0:
            raise ValueError(f"seed={seed} must be non-negative")
        if policy not in SAMPLERS:
            raise ValueError(f"sampler policy {policy!r} is not one of {', '.join(SAMPLERS)}")
        self.policy = policy
        members = np.flatnonzero(labels >= 0)
        if members.size == 0:
            raise UserError("no image has a pseudo label >= 0, so there is nothing to sample this epoch; with "
                            "clustering.outliers=drop every image was an outlier: use clustering.outliers=singleton "
                            "or a larger clustering.eps")
        self.batch_size = int(batch_size)
        self.num_instances = int(num_instances)
        self.seed = int(seed)

        # Members sorted by (label, camera, index): each identity is a contiguous run, and within
        # it each camera is a contiguous run too.
        order = np.lexsort((members, camids[members], labels[members]))
        self._members = members[order]
        sorted_labels, sorted_cams = labels[self._members], camids[self._members]
        new_label = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
        self._group_start = np.flatnonzero(new_label)
        self._group_size = np.diff(np.r_[self._group_start, sorted_labels.size])
        new_cam = new_label | np.r_[True, sorted_cams[1:] != sorted_cams[:-1]]
        cam_start = np.flatnonzero(new_cam)
        cam_size = np.diff(np.r_[cam_start, sorted_cams.size])
        run_of = np.cumsum(new_cam) - 1  # camera run of every sorted position
        self._cam_start = cam_start[run_of]
        self._cam_size = cam_size[run_of]
        self._block_len = np.where(self._group_size > 1, self.num_instances, 1)

    @property
    def num_identities(self) -> int:
        """Number of distinct pseudo identities that are sampled."""
        return int(self._group_start.size)

    def plan(self, epoch: int, num_iters: int) -> GlobalBatches:
        """The ``num_iters`` global batches of ``epoch`` (deterministic in seed and epoch)."""
        if epoch < 0 or num_iters < 0:
            raise ValueError(f"epoch={epoch} and num_iters={num_iters} must be non-negative")
        total = num_iters * self.batch_size
        rng = np.random.default_rng([self.seed, epoch, 0])
        pass_len = int(self._block_len.sum())
        used = pass_len  # images of a pass that go into batches
        if self.policy == "released":
            used = pass_len // self.batch_size * self.batch_size
            if used == 0 and num_iters:
                raise UserError(f"train.sampler 'released' drops the last partial batch of every pass, but a pass "
                                f"of this epoch has {pass_len} images, fewer than train.batch_size "
                                f"({self.batch_size}); use train.sampler=cacl or a smaller batch")
        num_passes = -(-total // used) if total else 0
        num_groups = self.num_identities
        # Identity order of every pass: shuffle each row independently.
        groups = np.argsort(rng.random((num_passes, num_groups)), axis=1).reshape(-1)
        draw = self._draw_released_blocks if self.policy == "released" else self._draw_blocks
        positions, valid = draw(groups, rng)
        passes = self._members[positions[valid]].reshape(num_passes, pass_len)
        stream = passes[:, :used].reshape(-1)[:total]
        aug_rng = np.random.default_rng([self.seed, epoch, 1])
        aug_seeds = aug_rng.integers(0, 2**63 - 1, size=(num_iters, self.batch_size), dtype=np.int64)
        return GlobalBatches(indices=stream.reshape(num_iters, self.batch_size).astype(np.int64), aug_seeds=aug_seeds)

    def _draw_blocks(self, groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sorted-member positions (num_blocks, K) of the blocks of ``groups`` and a mask of used slots."""
        k = self.num_instances
        start, size = self._group_start[groups], self._group_size[groups]
        anchor = start + (rng.random(groups.size) * size).astype(np.int64)
        cam_start, cam_size = self._cam_start[anchor], self._cam_size[anchor]
        need = np.where(size > 1, k - 1, 0)
        # Other cameras: the identity's positions outside the anchor's camera run.
        num_other = size - cam_size
        take_other = np.minimum(need, num_other)
        other = _distinct_draws(rng, num_other, take_other, k - 1)
        other_pos = start[:, None] + other
        other_pos = np.where(other_pos >= cam_start[:, None], other_pos + cam_size[:, None], other_pos)
        # Same camera, without the anchor.
        take_same = np.minimum(need - take_other, cam_size - 1)
        same = _distinct_draws(rng, cam_size - 1, take_same, k - 1)
        same_pos = cam_start[:, None] + same
        same_pos = np.where(same_pos >= anchor[:, None], same_pos + 1, same_pos)
        # Too few images: fill with replacement from all of the identity's images.
        take_fill = need - take_other - take_same
        fill_pos = start[:, None] + (rng.random((groups.size, max(k - 1, 0))) * size[:, None]).astype(np.int64)

        # Lay the parts side by side: anchor | other | same | fill, keeping only the drawn slots.
        cols = np.arange(k - 1)
        positions = np.concatenate([anchor[:, None], other_pos, same_pos, fill_pos], axis=1)
        valid = np.concatenate(
            [
                np.ones((groups.size, 1), dtype=bool),
                cols < take_other[:, None],
                cols < take_same[:, None],
                cols < take_fill[:, None],
            ],
            axis=1,
        )
        return positions, valid

    def _draw_released_blocks(self, groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`_draw_blocks`, with the released code's choice of the K - 1 images (module docstring)."""
        k = self.num_instances
        start, size = self._group_start[groups], self._group_size[groups]
        anchor = start + (rng.random(groups.size) * size).astype(np.int64)
        cam_start, cam_size = self._cam_start[anchor], self._cam_size[anchor]
        num_other = size - cam_size
        use_other = num_other > 0
        # The pool: the other cameras' images, or the anchor's camera without the anchor.
        pool = np.where(use_other, num_other, cam_size - 1)
        distinct = pool >= k
        drawn = _distinct_draws(rng, pool, np.where(distinct & (size > 1), k - 1, 0), k - 1)
        with_replacement = (rng.random((groups.size, max(k - 1, 0))) * pool[:, None]).astype(np.int64)
        picks = np.where(distinct[:, None], drawn, with_replacement)
        other_pos = start[:, None] + picks
        other_pos = np.where(other_pos >= cam_start[:, None], other_pos + cam_size[:, None], other_pos)
        same_pos = cam_start[:, None] + picks
        same_pos = np.where(same_pos >= anchor[:, None], same_pos + 1, same_pos)
        positions = np.concatenate([anchor[:, None], np.where(use_other[:, None], other_pos, same_pos)], axis=1)
        valid = np.concatenate([np.ones((groups.size, 1), dtype=bool),
                                np.repeat((size > 1)[:, None], max(k - 1, 0), axis=1)], axis=1)
        return positions, valid


def _distinct_draws(rng: np.random.Generator, pool: np.ndarray, count: np.ndarray, width: int) -> np.ndarray:
    """Per row, ``count[r]`` distinct uniform values in ``[0, pool[r])`` in the first columns.

    Sequential draw without replacement: the j-th value is drawn from ``pool - j`` candidates and
    shifted past the values already taken, visited in increasing order. Columns at or beyond
    ``count`` hold unspecified values and must be masked by the caller.
    """
    rows = pool.size
    out = np.zeros((rows, width), dtype=np.int64)
    for j in range(width):
        active = count > j
        draw = (rng.random(rows) * np.maximum(pool - j, 1)).astype(np.int64)
        if j:
            taken = np.sort(out[:, :j], axis=1)  # rows with count > j have j real values here
            for col in range(j):
                draw += draw >= taken[:, col]
        out[:, j] = np.where(active, draw, 0)
    return out

"""Torch datasets and loader builders of the torchvision pipeline.

Training reads an :class:`~cacl_dist.data.sampler.EpochPlan`: every rank iterates over its own
slice of each global batch, and every image is augmented from the seed the plan gave it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.sampler import EpochPlan, rank_slice
from cacl_dist.data.transforms import AugmentParams, eval_transform, load_image, two_views


class TwoViewDataset(Dataset):
    """Items ``(index, aug_seed)`` -> ``(view_rgb, view_gray, index)`` (docs/method.md section 2)."""

    def __init__(self, records: Sequence[ImageRecord], params: AugmentParams):
        self.records = records
        self.params = params

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        index, seed = item
        view_rgb, view_gray = two_views(load_image(self.records[index].path), self.params, seed)
        return view_rgb, view_gray, index


class EvalDataset(Dataset):
    """Item ``i`` -> ``(image, i)``: resized, optionally gray, normalised, not augmented."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, gray: bool = False):
        self.records = records
        self.height = height
        self.width = width
        self.gray = gray

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = eval_transform(load_image(self.records[index].path), self.height, self.width, self.gray)
        return img, index


class PlanBatchSampler:
    """Yields this rank's ``(index, aug_seed)`` pairs for iterations ``start_iter .. num_iters - 1``."""

    def __init__(self, plan: EpochPlan, rank: int, world_size: int, start_iter: int = 0):
        if not 0 <= start_iter <= plan.num_iters:
            raise ValueError(f"start_iter={start_iter} is outside the plan's 0..{plan.num_iters} iterations")
        self.indices = rank_slice(plan.indices, rank, world_size)
        self.aug_seeds = rank_slice(plan.aug_seeds, rank, world_size)
        self.start_iter = int(start_iter)

    def __len__(self) -> int:
        return self.indices.shape[0] - self.start_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start_iter, self.indices.shape[0]):
            yield list(zip(self.indices[it].tolist(), self.aug_seeds[it].tolist()))


def build_train_loader(
    records: Sequence[ImageRecord],
    params: AugmentParams,
    plan: EpochPlan,
    rank: int,
    world_size: int,
    start_iter: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """Loader of this rank's training batches ``(views_rgb B x 3 x H x W, views_gray, indices int64 B)``."""
    if plan.indices.size and (int(plan.indices.min()) < 0 or int(plan.indices.max()) >= len(records)):
        raise ValueError(
            f"the epoch plan indexes images {int(plan.indices.min())}..{int(plan.indices.max())} but there are "
            f"{len(records)} training records; build the sampler from labels of this record list"
        )
    return DataLoader(
        TwoViewDataset(records, params),
        batch_sampler=PlanBatchSampler(plan, rank, world_size, start_iter),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def build_eval_loader(
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    batch_size: int,
    num_workers: int = 0,
    gray: bool = False,
    start: int = 0,
    end: int | None = None,
) -> DataLoader:
    """Loader over ``records[start:end]`` in order, yielding ``(images, global indices)``."""
    end = len(records) if end is None else end
    if not 0 <= start <= end <= len(records):
        raise ValueError(f"eval range start={start} end={end} must satisfy 0 <= start <= end <= {len(records)}")
    if batch_size < 1:
        raise ValueError(f"eval batch_size={batch_size} must be at least 1")
    return DataLoader(
        EvalDataset(records, height, width, gray),
        batch_size=batch_size,
        sampler=range(start, end),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


"""Torch datasets of the torchvision pipeline: two augmented views per planned sample, plain eval images.

:mod:`cacl_dist.data.pipelines.torchvision` builds the loaders over them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from cacl_dist.data.layouts import ImageRecord
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
    """Item ``i`` -> ``(image, i)``: resized (``interpolation``), optionally gray, normalised, not augmented."""

    def __init__(self, records: Sequence[ImageRecord], height: int, width: int, gray: bool = False,
                 interpolation: str = "bilinear"):
        self.records = records
        self.height = height
        self.width = width
        self.gray = gray
        self.interpolation = interpolation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = eval_transform(load_image(self.records[index].path), self.height, self.width, self.gray,
                             self.interpolation)
        return img, index


__all__ = ["EvalDataset", "TwoViewDataset"]

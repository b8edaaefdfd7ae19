"""From the data sections of the config to data: the synthetic images, the dataset, augmentation, the epoch plan.

Each function takes the sections it reads (:mod:`cacl_dist.data.settings`), never the whole config.

Nothing here talks to other processes: with several ranks the caller lets one rank write the
synthetic images (:func:`generate_if_synthetic`) and makes the others wait before they load.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cacl_dist.data.epoch_plan import EpochPlan, plan_epoch
from cacl_dist.data.layouts import ReidDataset, load_dataset
from cacl_dist.data.settings import AugmentConfig, DataConfig
from cacl_dist.data.transforms import AugmentParams
from cacl_dist.errors import UserError


def generate_if_synthetic(data: DataConfig, write: bool = True) -> bool:
    """True when the ``data`` section uses the synthetic dataset; its images are written (if missing) when ``write``.

    With several processes exactly one should write, and the others must wait for it before
    :func:`dataset_from_config` reads the images. The generator writes only into an empty folder
    or one it wrote itself (:mod:`.synthetic_folder`); anything else in data.root is refused.
    """
    if data.dataset != "synthetic":
        return False
    if write:
        from cacl_dist.data.synthetic import generate_synthetic

        generate_synthetic(data.root, **dataclasses.asdict(data.synthetic))
    return True


def data_folder(data: DataConfig) -> str:
    """The folder the configured dataset is read from: data.root, or for the synthetic dataset the folder
    under data.root that holds the set of data.synthetic.* (data.root itself or a set-<key> folder in it)."""
    if data.dataset != "synthetic":
        return data.root
    from cacl_dist.data.synthetic import synthetic_settings
    from cacl_dist.data.synthetic_folder import locate

    return locate(data.root, synthetic_settings(**dataclasses.asdict(data.synthetic)))


def dataset_from_config(data: DataConfig, k1: int) -> ReidDataset:
    """Load the configured dataset; UserError when it has too few training images to cluster (clustering.k1)."""
    root = data_folder(data)
    dataset = load_dataset(data.dataset, root)
    if len(dataset.train) <= k1:
        raise UserError(
            f"dataset at '{root}' has {len(dataset.train)} training images, not more than "
            f"clustering.k1={k1}; use more images or a smaller clustering.k1")
    return dataset


def augment_params(data: DataConfig, a: AugmentConfig) -> AugmentParams:
    """The two-view augmentation settings of the ``data`` and ``augment`` sections."""
    return AugmentParams(height=data.height, width=data.width, flip_p=a.flip_p, pad=a.pad,
                         erase_p=a.erase_p, erase_scale=(a.erase_area_min, a.erase_area_max),
                         erase_ratio=(a.erase_ratio_min, a.erase_ratio_max), gray_second_view=a.gray_second_view,
                         erase_ratio_sampling=a.erase_ratio_sampling, erase_fill=a.erase_fill,
                         interpolation=data.resize_interpolation)


def camera_ids(dataset: ReidDataset) -> np.ndarray | None:
    """Camera ids of the training images, or None when the layout does not know them."""
    cams = np.array([r.camid for r in dataset.train], dtype=np.int64)
    return None if (cams < 0).all() else cams


def training_plan(train, seed: int, dataset: ReidDataset, labels: np.ndarray, *, epoch: int, num_clusters: int,
                  rank: int, world_size: int, device: torch.device) -> EpochPlan:
    """The training plan of ``epoch`` under the pseudo ``labels`` (< ``num_clusters``) for ``rank``.

    ``train`` is the config's train section (iters_per_epoch, batch_size, num_instances, sampler) and
    ``seed`` run.seed; the number of processes was checked at start-up (:func:`cacl_dist.config.validate_for_world`).
    """
    return plan_epoch(labels, camera_ids(dataset), epoch=epoch, num_iters=train.iters_per_epoch,
                      batch_size=train.batch_size, num_instances=train.num_instances, seed=seed,
                      num_clusters=num_clusters, rank=rank, world_size=world_size, device=device,
                      sampler=train.sampler)


__all__ = ["augment_params", "camera_ids", "data_folder", "dataset_from_config", "generate_if_synthetic", "training_plan"]

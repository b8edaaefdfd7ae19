"""From config to data: the synthetic dataset's images, the dataset, augmentation and the epoch plan.

Nothing here talks to other processes: with several ranks the caller lets one rank write the
synthetic images (:func:`generate_if_synthetic`) and makes the others wait before they load.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cacl_dist.config import Config
from cacl_dist.data.epoch_plan import EpochPlan, plan_epoch
from cacl_dist.data.layouts import ReidDataset, load_dataset
from cacl_dist.data.transforms import AugmentParams


def generate_if_synthetic(cfg: Config, write: bool = True) -> bool:
    """True when ``cfg`` uses the synthetic dataset; its images are written (if missing) when ``write``.

    With several processes exactly one should write, and the others must wait for it before
    :func:`dataset_from_config` reads the images. The generator writes only into an empty folder
    or one it wrote itself (:mod:`.synthetic_folder`); anything else in data.root is refused.
    """
    if cfg.data.dataset != "synthetic":
        return False
    if write:
        from cacl_dist.data.synthetic import generate_synthetic

        generate_synthetic(cfg.data.root, **dataclasses.asdict(cfg.data.synthetic))
    return True


def data_folder(cfg: Config) -> str:
    """The folder the configured dataset is read from: data.root, or for the synthetic dataset the folder
    under data.root that holds the set of data.synthetic.* (data.root itself or a set-<key> folder in it)."""
    if cfg.data.dataset != "synthetic":
        return cfg.data.root
    from cacl_dist.data.synthetic import synthetic_settings
    from cacl_dist.data.synthetic_folder import locate

    return locate(cfg.data.root, synthetic_settings(**dataclasses.asdict(cfg.data.synthetic)))


def dataset_from_config(cfg: Config) -> ReidDataset:
    """Load the configured dataset; ValueError when it has too few training images to cluster."""
    root = data_folder(cfg)
    dataset = load_dataset(cfg.data.dataset, root)
    if len(dataset.train) <= cfg.clustering.k1:
        raise ValueError(
            f"dataset at '{root}' has {len(dataset.train)} training images, not more than "
            f"clustering.k1={cfg.clustering.k1}; use more images or a smaller clustering.k1")
    return dataset


def augment_params(cfg: Config) -> AugmentParams:
    """The two-view augmentation settings of a config."""
    a = cfg.augment
    return AugmentParams(height=cfg.data.height, width=cfg.data.width, flip_p=a.flip_p, pad=a.pad,
                         erase_p=a.erase_p, erase_scale=(a.erase_area_min, a.erase_area_max),
                         erase_ratio=(a.erase_ratio_min, a.erase_ratio_max), gray_second_view=a.gray_second_view,
                         erase_ratio_sampling=a.erase_ratio_sampling, erase_fill=a.erase_fill,
                         interpolation=cfg.data.resize_interpolation)


def camera_ids(dataset: ReidDataset) -> np.ndarray | None:
    """Camera ids of the training images, or None when the layout does not know them."""
    cams = np.array([r.camid for r in dataset.train], dtype=np.int64)
    return None if (cams < 0).all() else cams


def training_plan(cfg: Config, dataset: ReidDataset, labels: np.ndarray, *, epoch: int, num_clusters: int,
                  rank: int, world_size: int, device: torch.device) -> EpochPlan:
    """The training plan of ``epoch`` under the pseudo ``labels`` (< ``num_clusters``) for ``rank``."""
    if cfg.train.batch_size % world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the world size "
                         f"{world_size}; choose a global batch that splits evenly across ranks")
    return plan_epoch(labels, camera_ids(dataset), epoch=epoch, num_iters=cfg.train.iters_per_epoch,
                      batch_size=cfg.train.batch_size, num_instances=cfg.train.num_instances, seed=cfg.run.seed,
                      num_clusters=num_clusters, rank=rank, world_size=world_size, device=device,
                      sampler=cfg.train.sampler)


__all__ = ["augment_params", "camera_ids", "data_folder", "dataset_from_config", "generate_if_synthetic", "training_plan"]

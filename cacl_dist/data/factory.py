"""From config to data: dataset preparation (incl. the synthetic one) and per-epoch loaders."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Iterable

import numpy as np

from ..config import Config
from ..distributed import comm
from ..distributed.env import DistEnv
from .datasets import build_train_loader
from .layouts import ReidDataset, load_dataset
from .sampler import IdentitySampler
from .transforms import AugmentParams

log = logging.getLogger("cacl_dist")


def prepare_dataset(cfg: Config, env: DistEnv) -> ReidDataset:
    """Load the configured dataset; the synthetic one is generated first by rank 0 if needed."""
    if cfg.data.dataset == "synthetic":
        if env.is_main:
            from .synthetic import generate_synthetic

            generate_synthetic(cfg.data.root, **dataclasses.asdict(cfg.data.synthetic))
        comm.barrier()
    dataset = load_dataset(cfg.data.dataset, cfg.data.root)
    if len(dataset.train) <= cfg.clustering.k1:
        raise ValueError(
            f"dataset at '{cfg.data.root}' has {len(dataset.train)} training images, not more than "
            f"clustering.k1={cfg.clustering.k1}; use more images or a smaller clustering.k1")
    return dataset


PIPELINES = ("dali", "torchvision")


@functools.lru_cache(maxsize=None)
def resolve_pipeline(name: str, key: str = "data.pipeline") -> str:
    """Map the value ``name`` of config ``key`` to an available input pipeline; log the choice once.

    'auto' takes DALI when it is installed (on the GPU, and also CPU-only, where it needs about
    half the CPU time of the torchvision pipeline per sample; see benchmarks/bench_data.py),
    else torchvision. An explicit 'dali' without DALI installed is an error that says how to
    install it.
    """
    from .pipelines import dali

    if name == "auto":
        if dali.dali_available():
            log.info("%s 'auto': NVIDIA DALI %s is installed, using the dali pipeline", key,
                     dali.require_dali(key).__version__)
            return "dali"
        log.info("%s 'auto': NVIDIA DALI is not installed, using torchvision (`%s` for the faster dali "
                 "pipeline)", key, dali.INSTALL_HINT)
        return "torchvision"
    if name not in PIPELINES:
        raise ValueError(f"{key} '{name}' is not available; choose one of auto, {', '.join(PIPELINES)}")
    if name == "dali":
        dali.require_dali(key)
    return name


def augment_params(cfg: Config) -> AugmentParams:
    """The two-view augmentation settings of a config."""
    a = cfg.augment
    return AugmentParams(height=cfg.data.height, width=cfg.data.width, flip_p=a.flip_p, pad=a.pad,
                         erase_p=a.erase_p, gray_second_view=a.gray_second_view)


def camera_ids(dataset: ReidDataset) -> np.ndarray | None:
    """Camera ids of the training images, or None when the layout does not know them."""
    cams = np.array([r.camid for r in dataset.train], dtype=np.int64)
    return None if (cams < 0).all() else cams


def build_epoch_loader(cfg: Config, dataset: ReidDataset, labels: np.ndarray, epoch: int, start_iter: int,
                       env: DistEnv) -> Iterable:
    """This rank's loader for the remaining steps of `epoch` under the given pseudo labels.

    It yields ``(views_rgb, views_gray, indices)``: from the torchvision pipeline on the CPU (the
    trainer moves them), from the DALI pipeline already on ``env.device``.
    """
    if cfg.train.batch_size % env.world_size:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is not divisible by the world size "
                         f"{env.world_size}; choose a global batch that splits evenly across ranks")
    sampler = IdentitySampler(labels, camera_ids(dataset), cfg.train.batch_size, cfg.train.num_instances,
                              cfg.run.seed)
    plan = sampler.plan(epoch, cfg.train.iters_per_epoch)
    if resolve_pipeline(cfg.data.pipeline) == "dali":
        from .pipelines import dali

        return dali.build_train_loader(dataset.train, augment_params(cfg), plan, env.rank, env.world_size,
                                       start_iter, num_threads=max(1, cfg.data.num_workers), device=env.device)
    return build_train_loader(dataset.train, augment_params(cfg), plan, env.rank, env.world_size, start_iter,
                              cfg.data.num_workers)

"""One road from images to features for every entry: evaluate, extract, search and visualize.

:func:`extraction_settings` builds the :class:`~cacl_dist.evaluation.extract.ExtractionSettings`
of a loaded model once: a model with a config extracts as its run evaluates (pipeline, precision,
resize filter, ``eval.flip``, channels-last for a rebuilt branch), an export without one in plain
fp32 through torchvision. :func:`features` runs the sharded extraction with them; its rows are
bit for bit those the evaluator ranks (no second normalisation).
"""

from __future__ import annotations

from typing import Sequence

import torch

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.evaluation.extract import ExtractionSettings, extract_all
from cacl_dist.inference.loader import FeatureModel

DEFAULT_BATCH_SIZE = 64
_REBUILT = ("checkpoint", "state_dict")  # a plain nn.Module Branch, which can be turned channels-last


def extraction_settings(model: FeatureModel, device: torch.device, batch_size: int | None = None,
                        num_workers: int | None = None, show_progress: bool = False) -> ExtractionSettings:
    """How ``model`` extracts: from its config when it has one, else fp32 torchvision without flip.

    ``batch_size`` and ``num_workers`` replace the config's values (or 64 and 0) when given.
    """
    if model.cfg is None:
        return ExtractionSettings(height=model.height, width=model.width, batch_size=batch_size or DEFAULT_BATCH_SIZE,
                                  num_workers=num_workers or 0, device=device, show_progress=show_progress)
    cfg = model.cfg
    return ExtractionSettings.from_config(cfg, device, show_progress, height=model.height, width=model.width,
                                          batch_size=batch_size, num_workers=num_workers, flip=cfg.eval.flip,
                                          channels_last=cfg.train.channels_last and model.kind in _REBUILT)


def features(model: FeatureModel, records: Sequence[ImageRecord], settings: ExtractionSettings, rank: int = 0,
             world_size: int = 1, desc: str = "features") -> torch.Tensor:
    """Float32 features (N x D, on the CPU) of ``records`` on every rank; each rank extracts its shard.

    A collective call under torchrun. With ``settings.channels_last`` the branch is put in channels-last
    memory format first, as training does with its model.
    """
    branch = model.branch.to(settings.device)
    if settings.channels_last:
        branch = branch.to(memory_format=torch.channels_last)
    return extract_all(branch, list(records), settings, rank=rank, world_size=world_size, desc=desc).float()


__all__ = ["extraction_settings", "features"]

"""Feature extraction with exact sharding: each rank takes a contiguous slice, no padding.

Unlike a DistributedSampler, no sample is repeated to even out the shards, so the gathered
features are exactly one row per image, in dataset order. :class:`ExtractionSettings` holds
what stays the same across the extractions of a run (image size, batch, pipeline, precision).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines import PIPELINES, get_pipeline, resolve_pipeline
from cacl_dist.distributed import comm
from cacl_dist.distributed.parallelize import to_input
from cacl_dist.distributed.sharding import shard_bounds
from cacl_dist.runs.logs import progress
from cacl_dist.precision import autocast, extraction_precision
from cacl_dist.errors import StopRequested
from cacl_dist.errors import UserError

if TYPE_CHECKING:
    from cacl_dist.config import Config


@dataclass(frozen=True)
class ExtractionSettings:
    """How images become features: size, batch, loader, device and the forward pass's precision.

    ``pipeline`` is a resolved pipeline name ('torchvision'; 'dali': DALI decodes, resizes
    and normalises on ``device`` with ``num_workers`` threads instead of DataLoader workers;
    'torch-gpu': workers read the bytes, ``device`` decodes, resizes and normalises).
    ``precision`` ('fp32', 'bf16', 'fp16') is the autocast precision of the forward pass; with
    large batches bf16 extraction is several times faster on tensor-core GPUs.
    ``channels_last`` sends the images in NHWC order (for a model converted to channels-last).
    ``interpolation`` is the resize filter ('bilinear' or 'bicubic', data.resize_interpolation).
    ``flip`` feeds every image and its horizontal mirror image and returns the L2-normalised
    mean of the two features (for a model that normalises its output, as CACL's branches do,
    the mean of the two unit features, normalised again).
    ``should_stop``, when given, is asked before every batch; once it answers True the extraction
    raises :class:`~cacl_dist.training.stopping.StopRequested` (after the gather of :func:`extract_all`, so
    the other ranks are never left waiting in it).
    """

    height: int
    width: int
    batch_size: int
    num_workers: int = 0
    device: torch.device = torch.device("cpu")
    pipeline: str = "torchvision"
    precision: str = "fp32"
    channels_last: bool = False
    show_progress: bool = False
    interpolation: str = "bilinear"
    flip: bool = False
    should_stop: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        if self.pipeline not in PIPELINES:
            raise UserError(f"extraction pipeline '{self.pipeline}' is not one of {', '.join(PIPELINES)}; "
                            "resolve data.eval_pipeline first")
        object.__setattr__(self, "device", torch.device(self.device))

    @classmethod
    def from_config(cls, cfg: Config, device: torch.device, show_progress: bool = False,
                    **changes) -> ExtractionSettings:
        """The settings of a run: data.eval_pipeline resolved, eval.precision 'train' -> train.precision.

        ``changes`` set other fields at once (e.g. ``flip=cfg.eval.flip``, ``should_stop=...``, the input size
        of an export); a value of None keeps the config's.
        """
        values = dict(height=cfg.data.height, width=cfg.data.width, batch_size=cfg.eval.batch_size,
                      num_workers=cfg.data.num_workers, device=device,
                      pipeline=resolve_pipeline(cfg.data.eval_pipeline, "data.eval_pipeline", device),
                      precision=extraction_precision(cfg.eval.precision, cfg.train.precision),
                      channels_last=cfg.train.channels_last, show_progress=show_progress,
                      interpolation=cfg.data.resize_interpolation)
        unknown = set(changes) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"ExtractionSettings has no field {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)


@torch.no_grad()
def extract_shard(model: nn.Module, records: Sequence[ImageRecord], start: int, end: int,
                  settings: ExtractionSettings, *, gray: bool = False, desc: str = "extract") -> torch.Tensor:
    """Features of records[start:end] (float32, on the CPU), in order; `model` maps images to features.

    ``gray`` feeds the gray version of every image; ``desc`` names the progress bar.
    """
    s = settings
    was_training = model.training
    model.eval()
    loader = get_pipeline(s.pipeline).eval_loader(list(records), s.height, s.width, s.batch_size, s.num_workers,
                                                  gray=gray, start=start, end=end, device=s.device,
                                                  interpolation=s.interpolation)
    chunks: list[torch.Tensor] = []
    try:
        for images, _ in progress(loader, total=len(loader), desc=desc, enabled=s.show_progress):
            if s.should_stop is not None and s.should_stop():
                raise StopRequested(f"stop requested during '{desc}'")
            images = to_input(images, s.device, s.channels_last)
            with autocast(s.device, s.precision):
                feats = model(images).float()
                if s.flip:
                    feats = (feats + model(_mirrored(images, s.channels_last)).float()) / 2
            if s.flip:
                feats = F.normalize(feats, dim=1)
            chunks.append(feats.cpu())
    finally:
        model.train(was_training)
    if not chunks:
        return torch.zeros(0, 0)
    return torch.cat(chunks)


def _mirrored(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The batch flipped left to right (``B x C x H x W``), in the memory format of the input."""
    flipped = images.flip(3)
    return flipped.contiguous(memory_format=torch.channels_last) if channels_last else flipped


def extract_all(model: nn.Module, records: Sequence[ImageRecord], settings: ExtractionSettings, *, rank: int,
                world_size: int, gray: bool = False, desc: str = "extract") -> torch.Tensor:
    """Features of every record on every rank: each rank extracts its shard, then all ranks gather."""
    start, end = shard_bounds(len(records), rank, world_size)
    stopped = None
    try:
        local = extract_shard(model, records, start, end, settings, gray=gray, desc=desc)
    except StopRequested as exc:  # still join the gather below (with rows of zeros), then stop
        stopped, local = exc, torch.zeros(end - start, _feature_dim(model))
    if local.numel() == 0:
        dim = _feature_dim(model)
        local = torch.zeros(0, dim)
    gathered = comm.all_gather_cat(local)
    if stopped is not None:
        raise stopped
    return gathered


def _feature_dim(model: nn.Module) -> int:
    """Output width of a branch-like module (used to shape an empty shard)."""
    dim = getattr(model, "dim", None)
    if dim is None and hasattr(model, "module"):
        dim = getattr(model.module, "dim", None)
    if dim is None:
        raise ValueError("cannot tell the feature size of an empty shard; give the model a `dim` attribute")
    return int(dim)


__all__ = ["ExtractionSettings", "extract_all", "extract_shard"]

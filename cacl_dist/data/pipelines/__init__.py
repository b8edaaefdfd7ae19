"""Input pipelines that turn an epoch plan or a record range into batches, behind one interface.

``torchvision`` runs everywhere (PIL decoding, DataLoader workers); ``dali`` uses NVIDIA DALI on
the GPU or the CPU (an optional extra, imported only when used); ``torch-gpu`` (module
``torch_gpu``) decodes JPEG batches with torchvision's nvJPEG decoder and augments them with
batched tensor operations on the training device (or the CPU). :func:`resolve_pipeline` maps
a config value ('auto' or a name) to an available pipeline, :func:`get_pipeline`
returns its module, which offers :class:`Pipeline`'s two loaders:

* ``train_loader(...)`` yields ``(views_rgb B x 3 x H x W, views_gray, indices int64 B)``, this
  rank's share of every global batch of the plan from ``start_iter`` on;
* ``eval_loader(...)`` yields ``(images, global indices)`` over ``records[start:end]`` in order.

torchvision batches come on the CPU (the caller moves them); DALI and torch-gpu images are on
``device`` (torch-gpu's indices stay on the host).
"""

from __future__ import annotations

import functools
import importlib
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from cacl_dist.errors import UserError

if TYPE_CHECKING:
    import torch

    from cacl_dist.data.epoch_plan import EpochPlan
    from cacl_dist.data.layouts import ImageRecord
    from cacl_dist.data.transforms import AugmentParams

PIPELINES = ("dali", "torch-gpu", "torchvision")

log = logging.getLogger("cacl_dist")


class Pipeline(Protocol):
    """What every pipeline module offers."""

    NAME: str

    def train_loader(self, records: Sequence[ImageRecord], params: AugmentParams, plan: EpochPlan,
                     start_iter: int = 0, num_workers: int = 0, device: torch.device | str = "cpu") -> Iterable:
        """This rank's training batches of ``plan`` from ``start_iter`` on (``len`` = batches left)."""

    def eval_loader(self, records: Sequence[ImageRecord], height: int, width: int, batch_size: int,
                    num_workers: int = 0, gray: bool = False, start: int = 0, end: int | None = None,
                    device: torch.device | str = "cpu", interpolation: str = "bilinear") -> Iterable:
        """Resized (``interpolation``), normalised (optionally gray) images of ``records[start:end]`` in order."""


def get_pipeline(name: str) -> Pipeline:
    """The module of pipeline ``name`` (one of :data:`PIPELINES`; resolve 'auto' first)."""
    if name not in PIPELINES:
        raise ValueError(f"input pipeline '{name}' is not one of {', '.join(PIPELINES)}")
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}")


@functools.lru_cache(maxsize=None)
def _dali_fails_on(device: torch.device) -> str | None:
    """Why DALI cannot run a pipeline on the CUDA ``device`` (one line), or None when it can; tried once."""
    from cacl_dist.data.pipelines import dali

    try:
        dali.probe(device)
    except Exception as exc:  # any failure means: do not take DALI for 'auto'
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()
    return None


def _cuda_device(device: torch.device | str | None) -> torch.device | None:
    """The CUDA device the pipeline would run on: ``device`` if it is CUDA, the current one when
    ``device`` is None and CUDA is available, else None."""
    import torch

    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def _auto_on_cuda(key: str, cuda: torch.device) -> str:
    """'auto' on a CUDA device: DALI when it runs there, else torch-gpu when nvJPEG decodes there, else torchvision."""
    from cacl_dist.data.pipelines import dali, torch_gpu

    why_not_dali = f"NVIDIA DALI is not installed (`{dali.INSTALL_HINT}` adds it)"
    if dali.dali_available():
        version = dali.require_dali(key).__version__
        failure = _dali_fails_on(cuda)
        if failure is None:
            log.info("%s 'auto': NVIDIA DALI %s runs on %s, using the dali pipeline", key, version, cuda)
            return "dali"
        why_not_dali = (f"NVIDIA DALI {version} cannot run on {cuda} ({failure}; for a CUDA 12 driver install "
                        f"`{dali.INSTALL_HINT_CUDA12}`)")
    problem = torch_gpu.device_problem(cuda)
    if problem is None:  # a warning when an installed DALI cannot run: someone meant it to
        say = log.warning if dali.dali_available() else log.info
        say("%s 'auto': %s, using torch-gpu (nvJPEG decoding and batched augmentation on %s)", key, why_not_dali,
            cuda)
        return "torch-gpu"
    log.warning("%s 'auto': %s and torchvision cannot decode JPEGs on %s (%s), using torchvision", key,
                why_not_dali, cuda, problem)
    return "torchvision"


@functools.lru_cache(maxsize=None)
def resolve_pipeline(name: str, key: str = "data.pipeline", device: torch.device | str | None = None) -> str:
    """Map the value ``name`` of config ``key`` to an available input pipeline; log the choice once.

    On a CUDA ``device`` (None: the current one, when CUDA is available) 'auto' takes DALI when a
    one-sample DALI pipeline runs there, else torch-gpu when a tiny JPEG decodes there with
    torchvision's nvJPEG decoder, else torchvision; one log line says which and why. On the CPU
    'auto' takes DALI when it is installed (CPU-only DALI needs about half the CPU time of the
    torchvision pipeline per sample; see benchmarks/bench_data.py), else torchvision. An explicit
    'dali' without DALI installed is an error that says how to install it; an explicit
    'torch-gpu' on a device where the JPEG decoder cannot run is an error that says why.
    """
    from cacl_dist.data.pipelines import dali, torch_gpu

    if name == "auto":
        cuda = _cuda_device(device)
        if cuda is not None:
            return _auto_on_cuda(key, cuda)
        if dali.dali_available():
            version = dali.require_dali(key).__version__
            log.info("%s 'auto': NVIDIA DALI %s is installed, using the dali pipeline", key, version)
            return "dali"
        log.info("%s 'auto': NVIDIA DALI is not installed, using torchvision (`%s` for the faster dali "
                 "pipeline)", key, dali.INSTALL_HINT)
        return "torchvision"
    if name not in PIPELINES:
        raise UserError(f"{key} '{name}' is not available; choose one of auto, {', '.join(PIPELINES)}")
    if name == "dali":
        dali.require_dali(key)
    if name == "torch-gpu":
        import torch

        target = _cuda_device(device) or torch.device("cpu")
        problem = torch_gpu.device_problem(target)
        if problem is not None:
            raise UserError(f"{key} is 'torch-gpu' but JPEGs cannot be decoded on {target} with this torchvision "
                            f"({problem}); set {key} to auto or torchvision")
    return name


__all__ = ["PIPELINES", "Pipeline", "get_pipeline", "resolve_pipeline"]

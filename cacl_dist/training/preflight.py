"""What a run says before and around its long work, so that a wasted hour shows in the first minute.

- :func:`start_line`: the first log line, "resuming <folder> after N epochs" or "new run in <folder>".
- :func:`check_sampler_fills_batches`: the released sampler drops each pass's last partial batch, so a
  training set that cannot fill one batch would stop the run after the memory banks are filled and the
  first clustering ran; checked before any work, one line saying what to set.
- :func:`first_epoch_estimate` and :func:`first_epoch_warning`: the time to the end of the first epoch
  (memory banks, evaluation before training, clustering, steps) from the measured forward time of one
  small batch on the run's device; a warning line when it exceeds :data:`SLOW_FIRST_EPOCH_S`.
- :func:`clustering_warning`: a clustering round that leaves the cluster losses nearly nothing to learn
  from (everything in one cluster, or fewer clusters of 2+ images than a batch holds identities).

Plain arithmetic and at most one timed forward pass; no collectives.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from cacl_dist.errors import UserError
from cacl_dist.runs.previous import set_aside_if_fresh
from cacl_dist.training import checkpoint as ckpt
from cacl_dist.training.run_log import position

SLOW_FIRST_EPOCH_S = 600.0
"""A first epoch estimated above this many seconds gets a warning line before the work starts."""

STEP_FORWARDS = 6.0
"""Forward-pass equivalents of one training image in a step: the RGB and the gray branch, each a forward and a
backward of about twice its cost."""

CLUSTER_S_PER_MROW2_CPU = 0.45
"""Seconds of one clustering round per (N / 1000)^2 on a CPU: the first round of a real run (features of an
untrained model) took 39 s at 9,173 images on 2 busy cores, several times the synthetic features of
benchmarks/results/bench_cluster_cpu.md; a CUDA device is taken as 20 times faster."""


def start_line(run_dir: Path, note: str = "") -> str:
    """Rank 0: set an earlier run's records aside on a fresh start, and say what this start does (one line).

    'resuming <folder> after N epochs (from last.pt ...)' or 'new run in <folder>', with `note` (what --fresh
    did) and where an earlier run's records went."""
    moved = set_aside_if_fresh(run_dir, ckpt.find_resume)
    found = ckpt.find_resume(run_dir)
    extra = [note] if note else []
    if found is not None:
        where = _checkpoint_position(found)
        line = f"resuming {run_dir} {where} from {found.name}" if where else f"resuming {run_dir} from {found.name}"
        return "; ".join([line, *extra, "start with --fresh for a new run (the folder is kept under another name)"])
    if moved is not None:
        extra.append(f"the earlier run's records (no {ckpt.LAST}) were moved to {moved}")
    return "; ".join([f"new run in {run_dir}", *extra])


def _checkpoint_position(path: Path) -> str:
    """'after N epochs[, step s of epoch N+1]' of a checkpoint, read without loading its tensors ('' if unreadable)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return position(int(state["epoch"]), int(state.get("iter_in_epoch", 0)))
    except Exception:  # an old or damaged file: resuming reads it properly and says what is wrong
        return ""


def check_sampler_fills_batches(num_train: int, batch_size: int, num_instances: int, sampler: str) -> None:
    """UserError (one line) when the released sampler cannot fill a single batch from `num_train` images.

    A pass of the released sampler holds one block of ``num_instances`` images per pseudo identity and
    one image per outlier; with clusters of at least ``num_instances`` images (what DBSCAN's
    min_samples gives) that is at most one image per training image, and each pass's last partial
    batch is dropped. So fewer training images than ``batch_size`` leaves nothing to train on."""
    if sampler != "released" or num_train >= batch_size:
        return
    smaller = num_train // num_instances * num_instances
    raise UserError(
        f"train.sampler=released cannot fill a batch: a pass over {num_train} training images holds at most about "
        f"{num_train} images and each pass drops its last partial batch of train.batch_size={batch_size}; set "
        f"train.sampler=cacl (batches span passes, nothing is dropped)"
        + (f" or a train.batch_size well below {num_train} (e.g. {smaller // 2 or num_instances})" if smaller else ""))


@dataclasses.dataclass
class FirstEpochEstimate:
    """Seconds each part of the first epoch is expected to take on this process."""

    memory: float
    evaluation: float
    clustering: float
    steps: float

    @property
    def total(self) -> float:
        return self.memory + self.evaluation + self.clustering + self.steps


LOAD_S_PER_IMAGE = 0.002
"""Seconds to read, decode and resize one image for the model (a small JPEG, one loader process): the floor
of every extraction and step however small the model (3.4 ms per image filling the banks of a tiny ResNet on
2 busy cores)."""


def first_epoch_estimate(forward_s_per_image: float, *, num_train: int, num_eval: int, batch_size: int,
                         iters_per_epoch: int, world_size: int, device_type: str, fill_banks: bool,
                         evaluate_first: bool, load_s_per_image: float = LOAD_S_PER_IMAGE) -> FirstEpochEstimate:
    """The first epoch's time from the measured forward time of one image (inference, this process's device).

    Memory banks: two extractions of this rank's share of the training images (RGB and gray branch);
    evaluation: one extraction of query + gallery; steps: :data:`STEP_FORWARDS` forward equivalents per
    image of this rank's share of every batch (two views loaded each); clustering: rank 0, quadratic in
    the number of images. Every image read adds `load_s_per_image`."""
    share = 1.0 / max(world_size, 1)
    per_image = forward_s_per_image + load_s_per_image
    memory = 2 * num_train * share * per_image if fill_banks else 0.0
    evaluation = num_eval * share * per_image if evaluate_first else 0.0
    clustering = CLUSTER_S_PER_MROW2_CPU * (num_train / 1000.0) ** 2 / (20.0 if device_type == "cuda" else 1.0)
    steps = iters_per_epoch * batch_size * share * (STEP_FORWARDS * forward_s_per_image + 2 * load_s_per_image)
    return FirstEpochEstimate(memory, evaluation, clustering, steps)


def measure_forward_seconds(branch: torch.nn.Module, height: int, width: int, device: torch.device,
                            batch: int = 4, repeats: int = 3) -> float:
    """Seconds per image of an inference forward of `branch` on a small batch: the fastest of `repeats` timed
    passes after one warm-up pass (the fastest, so that other work on a shared machine does not inflate it)."""
    images = torch.zeros(batch, 3, height, width, device=device)  # draws nothing from the run's random streams
    was_training = branch.training
    branch.eval()
    times = []
    try:
        with torch.no_grad():
            for _ in range(repeats + 1):
                t0 = time.perf_counter()
                branch(images)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
    finally:
        branch.train(was_training)
    return min(times[1:]) / batch


def _minutes(seconds: float) -> str:
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def first_epoch_warning(estimate: FirstEpochEstimate, device: str,
                        threshold_s: float = SLOW_FIRST_EPOCH_S) -> str | None:
    """One warning line when the first epoch is estimated above `threshold_s`, else None."""
    if estimate.total <= threshold_s:
        return None
    parts = [f"{name} {_minutes(value)}" for name, value in (
        ("memory banks", estimate.memory), ("evaluation", estimate.evaluation),
        ("clustering", estimate.clustering), ("steps", estimate.steps)) if value >= 1]
    return (f"the first epoch will take about {_minutes(estimate.total)} on {device} ({', '.join(parts)}; "
            "from one timed forward pass); for a quick try use configs/market1501_cpu.yaml, a GPU, a smaller model.backbone "
            "or data.height/data.width, or fewer train.iters_per_epoch")


def warn_if_slow_first_epoch(log, cfg, env, branch: torch.nn.Module, num_train: int, num_eval: int) -> None:
    """Rank 0 of a fresh start: time a forward of `branch`, estimate the first epoch, log a warning when slow."""
    if not env.is_main:
        return
    seconds = measure_forward_seconds(branch, cfg.data.height, cfg.data.width, torch.device(env.device))
    estimate = first_epoch_estimate(seconds, num_train=num_train, num_eval=num_eval,
                                    batch_size=cfg.train.batch_size, iters_per_epoch=cfg.train.iters_per_epoch,
                                    world_size=env.world_size, device_type=torch.device(env.device).type,
                                    fill_banks=True, evaluate_first=cfg.eval.at_start and num_eval > 0)
    warning = first_epoch_warning(estimate, str(env.device))
    if warning is not None:
        log.warning("%s", warning)


def clustering_warning(labels: np.ndarray, batch_size: int, num_instances: int) -> str | None:
    """One warning line when a clustering round gives the cluster losses (almost) nothing to learn from.

    Everything in one cluster makes the softmax over cluster centres trivially 1 (loss 0); fewer
    clusters of 2+ images than a batch holds identities (``batch_size / num_instances``) leaves
    batches of singletons and few identities, where the cluster losses fall to about 0."""
    kept = labels[labels >= 0]
    if kept.size == 0:
        return None
    sizes = np.bincount(kept)
    sizes = sizes[sizes > 0]
    grouped = int((sizes >= 2).sum())
    wanted = max(batch_size // max(num_instances, 1), 1)
    keys = ("change clustering.k1 (about the number of images of one identity; smaller for a small set), "
            "clustering.eps, clustering.min_samples")
    if sizes.size == 1:
        return (f"clustering put all {kept.size} images into one cluster, so the cluster losses are 0; {keys} "
                "(a smaller clustering.eps splits more)")
    if grouped < wanted:
        return (f"clustering found {grouped} clusters of 2+ images (and {int((sizes == 1).sum())} singletons), fewer "
                f"than the {wanted} identities a batch holds (train.batch_size / train.num_instances), so the "
                f"cluster losses are close to 0; {keys}, or use a smaller train.batch_size")
    return None


__all__ = ["CLUSTER_S_PER_MROW2_CPU", "FirstEpochEstimate", "LOAD_S_PER_IMAGE", "SLOW_FIRST_EPOCH_S", "STEP_FORWARDS",
           "check_sampler_fills_batches", "clustering_warning", "first_epoch_estimate", "first_epoch_warning",
           "measure_forward_seconds", "start_line", "warn_if_slow_first_epoch"]

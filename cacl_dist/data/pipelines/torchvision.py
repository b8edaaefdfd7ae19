"""The "torchvision" pipeline: PIL decoding and tensor augmentation in DataLoader workers.

It runs everywhere (CPU or GPU hosts) and yields batches on the CPU; the caller moves them to
its device. :mod:`cacl_dist.data.pipelines.dali` is the DALI counterpart with the same output
contract. Training reads a :class:`~cacl_dist.data.epoch_plan.EpochPlan`: the rank iterates over
its own share of each global batch, and every image is augmented from the seed the plan gave it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from cacl_dist.data.datasets import EvalDataset, TwoViewDataset
from cacl_dist.data.epoch_plan import EpochPlan
from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines.checks import check_eval_inputs, check_start_iter, check_train_inputs
from cacl_dist.data.transforms import AugmentParams
from cacl_dist.errors import UserError

NAME = "torchvision"


def _worker_message(message: str) -> str:
    """The last line of a worker's error as the DataLoader re-raises it (the worker's traceback comes first)."""
    if not message.startswith("Caught "):
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if last.startswith(("ValueError: ", "FileNotFoundError: ")) else last


class Loader(DataLoader):
    """A DataLoader whose worker errors (an unreadable image) read as the worker's one-line message.

    The plain DataLoader re-raises a worker's ValueError with the worker's traceback as its message.
    """

    def __iter__(self) -> Iterator:
        try:
            yield from super().__iter__()
        except ValueError as err:
            message = _worker_message(str(err))
            if message == str(err):
                raise
            raise UserError(message) from None


def leave_stopping_to_the_main_process(worker_id: int) -> None:
    """Start of a DataLoader worker: signals meant for the run reach its main process only.

    torchrun's agent sends SIGTERM to its worker's whole process group and a terminal sends Ctrl-C to its
    foreground group; a loader worker that died of them would end the run in an error instead of a
    checkpoint. The worker leaves the group and ignores SIGINT and SIGUSR1 (SIGTERM still ends it, as the
    DataLoader's own shutdown needs); it ends with the main process, which stops its workers itself.
    """
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # e.g. not permitted here: the signals below are still ignored
            pass
    for sig in (signal.SIGINT, getattr(signal, "SIGUSR1", None)):
        if sig is not None:
            signal.signal(sig, signal.SIG_IGN)


class PlanBatchSampler:
    """Yields this rank's ``(index, aug_seed)`` pairs for iterations ``start_iter .. num_iters - 1``."""

    def __init__(self, plan: EpochPlan, start_iter: int = 0):
        check_start_iter(plan, start_iter)
        self.indices = plan.local_indices
        self.aug_seeds = plan.local_seeds
        self.start_iter = int(start_iter)

    def __len__(self) -> int:
        return self.indices.shape[0] - self.start_iter

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start_iter, self.indices.shape[0]):
            yield list(zip(self.indices[it].tolist(), self.aug_seeds[it].tolist()))


def train_loader(records: Sequence[ImageRecord], params: AugmentParams, plan: EpochPlan, start_iter: int = 0,
                 num_workers: int = 0, device: torch.device | str = "cpu") -> Loader:
    """Loader of this rank's training batches ``(views_rgb B x 3 x H x W, views_gray, indices int64 B)``.

    The batches stay on the CPU whatever ``device`` is (pinned when CUDA is available).
    """
    check_train_inputs(plan, len(records), start_iter)
    return Loader(
        TwoViewDataset(records, params),
        batch_sampler=PlanBatchSampler(plan, start_iter),
        num_workers=num_workers,
        worker_init_fn=leave_stopping_to_the_main_process if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


def eval_loader(records: Sequence[ImageRecord], height: int, width: int, batch_size: int, num_workers: int = 0,
                gray: bool = False, start: int = 0, end: int | None = None,
                device: torch.device | str = "cpu", interpolation: str = "bilinear") -> Loader:
    """Loader over ``records[start:end]`` in order, yielding ``(images, global indices)`` on the CPU."""
    end = check_eval_inputs(len(records), batch_size, start, end)
    return Loader(
        EvalDataset(records, height, width, gray, interpolation),
        batch_size=batch_size,
        sampler=range(start, end),
        num_workers=num_workers,
        worker_init_fn=leave_stopping_to_the_main_process if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


__all__ = ["NAME", "Loader", "PlanBatchSampler", "eval_loader", "leave_stopping_to_the_main_process",
           "train_loader"]

"""The checkpointer: what a run's checkpoint holds, when it is written, and the rules for resuming from it.

Each component gives and takes its own entries of the (flat) checkpoint: :class:`Progress` (epoch,
steps, evaluations), the model, :class:`Optimiser` (optimiser and schedule), the step precision (AMP
scaler), :class:`MemoryBanks` (both banks, gathered whole to rank 0 only: the other ranks never hold
them) and :class:`PseudoLabels` (labels, centres, clustering figures). The checkpointer adds the
config, the random states and the facts that say which data the run was made with, refuses to
write NaN or infinity (:meth:`Checkpointer.save`), writes atomically (:mod:`checkpoint`), and decides
when an evaluation and a kept ``epoch_NNN.pt`` are due.

Whether to resume, and from which file, is decided on rank 0 and broadcast, so ranks that see a
shared filesystem at different moments still take the same path. A resumed run may change only
the settings that can change mid-run (:data:`FIXED_KEYS`, :data:`FIXED_IN_EPOCH_KEYS`, and the
training files themselves, by their fingerprint); the optimiser takes changed settings itself
(:meth:`Optimiser.load_state_dict`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from cacl_dist.errors import MissingFileError, UserError
from cacl_dist.config import Config, config_from_dict, to_dict
from cacl_dist.data.layouts import ReidDataset
from cacl_dist.distributed import comm
from cacl_dist.training import checkpoint as ckpt
from cacl_dist.training import run_log
from cacl_dist.training.banks import MemoryBanks
from cacl_dist.training.labels import PseudoLabels
from cacl_dist.training.optim import Optimiser
from cacl_dist.precision import StepPrecision
from cacl_dist.training.progress import Progress

RESUME_WAIT_S = 60.0
"""How long a rank waits for the checkpoint rank 0 resumes from to become visible to it (a shared
filesystem may show a renamed file to other nodes with a delay)."""

FIXED_KEYS = ("model.backbone", "model.pool", "model.last_stride", "model.patch_stride", "optim.name", "data.dataset",
              "data.height", "data.width")
"""Settings a resumed run cannot change: the weights, banks and labels were made with them."""
FIXED_IN_EPOCH_KEYS = ("train.iters_per_epoch", "train.batch_size", "train.num_instances", "run.seed")
"""Settings that shape an epoch's batches: they may change only when resuming at an epoch boundary."""


@dataclasses.dataclass
class TrainingParts:
    """The components whose state a checkpoint holds."""

    progress: Progress
    model: torch.nn.Module
    optimiser: Optimiser
    precision: StepPrecision
    banks: MemoryBanks
    labels: PseudoLabels


class Checkpointer:
    """Gathers, checks, writes and restores the state of one run's :class:`TrainingParts`; says what is due."""

    def __init__(self, cfg: Config, run_dir: Path, dataset: ReidDataset, data_fingerprint: str,
                 parts: TrainingParts, world_size: int, log: logging.Logger) -> None:
        self.cfg, self.run_dir, self.dataset = cfg, run_dir, dataset
        self.data_fingerprint, self.parts, self.world_size, self.log = data_fingerprint, parts, world_size, log
        self.unsaved = False
        """State exists that no checkpoint holds yet."""

    # ----------------------------------------------------------------------------- when
    def evaluation_due(self) -> bool:
        """An evaluation is due at this epoch boundary (or before training) and has not run yet."""
        progress, cfg = self.parts.progress, self.cfg
        if progress.iter_in_epoch or not self.dataset.has_eval:
            return False
        if progress.epoch == 0:
            due = cfg.eval.at_start
        else:
            every = cfg.eval.every_epochs
            due = progress.epoch == cfg.train.epochs or (every > 0 and progress.epoch % every == 0)
        return due and not progress.evaluated(progress.epoch)

    def keep_due(self) -> bool:
        """The checkpoint at this epoch boundary is also kept as epoch_NNN.pt."""
        every = self.cfg.checkpoint.keep_every_epochs
        return every > 0 and self.parts.progress.epoch % every == 0

    def save_due_in_epoch(self) -> bool:
        """A checkpoint is due after this step (checkpoint.every_steps; the epoch's last step saves anyway)."""
        every, step = self.cfg.checkpoint.every_steps, self.parts.progress.iter_in_epoch
        return bool(every) and step % every == 0 and step < self.cfg.train.iters_per_epoch

    # ----------------------------------------------------------------------------- save
    def state_dict(self) -> dict:
        """Everything a resumed run needs (collective call); the banks are whole on rank 0 only (None elsewhere)."""
        parts = self.parts
        return {"config": to_dict(self.cfg), **parts.progress.state_dict(), "model": parts.model.state_dict(),
                **parts.optimiser.state_dict(), "grad_scaler": parts.precision.state_dict(),
                **parts.banks.state_dict(), **parts.labels.state_dict(), "rng": ckpt.rng_state(),
                "world_size": self.world_size, "num_train": len(self.dataset.train),
                "data_fingerprint": self.data_fingerprint}

    def save(self, keep: bool = False) -> Path:
        """Atomically write last.pt (rank 0; and epoch_NNN.pt when `keep`) after gathering the state from every rank.

        A state holding NaN or infinity is not written: every rank raises
        :class:`~cacl_dist.training.checkpoint.NonFiniteError` and the last good checkpoint stays.
        """
        state = self.state_dict()
        path = comm.run_on_main(lambda: self._write(state, keep),
                                "the checkpoint (written by rank 0)")  # a failure (e.g. a full disk) stops every rank
        self.unsaved = False
        return path

    def _write(self, state: dict, keep: bool) -> Path:
        bad = ckpt.nonfinite_parts(ckpt.state_parts(state))
        if bad:
            raise self.diverged(f"NaN or infinite values in {', '.join(bad)}")
        path = ckpt.save_checkpoint(self.run_dir / ckpt.LAST, state)
        if keep:
            ckpt.save_checkpoint(self.run_dir / f"epoch_{self.parts.progress.epoch:03d}.pt", state)
        return path

    def diverged(self, what: str) -> ckpt.NonFiniteError:
        """The error that stops a run whose state went non-finite (`what`: where it was seen)."""
        last = self.run_dir / ckpt.LAST
        kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written"
        return ckpt.NonFiniteError(
            f"training diverged: {what} after step {self.parts.progress.global_step}; {kept}. Lower "
            f"optim.lr (now {self.cfg.optim.lr:g}) and start the same command again")

    # ----------------------------------------------------------------------------- resume
    def resume(self) -> Path | None:
        """Restore the run folder's last checkpoint if rank 0 finds one (every rank follows); returns its path."""
        path = shared_resume_path(self.run_dir)
        if path is None:
            return None
        state = comm.run_everywhere(lambda: read_when_visible(path), f"reading {path}")
        self.load_state_dict(state, source=str(path))
        self.unsaved = False
        return path

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Give each component its entries of `state` (banks re-sharded for this world size)."""
        changed = self.check_resumable(state, source)
        if changed:
            self.log.warning("resuming %s with changed settings, in effect from here on: %s", source,
                             ", ".join(changed))
        parts = self.parts
        try:
            parts.model.load_state_dict(state["model"])
        except RuntimeError:
            model_keys = [key for key in changed if key.startswith("model.")] or ["model.*"]
            raise UserError(f"{source} holds a model that does not fit this run's {', '.join(model_keys)}; resume "
                            "with the run's own model settings (its config.yaml), or use a new run.output_dir") from None
        saved_cfg = config_from_dict(state["config"])
        parts.optimiser.load_state_dict(state, saved_settings=saved_cfg.optim, saved_epochs=saved_cfg.train.epochs)
        parts.precision.load_state_dict(state.get("grad_scaler"))
        parts.banks.load_state_dict(state)
        parts.labels.load_state_dict(state)
        parts.progress.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])

    def check_resumable(self, state: dict, source: str) -> list[str]:
        """ValueError (one line) when `state` cannot continue in this run; else the changed keys ('key old -> new')."""
        dataset = self.dataset
        planned = self.cfg.train.epochs
        if state["epoch"] > planned:
            raise UserError(
                f"{source} has trained {state['epoch']} epochs, more than train.epochs={planned}; to continue that "
                f"run pass train.epochs >= {state['epoch']}, and for a new run use a new run.output_dir (or move "
                f"{ckpt.LAST} out of the run folder: a fresh start keeps the earlier records in previous_runs/)")
        if state["num_train"] != len(dataset.train):
            raise UserError(
                f"{source} was trained on {state['num_train']} images but the dataset at '{dataset.root}' "
                f"has {len(dataset.train)}; point data.root at the original dataset or use a new run.output_dir")
        old, new = to_dict(config_from_dict(state["config"])), to_dict(self.cfg)
        changed = run_log.changed_keys(state["config"], self.cfg)
        show = {key: f"{key}={_value(old, key)!r} (now {_value(new, key)!r})" for key in changed}
        fixed = [show[k] for k in changed if k in FIXED_KEYS]
        if fixed:
            raise UserError(f"{source} was trained with {', '.join(fixed)}, which a resumed run cannot change; drop "
                            "the change or use a new run.output_dir")
        in_epoch = [show[k] for k in changed if k in FIXED_IN_EPOCH_KEYS]
        if in_epoch and state["iter_in_epoch"] > 0:
            raise UserError(
                f"{source} stopped inside epoch {state['epoch'] + 1} (step {state['iter_in_epoch']}), which was "
                f"planned with {', '.join(in_epoch)}; resume with the old values, or change them when an epoch has "
                "ended")
        stored = state.get("data_fingerprint")
        if stored is None:
            self.log.warning("%s records no fingerprint of its training images (an older checkpoint); cannot check "
                             "that '%s' holds the images it was trained on", source, dataset.root)
        elif stored != self.data_fingerprint:
            raise UserError(
                f"{source} was trained on other images than those at '{dataset.root}' (same number, other names or "
                "sizes); point data.root at the original dataset or use a new run.output_dir")
        return [f"{key} {_value(old, key)!r} -> {_value(new, key)!r}" for key in changed]


def _value(values: dict, key: str):
    section, name = key.split(".", 1)
    return values.get(section, {}).get(name)


def shared_resume_path(run_dir: Path) -> Path | None:
    """The checkpoint to resume from, as rank 0 sees the run folder (the same answer on every rank).

    Rank 0 first deletes the temporaries of checkpoint writes that a kill interrupted.
    """
    def decide() -> Path | None:
        removed = ckpt.remove_stale_temporaries(run_dir)
        if removed:
            logging.getLogger("cacl_dist").info("removed %d unfinished checkpoint file(s) of an interrupted save: %s",
                                                len(removed), ", ".join(p.name for p in removed))
        return ckpt.find_resume(run_dir)

    return comm.run_on_main(decide, "the resume decision")


def read_when_visible(path: Path, wait_s: float = RESUME_WAIT_S) -> dict:
    """Load the checkpoint at `path`, waiting up to `wait_s` seconds for it to appear on this rank."""
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not path.is_file():
        raise MissingFileError(
            f"rank {comm.rank()} cannot see the checkpoint '{path}' that rank 0 resumes from (waited "
            f"{wait_s:.0f} s); put run.output_dir on a filesystem that every node shares")
    return ckpt.load_checkpoint(path)


__all__ = ["FIXED_IN_EPOCH_KEYS", "FIXED_KEYS", "RESUME_WAIT_S", "Checkpointer", "TrainingParts",
           "read_when_visible", "shared_resume_path"]

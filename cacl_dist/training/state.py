"""What a training run checkpoints and restores, and the resume decision shared by every rank.

The trainer's methods ``state_dict``, ``load_state_dict``, ``save`` and ``resume`` delegate here.
The banks are gathered whole to rank 0 only (the rank that writes the file); the other ranks
never hold them. Whether to resume, and from which file, is decided on rank 0 and broadcast, so
ranks that see a shared filesystem at different moments still take the same path.

A checkpoint is never written with a NaN or an infinity in it (:func:`write_state`), and a
resumed run may change only the settings that can change mid-run (:data:`FIXED_KEYS`,
:data:`FIXED_IN_EPOCH_KEYS`, and the training files themselves, by their fingerprint); the
optimiser settings among them take effect on the restored optimiser (:func:`_restore_optimizer`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cacl_dist.training import checkpoint as ckpt
from cacl_dist.training import run_log
from cacl_dist.config import config_from_dict, to_dict
from cacl_dist.distributed import comm
from cacl_dist.memory import ClusterCentres
from cacl_dist.errors import MissingFileError, UserError

RESUME_WAIT_S = 60.0
"""How long a rank waits for the checkpoint rank 0 resumes from to become visible to it (a shared
filesystem may show a renamed file to other nodes with a delay)."""

FIXED_KEYS = ("model.backbone", "model.pool", "model.last_stride", "data.dataset", "data.height", "data.width")
"""Settings a resumed run cannot change: the weights, banks and labels were made with them."""
FIXED_IN_EPOCH_KEYS = ("train.iters_per_epoch", "train.batch_size", "train.num_instances", "run.seed")
"""Settings that shape an epoch's batches: they may change only when resuming at an epoch boundary."""
SCHEDULE_KEYS = ("optim.lr", "optim.gamma", "optim.step_size")
"""Settings of the learning-rate schedule; when one changes, the schedule continues from the new values."""


def gather_state(trainer) -> dict:
    """Everything a resumed run needs (collective call).

    The banks are gathered whole to rank 0, on the CPU; on the other ranks ``bank_rgb`` and
    ``bank_gray`` are None.
    """
    banks = {name: comm.gather_cat(getattr(trainer, name).rows, dst=0, device="cpu")
             for name in ("bank_rgb", "bank_gray")}
    return {
        "config": to_dict(trainer.cfg),
        "epoch": trainer.epoch, "iter_in_epoch": trainer.iter_in_epoch, "global_step": trainer.global_step,
        "model": trainer.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
        "grad_scaler": trainer.precision.state_dict(),
        **banks,
        "labels": None if trainer.labels is None else trainer.labels.cpu(),
        "centres_rgb": None if trainer.centres_rgb is None else trainer.centres_rgb.state_dict(),
        "centres_gray": None if trainer.centres_gray is None else trainer.centres_gray.state_dict(),
        "cluster_stats": trainer.cluster_stats, "eval_history": trainer.eval_history,
        "rng": ckpt.rng_state(), "world_size": trainer.env.world_size,
        "num_train": len(trainer.dataset.train), "data_fingerprint": trainer.data_fingerprint,
    }


def diverged(trainer, what: str) -> ckpt.NonFiniteError:
    """The error that stops a run whose state went non-finite (`what`: where it was seen)."""
    last = trainer.run_dir / ckpt.LAST
    kept = f"the last good checkpoint {last} is kept" if last.is_file() else "no checkpoint was written"
    return ckpt.NonFiniteError(
        f"training diverged: {what} after step {trainer.global_step}; {kept}. Lower "
        f"optim.lr (now {trainer.cfg.optim.lr:g}) and start the same command again")


def write_state(trainer, state: dict, keep: bool) -> Path:
    """On rank 0: write `state` to last.pt (and epoch_NNN.pt when `keep`) unless it holds NaN or infinity.

    A non-finite state raises :class:`~cacl_dist.training.checkpoint.NonFiniteError` and leaves the
    checkpoints on disk as they were.
    """
    bad = ckpt.nonfinite_parts(ckpt.state_parts(state))
    if bad:
        raise diverged(trainer, f"NaN or infinite values in {', '.join(bad)}")
    path = ckpt.save_checkpoint(trainer.run_dir / ckpt.LAST, state)
    if keep:
        ckpt.save_checkpoint(trainer.run_dir / f"epoch_{trainer.epoch:03d}.pt", state)
    return path


def _value(values: dict, key: str):
    section, name = key.split(".", 1)
    return values.get(section, {}).get(name)


def check_resumable(trainer, state: dict, source: str) -> list[str]:
    """ValueError (one line) when `state` cannot continue in this run; else the changed keys, as 'key old -> new'."""
    dataset = trainer.dataset
    planned = trainer.cfg.train.epochs
    if state["epoch"] > planned:
        raise UserError(
            f"{source} has trained {state['epoch']} epochs, more than train.epochs={planned}; to continue that run "
            f"pass train.epochs >= {state['epoch']}, and for a new run use a new run.output_dir (or move "
            f"{ckpt.LAST} out of the run folder: a fresh start keeps the earlier records in previous_runs/)")
    if state["num_train"] != len(dataset.train):
        raise UserError(
            f"{source} was trained on {state['num_train']} images but the dataset at '{dataset.root}' "
            f"has {len(dataset.train)}; point data.root at the original dataset or use a new run.output_dir")
    old, new = to_dict(config_from_dict(state["config"])), to_dict(trainer.cfg)
    changed = run_log.changed_keys(state["config"], trainer.cfg)
    show = {key: f"{key}={_value(old, key)!r} (now {_value(new, key)!r})" for key in changed}
    fixed = [show[k] for k in changed if k in FIXED_KEYS]
    if fixed:
        raise UserError(f"{source} was trained with {', '.join(fixed)}, which a resumed run cannot change; drop "
                        "the change or use a new run.output_dir")
    in_epoch = [show[k] for k in changed if k in FIXED_IN_EPOCH_KEYS]
    if in_epoch and state["iter_in_epoch"] > 0:
        raise UserError(
            f"{source} stopped inside epoch {state['epoch'] + 1} (step {state['iter_in_epoch']}), which was planned "
            f"with {', '.join(in_epoch)}; resume with the old values, or change them when an epoch has ended")
    stored = state.get("data_fingerprint")
    if stored is None:
        trainer.log.warning("%s records no fingerprint of its training images (an older checkpoint); cannot check "
                            "that '%s' holds the images it was trained on", source, dataset.root)
    elif stored != trainer.data_fingerprint:
        raise UserError(
            f"{source} was trained on other images than those at '{dataset.root}' (same number, other names or "
            "sizes); point data.root at the original dataset or use a new run.output_dir")
    return [f"{key} {_value(old, key)!r} -> {_value(new, key)!r}" for key in changed]


def _restore_optimizer(trainer, state: dict) -> None:
    """Load the optimiser and schedule state with this run's optimiser settings.

    The saved moments and step counts are kept; the hyperparameters of this run's config (weight
    decay, kernel flags) replace the saved ones. When the learning rate, gamma or step size
    changed, the schedule continues from the new values: lr = optim.lr * gamma ** (epochs // step_size).
    """
    optimizer, scheduler, cfg = trainer.optimizer, trainer.scheduler, trainer.cfg
    fresh = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
             for group in optimizer.param_groups]
    saved = dict(state["optimizer"])
    saved["param_groups"] = [{**group, **settings} for group, settings in zip(saved["param_groups"], fresh)]
    optimizer.load_state_dict(saved)
    scheduler.load_state_dict(state["scheduler"])
    old = config_from_dict(state["config"]).optim
    if all(getattr(old, key.split(".")[1]) == getattr(cfg.optim, key.split(".")[1]) for key in SCHEDULE_KEYS):
        return  # the saved schedule, bit for bit
    base, gamma, step_size = cfg.optim.lr, cfg.optim.gamma, cfg.optim.step_size
    lr = base * gamma ** (scheduler.last_epoch // step_size)
    for group in optimizer.param_groups:
        group["lr"], group["initial_lr"] = lr, base
    # through the scheduler's public state dict, so that get_last_lr() reports the new rate too
    schedule = scheduler.state_dict()
    groups = len(optimizer.param_groups)
    schedule.update(base_lrs=[base] * groups, gamma=gamma, step_size=step_size, _last_lr=[lr] * groups)
    scheduler.load_state_dict(schedule)


def restore_state(trainer, state: dict, source: str = "checkpoint") -> None:
    """Restore what :func:`gather_state` produced; banks re-sharded, labels and centres on the run's device."""
    changed = check_resumable(trainer, state, source)
    if changed:
        trainer.log.warning("resuming %s with changed settings, in effect from here on: %s", source,
                            ", ".join(changed))
    device = trainer.env.device
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        model_keys = [key for key in changed if key.startswith("model.")] or ["model.*"]
        raise UserError(f"{source} holds a model that does not fit this run's {', '.join(model_keys)}; resume "
                        "with the run's own model settings (its config.yaml), or use a new run.output_dir") from None
    _restore_optimizer(trainer, state)
    trainer.precision.load_state_dict(state.get("grad_scaler"))
    start, end = trainer.shard
    trainer.bank_rgb.load(state["bank_rgb"][start:end], normalize=False)
    trainer.bank_gray.load(state["bank_gray"][start:end], normalize=False)
    trainer.labels = None if state["labels"] is None else state["labels"].to(device)
    for name in ("centres_rgb", "centres_gray"):
        centres = None
        if state[name] is not None:
            centres = ClusterCentres(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))
            centres.load_state_dict(state[name], device=device)
        setattr(trainer, name, centres)
    trainer.cluster_stats = state["cluster_stats"]
    trainer.eval_history = list(state["eval_history"])
    trainer.epoch, trainer.iter_in_epoch = state["epoch"], state["iter_in_epoch"]
    trainer.global_step = state["global_step"]
    ckpt.set_rng_state(state["rng"])


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


__all__ = ["FIXED_IN_EPOCH_KEYS", "FIXED_KEYS", "RESUME_WAIT_S", "SCHEDULE_KEYS", "check_resumable", "diverged",
           "gather_state", "read_when_visible", "restore_state", "shared_resume_path", "write_state"]

"""What a training run checkpoints and restores, and the resume decision shared by every rank.

The trainer's methods ``state_dict``, ``load_state_dict`` and ``resume`` delegate here. The
banks are gathered whole to rank 0 only (the rank that writes the file); the other ranks never
hold them. Whether to resume, and from which file, is decided on rank 0 and broadcast, so ranks
that see a shared filesystem at different moments still take the same path.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import run_log
from .config import to_dict
from .distributed import comm
from .memory import ClusterCentres

RESUME_WAIT_S = 60.0
"""How long a rank waits for the checkpoint rank 0 resumes from to become visible to it (a shared
filesystem may show a renamed file to other nodes with a delay)."""


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
        "num_train": len(trainer.dataset.train),
    }


def restore_state(trainer, state: dict, source: str = "checkpoint") -> None:
    """Restore what :func:`gather_state` produced; banks re-sharded, labels and centres on the run's device."""
    if state["num_train"] != len(trainer.dataset.train):
        raise ValueError(
            f"{source} was trained on {state['num_train']} images but the dataset at '{trainer.dataset.root}' "
            f"has {len(trainer.dataset.train)}; point data.root at the original dataset or use a new "
            "run.output_dir")
    changed = run_log.changed_keys(state["config"], trainer.cfg)
    if changed:
        trainer.log.warning("resuming %s with changed config keys: %s", source, ", ".join(changed))
    device = trainer.env.device
    try:
        trainer.model.load_state_dict(state["model"])
    except RuntimeError:
        model_keys = [key for key in changed if key.startswith("model.")] or ["model.*"]
        raise ValueError(f"{source} holds a model that does not fit this run's {', '.join(model_keys)}; resume "
                         "with the run's own model settings (its config.yaml), or use a new run.output_dir") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
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
    """The checkpoint to resume from, as rank 0 sees the run folder (the same answer on every rank)."""
    return comm.run_on_main(lambda: ckpt.find_resume(run_dir), "the resume decision")


def read_when_visible(path: Path, wait_s: float = RESUME_WAIT_S) -> dict:
    """Load the checkpoint at `path`, waiting up to `wait_s` seconds for it to appear on this rank."""
    deadline = time.monotonic() + wait_s
    while not path.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not path.is_file():
        raise FileNotFoundError(
            f"rank {comm.rank()} cannot see the checkpoint '{path}' that rank 0 resumes from (waited "
            f"{wait_s:.0f} s); put run.output_dir on a filesystem that every node shares")
    return ckpt.load_checkpoint(path)


__all__ = ["RESUME_WAIT_S", "gather_state", "read_when_visible", "restore_state", "shared_resume_path"]

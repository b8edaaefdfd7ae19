"""What a training run tells its user: the set-up, losses, clustering rounds, evaluations, the summary.

Plain formatting of values the trainer already has (reduced across ranks where needed); nothing
here talks to other processes or changes the run.
"""

from __future__ import annotations

import logging

from .config import Config, config_from_dict, to_dict
from .data.layouts import ReidDataset
from .distributed.env import DistEnv


def log_setup(log: logging.Logger, cfg: Config, env: DistEnv, dataset: ReidDataset, pipeline: str,
              cluster_backend: str) -> None:
    """Dataset sizes, world size and batch split, input pipeline and clustering backend."""
    per_rank = cfg.train.batch_size // env.world_size
    log.info("dataset %s at %s: %d train, %d query, %d gallery images", dataset.name, dataset.root,
             len(dataset.train), len(dataset.query), len(dataset.gallery))
    log.info("world size %d on %s (%s); global batch %d, %d per rank; input pipeline %s", env.world_size,
             env.device, env.backend or "single process", cfg.train.batch_size, per_rank, pipeline)
    log.info("clustering: backend %s (%s) on rank 0's %s", cluster_backend, cfg.clustering.backend, env.device)
    if per_rank < 16:
        log.warning("per-rank batch is %d (< 16): BatchNorm statistics over so few images change "
                    "accuracy; keep 16-64 per GPU and scale optim.lr with the global batch", per_rank)


def log_losses(log: logging.Logger, epoch: int, step: int, num_steps: int, row: dict, lr: float,
               images_per_s: float) -> None:
    """One line of the mean losses since the last line (`row`: loss, instance, inter, intra_rgb, intra_gray)."""
    log.info("epoch %d [%d/%d] loss %.4f (instance %.4f inter %.4f intra rgb %.4f gray %.4f) lr %.2e %.0f img/s",
             epoch, step, num_steps, row["loss"], row["instance"], row["inter"], row["intra_rgb"],
             row["intra_gray"], lr, images_per_s)


def log_clustering(log: logging.Logger, epoch: int, stats: dict) -> None:
    """One line per clustering round: backend, clusters, outliers, refined-away points, seconds."""
    log.info("epoch %d clustering [%s]: %d clusters (%d raw), %d outliers, %d refined away, %.2f s", epoch,
             stats["backend"], stats["num_clusters"], stats["num_raw_clusters"], stats["num_outliers"],
             stats["num_refined_away"], stats["seconds"])


def log_evaluation(log: logging.Logger, metrics: dict) -> None:
    """mAP, CMC and mINP of one evaluation (`metrics` carries the number of epochs trained)."""
    log.info("evaluation after %d epochs: mAP %.1f%%  rank-1 %.1f%%  rank-5 %.1f%%  rank-10 %.1f%%  mINP %.1f%%",
             metrics["epoch"], 100 * metrics["mAP"], 100 * metrics["rank1"], 100 * metrics["rank5"],
             100 * metrics["rank10"], 100 * metrics["mINP"])


def log_summary(log: logging.Logger, eval_history: list[dict]) -> None:
    """The final line: first and last evaluation of the run (nothing without evaluations)."""
    if not eval_history:
        return
    first, last = eval_history[0], eval_history[-1]
    if len(eval_history) == 1:
        log.info("done: mAP %.1f%%, rank-1 %.1f%% %s", 100 * last["mAP"], 100 * last["rank1"],
                 position(last["epoch"], 0))
        return
    log.info("done: mAP %.1f%% -> %.1f%%, rank-1 %.1f%% -> %.1f%% (%s -> %s)", 100 * first["mAP"],
             100 * last["mAP"], 100 * first["rank1"], 100 * last["rank1"], position(first["epoch"], 0),
             position(last["epoch"], 0))


def position(epochs_done: int, step_in_epoch: int) -> str:
    """Where a run stands, said the same way everywhere: 'after 1 epoch, step 2 of epoch 2', 'after 2 epochs'."""
    done = "before training" if epochs_done == 0 else f"after {epochs_done} epoch{'s' if epochs_done != 1 else ''}"
    if step_in_epoch == 0:
        return done
    if epochs_done == 0:
        return f"at step {step_in_epoch} of epoch 1"
    return f"{done}, step {step_in_epoch} of epoch {epochs_done + 1}"


def written_before_checkpoint(row: dict, global_step: int, epochs_done: int, evaluated: set) -> bool:
    """Whether a metrics.jsonl `row` was recorded before the checkpoint taken at `global_step`, `epochs_done`
    epochs in, with the evaluations after `evaluated` epochs (rows recorded later are dropped on resume)."""
    if row.get("step", -1) != global_step:
        return row.get("step", -1) < global_step
    if row.get("kind") == "cluster":  # clustering for the next epoch runs after the epoch-end checkpoint
        return row.get("epoch", 0) <= epochs_done
    if row.get("kind") == "eval":
        return row.get("epoch") in evaluated
    return True


def changed_keys(stored: dict, cfg: Config) -> list[str]:
    """The `section.key` names whose value in `cfg` differs from the stored config of a checkpoint."""
    old, new = to_dict(config_from_dict(stored)), to_dict(cfg)
    return [f"{section}.{key}" for section in new for key in new[section]
            if old.get(section, {}).get(key) != new[section][key]]


__all__ = ["changed_keys", "log_clustering", "log_evaluation", "log_losses", "log_setup", "log_summary", "position",
           "written_before_checkpoint"]

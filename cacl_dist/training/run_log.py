"""What a training run tells its user: the set-up, losses, clustering rounds, evaluations, the summary.

Plain formatting of values the trainer already has (reduced across ranks where needed); nothing
here talks to other processes or changes the run.
"""

from __future__ import annotations

import logging
import time

from cacl_dist.config import Config, config_from_dict, to_dict
from cacl_dist.data.layouts import ReidDataset
from cacl_dist.distributed.bn_groups import BNGroupLayout
from cacl_dist.distributed.env import DistEnv


def log_setup(log: logging.Logger, cfg: Config, env: DistEnv, dataset: ReidDataset, pipeline: str,
              cluster_backend: str, layout: BNGroupLayout) -> None:
    """Dataset sizes, world size and batch split, input pipeline, clustering backend and BatchNorm groups."""
    per_rank = cfg.train.batch_size // env.world_size
    log.info("dataset %s at %s: %d train, %d query, %d gallery images", dataset.name, dataset.root,
             len(dataset.train), len(dataset.query), len(dataset.gallery))
    log.info("world size %d on %s (%s); global batch %d, %d per rank; input pipeline %s", env.world_size,
             env.device, env.backend or "single process", cfg.train.batch_size, per_rank, pipeline)
    log.info("clustering: backend %s (%s) on rank 0's %s", cluster_backend, cfg.clustering.backend, env.device)
    few = layout.mode == "per-process" and per_rank < 16  # statistics over so few images cost accuracy
    log.log(logging.WARNING if few else logging.INFO, "%s", layout.describe())


def log_losses(log: logging.Logger, epoch: int, step: int, num_steps: int, row: dict, lr: float,
               images_per_s: float, eta_s: float | None = None) -> None:
    """One line of the mean losses since the last line (`row`: loss, instance, inter, intra_rgb, intra_gray),
    ending with the whole run's estimated time left (`eta_s`, see :class:`RunClock`) when known."""
    eta = "" if eta_s is None else f", run ETA {duration(eta_s)}"
    log.info("epoch %d [%d/%d] loss %.4f (instance %.4f inter %.4f intra rgb %.4f gray %.4f) lr %.2e %.0f img/s%s",
             epoch, step, num_steps, row["loss"], row["instance"], row["inter"], row["intra_rgb"],
             row["intra_gray"], lr, images_per_s, eta)
    if "camera_intra_rgb" in row:
        log.info("epoch %d [%d/%d] camera proxies: intra rgb %.4f gray %.4f, inter rgb %.4f gray %.4f", epoch, step,
                 num_steps, row["camera_intra_rgb"], row["camera_intra_gray"], row["camera_inter_rgb"],
                 row["camera_inter_gray"])


class RunClock:
    """The whole run's time left, from the pace of the steps this process has trained so far.

    The pace includes everything between the steps (clustering rounds, evaluations, checkpoints),
    so the estimate covers them too; it is None until the first step after :meth:`restart`.
    """

    def __init__(self, total_steps: int, start_step: int = 0) -> None:
        self.total_steps = total_steps
        self.restart(start_step)

    def restart(self, step: int) -> None:
        """Measure from now on, `step` steps of the run being done already (a resume)."""
        self.start_step, self.started = step, time.perf_counter()

    def left(self, step: int, now: float | None = None) -> float | None:
        """Seconds the run still needs after `step` steps (None before this process trained one)."""
        done = step - self.start_step
        if done <= 0:
            return None
        elapsed = (time.perf_counter() if now is None else now) - self.started
        return elapsed / done * max(self.total_steps - step, 0)


def duration(seconds: float) -> str:
    """'45 s', '12 min 05 s', '3 h 07 min'."""
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def log_clustering(log: logging.Logger, epoch: int, stats: dict) -> None:
    """One line per clustering round: backend, clusters, outliers, refined-away points, seconds.

    When `stats` carries the pseudo-label quality (``pseudo_fscore`` ...), the line ends with the
    pairwise F-score (precision, recall), ARI and NMI of the pseudo labels and of the raw clusters.
    """
    quality = ""
    for prefix, name in (("pseudo", "pseudo labels"), ("raw", "raw DBSCAN")):
        if f"{prefix}_fscore" in stats:
            quality += (f"; {name} vs identities: F {stats[f'{prefix}_fscore']:.3f} "
                        f"(P {stats[f'{prefix}_precision']:.3f} R {stats[f'{prefix}_recall']:.3f}) "
                        f"ARI {stats[f'{prefix}_ari']:.3f} NMI {stats[f'{prefix}_nmi']:.3f}")
    sizes = (f"{stats['num_multi_clusters']} with 2+ images, {stats['num_singletons']} singletons; "
             if "num_multi_clusters" in stats else "")
    log.info("epoch %d clustering [%s]: %d clusters (%s%d raw), %d outliers, %d refined away, %.2f s%s", epoch,
             stats["backend"], stats["num_clusters"], sizes, stats["num_raw_clusters"], stats["num_outliers"],
             stats["num_refined_away"], stats["seconds"], quality)


def log_evaluation(log: logging.Logger, metrics: dict) -> None:
    """mAP, CMC and mINP of one evaluation (`metrics` carries the number of epochs trained)."""
    log.info("evaluation after %d epochs: mAP %.1f%%  rank-1 %.1f%%  rank-5 %.1f%%  rank-10 %.1f%%  mINP %.1f%%",
             metrics["epoch"], 100 * metrics["mAP"], 100 * metrics["rank1"], 100 * metrics["rank5"],
             100 * metrics["rank10"], 100 * metrics["mINP"])


def eval_summary(eval_history: list[dict]) -> dict | None:
    """The first, the last and the best evaluation of a run (None without evaluations).

    ``first_*``: the first evaluation (the untrained model with ``eval.at_start``); ``last_*``:
    the final one; ``best_*``: the one with the highest mAP among the evaluations after training
    began (epoch >= 1; all of them if there is none), the earliest on ties: the number the
    released code reports.
    """
    if not eval_history:
        return None
    first, last = eval_history[0], eval_history[-1]
    trained = [m for m in eval_history if m["epoch"] >= 1] or eval_history
    best = max(trained, key=lambda m: m["mAP"])  # max keeps the first of equal values
    return {"first_mAP": first["mAP"], "first_rank1": first["rank1"], "first_epoch": first["epoch"],
            "last_mAP": last["mAP"], "last_rank1": last["rank1"], "last_epoch": last["epoch"],
            "best_mAP": best["mAP"], "best_rank1": best["rank1"], "best_epoch": best["epoch"]}


def log_summary(log: logging.Logger, eval_history: list[dict]) -> dict | None:
    """The final line: first -> last evaluation, then the best one; returns :func:`eval_summary`."""
    s = eval_summary(eval_history)
    if s is None:
        return None
    if len(eval_history) == 1:
        log.info("done: mAP %.1f%%, rank-1 %.1f%% %s", 100 * s["last_mAP"], 100 * s["last_rank1"],
                 position(s["last_epoch"], 0))
        return s
    log.info("done: mAP %.1f%% -> %.1f%%, rank-1 %.1f%% -> %.1f%% (epoch %d -> %d, last evaluation); "
             "best mAP %.1f%% (rank-1 %.1f%%) at epoch %d", 100 * s["first_mAP"], 100 * s["last_mAP"],
             100 * s["first_rank1"], 100 * s["last_rank1"], s["first_epoch"], s["last_epoch"], 100 * s["best_mAP"],
             100 * s["best_rank1"], s["best_epoch"])
    return s


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


__all__ = ["RunClock", "changed_keys", "duration", "eval_summary", "log_clustering", "log_evaluation", "log_losses", "log_setup",
           "log_summary", "position", "written_before_checkpoint"]

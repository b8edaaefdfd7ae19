"""Cross-field rules of a config, checked once where the config is read."""

from __future__ import annotations

from .schema import Config, ConfigError


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that name the key."""
    positive = {
        "train.epochs": cfg.train.epochs, "train.iters_per_epoch": cfg.train.iters_per_epoch,
        "train.batch_size": cfg.train.batch_size, "train.num_instances": cfg.train.num_instances,
        "data.height": cfg.data.height, "data.width": cfg.data.width,
        "clustering.k1": cfg.clustering.k1, "clustering.k2": cfg.clustering.k2,
        "clustering.min_samples": cfg.clustering.min_samples, "eval.batch_size": cfg.eval.batch_size,
        "run.log_every": cfg.run.log_every, "optim.step_size": cfg.optim.step_size,
        "dist.timeout_min": cfg.dist.timeout_min, "loss.tau": cfg.loss.tau,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers, "augment.pad": cfg.augment.pad,
        "eval.every_epochs": cfg.eval.every_epochs, "checkpoint.every_steps": cfg.checkpoint.every_steps,
        "checkpoint.keep_every_epochs": cfg.checkpoint.keep_every_epochs, "optim.lr": cfg.optim.lr,
        "optim.weight_decay": cfg.optim.weight_decay, "loss.focal_gamma": cfg.loss.focal_gamma,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key '{key}': must not be negative, got {value}")
    for key, value in {"augment.flip_p": cfg.augment.flip_p, "augment.erase_p": cfg.augment.erase_p,
                       "memory.momentum": cfg.memory.momentum}.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key '{key}': must lie in [0, 1], got {value}")
    if not 0.0 < cfg.optim.gamma <= 1.0:
        raise ConfigError(f"config key 'optim.gamma': must lie in (0, 1] (the learning rate is multiplied by it "
                          f"every optim.step_size epochs), got {cfg.optim.gamma}")
    if not 0.0 < cfg.clustering.eps_tight <= cfg.clustering.eps <= 1.0:
        raise ConfigError(
            f"config keys 'clustering.eps_tight' ({cfg.clustering.eps_tight}) and 'clustering.eps' "
            f"({cfg.clustering.eps}): need 0 < eps_tight <= eps <= 1")
    if cfg.optim.implementation == "fused" and cfg.run.device == "cpu":
        raise ConfigError("config key 'optim.implementation': 'fused' Adam needs CUDA but run.device is 'cpu'; "
                          "use foreach or auto")
    if cfg.train.batch_size % cfg.train.num_instances:
        raise ConfigError(
            f"config key 'train.batch_size': {cfg.train.batch_size} is not a multiple of "
            f"train.num_instances ({cfg.train.num_instances})")



def validate_for_world(cfg: Config, env) -> None:
    """Rules that depend on the number of processes (``env.world_size``, e.g. a DistEnv), checked at start-up
    before any work: the global batch splits evenly over the ranks, and each rank's share can train BatchNorm."""
    world = env.world_size
    batch = cfg.train.batch_size
    if batch % world:
        raise ConfigError(
            f"config key 'train.batch_size': the global batch {batch} does not split over {world} processes; "
            f"pick a multiple of {world} (e.g. {max(world, batch - batch % world)}) or start another number of "
            "processes")
    if batch // world < 2 and not cfg.model.frozen_bn:
        raise ConfigError(
            f"config key 'train.batch_size': {batch} over {world} process(es) leaves {batch // world} image per "
            f"rank, but BatchNorm needs at least 2 in training; use train.batch_size >= {2 * world}")


__all__ = ["validate", "validate_for_world"]

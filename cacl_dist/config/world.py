"""The rules that depend on the number of processes, in one place.

A config is valid on its own (:mod:`.validation`); whether it can run on W processes is decided
here, once: by the training entry before any work (every rank alike), by the SLURM launcher
before it queues a job, and by the trainer for the BatchNorm layout it realises. A refusal names
every rule the batch breaks at once and a batch size that keeps them all.
"""

from __future__ import annotations

import math

from cacl_dist.config.schema import Config
from cacl_dist.distributed.bn_groups import BNGroupLayout, bn_group_layout
from cacl_dist.errors import ConfigError

MIN_IMAGES_PER_RANK = 2
"""BatchNorm in training mode needs at least two images per statistics group."""


def world_problems(cfg: Config, world_size: int, batch_size: int | None = None) -> list[str]:
    """Every rule that ``batch_size`` (default train.batch_size) breaks on ``world_size`` processes."""
    batch = cfg.train.batch_size if batch_size is None else batch_size
    k, group, world = cfg.train.num_instances, cfg.model.bn_group_size, world_size
    problems = []
    if world < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if batch % world:
        problems.append(f"the global batch {batch} does not split over {world} processes")
    if batch % k:
        problems.append(f"{batch} is not a multiple of train.num_instances ({k})")
    if group and not cfg.model.sync_bn and batch % group:
        problems.append(f"{batch} is not a multiple of model.bn_group_size ({group})")
    if batch % world == 0 and batch // world < MIN_IMAGES_PER_RANK and not cfg.model.frozen_bn:
        problems.append(f"{batch} over {world} process(es) leaves {batch // world} image per rank, but BatchNorm "
                        f"needs at least {MIN_IMAGES_PER_RANK} in training")
    if batch % world == 0 and (not group or batch % group == 0):
        try:
            bn_group_layout(group, batch, world, cfg.model.sync_bn)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def batch_for_world(cfg: Config, world_size: int) -> int:
    """The batch size nearest to train.batch_size (the larger one on a tie) that breaks no rule on ``world_size``."""
    step = math.lcm(world_size, cfg.train.num_instances, cfg.model.bn_group_size or 1)
    batch = cfg.train.batch_size
    below = max(step, batch // step * step)
    # a multiple of W * g always fits (each process holds whole groups), so the search ends
    candidates = sorted({below + i * step for i in range(-8, 9) if below + i * step > 0}, key=lambda b: (abs(b - batch), -b))
    for candidate in candidates + [step * max(1, world_size) * max(1, cfg.model.bn_group_size)]:
        if not world_problems(cfg, world_size, candidate):
            return candidate
    raise AssertionError(f"no batch size fits {world_size} processes")  # unreachable: see the comment above


def validate_for_world(cfg: Config, world_size: int, processes: str = "") -> BNGroupLayout:
    """Check ``cfg`` against ``world_size`` processes and return its BatchNorm layout there.

    ConfigError (one line) lists every rule the batch breaks, with a train.batch_size that keeps
    them all; ``processes`` says where the process count comes from (e.g. the job shape).
    """
    problems = world_problems(cfg, world_size)
    if problems:
        where = f" ({processes})" if processes else ""
        raise ConfigError(
            f"config key 'train.batch_size': {'; '.join(problems)}{where}; use train.batch_size="
            f"{batch_for_world(cfg, world_size)}, which fits {world_size} processes, or start another number "
            "of processes")
    return bn_group_layout(cfg.model.bn_group_size, cfg.train.batch_size, world_size, cfg.model.sync_bn)


__all__ = ["batch_for_world", "validate_for_world", "world_problems"]

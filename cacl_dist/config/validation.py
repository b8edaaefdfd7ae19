"""Cross-field rules of a config, checked once where the config is read."""

from __future__ import annotations

import os
from pathlib import Path

from cacl_dist.config.schema import Config
from cacl_dist.errors import ConfigError
from cacl_dist.models.names import BACKBONE_NAMES, CONV_STEM_NAMES, PATCH, VIT_NAMES

MAX_SEED = 2**63 - 1
"""Largest seed (seeds are kept in 64-bit signed integers, e.g. in checkpoints and epoch plans)."""
MIN_IMAGE_SIZE = (32, 16)
"""Smallest network input (height, width): the ResNet backbones downsample by up to 32."""
MAX_IMAGE_SIZE = 2048
"""Largest network input side in pixels (a batch's memory grows with height x width)."""


def validate(cfg: Config) -> None:
    """Cross-field checks with messages that name the key."""
    _validate_ranges(cfg)
    cfg.clustering.check()  # the section's own rules, defined with it
    _validate_run_folder(cfg)
    positive = {
        "train.epochs": cfg.train.epochs, "train.iters_per_epoch": cfg.train.iters_per_epoch,
        "train.batch_size": cfg.train.batch_size, "train.num_instances": cfg.train.num_instances,
        "data.height": cfg.data.height, "data.width": cfg.data.width,
        "eval.batch_size": cfg.eval.batch_size,
        "eval.rerank_k1": cfg.eval.rerank_k1, "eval.rerank_k2": cfg.eval.rerank_k2,
        "run.log_every": cfg.run.log_every, "optim.step_size": cfg.optim.step_size,
        "dist.timeout_min": cfg.dist.timeout_min, "loss.tau": cfg.loss.tau,
        "loss.camera_proxy_temperature": cfg.loss.camera_proxy_temperature,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}': must be positive, got {value}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers, "augment.pad": cfg.augment.pad,
        "eval.every_epochs": cfg.eval.every_epochs, "checkpoint.every_steps": cfg.checkpoint.every_steps,
        "checkpoint.keep_every_epochs": cfg.checkpoint.keep_every_epochs, "optim.lr": cfg.optim.lr,
        "optim.weight_decay": cfg.optim.weight_decay, "loss.focal_gamma": cfg.loss.focal_gamma,
        "loss.instance_weight": cfg.loss.instance_weight, "loss.inter_weight": cfg.loss.inter_weight,
        "loss.intra_gray_weight": cfg.loss.intra_gray_weight, "loss.camera_proxy_weight": cfg.loss.camera_proxy_weight,
        "loss.camera_proxy_inter_weight": cfg.loss.camera_proxy_inter_weight,
        "loss.camera_proxy_hard_negatives": cfg.loss.camera_proxy_hard_negatives,
        "loss.camera_proxy_inter_from_epoch": cfg.loss.camera_proxy_inter_from_epoch,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key '{key}': must not be negative, got {value}")
    for key, value in {"augment.flip_p": cfg.augment.flip_p, "augment.erase_p": cfg.augment.erase_p,
                       "memory.momentum": cfg.memory.momentum, "eval.rerank_lambda": cfg.eval.rerank_lambda}.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key '{key}': must lie in [0, 1], got {value}")
    if not 0.0 < cfg.optim.gamma <= 1.0:
        raise ConfigError(f"config key 'optim.gamma': must lie in (0, 1] (the learning rate is multiplied by it "
                          f"every optim.step_size epochs), got {cfg.optim.gamma}")
    a = cfg.augment
    if not 0.0 < a.erase_area_min <= a.erase_area_max <= 1.0:
        raise ConfigError(f"config keys 'augment.erase_area_min' ({a.erase_area_min}) and 'augment.erase_area_max' "
                          f"({a.erase_area_max}): need 0 < erase_area_min <= erase_area_max <= 1")
    if not 0.0 < a.erase_ratio_min <= a.erase_ratio_max:
        raise ConfigError(f"config keys 'augment.erase_ratio_min' ({a.erase_ratio_min}) and 'augment.erase_ratio_max' "
                          f"({a.erase_ratio_max}): need 0 < erase_ratio_min <= erase_ratio_max")
    if cfg.eval.rerank_k2 > cfg.eval.rerank_k1:
        raise ConfigError(f"config keys 'eval.rerank_k2' ({cfg.eval.rerank_k2}) and 'eval.rerank_k1' "
                          f"({cfg.eval.rerank_k1}): query expansion needs rerank_k2 <= rerank_k1")
    if cfg.optim.implementation == "fused" and cfg.run.device == "cpu":
        raise ConfigError("config key 'optim.implementation': 'fused' kernels need CUDA but run.device is 'cpu'; "
                          "use foreach or auto")
    if cfg.train.batch_size % cfg.train.num_instances:
        raise ConfigError(
            f"config key 'train.batch_size': {cfg.train.batch_size} is not a multiple of "
            f"train.num_instances ({cfg.train.num_instances})")
    if cfg.data.dataset == "synthetic" and cfg.data.synthetic.num_cameras < 2:
        raise ConfigError(f"config key 'data.synthetic.num_cameras': {cfg.data.synthetic.num_cameras} camera(s), but "
                          "evaluation matches a query only on other cameras; use at least 2")
    _validate_bn_group(cfg)
    _validate_backbone(cfg)
    _validate_optim(cfg)


def _validate_backbone(cfg: Config) -> None:
    """model.backbone is known; a ViT keeps the 'avg' pool, a patch stride of 1 to 16 (16 with a conv stem)."""
    m = cfg.model
    if m.backbone not in BACKBONE_NAMES:
        raise ConfigError(f"config key 'model.backbone': unknown backbone {m.backbone!r}; choose one of "
                          f"{', '.join(BACKBONE_NAMES)}")
    if not 0.0 <= m.drop_path < 1.0:
        raise ConfigError(f"config key 'model.drop_path': must lie in [0, 1), got {m.drop_path}")
    if not 1 <= m.patch_stride <= PATCH:
        raise ConfigError(f"config key 'model.patch_stride': {m.patch_stride}; patches are {PATCH} pixels wide, so "
                          f"the stride lies from 1 to {PATCH} (TransReID overlaps them with 12)")
    if m.backbone not in VIT_NAMES:
        return
    if m.pool != "avg":
        raise ConfigError(f"config key 'model.pool': {m.pool!r} with the ViT {m.backbone!r}, whose feature is its "
                          "class token (no map to pool); keep model.pool=avg")
    if str(m.pretrained).lower() == "imagenet":
        raise ConfigError(f"config key 'model.pretrained': 'imagenet' with the ViT {m.backbone!r}; name a weights "
                          "file you have (e.g. TransReID-SSL's vit_small_cfs_lup.pth, see README 'Pretrained "
                          "weights') or 'none'")
    if m.backbone in CONV_STEM_NAMES and m.patch_stride != PATCH:
        raise ConfigError(f"config key 'model.patch_stride': {m.patch_stride} with {m.backbone!r}, whose "
                          f"convolutional stem takes no overlapping patches; use {PATCH}")
    if min(cfg.data.height, cfg.data.width) < PATCH:
        raise ConfigError(f"config keys 'data.height' x 'data.width' ({cfg.data.height} x {cfg.data.width}): a ViT "
                          f"needs at least one {PATCH} x {PATCH} patch")


def _validate_optim(cfg: Config) -> None:
    """Momentum, warm-up, cosine floor and backbone multiplier in their ranges."""
    o = cfg.optim
    if not 0.0 <= o.momentum < 1.0:
        raise ConfigError(f"config key 'optim.momentum': must lie in [0, 1), got {o.momentum}")
    if o.warmup_epochs < 0:
        raise ConfigError(f"config key 'optim.warmup_epochs': must not be negative, got {o.warmup_epochs}")
    if not 0.0 < o.warmup_factor <= 1.0:
        raise ConfigError(f"config key 'optim.warmup_factor': must lie in (0, 1], got {o.warmup_factor}")
    if not 0.0 <= o.min_lr_factor <= 1.0:
        raise ConfigError(f"config key 'optim.min_lr_factor': must lie in [0, 1], got {o.min_lr_factor}")
    if o.backbone_lr_mult <= 0:
        raise ConfigError(f"config key 'optim.backbone_lr_mult': must be positive, got {o.backbone_lr_mult}")


def _validate_ranges(cfg: Config) -> None:
    """Seeds a generator can take, and network input sizes the backbone and the memory can take."""
    for key, seed in (("run.seed", cfg.run.seed), ("data.synthetic.seed", cfg.data.synthetic.seed)):
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"config key '{key}': {seed} is not a seed; use an integer from 0 to 2^63 - 1")
    for key, value, low in (("data.height", cfg.data.height, MIN_IMAGE_SIZE[0]),
                            ("data.width", cfg.data.width, MIN_IMAGE_SIZE[1])):
        if not low <= value <= MAX_IMAGE_SIZE:
            raise ConfigError(f"config key '{key}': {value} pixels; the network input must be from {low} to "
                              f"{MAX_IMAGE_SIZE} pixels (re-identification crops are usually 256 x 128)")


def _validate_run_folder(cfg: Config) -> None:
    """run.output_dir names a folder (never the current one by accident) that lies outside data.root."""
    out = cfg.run.output_dir
    if not out.strip():
        raise ConfigError(f"config key 'run.output_dir': {out!r} is empty (an unset shell variable?), which would "
                          "make the current folder the run folder; name the run folder, e.g. runs/market1501")
    if not cfg.data.root.strip():
        raise ConfigError(f"config key 'data.root': {cfg.data.root!r} is empty (an unset shell variable?); name "
                          "the dataset folder")
    run_dir, data_root = Path(os.path.realpath(out)), Path(os.path.realpath(os.path.expanduser(cfg.data.root)))
    if run_dir == data_root or data_root in run_dir.parents:
        raise ConfigError(f"config key 'run.output_dir': '{out}' lies inside data.root '{cfg.data.root}', where the "
                          "run's files (report plots among them) would mix with the dataset; pick a run folder "
                          "outside data.root")


def _validate_bn_group(cfg: Config) -> None:
    """model.bn_group_size: whole identity blocks, a divisor of the global batch, not with sync_bn."""
    group, batch, k = cfg.model.bn_group_size, cfg.train.batch_size, cfg.train.num_instances
    if group < 0:
        raise ConfigError(f"config key 'model.bn_group_size': must not be negative, got {group}")
    if group == 0:
        return
    if cfg.model.sync_bn:
        raise ConfigError(f"config keys 'model.sync_bn' and 'model.bn_group_size' ({group}): sync_bn makes the "
                          "whole batch one group; set one of them")
    if group % k:
        raise ConfigError(f"config key 'model.bn_group_size': {group} is not a multiple of train.num_instances "
                          f"({k}); a group must hold whole identity blocks")
    if batch % group:
        raise ConfigError(f"config key 'model.bn_group_size': {group} does not divide train.batch_size ({batch}); "
                          "choose a divisor of the global batch")


__all__ = ["validate"]

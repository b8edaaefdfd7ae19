"""Typed run configuration: one dataclass per concern, strict YAML loading and `--set` overrides.

Every field carries a docstring right under it; `describe()` turns them into the reference
that `python -m cacl_dist.train --describe-config` prints. Unknown keys and values of the wrong
type are errors that name the key. Runtime facts (world size, number of clusters) are never
written back into the config.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class RunConfig:
    output_dir: str = "runs/quickstart"
    """Run folder: resolved config, logs, metrics.jsonl, TensorBoard events and checkpoints."""
    seed: int = 0
    """Seed of everything random: model init, sampler, augmentations."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train: 'auto' takes CUDA when it is available, else the CPU."""
    log_every: int = 20
    """Reduce losses across ranks and log them every this many steps."""
    progress: bool = True
    """Show progress bars on rank 0."""
    debug_checks: bool = False
    """Check labels and bank indices on every step (host syncs, slower); off: checked once per epoch."""


@dataclass
class SyntheticConfig:
    num_train_ids: int = 60
    """Identities in the synthetic training split."""
    num_test_ids: int = 40
    """Identities in the synthetic query/gallery split (disjoint from training)."""
    images_per_id: int = 12
    """Images drawn per identity."""
    num_cameras: int = 4
    """Cameras; each applies its own colour cast and brightness."""
    height: int = 128
    """Height of the written images in pixels."""
    width: int = 64
    """Width of the written images in pixels."""
    seed: int = 0
    """Seed of the generator (the same seed always writes the same files)."""


@dataclass
class DataConfig:
    dataset: Literal["market1501", "dukemtmc", "msmt17", "folder", "synthetic"] = "synthetic"
    """Dataset layout. 'folder' is a plain folder of unlabelled crops (training only)."""
    root: str = "data_cache/synthetic"
    """Dataset root folder. For 'synthetic' it is generated there when missing."""
    height: int = 256
    """Network input height in pixels."""
    width: int = 128
    """Network input width in pixels."""
    num_workers: int = 4
    """DataLoader worker processes per rank (0 loads in the main process); DALI threads (at least 1)."""
    pipeline: Literal["auto", "dali", "torchvision"] = "auto"
    ("Training input pipeline: 'dali' (NVIDIA DALI on the GPU, or CPU-only; `pip install cacl_dist[dali]`), "
     "'torchvision' (PIL in DataLoader workers), or 'auto': dali when DALI is installed, else torchvision.")
    eval_pipeline: Literal["auto", "dali", "torchvision"] = "torchvision"
    ("Pipeline of feature extraction (memory initialisation, evaluation; resize + normalise only): "
     "dali, torchvision, or auto as for data.pipeline.")
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """Generator settings, used only when dataset is 'synthetic'."""


@dataclass
class AugmentConfig:
    flip_p: float = 0.5
    """Probability of a horizontal flip, per view."""
    pad: int = 10
    """Zero padding in pixels before the random crop back to the input size."""
    erase_p: float = 0.5
    """Probability of random erasing, per view."""
    gray_second_view: bool = True
    """Convert the second view to grayscale (CACL). False gives a plain two-RGB-view ablation."""


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    """Backbone of both branches: resnet50, resnet34, resnet18 or resnet_tiny (tests, CPU demos)."""
    pretrained: str = "imagenet"
    """'imagenet' (torchvision weights from the torch hub cache, never downloaded), 'none', or a path."""
    pool: Literal["avg", "gem"] = "avg"
    """Global pooling of the last feature map."""
    last_stride: int = 1
    """Stride of the last ResNet stage (1 keeps a finer feature map, as re-ID does)."""
    frozen_bn: bool = False
    """Keep every BatchNorm in eval mode during training (running statistics frozen)."""
    sync_bn: bool = False
    """Synchronise BatchNorm statistics across GPUs (SyncBatchNorm); on the CPU plain BatchNorm is used."""


@dataclass
class MemoryConfig:
    momentum: float = 0.2
    """alpha of the bank update v <- alpha * v + (1 - alpha) * x, then re-normalised."""
    init_gray_from: Literal["gray", "rgb"] = "gray"
    """Images that fill the branch-2 bank before epoch 1: grayscale (paper) or RGB (authors' code)."""


@dataclass
class ClusteringConfig:
    k1: int = 30
    """k of the k-reciprocal nearest neighbours."""
    k2: int = 6
    """Neighbours averaged by the query expansion (1 switches it off)."""
    eps: float = 0.6
    """DBSCAN radius on the Jaccard distance."""
    eps_tight: float = 0.58
    """DBSCAN radius of the over-segmentation used by refinement."""
    min_samples: int = 4
    """DBSCAN minimum neighbourhood size (a point counts itself)."""
    refine: bool = True
    """Run cluster refinement after DBSCAN."""
    refine_score: Literal["paper", "official"] = "paper"
    """Refinement rule: the paper's, or the authors' code's size-weighted score."""
    outliers: Literal["singleton", "drop"] = "singleton"
    """Outliers and refined-away points: own singleton clusters (paper) or left out of the epoch."""
    backend: Literal["auto", "torch", "sklearn", "cuml"] = "auto"
    """Clustering implementation: 'torch' (sparse and exact, CPU or CUDA), 'sklearn' (the dense
    reference), 'cuml' (sparse graph + RAPIDS cuML DBSCAN on a dense GPU matrix; extra 'cuml');
    'auto' picks the fastest exact one available and the epoch log names it."""
    shard_knn: bool = True
    """With several processes and a sparse backend, every rank searches the nearest neighbours of
    its share of the bank (against all rows) and rank 0 gathers them; false: rank 0 searches alone.
    The labels are the same either way."""


@dataclass
class LossConfig:
    tau: float = 0.05
    """Temperature of the intra-view cluster softmax."""
    focal_gamma: float = 2.0
    """Focal exponent of the intra-view loss (paper 2; the authors' final code uses 4)."""


@dataclass
class OptimConfig:
    lr: float = 3.5e-4
    """Adam learning rate for both branches and the predictor."""
    weight_decay: float = 5e-4
    """Coupled L2 weight decay."""
    step_size: int = 20
    """Multiply the learning rate by `gamma` every this many epochs."""
    gamma: float = 0.1
    """Step factor of the learning-rate schedule."""
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    """Adam kernels: 'fused' (CUDA only), 'foreach' (multi-tensor) or 'for_loop'; 'auto' is fused on CUDA,
    foreach on the CPU."""


@dataclass
class TrainConfig:
    epochs: int = 80
    """Training epochs; clustering runs at the start of each."""
    iters_per_epoch: int = 400
    """Optimiser steps per epoch."""
    batch_size: int = 64
    """Global batch (all ranks together), in images; each image gives both views."""
    num_instances: int = 4
    """Images per pseudo identity in a batch."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the forward pass: fp32 (off), bf16 (GPUs from A100 on), or fp16 with a
    gradient scaler (saved in checkpoints). Losses, banks and centres always stay in float32/float64."""
    channels_last: bool = False
    """Keep weights and images in channels-last (NHWC) memory format (faster convolutions on tensor cores)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms once per input shape (CUDA only)."""
    compile: bool = False
    """Compile both branches with torch.compile (first steps are slow while it compiles)."""


@dataclass
class EvalConfig:
    every_epochs: int = 5
    """Evaluate every this many epochs (and always after the last); 0 evaluates only at the end."""
    at_start: bool = True
    """Evaluate the untrained model before epoch 1, so the gain is visible."""
    batch_size: int = 128
    """Feature-extraction batch per rank."""
    rerank: bool = False
    """Apply k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) to the query-gallery distance."""
    precision: Literal["train", "fp32", "bf16", "fp16"] = "train"
    """Autocast precision of feature extraction (evaluation and bank initialisation); 'train' follows
    train.precision. Features are returned in float32 either way."""


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """Also checkpoint every this many steps inside an epoch (0: only at epoch ends)."""
    keep_every_epochs: int = 0
    """Keep a copy of the checkpoint every this many epochs besides last.pt (0: none)."""


@dataclass
class DistConfig:
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Collective backend; 'auto' is NCCL with CUDA and gloo otherwise."""
    timeout_min: float = 30.0
    """Minutes a rank waits in a collective (e.g. for rank 0's pseudo labels) before failing."""
    ddp_bucket_view: bool = True
    """DDP gradient_as_bucket_view: gradients live in the all-reduce buckets (saves a copy and memory)."""
    ddp_static_graph: bool = True
    """DDP static_graph: every parameter takes part in every step (true for CACL), enabling more overlap.
    Not applied together with train.compile."""


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, seed, device and logging."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and input pipeline."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Asymmetric two-view augmentation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The two branches and the predictor."""
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    """Instance memory banks."""
    clustering: ClusteringConfig = field(default_factory=ClusteringConfig)
    """Pseudo labels: Jaccard distance, DBSCAN, refinement."""
    loss: LossConfig = field(default_factory=LossConfig)
    """CACL losses."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and schedule."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Epochs, iterations and batch."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Distributed settings."""


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names it."""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field annotation and return it (ints are accepted for floats)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _merge(obj: Any, values: dict, prefix: str) -> None:
    """Write a nested dict of values into dataclass `obj`, strictly."""
    if not isinstance(values, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.') or '<root>'}': expected a mapping, got {values!r}")
    types = _field_types(type(obj))
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types:
            known = ", ".join(types)
            raise ConfigError(f"unknown config key '{full}' (known keys here: {known})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, full + ".")
        else:
            setattr(obj, key, _coerce(value, types[key], full))


def _validate(cfg: Config) -> None:
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


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a', 'b'], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value (e.g. train.epochs=10)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from defaults, then a YAML file, then `key=value` overrides, and validate it."""
    cfg = Config()
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file '{path}' does not exist; pass a YAML file such as configs/quickstart.yaml")
        try:
            values = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
        try:
            _merge(cfg, values, "")
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Apply `key.path=value` overrides to `cfg` in place, validate, and return it."""
    for text in overrides:
        keys, value = parse_override(text)
        _merge(cfg, _nest(keys, value), "")
    _validate(cfg)
    return cfg


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from `to_dict` output (e.g. the copy stored in a checkpoint)."""
    cfg = Config()
    _merge(cfg, values, "")
    _validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as plain nested dicts."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal under each field) of a dataclass."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value
    return docs


def describe(cfg: Config | None = None) -> str:
    """A reference of every key with its current value and docstring."""
    cfg = cfg or Config()
    lines: list[str] = []

    def walk(obj: Any, prefix: str) -> None:
        docs = _field_docs(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{prefix}{f.name}:  # {docs.get(f.name, '')}")
                walk(value, prefix + f.name + ".")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}  # {docs.get(f.name, '')}")

    walk(cfg, "")
    return "\n".join(lines)

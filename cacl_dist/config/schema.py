"""The configuration schema: one dataclass per concern, a docstring under every field.

A section that a component reads whole is that component's parameter object, defined (with its
docstrings and checks) beside the component and composed here: ``clustering`` is
:class:`cacl_dist.clustering.params.ClusterParams`; ``data`` (with ``data.synthetic``) and ``augment``
live in :mod:`cacl_dist.data.settings`.

The docstrings are the reference that `python -m cacl_dist.train --describe-config` prints
(see :func:`cacl_dist.config.describe`). Choices (``Literal`` fields) are checked when a config
is read; cross-field rules live in :mod:`cacl_dist.config.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cacl_dist.clustering.params import ClusterParams
from cacl_dist.data.names import SAMPLERS
from cacl_dist.data.settings import AugmentConfig, DataConfig


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
class ModelConfig:
    backbone: str = "resnet50"
    """Backbone of both branches: resnet50, resnet34, resnet18, resnet50_ibn_a (IBN-Net), resnet_tiny (tests, CPU
    demos), or a ViT for person crops (timm, pip install cacl_dist[vit]): vit_small, vit_base (ViT-S/16, ViT-B/16),
    vit_small_convstem (TransReID-SSL's ViT-S with the convolutional stem), vit_tiny_test (tests, CPU demos)."""
    pretrained: str = "imagenet"
    """'imagenet' (ResNets: the ImageNet file from the torch hub cache, never downloaded), 'none', or the path of a
    weights file: torchvision or IBN-Net ImageNet files, MoCo-style self-supervised ResNets (LUPerson), timm or
    person-pretrained ViTs (TransReID-SSL / PASS / DINO checkpoints); the layout is recognised from the contents."""
    patch_stride: int = 16
    """ViTs: pixels between neighbouring 16 x 16 patches; below 16 they overlap (TransReID uses 12). Not with
    vit_small_convstem."""
    drop_path: float = 0.0
    """ViTs: stochastic depth rate of the last block (rising linearly from 0 over the blocks; TransReID-SSL's
    cluster-contrast recipe uses 0.3). Random per image and process, so runs on different process counts differ."""
    pool: Literal["avg", "gem"] = "avg"
    """Global pooling of the last feature map (ResNets; a ViT's feature is its class token: keep 'avg')."""
    last_stride: int = 1
    """Stride of the last ResNet stage (1 keeps a finer feature map, as re-ID does); ResNets only."""
    predictor_init: Literal["default", "kaiming"] = "default"
    """Initialisation of the predictor's Linear layer: PyTorch's default, or 'kaiming' (Kaiming normal weight
    with fan-out, zero bias) as the released code does."""
    frozen_bn: bool = False
    """Keep every BatchNorm in eval mode during training (running statistics frozen)."""
    bn_group_size: int = 0
    """Images per BatchNorm statistics group in training: runs of this many consecutive images of the
    global batch are normalised together, the same on any number of processes (ghost BatchNorm inside a
    process, synchronised over consecutive ranks when a process holds fewer). A multiple of
    train.num_instances dividing train.batch_size; 0: each process's batch (changes with the process count)."""
    sync_bn: bool = False
    """One BatchNorm statistics group for the whole global batch, synchronised over all processes
    (gloo or NCCL); not combined with bn_group_size."""


@dataclass
class MemoryConfig:
    momentum: float = 0.2
    """alpha of the bank update v <- alpha * v + (1 - alpha) * x, then re-normalised."""
    init_gray_from: Literal["gray", "rgb"] = "gray"
    """Images that fill the branch-2 bank before epoch 1: grayscale (paper) or RGB (authors' code)."""


@dataclass
class LossConfig:
    tau: float = 0.05
    """Temperature of the intra-view cluster softmax."""
    focal_gamma: float = 2.0
    """Focal exponent of the intra-view loss (paper 2; the authors' final code uses 4)."""
    instance_weight: float = 1.0
    """Factor on the instance loss L_I between the predictor output and the grayscale feature (CACL: 1;
    0 is the ablation without it)."""
    inter_weight: float = 1.0
    """Factor on the inter-view loss L_inter between the predictor output and the grayscale cluster
    centre (CACL: 1; 0 is the ablation without it)."""
    intra_gray_weight: float = 1.0
    """Factor on the grayscale branch's cluster loss (CACL: 1). With all three weights at 0 only
    branch 1's cluster loss trains: a single-branch cluster-contrast baseline."""
    camera_proxy_weight: float = 0.0
    """Factor on the camera-aware proxy losses (CAP, docs/method.md section 9): 0 (default) leaves them out
    entirely; CAP adds them with factor 1. Each branch's features are contrasted with the proxies of its own
    bank; branch 2's part takes `intra_gray_weight` as well."""
    camera_proxy_inter_weight: float = 0.5
    """Factor on the inter-camera loss against the intra-camera loss (CAP: 0.5)."""
    camera_proxy_temperature: float = 0.07
    """Temperature of both camera-proxy softmaxes (CAP: 0.07)."""
    camera_proxy_hard_negatives: int = 50
    """Hard negative proxies (of other clusters, most similar first) in the inter-camera loss (CAP: 50)."""
    camera_proxy_inter_from_epoch: int = 5
    """The inter-camera loss joins after this many epochs (CAP: 5); 0 uses it from the start."""


@dataclass
class OptimConfig:
    name: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimiser: 'adam' (coupled L2 weight decay), 'adamw' (decoupled weight decay) or 'sgd' (with momentum)."""
    lr: float = 3.5e-4
    """Learning rate for both branches and the predictor (the backbones' is scaled by backbone_lr_mult)."""
    weight_decay: float = 5e-4
    """Weight decay (coupled L2 for adam and sgd, decoupled for adamw)."""
    momentum: float = 0.9
    """SGD momentum (optim.name sgd only)."""
    schedule: Literal["step", "cosine"] = "step"
    """Learning-rate decay per epoch: 'step' multiplies by `gamma` every `step_size` epochs; 'cosine' falls as a
    half cosine from lr to lr * min_lr_factor over the epochs after the warm-up."""
    step_size: int = 20
    """Multiply the learning rate by `gamma` every this many epochs (schedule 'step')."""
    gamma: float = 0.1
    """Step factor of the learning-rate schedule (schedule 'step')."""
    min_lr_factor: float = 0.0
    """Final learning rate of the cosine schedule, as a fraction of lr."""
    warmup_epochs: int = 0
    """Linear warm-up: the rate rises from lr * warmup_factor to lr over this many epochs (0: none)."""
    warmup_factor: float = 0.01
    """Factor on the learning rate in the first warm-up epoch."""
    backbone_lr_mult: float = 1.0
    """Factor on the learning rate of both backbones (pretrained bodies often train at a lower rate than the
    heads); 1 keeps one parameter group. Cannot change between 1 and another value on resume."""
    implementation: Literal["auto", "fused", "foreach", "for_loop"] = "auto"
    """Optimiser kernels: 'fused' (CUDA only), 'foreach' (multi-tensor) or 'for_loop'; 'auto' is fused on CUDA,
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
    sampler: Literal[SAMPLERS] = "cacl"
    """Identity sampler: 'cacl' takes distinct other-camera, then same-camera images (replacement only for
    identities with fewer than num_instances images) and streams the passes into batches; 'released' (the
    authors' code) draws num_instances - 1 other-camera images with replacement when fewer than num_instances
    exist, and drops every pass's last partial batch."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision of the forward pass: fp32 (off), bf16 (GPUs from A100 on), or fp16 with a
    gradient scaler (saved in checkpoints). Losses, banks and centres always stay in float32/float64."""
    channels_last: bool = False
    """Keep weights and images in channels-last (NHWC) memory format (faster convolutions on tensor cores)."""
    cudnn_benchmark: bool = True
    """Let cuDNN time its convolution algorithms once per input shape (CUDA only)."""
    deterministic: bool = False
    """Deterministic GPU kernels (CUDA only): cuDNN's deterministic algorithms without autotuning, and
    torch.use_deterministic_algorithms (a warning, not an error, for an operation that has none).
    Slower; for runs that must match each other to float rounding, e.g. 1 vs 2 processes."""
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
    """Rank by the k-reciprocal re-ranked distance (Zhong et al. 2017; eval.rerank_k1/k2/lambda) instead
    of the Euclidean distance. Exact and sparse: time grows as (Q+G)^2 D, memory as (Q+G) D."""
    rerank_k1: int = 20
    """Re-ranking: k-reciprocal sets are searched among each image's k1 + 1 nearest images (itself included)."""
    rerank_k2: int = 6
    """Re-ranking: query expansion over the k2 nearest images (itself included; 1 disables it; <= rerank_k1)."""
    rerank_lambda: float = 0.3
    """Re-ranking: weight of the original distance in the final distance, in [0, 1] (1 - lambda: Jaccard)."""
    flip: bool = False
    """Average the features of every query/gallery image and its horizontal mirror image (then L2-normalise);
    doubles the extraction time. Memory initialisation is not affected."""
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
    clustering: ClusterParams = field(default_factory=ClusterParams)
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


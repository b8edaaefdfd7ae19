"""How a training step runs fast: autocast precision, gradient scaling, memory format, Adam kernels.

Everything here changes speed, not the method: losses, banks and centres stay in float32/float64
whatever the autocast precision, and every option has a CPU path (bf16 autocast runs on the CPU
too, only slower without bf16 hardware). GPU-only options (fused Adam, SyncBatchNorm, cuDNN
benchmark) fall back with one log line, or fail clearly when requested explicitly.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger("cacl_dist")

#: Autocast dtype of each precision name (None: autocast off).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of 'fp32' | 'bf16' | 'fp16' (None for fp32)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for `precision` on `device`'s type; a no-op context for fp32."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def extraction_precision(eval_precision: str, train_precision: str) -> str:
    """Resolve eval.precision: 'train' follows train.precision."""
    return train_precision if eval_precision == "train" else eval_precision


def _make_grad_scaler(device: torch.device):
    """torch.amp.GradScaler for the device type, falling back to the older CUDA-only class."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device.type)
    if device.type == "cuda":  # torch releases before torch.amp.GradScaler
        return torch.cuda.amp.GradScaler()
    raise ValueError("train.precision=fp16 on the CPU needs torch.amp.GradScaler (torch >= 2.3); use bf16 or fp32")


class StepPrecision:
    """Autocast for the forward pass plus, for fp16, a gradient scaler around backward and step.

    ``backward`` and ``step`` replace ``loss.backward()`` and ``optimizer.step()``; with fp16 the
    scaler skips steps with non-finite gradients and adapts its scale. Its state is part of
    :meth:`state_dict` so a resumed run continues with the same scale.
    """

    def __init__(self, precision: str, device: torch.device):
        self.precision = precision
        self.device = device
        self.dtype = autocast_dtype(precision)
        self.scaler = _make_grad_scaler(device) if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Context for the forward pass (not for the losses, which run in float32 outside it)."""
        return autocast(self.device, self.precision)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate `loss` (scaled under fp16)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimiser step; under fp16 unscaled, skipped on inf/NaN gradients, and the scale updated."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict | None:
        """The scaler's state (None without a scaler)."""
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a scaler state; a checkpoint of another precision leaves the fresh scaler as it is."""
        if self.scaler is None:
            return
        if not state:
            log.info("checkpoint has no gradient-scaler state (trained in another precision); starting a fresh one")
            return
        self.scaler.load_state_dict(state)


def adam_kernel(implementation: str, device: torch.device) -> str:
    """Resolve optim.implementation: 'auto' is fused on CUDA and foreach elsewhere."""
    if implementation == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    if implementation == "fused" and device.type != "cuda":
        raise ValueError(f"optim.implementation 'fused' needs CUDA but training runs on {device}; "
                         "use foreach or auto")
    return implementation


def build_adam(params, lr: float, weight_decay: float, implementation: str,
               device: torch.device) -> torch.optim.Adam:
    """Adam with the resolved kernel (fused / foreach / for-loop); the maths is the same in all three."""
    kernel = adam_kernel(implementation, device)
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for_loop": dict(foreach=False)}[kernel]
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)


def prepare_model(model: nn.Module, device: torch.device, *, sync_bn: bool, channels_last: bool,
                  world_size: int) -> nn.Module:
    """Convert BatchNorm to SyncBatchNorm (CUDA, several processes) and set the memory format in place."""
    if sync_bn:
        if device.type != "cuda":
            log.info("model.sync_bn needs CUDA; training on %s with plain BatchNorm", device)
        elif world_size > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Move a B x C x H x W batch to `device` (asynchronously from pinned memory), channels-last if asked."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def configure_backends(device: torch.device, cudnn_benchmark: bool) -> None:
    """Process-wide switches: cuDNN autotuning on CUDA (nothing to do on the CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def maybe_compile(module: nn.Module, enabled: bool) -> nn.Module:
    """torch.compile(module) when enabled; the compiled wrapper shares the module's parameters."""
    if not enabled:
        return module
    return torch.compile(module)


def describe_speed(cfg, device: torch.device) -> str:
    """One log line with the speed settings in effect (`cfg` is a cacl_dist Config)."""
    t = cfg.train
    return (f"precision {t.precision} (extraction {extraction_precision(cfg.eval.precision, t.precision)}), "
            f"channels-last {t.channels_last}, Adam {adam_kernel(cfg.optim.implementation, device)}, "
            f"torch.compile {t.compile}, DDP bucket view {cfg.dist.ddp_bucket_view} / static graph "
            f"{cfg.dist.ddp_static_graph and not t.compile}, cuDNN benchmark "
            f"{t.cudnn_benchmark if device.type == 'cuda' else 'n/a (CPU)'}")


__all__ = ["AUTOCAST_DTYPES", "StepPrecision", "adam_kernel", "autocast", "autocast_dtype", "build_adam",
           "configure_backends", "describe_speed", "extraction_precision", "maybe_compile", "prepare_model", "to_input"]

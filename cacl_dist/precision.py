"""Numeric precision of a step: autocast dtypes, the fp16 gradient scaler, extraction precision.

Only the forward pass runs under autocast: losses, banks and centres stay in float32/float64
whatever the precision. Every precision has a CPU path (bf16 autocast runs on the CPU too, only
slower without bf16 hardware); fp16 on the CPU needs torch.amp.GradScaler.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from cacl_dist.errors import UserError

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
    raise UserError("train.precision=fp16 on the CPU needs torch.amp.GradScaler (torch >= 2.3); use bf16 or fp32")


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


__all__ = ["AUTOCAST_DTYPES", "StepPrecision", "autocast", "autocast_dtype", "extraction_precision"]

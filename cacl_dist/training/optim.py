"""The optimiser and its schedule: Adam with a resolved kernel, stepped down every `step_size` epochs."""

from __future__ import annotations

import torch

from cacl_dist.errors import UserError


def adam_kernel(implementation: str, device: torch.device) -> str:
    """Resolve optim.implementation: 'auto' is fused on CUDA and foreach elsewhere."""
    if implementation == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    if implementation == "fused" and device.type != "cuda":
        raise UserError(f"optim.implementation 'fused' needs CUDA but training runs on {device}; "
                        "use foreach or auto")
    return implementation


def build_adam(params, lr: float, weight_decay: float, implementation: str,
               device: torch.device) -> torch.optim.Adam:
    """Adam with the resolved kernel (fused / foreach / for-loop); the maths is the same in all three."""
    kernel = adam_kernel(implementation, device)
    flags = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for_loop": dict(foreach=False)}[kernel]
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **flags)


def build_optimizer(params, optim, device: torch.device) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.StepLR]:
    """Adam over `params` and its step schedule, both from the ``optim`` config section."""
    optimizer = build_adam(params, optim.lr, optim.weight_decay, optim.implementation, device)
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, optim.step_size, optim.gamma)


__all__ = ["adam_kernel", "build_adam", "build_optimizer"]

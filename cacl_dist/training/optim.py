"""The optimiser and its schedule, from the ``optim`` section.

Adam (the default), AdamW or SGD with momentum, each with a resolved kernel (fused / foreach / for-loop).
The learning rate is set once per epoch: ``lr * mult * warm(e) * decay(e)`` (:func:`lr_factor`), where
``mult`` is ``optim.backbone_lr_mult`` for backbone parameters and 1 for the heads, ``warm`` rises linearly
from ``optim.warmup_factor`` to 1 over ``optim.warmup_epochs``, and ``decay`` is ``gamma ** (e // step_size)``
(``step``) or a half cosine from 1 to ``optim.min_lr_factor`` over the epochs after the warm-up (``cosine``).
The defaults (Adam, step, no warm-up, multiplier 1) build today's one-group Adam with torch's StepLR,
bit for bit.
"""

from __future__ import annotations

import math

import torch

from cacl_dist.errors import UserError

OPTIMIZERS = ("adam", "adamw", "sgd")
OPTIMISER_NAMES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
"""How the log names each optimiser."""
SCHEDULES = ("step", "cosine")


def adam_kernel(implementation: str, device: torch.device) -> str:
    """Resolve optim.implementation: 'auto' is fused on CUDA and foreach elsewhere (every optimiser here)."""
    if implementation == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    if implementation == "fused" and device.type != "cuda":
        raise UserError(f"optim.implementation 'fused' needs CUDA but training runs on {device}; "
                        "use foreach or auto")
    return implementation


def _kernel_flags(implementation: str, device: torch.device) -> dict:
    kernel = adam_kernel(implementation, device)
    return {"fused": dict(fused=True), "foreach": dict(foreach=True), "for_loop": dict(foreach=False)}[kernel]


def build_adam(params, lr: float, weight_decay: float, implementation: str,
               device: torch.device) -> torch.optim.Adam:
    """Adam with the resolved kernel (fused / foreach / for-loop); the maths is the same in all three."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **_kernel_flags(implementation, device))


def build_torch_optimizer(params, optim, device: torch.device) -> torch.optim.Optimizer:
    """``optim.name`` over ``params`` (tensors or param groups) with the resolved kernel."""
    if optim.name == "adam":
        return build_adam(params, optim.lr, optim.weight_decay, optim.implementation, device)
    flags = _kernel_flags(optim.implementation, device)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay, **flags)
    return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, **flags)


def parameter_groups(model: torch.nn.Module, optim) -> list:
    """The trainable parameters: one list (multiplier 1, today's layout), or a backbone group at
    ``lr * optim.backbone_lr_mult`` followed by the heads' group at ``lr``."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if optim.backbone_lr_mult == 1.0:
        return [p for _, p in named]
    backbone = [p for name, p in named if ".backbone." in f".{name}"]
    heads = [p for name, p in named if ".backbone." not in f".{name}"]
    return [{"params": backbone, "lr": optim.lr * optim.backbone_lr_mult},
            {"params": heads, "lr": optim.lr}]


def lr_factor(epoch: int, optim, epochs: int) -> float:
    """The schedule's factor on each group's base rate at ``epoch`` (0-based), see the module docstring."""
    warm = 1.0
    if epoch < optim.warmup_epochs:
        warm = optim.warmup_factor + (1.0 - optim.warmup_factor) * epoch / optim.warmup_epochs
    if optim.schedule == "step":
        return warm * optim.gamma ** (epoch // optim.step_size)
    span = max(1, epochs - optim.warmup_epochs)
    t = min(1.0, max(0, epoch - optim.warmup_epochs) / span)
    return warm * (optim.min_lr_factor + (1.0 - optim.min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def uses_step_lr(optim) -> bool:
    """Today's schedule (a plain step schedule without warm-up) is torch's StepLR itself."""
    return optim.schedule == "step" and optim.warmup_epochs == 0


def _lambda_schedule(optimizer, optim, epochs: int, last_epoch: int = -1) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(epoch: int) -> float:  # a plain function: LambdaLR's state dict then stores nothing of it
        return lr_factor(epoch, optim, epochs)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, [factor] * len(optimizer.param_groups), last_epoch=last_epoch)


def build_optimizer(params, optim, device: torch.device, epochs: int = 0):
    """The optimiser over ``params`` and its per-epoch schedule, both from the ``optim`` section."""
    optimizer = build_torch_optimizer(params, optim, device)
    if uses_step_lr(optim):
        return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, optim.step_size, optim.gamma)
    return optimizer, _lambda_schedule(optimizer, optim, epochs)


SCHEDULE_KEYS = ("lr", "gamma", "step_size", "schedule", "warmup_epochs", "warmup_factor", "min_lr_factor",
                 "backbone_lr_mult")
"""Settings of the learning-rate schedule (``optim.*``, and ``train.epochs`` for the cosine); when one changes on
resume, the schedule continues from the new values."""


class Optimiser:
    """The optimiser and its schedule from the ``optim`` section; its checkpoint entries are ``optimizer`` and
    ``scheduler``. ``epochs`` (train.epochs) is the length of a cosine schedule."""

    def __init__(self, params, optim, device: torch.device, epochs: int = 0) -> None:
        self.settings, self.epochs = optim, epochs
        self.optimizer, self.scheduler = build_optimizer(params, optim, device, epochs)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict, saved_settings, saved_epochs: int | None = None) -> None:
        """Continue from `state` (written under `saved_settings`, an ``optim`` section) with this run's settings.

        The saved moments and step counts are kept; this run's hyperparameters (weight decay, momentum, kernel
        flags) replace the saved ones. When a schedule setting changed (:data:`SCHEDULE_KEYS`, or train.epochs
        under a cosine), the schedule continues from the new values at the saved epoch.
        """
        saved = dict(state["optimizer"])
        if len(saved["param_groups"]) != len(self.optimizer.param_groups):
            raise UserError(f"the checkpoint's optimiser has {len(saved['param_groups'])} parameter group(s), this "
                            f"run's {len(self.optimizer.param_groups)}: optim.backbone_lr_mult cannot change between "
                            "1 and another value on resume; resume with the old value or use a new run.output_dir")
        fresh = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
                 for group in self.optimizer.param_groups]
        saved["param_groups"] = [{**group, **settings} for group, settings in zip(saved["param_groups"], fresh)]
        self.optimizer.load_state_dict(saved)
        same_length = saved_epochs is None or saved_epochs == self.epochs or self.settings.schedule == "step"
        if same_length and all(getattr(saved_settings, key) == getattr(self.settings, key) for key in SCHEDULE_KEYS):
            self.scheduler.load_state_dict(state["scheduler"])  # the saved schedule, bit for bit
            return
        self.scheduler = self._schedule_from(state["scheduler"]["last_epoch"])

    def _base_rates(self) -> list[float]:
        mult = self.settings.backbone_lr_mult
        count = len(self.optimizer.param_groups)
        return [self.settings.lr] if count == 1 else [self.settings.lr * mult, self.settings.lr]

    def _schedule_from(self, last_epoch: int):
        """A schedule of this run's settings that has seen `last_epoch` epochs, its rate set by the closed form.

        A StepLR is built with the constructor's documented resume argument, with gamma 1 for its one initial
        step (so the rate it reports, get_last_lr(), is exactly the one set), then given this run's gamma through
        its public state dict; any other schedule is a LambdaLR of the closed form, resumed the same way.
        """
        for group, base in zip(self.optimizer.param_groups, self._base_rates()):
            group["initial_lr"] = base
            group["lr"] = base * lr_factor(last_epoch, self.settings, self.epochs)
        if not uses_step_lr(self.settings):
            return _lambda_schedule(self.optimizer, self.settings, self.epochs, last_epoch=last_epoch - 1)
        gamma, step_size = self.settings.gamma, self.settings.step_size
        scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size, gamma=1.0, last_epoch=last_epoch - 1)
        scheduler.load_state_dict({**scheduler.state_dict(), "gamma": gamma})
        return scheduler


__all__ = ["OPTIMISER_NAMES", "OPTIMIZERS", "SCHEDULES", "SCHEDULE_KEYS", "Optimiser", "adam_kernel", "build_adam", "build_optimizer",
           "build_torch_optimizer", "lr_factor", "parameter_groups", "uses_step_lr"]

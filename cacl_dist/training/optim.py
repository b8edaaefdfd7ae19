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


SCHEDULE_KEYS = ("lr", "gamma", "step_size")
"""Settings of the learning-rate schedule (``optim.*``); when one changes on resume, the schedule continues from the
new values."""


class Optimiser:
    """Adam and its schedule from the ``optim`` section; its checkpoint entries are ``optimizer`` and ``scheduler``."""

    def __init__(self, params, optim, device: torch.device) -> None:
        self.settings = optim
        self.optimizer, self.scheduler = build_optimizer(params, optim, device)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict, saved_settings) -> None:
        """Continue from `state` (written under `saved_settings`, an ``optim`` section) with this run's settings.

        The saved moments and step counts are kept; this run's hyperparameters (weight decay, kernel
        flags) replace the saved ones. When the learning rate, gamma or step size changed, the schedule
        continues from the new values: lr = optim.lr * gamma ** (epochs // step_size).
        """
        fresh = [{k: v for k, v in group.items() if k not in ("params", "lr", "initial_lr")}
                 for group in self.optimizer.param_groups]
        saved = dict(state["optimizer"])
        saved["param_groups"] = [{**group, **settings} for group, settings in zip(saved["param_groups"], fresh)]
        self.optimizer.load_state_dict(saved)
        if all(getattr(saved_settings, key) == getattr(self.settings, key) for key in SCHEDULE_KEYS):
            self.scheduler.load_state_dict(state["scheduler"])  # the saved schedule, bit for bit
            return
        self.scheduler = self._schedule_from(state["scheduler"]["last_epoch"])

    def _schedule_from(self, last_epoch: int) -> torch.optim.lr_scheduler.StepLR:
        """A StepLR of this run's settings that has seen `last_epoch` epochs, its rate set by the closed form.

        Built with the constructor's documented resume argument, with gamma 1 for its one initial step
        (so the rate it reports, get_last_lr(), is exactly the one set), then given this run's gamma
        through its public state dict.
        """
        base, gamma, step_size = self.settings.lr, self.settings.gamma, self.settings.step_size
        lr = base * gamma ** (last_epoch // step_size)
        for group in self.optimizer.param_groups:
            group["lr"], group["initial_lr"] = lr, base
        scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size, gamma=1.0, last_epoch=last_epoch - 1)
        scheduler.load_state_dict({**scheduler.state_dict(), "gamma": gamma})
        return scheduler


__all__ = ["SCHEDULE_KEYS", "Optimiser", "adam_kernel", "build_adam", "build_optimizer"]

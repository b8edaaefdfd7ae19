"""Where a run stands: epochs and steps done, and the evaluations recorded so far."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Progress:
    """How far training has come; its checkpoint entries are its own fields."""

    epoch: int = 0
    """Epochs completed."""
    iter_in_epoch: int = 0
    """Steps completed inside the current epoch."""
    global_step: int = 0
    """Steps completed since the run began."""
    eval_history: list[dict] = dataclasses.field(default_factory=list)
    """One row of metrics per evaluation, each with the epoch it was made after."""

    def step_done(self) -> None:
        self.iter_in_epoch += 1
        self.global_step += 1

    def epoch_done(self) -> None:
        self.epoch, self.iter_in_epoch = self.epoch + 1, 0

    def evaluated(self, epoch: int) -> bool:
        """True when an evaluation after `epoch` epochs is on record."""
        return any(h["epoch"] == epoch for h in self.eval_history)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "iter_in_epoch": self.iter_in_epoch, "global_step": self.global_step,
                "eval_history": self.eval_history}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.iter_in_epoch = state["epoch"], state["iter_in_epoch"]
        self.global_step = state["global_step"]
        self.eval_history = list(state["eval_history"])


__all__ = ["Progress"]

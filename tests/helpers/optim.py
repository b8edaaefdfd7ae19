"""An optimiser stepped through whole epochs, for the schedule and resume tests."""

from __future__ import annotations

import torch

from cacl_dist.training.optim import Optimiser


def trained_optimiser(optim, epochs: int, total: int = 0) -> Optimiser:
    """An :class:`Optimiser` of one 3-vector parameter after ``epochs`` optimiser and schedule steps
    (``total``: the run's ``train.epochs``, which a cosine schedule needs)."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimiser = Optimiser([weight], optim, torch.device("cpu"), total)
    for _ in range(epochs):
        weight.sum().backward()
        optimiser.optimizer.step()
        optimiser.scheduler.step()
    return optimiser

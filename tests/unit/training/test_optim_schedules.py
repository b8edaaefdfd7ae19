"""Optimiser and schedule keys: the defaults are today's Adam + StepLR, the other schedules' rates per epoch."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cacl_dist.config import load_config
from cacl_dist.config.schema import OptimConfig
from cacl_dist.errors import UserError
from cacl_dist.models import build_model
from cacl_dist.training.optim import Optimiser, parameter_groups
from tests.helpers.optim import trained_optimiser

CPU = torch.device("cpu")
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")


def _rates(optim: OptimConfig, epochs: int, params=None, total_epochs: int = 10) -> list[list[float]]:
    """The rate of every parameter group at each epoch, stepping once per epoch like the trainer."""
    params = params if params is not None else [torch.nn.Parameter(torch.ones(3))]
    optimiser = Optimiser(params, optim, CPU, total_epochs)
    rates = []
    for _ in range(epochs):
        rates.append([group["lr"] for group in optimiser.optimizer.param_groups])
        optimiser.optimizer.step()
        optimiser.scheduler.step()
    return rates


def test_defaults_are_todays_adam_and_step_schedule_bit_for_bit():
    optim = OptimConfig()
    assert (optim.name, optim.lr, optim.weight_decay, optim.step_size, optim.gamma, optim.schedule,
            optim.warmup_epochs, optim.backbone_lr_mult) == ("adam", 3.5e-4, 5e-4, 20, 0.1, "step", 0, 1.0)
    weight = torch.nn.Parameter(torch.ones(3))
    optimiser = Optimiser([weight], optim, CPU, 80)
    assert type(optimiser.optimizer) is torch.optim.Adam and type(optimiser.scheduler) is torch.optim.lr_scheduler.StepLR
    reference = torch.optim.lr_scheduler.StepLR(torch.optim.Adam([torch.nn.Parameter(torch.ones(3))], lr=3.5e-4),
                                                20, 0.1)
    for _ in range(80):
        assert optimiser.lr == reference.optimizer.param_groups[0]["lr"]  # the same floats, not close ones
        optimiser.scheduler.step()
        reference.step()
    model = build_model("resnet_tiny")
    groups = parameter_groups(model, optim)
    assert groups == [p for p in model.parameters() if p.requires_grad]


def test_step_schedule_with_linear_warm_up():
    optim = OptimConfig(lr=1.0, step_size=4, gamma=0.5, warmup_epochs=2, warmup_factor=0.1)
    rates = [r[0] for r in _rates(optim, 9)]
    expected = [0.1, 0.55, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
    assert rates == pytest.approx(expected, rel=1e-12)


def test_cosine_schedule_after_warm_up_to_its_floor():
    optim = OptimConfig(lr=2.0, schedule="cosine", warmup_epochs=2, warmup_factor=0.5, min_lr_factor=0.1)
    rates = [r[0] for r in _rates(optim, 10, total_epochs=10)]
    cosine = [2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 8))) for t in range(8)]
    assert rates == pytest.approx([1.0, 1.5] + cosine, rel=1e-12)
    assert rates[2] == pytest.approx(2.0) and rates[-1] > 0.2


def test_backbone_rate_multiplier_makes_two_groups():
    model = build_model("resnet_tiny")
    optim = OptimConfig(lr=1.0, backbone_lr_mult=0.1, step_size=2, gamma=0.5)
    groups = parameter_groups(model, optim)
    backbone = {id(p) for n, p in model.named_parameters() if ".backbone." in n}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [len(g["params"]) for g in groups] == [len(backbone), len(trainable) - len(backbone)]
    assert {id(p) for p in groups[0]["params"]} == backbone
    rates = _rates(optim, 3, params=groups)
    assert [r for pair in rates for r in pair] == pytest.approx([0.1, 1.0, 0.1, 1.0, 0.05, 0.5], rel=1e-12)


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_sgd_and_adamw(name, kind):
    optimiser = Optimiser([torch.nn.Parameter(torch.ones(3))], OptimConfig(name=name, momentum=0.8), CPU, 10)
    assert type(optimiser.optimizer) is kind
    if name == "sgd":
        assert optimiser.optimizer.param_groups[0]["momentum"] == 0.8


def _trained(optim: OptimConfig, epochs: int, total: int = 10) -> Optimiser:
    return trained_optimiser(optim, epochs, total)


def test_resume_keeps_a_cosine_schedule_and_switches_to_a_new_one_in_closed_form():
    cosine = OptimConfig(lr=1.0, schedule="cosine", warmup_epochs=1, implementation="for_loop")
    saved = _trained(cosine, 4)
    same = _trained(cosine, 0)
    same.load_state_dict(saved.state_dict(), saved_settings=cosine, saved_epochs=10)
    assert same.scheduler.state_dict() == saved.scheduler.state_dict() and same.lr == saved.lr
    longer = Optimiser([torch.nn.Parameter(torch.ones(3))], cosine, CPU, 20)
    longer.load_state_dict(saved.state_dict(), saved_settings=cosine, saved_epochs=10)
    assert longer.lr == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 19)), rel=1e-12)
    step = dataclasses.replace(cosine, schedule="step", warmup_epochs=0, step_size=3, gamma=0.5)
    switched = _trained(step, 0)
    switched.load_state_dict(saved.state_dict(), saved_settings=cosine, saved_epochs=10)
    assert switched.lr == pytest.approx(0.5, rel=1e-12)
    switched.scheduler.step()
    switched.scheduler.step()
    assert switched.lr == pytest.approx(0.25, rel=1e-12)


def test_resume_refuses_a_changed_group_layout():
    model = build_model("resnet_tiny")
    one = OptimConfig(implementation="for_loop")
    saved = Optimiser(parameter_groups(model, one), one, CPU, 10)
    two = dataclasses.replace(one, backbone_lr_mult=0.5)
    resumed = Optimiser(parameter_groups(model, two), two, CPU, 10)
    with pytest.raises(UserError, match="backbone_lr_mult"):
        resumed.load_state_dict(saved.state_dict(), saved_settings=one, saved_epochs=10)


@pytest.mark.parametrize("override, key", [
    ("optim.momentum=1.0", "optim.momentum"), ("optim.warmup_epochs=-1", "optim.warmup_epochs"),
    ("optim.warmup_factor=0", "optim.warmup_factor"), ("optim.min_lr_factor=1.5", "optim.min_lr_factor"),
    ("optim.backbone_lr_mult=0", "optim.backbone_lr_mult"), ("optim.name=lamb", "optim.name"),
    ("optim.schedule=poly", "optim.schedule"),
])
def test_config_rejects_bad_optim_settings(override, key):
    with pytest.raises(UserError, match=key):
        load_config("configs/quickstart.yaml", [override])

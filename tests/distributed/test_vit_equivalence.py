"""A ViT with BatchNorms in its stem (and in the necks) trains alike on one and two gloo processes: the
BatchNorm groups govern every BatchNorm that remains, whatever the backbone."""

from __future__ import annotations

import pytest
import torch

from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.checkpoint import load_checkpoint
from tests.helpers.runs import assert_same_state, run_cli, set_args

pytest.importorskip("timm")


def test_conv_stem_vit_on_two_processes_matches_one(tmp_path, synthetic_root):
    extra = {"model.backbone": "vit_tiny_convstem_test", "model.bn_group_size": 8, "optim.name": "sgd",
             "optim.lr": 3.5e-4, "optim.backbone_lr_mult": 0.5, "eval.at_start": False, "eval.every_epochs": 0}
    one = run_cli("cacl_dist.train", set_args(tmp_path / "one", synthetic_root, **extra))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("cacl_dist.train", set_args(tmp_path / "two", synthetic_root, **extra), torchrun_procs=2)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-3000:]
    losses_one = [r["loss"] for r in read_metrics(tmp_path / "one", "train")]
    losses_two = [r["loss"] for r in read_metrics(tmp_path / "two", "train")]
    assert len(losses_one) == len(losses_two) == 6
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), atol=1e-4, rtol=1e-4)
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(tmp_path / "two" / "last.pt")
    assert b["world_size"] == 2
    assert_same_state(a, b, exact=False, atol=1e-4)

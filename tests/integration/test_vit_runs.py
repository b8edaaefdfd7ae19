"""A tiny ViT through the real entries on CPU: train from a person-pretrained-style file, resume, evaluate,
export (every format read back by evaluate)."""

from __future__ import annotations

import json

import pytest
import torch

from cacl_dist.cli.evaluate import main as evaluate
from cacl_dist.models import build_backbone
from cacl_dist.training.checkpoint import load_checkpoint

from tests.helpers.runs import assert_same_state, export_gives_the_checkpoint_features, fit, log_text, run_cli, set_args

pytest.importorskip("timm")
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

VIT = {"model.backbone": "vit_tiny_test", "model.patch_stride": 12, "optim.name": "sgd", "optim.lr": 0.01,
       "optim.warmup_epochs": 1, "optim.schedule": "cosine", "optim.backbone_lr_mult": 0.5}


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A DINO-style checkpoint (teacher backbone at the 4 x 2 grid of 64 x 32 crops, non-overlapping)."""
    torch.manual_seed(5)
    body, _ = build_backbone("vit_tiny_test", input_size=(64, 32))
    path = tmp_path_factory.mktemp("pretrained") / "checkpoint.pth"
    state = {f"backbone.{k}": v for k, v in body.state_dict().items()}
    state["head.last_layer.weight_g"] = torch.ones(1, 8)
    torch.save({"teacher": state, "student": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path


def test_cli_trains_a_tiny_vit_from_a_pretrained_file_and_resumes(tmp_path, synthetic_root, teacher_file):
    run_dir = tmp_path / "run"
    args = set_args(run_dir, synthetic_root, **VIT, **{"model.pretrained": teacher_file, "train.epochs": 1})
    result = run_cli("cacl_dist.train", args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = log_text(run_dir)
    assert "pretrained backbone vit_tiny_test: loaded 30 of 30 tensors" in log and "under 'backbone.'" in log
    assert "pos_embed resized from 8 patches to the 5 x 2 grid" in log and "SGD" in log
    resumed = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **VIT,
                                                  **{"model.pretrained": teacher_file, "train.epochs": 2}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr + log_text(run_dir)
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 2 and state["model"]["online.branch.backbone.pos_embed"].shape == (1, 11, 32)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[0]["lr"] == pytest.approx(0.5 * groups[1]["lr"])


def test_resumed_vit_run_matches_a_straight_one(tmp_path, synthetic_root):
    fit(tmp_path / "straight", synthetic_root, **VIT)
    fit(tmp_path / "split", synthetic_root, **VIT, **{"train.epochs": 1})
    resumed = fit(tmp_path / "split", synthetic_root, **VIT)
    assert resumed.progress.epoch == 2
    assert_same_state(load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt"))


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory, synthetic_root):
    run_dir = tmp_path_factory.mktemp("vit") / "run"
    trainer = fit(run_dir, synthetic_root, **VIT, **{"train.epochs": 1})
    return run_dir, trainer


def test_evaluate_reproduces_the_last_evaluation(vit_run, capsys):
    run_dir, trainer = vit_run
    assert evaluate(["--checkpoint", str(run_dir / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("mAP", "rank1", "mINP"):
        assert metrics[key] == pytest.approx(trainer.progress.eval_history[-1][key], abs=1e-6), key


@pytest.mark.parametrize("fmt", ["export", "torchscript", "state_dict"])
def test_every_export_format_gives_the_checkpoint_features(vit_run, tmp_path, synthetic_root, fmt):
    run_dir, _ = vit_run
    export_gives_the_checkpoint_features(run_dir, synthetic_root / "query", tmp_path, fmt)

"""A few CACL steps on real Market-1501 images (../shared/data/market1501-mini), then evaluation."""

from __future__ import annotations

import pytest
import torch

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.config import load_config
from cacl_dist.distributed.env import DistEnv
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.trainer import Trainer

from tests.helpers.runs import MARKET_MINI

pytestmark = pytest.mark.skipif(not MARKET_MINI.is_dir(), reason=f"{MARKET_MINI} is absent")


def test_train_a_few_steps_and_evaluate_on_market_mini(tmp_path):
    cfg = load_config(None, [
        f"run.output_dir={tmp_path / 'run'}", "run.progress=false", "run.log_every=2", "run.device=cpu",
        "data.dataset=market1501", f"data.root={MARKET_MINI}", "data.height=64", "data.width=32",
        "data.num_workers=2", "augment.pad=4", "model.backbone=resnet_tiny", "model.pretrained=none",
        "train.epochs=1", "train.iters_per_epoch=4", "train.batch_size=32", "eval.batch_size=256",
    ])
    trainer = Trainer(cfg, DistEnv(0, 1, 0, torch.device("cpu"), None))
    history = trainer.fit()

    assert len(trainer.dataset.train) == 9173
    assert [h["epoch"] for h in history] == [0, 1]
    gallery = {(r.pid, r.camid) for r in trainer.dataset.gallery}
    answerable = sum(any(pid == q.pid and cam != q.camid for pid, cam in gallery) for q in trainer.dataset.query)
    assert 1000 < answerable <= 1122
    for metrics in history:
        assert metrics["num_valid_queries"] == answerable  # queries with a match in another camera
        assert 0.0 < metrics["mINP"] <= metrics["mAP"] <= 1.0
        assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1.0
    cluster = read_metrics(tmp_path / "run", "cluster")[0]
    assert cluster["num_raw_clusters"] <= cluster["num_clusters"] <= 9173
    assert len(read_metrics(tmp_path / "run", "train")) == 2
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    labels = state["labels"]
    assert labels.shape == (9173,) and int(labels.min()) == 0 and int(labels.max()) + 1 == cluster["num_clusters"]
    torch.testing.assert_close(state["bank_rgb"].norm(dim=1), torch.ones(9173))

"""End-to-end CACL runs through the DALI pipeline (CPU-only): training, evaluation and exact resume."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("nvidia.dali", reason="not applicable here: optional extra NVIDIA DALI (.[dali]) not installed")

from cacl_dist.training.checkpoint import load_checkpoint  # noqa: E402
from cacl_dist.data.pipelines.dali import DaliLoader  # noqa: E402

from tests.helpers.runs import assert_same_state, fit  # noqa: E402

DALI = {"data.pipeline": "dali", "data.eval_pipeline": "dali", "data.num_workers": 1}


def test_dali_training_resumes_exactly(tmp_path, synthetic_root, monkeypatch):
    built = []
    original = DaliLoader.__iter__

    def counting_iter(self):
        built.append(len(self))
        return original(self)

    monkeypatch.setattr(DaliLoader, "__iter__", counting_iter)
    straight = fit(tmp_path / "straight", synthetic_root, **DALI)
    assert built, "the DALI pipeline was not used"
    assert [h["epoch"] for h in straight.progress.eval_history] == [0, 1, 2]
    fit(tmp_path / "split", synthetic_root, **DALI, **{"train.epochs": 1})
    resumed = fit(tmp_path / "split", synthetic_root, **DALI)
    assert resumed.progress.epoch == 2
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert_same_state(a, b, exact=True)
    assert all(torch.isfinite(a[bank]).all() for bank in ("bank_rgb", "bank_gray"))

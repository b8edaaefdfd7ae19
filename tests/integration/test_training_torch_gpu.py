"""End-to-end CACL runs through the torch-gpu pipeline: on the CPU they equal the torchvision pipeline's runs."""

from __future__ import annotations

import pytest
import torch

from cacl_dist.config import load_config
from cacl_dist.data.pipelines.torch_gpu import TorchGpuLoader
from cacl_dist.distributed.env import DistEnv
from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.training.trainer import Trainer

from tests.helpers.runs import assert_same_state, fit, tiny_overrides

TORCH_GPU = {"data.pipeline": "torch-gpu", "data.eval_pipeline": "torch-gpu"}


def test_torch_gpu_training_equals_the_torchvision_pipelines_on_the_cpu(tmp_path, synthetic_root, monkeypatch):
    used = []
    original = TorchGpuLoader.__iter__

    def counting_iter(self):
        used.append(len(self))
        return original(self)

    monkeypatch.setattr(TorchGpuLoader, "__iter__", counting_iter)
    ours = fit(tmp_path / "torch_gpu", synthetic_root, **TORCH_GPU, **{"train.epochs": 1})
    assert used, "the torch-gpu pipeline was not used"
    assert "input pipeline torch-gpu" in (tmp_path / "torch_gpu" / "log_rank0.txt").read_text()
    fit(tmp_path / "torchvision", synthetic_root, **{"train.epochs": 1})
    a = load_checkpoint(tmp_path / "torch_gpu" / "last.pt")
    b = load_checkpoint(tmp_path / "torchvision" / "last.pt")
    assert_same_state(a, b, exact=True)  # the same views, bit for bit: the same run
    assert [h["epoch"] for h in ours.progress.eval_history] == [0, 1]


@pytest.mark.gpu
def test_torch_gpu_trains_on_cuda(tmp_path, synthetic_root):
    """CPU twin: test_torch_gpu_training_equals_the_torchvision_pipelines_on_the_cpu."""
    cfg = load_config(None, tiny_overrides(tmp_path / "run", synthetic_root, **TORCH_GPU,
                                           **{"run.device": "cuda", "train.epochs": 1}))
    trainer = Trainer(cfg, DistEnv(0, 1, 0, torch.device("cuda", torch.cuda.current_device()), None))
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["global_step"] == 3 and all(torch.isfinite(state[b]).all() for b in ("bank_rgb", "bank_gray"))
    assert "input pipeline torch-gpu" in (tmp_path / "run" / "log_rank0.txt").read_text()

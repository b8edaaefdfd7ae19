"""The process-wide switches of a run on CUDA: cuDNN autotuning, or deterministic kernels.

The switches are plain flags, set without touching a device, so the CUDA branch is checked here
on any machine (and restored after).
"""

from __future__ import annotations

import os

import pytest
import torch

from cacl_dist.config import Config
from cacl_dist.distributed.parallelize import ParallelSettings, configure_backends


@pytest.fixture
def restored_flags(monkeypatch):
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def test_deterministic_runs_switch_off_autotuning_and_on_deterministic_kernels(restored_flags):
    cuda = torch.device("cuda", 0)
    configure_backends(cuda, ParallelSettings(cudnn_benchmark=True, deterministic=True))
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "deterministic kernels True" in ParallelSettings(deterministic=True).describe(cuda)
    assert "cuDNN benchmark False" in ParallelSettings(deterministic=True).describe(cuda)


def test_by_default_cudnn_autotunes_and_the_cpu_is_left_alone(restored_flags):
    torch.backends.cudnn.benchmark = False
    configure_backends(torch.device("cpu"), ParallelSettings(deterministic=True))
    assert torch.backends.cudnn.benchmark is False and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    configure_backends(torch.device("cuda", 0), ParallelSettings.from_config(Config()))
    assert torch.backends.cudnn.benchmark is True and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert "deterministic kernels n/a (CPU)" in ParallelSettings().describe(torch.device("cpu"))

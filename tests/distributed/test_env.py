"""Process-group set-up from the torchrun variables: devices per process, NCCL's one-GPU-per-process rule."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from cacl_dist.distributed import env


@pytest.fixture
def two_gpus_visible_as_one(monkeypatch):
    """A node that shows one CUDA device to two torchrun processes (local rank 1 of 2)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for name, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(("init", kwargs["backend"])))
    return calls


def test_nccl_with_more_processes_than_gpus_stops_at_start_up(two_gpus_visible_as_one):
    with pytest.raises(ValueError) as info:
        env.init_distributed("auto", "auto")
    message = str(info.value)
    assert "\n" not in message
    assert "2 processes" in message and "only 1 GPU" in message and "--nproc_per_node=1" in message
    assert "dist.backend=gloo" in message
    assert two_gpus_visible_as_one == []  # stopped before touching the GPU or the process group


def test_gloo_may_share_a_gpu_between_processes(two_gpus_visible_as_one):
    result = env.init_distributed("auto", "gloo")
    assert result.device == torch.device("cuda", 0) and result.backend == "gloo" and result.rank == 1
    assert two_gpus_visible_as_one == [("set_device", torch.device("cuda", 0)), ("init", "gloo")]


def test_one_gpu_per_process_is_accepted():
    env.check_gpus_per_node("gloo", 8, 7)  # gloo: no rule
    if torch.cuda.device_count() >= 2:
        env.check_gpus_per_node("nccl", 2, 1)
    with pytest.raises(ValueError, match="--nproc_per_node"):
        env.check_gpus_per_node("nccl", torch.cuda.device_count() + 1, 0)

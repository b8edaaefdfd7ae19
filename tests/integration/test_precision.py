"""Mixed precision keeps CACL's numbers: bf16 losses track fp32, fp16 resumes exactly, sync-free == checked."""

from __future__ import annotations

import pytest
import torch

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.config import load_config
from cacl_dist.distributed.env import DistEnv
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.trainer import Trainer

from tests.helpers.runs import tiny_overrides
from tests.helpers.runs import assert_same_state

#: Tolerances of bf16 against fp32 (same seed, same data, same pseudo labels). The two runs drift
#: apart step by step as any perturbed training does, so single steps are compared only at the
#: start; later the 10-step means are. Measured here: first 5 steps within 0.1%, 10-step means
#: within 2.7%, 50-step mean within 0.4%.
FIRST_STEPS, FIRST_STEPS_RTOL = 5, 0.01
WINDOW, WINDOW_RTOL = 10, 0.05
MEAN_RTOL = 0.02


def fit(run_dir, data_dir, device="cpu", **extra):
    cfg = load_config(None, tiny_overrides(run_dir, data_dir, **{"run.device": device, **extra}))
    trainer = Trainer(cfg, DistEnv(0, 1, 0, torch.device(device), None))
    trainer.fit()
    return trainer


def fifty_steps(tmp_path, data_dir, precision: str, device: str, **extra) -> torch.Tensor:
    """Losses of 50 steps of one epoch; the banks are filled in fp32 so both runs cluster alike."""
    fit(tmp_path / precision, data_dir, device=device, **{
        "train.precision": precision, "eval.precision": "fp32", "train.epochs": 1, "train.iters_per_epoch": 50,
        "eval.at_start": False, "eval.every_epochs": 0, "data.dataset": "folder",
        "data.root": str(data_dir / "bounding_box_train"), **extra})
    return torch.tensor([r["loss"] for r in read_metrics(tmp_path / precision, "train")], dtype=torch.float64)


def assert_tracks(bf16: torch.Tensor, fp32: torch.Tensor) -> None:
    assert len(bf16) == len(fp32) == 50
    assert torch.isfinite(bf16).all()
    first = ((bf16 - fp32).abs() / fp32.abs())[:FIRST_STEPS]
    assert first.max() < FIRST_STEPS_RTOL, f"first steps differ by up to {first.max():.4f} of the fp32 loss"
    windows_bf16, windows_fp32 = bf16.view(-1, WINDOW).mean(1), fp32.view(-1, WINDOW).mean(1)
    gaps = (windows_bf16 - windows_fp32).abs() / windows_fp32.abs()
    assert gaps.max() < WINDOW_RTOL, f"10-step means differ by {gaps.tolist()}"
    assert abs(bf16.mean() - fp32.mean()) / fp32.mean().abs() < MEAN_RTOL
    assert windows_bf16[-1] < windows_bf16[0]  # bf16 training learns, as fp32 does
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16


@pytest.fixture(scope="module")
def crops(synthetic_root):
    """The tiny synthetic dataset, written once (the runs read its training folder directly)."""
    from cacl_dist.data.factory import generate_if_synthetic

    generate_if_synthetic(load_config(None, tiny_overrides(synthetic_root.parent / "prepare", synthetic_root)).data)
    return synthetic_root


def test_bf16_losses_track_fp32_over_50_steps_on_cpu(tmp_path, crops):
    fp32 = fifty_steps(tmp_path, crops, "fp32", "cpu")
    bf16 = fifty_steps(tmp_path, crops, "bf16", "cpu")
    assert_tracks(bf16, fp32)


@pytest.mark.gpu
def test_bf16_losses_track_fp32_over_50_steps_on_gpu(tmp_path, crops):
    fp32 = fifty_steps(tmp_path, crops, "fp32", "cuda", **{"train.cudnn_benchmark": False})
    bf16 = fifty_steps(tmp_path, crops, "bf16", "cuda", **{"train.channels_last": True})
    assert_tracks(bf16, fp32)


def test_fp16_with_grad_scaler_resumes_exactly(tmp_path, crops):
    extra = {"train.precision": "fp16", "eval.at_start": False}
    fit(tmp_path / "straight", crops, **extra)
    fit(tmp_path / "split", crops, **extra, **{"train.epochs": 1})
    fit(tmp_path / "split", crops, **extra)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert a["grad_scaler"] is not None and a["grad_scaler"]["scale"] > 0
    assert a["grad_scaler"] == b["grad_scaler"]
    assert_same_state(a, b, exact=True)


def test_sync_free_step_equals_the_checked_step(tmp_path, crops):
    """run.debug_checks takes the data-dependent bank update and checks every step; same result."""
    extra = {"train.epochs": 1, "eval.at_start": False, "train.iters_per_epoch": 4}
    fit(tmp_path / "fast", crops, **extra)
    fit(tmp_path / "checked", crops, **extra, **{"run.debug_checks": True})
    a = load_checkpoint(tmp_path / "fast" / "last.pt")
    b = load_checkpoint(tmp_path / "checked" / "last.pt")
    assert_same_state(a, b, exact=True)
    for name in ("centres_rgb", "centres_gray"):
        assert torch.equal(a[name]["sums"], b[name]["sums"])

"""The same CACL run on one process and on several gloo processes ends in the same state."""

from __future__ import annotations

import torch

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics
from tests.helpers.runs import assert_same_state, run_cli, set_args


def test_two_gloo_processes_match_one_process(tmp_path, synthetic_root):
    """Same global batch on 1 and 2 processes: same losses, banks and labels (BatchNorm frozen)."""
    extra = {"model.frozen_bn": True, "eval.at_start": False, "eval.every_epochs": 0}
    one = run_cli("cacl_dist.train", set_args(tmp_path / "one", synthetic_root, **extra))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("cacl_dist.train", set_args(tmp_path / "two", synthetic_root, **extra), torchrun_procs=2)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-3000:]
    assert "world size 2" in two.stdout
    losses_one = [r["loss"] for r in read_metrics(tmp_path / "one", "train")]
    losses_two = [r["loss"] for r in read_metrics(tmp_path / "two", "train")]
    assert len(losses_one) == len(losses_two) == 6
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), atol=1e-4, rtol=1e-4)
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert b["world_size"] == 2
    assert_same_state(a, b, exact=False, atol=1e-4)


def test_two_gloo_processes_match_one_process_with_camera_proxies(tmp_path, synthetic_root):
    """The camera-aware proxy losses (intra and inter, per-camera means of the global batch) on 1 and 2 processes."""
    extra = {"model.frozen_bn": True, "eval.at_start": False, "eval.every_epochs": 0,
             "loss.camera_proxy_weight": 1.0, "loss.camera_proxy_inter_from_epoch": 1,
             "loss.camera_proxy_hard_negatives": 5}
    one = run_cli("cacl_dist.train", set_args(tmp_path / "one", synthetic_root, **extra))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("cacl_dist.train", set_args(tmp_path / "two", synthetic_root, **extra), torchrun_procs=2)
    assert two.returncode == 0, two.stderr[-3000:] + two.stdout[-3000:]
    rows_one, rows_two = read_metrics(tmp_path / "one", "train"), read_metrics(tmp_path / "two", "train")
    assert len(rows_one) == len(rows_two) == 6
    for key in ("loss", "camera_intra_rgb", "camera_inter_rgb", "camera_intra_gray", "camera_inter_gray"):
        torch.testing.assert_close(torch.tensor([r[key] for r in rows_two]), torch.tensor([r[key] for r in rows_one]),
                                   atol=1e-4, rtol=1e-4, msg=key)
    assert all(r["camera_inter_rgb"] > 0 for r in rows_one[3:])
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert b["world_size"] == 2
    assert_same_state(a, b, exact=False, atol=1e-4)
    for part in ("rgb", "gray"):
        torch.testing.assert_close(b["camera_proxies"][part]["sums"], a["camera_proxies"][part]["sums"], atol=1e-4,
                                   rtol=0)
    assert torch.equal(a["camera_proxies"]["proxy_of"], b["camera_proxies"]["proxy_of"])

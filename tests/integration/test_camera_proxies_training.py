"""Training with the camera-aware proxy losses: off is today's run bit for bit, on resumes exactly."""

from __future__ import annotations

import torch

from cacl_dist.memory import ClusterCentres
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.checkpoint import load_checkpoint
from tests.helpers.runs import assert_same_state, fit

CAMERA_ON = {"loss.camera_proxy_weight": 1.0, "loss.camera_proxy_inter_from_epoch": 1,
             "loss.camera_proxy_hard_negatives": 5}
CAMERA_PARTS = ("camera_intra_rgb", "camera_inter_rgb", "camera_intra_gray", "camera_inter_gray")


def _same_records(a_dir, b_dir) -> None:
    strip = ("time", "images_per_s", "seconds")
    a = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(a_dir) if r["kind"] != "summary"]
    b = [{k: v for k, v in r.items() if k not in strip} for r in read_metrics(b_dir) if r["kind"] != "summary"]
    assert a == b


def test_weight_zero_is_the_run_without_the_keys_bit_for_bit(tmp_path, synthetic_root):
    """Weight 0 with every other camera-proxy key changed: same weights, banks, centres, losses, evaluations."""
    fit(tmp_path / "plain", synthetic_root)
    fit(tmp_path / "zero", synthetic_root, **{"loss.camera_proxy_weight": 0.0, "loss.camera_proxy_temperature": 0.5,
                                              "loss.camera_proxy_hard_negatives": 2,
                                              "loss.camera_proxy_inter_from_epoch": 0,
                                              "loss.camera_proxy_inter_weight": 3.0})
    a = load_checkpoint(tmp_path / "plain" / "last.pt")
    b = load_checkpoint(tmp_path / "zero" / "last.pt")
    assert_same_state(a, b, exact=True)
    for name in ("centres_rgb", "centres_gray"):
        assert torch.equal(a[name]["sums"], b[name]["sums"])
    assert "camera_proxies" not in a and "camera_proxies" not in b
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])  # no extra random draw
    _same_records(tmp_path / "plain", tmp_path / "zero")
    assert not any(k.startswith("camera_") for r in read_metrics(tmp_path / "zero", "train") for k in r)


def test_on_trains_logs_and_keeps_the_proxies_equal_to_the_bank_means(tmp_path, synthetic_root):
    trainer = fit(tmp_path / "on", synthetic_root, **CAMERA_ON)
    rows = read_metrics(tmp_path / "on", "train")
    assert len(rows) == 6 and all(all(k in r for k in CAMERA_PARTS) for r in rows)
    assert all(r["camera_intra_rgb"] > 0 for r in rows)
    assert [r["camera_inter_rgb"] > 0 for r in rows] == [False] * 3 + [True] * 3  # joins after epoch 1
    plain = fit(tmp_path / "plain", synthetic_root)
    assert not torch.equal(trainer.banks.rgb.rows, plain.banks.rgb.rows)  # the loss changed the training
    proxies = trainer.pseudo.proxies
    for bank, kept in ((trainer.banks.rgb, proxies.rgb), (trainer.banks.gray, proxies.gray)):
        sums, counts = ClusterCentres.local_sums(bank, proxies.layout.proxy_of_N, proxies.layout.num_proxies)
        torch.testing.assert_close(kept.sums_MD, sums, atol=1e-9, rtol=0)
        assert torch.equal(kept.counts_M, counts)
    labels, cams = trainer.pseudo.labels, proxies.cameras_N
    for p in range(proxies.layout.num_proxies):
        members = (labels == proxies.layout.cluster_P[p]) & (cams == proxies.layout.camera_P[p])
        assert torch.equal(proxies.layout.proxy_of_N == p, members)
    state = load_checkpoint(tmp_path / "on" / "last.pt")
    assert torch.equal(state["camera_proxies"]["rgb"]["sums"], proxies.rgb.sums_MD)


def test_resume_after_one_epoch_matches_straight_run_with_the_proxies_on(tmp_path, synthetic_root):
    fit(tmp_path / "straight", synthetic_root, **CAMERA_ON)
    fit(tmp_path / "split", synthetic_root, **{**CAMERA_ON, "train.epochs": 1})
    resumed = fit(tmp_path / "split", synthetic_root, **CAMERA_ON)
    assert resumed.progress.epoch == 2
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert_same_state(a, b, exact=True)
    for part in ("rgb", "gray"):
        assert torch.equal(a["camera_proxies"][part]["sums"], b["camera_proxies"][part]["sums"])
    assert torch.equal(a["camera_proxies"]["proxy_of"], b["camera_proxies"]["proxy_of"])
    _same_records(tmp_path / "straight", tmp_path / "split")


def test_turned_on_at_resume_builds_the_proxies_from_the_banks(tmp_path, synthetic_root):
    fit(tmp_path / "run", synthetic_root, **{"train.epochs": 1})
    resumed = fit(tmp_path / "run", synthetic_root, **{**CAMERA_ON, "train.epochs": 2})
    assert resumed.progress.epoch == 2
    rows = read_metrics(tmp_path / "run", "train")
    assert [all(k in r for k in CAMERA_PARTS) for r in rows] == [False] * 3 + [True] * 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["camera_proxies"] is not None

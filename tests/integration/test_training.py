"""End-to-end CACL runs on tiny synthetic data: resume and distributed equivalence."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.config import load_config
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import CPU, REPO, assert_same_state, fit, run_cli, set_args, tiny_overrides

def test_fit_trains_clusters_evaluates_and_checkpoints(tmp_path, synthetic_root):
    trainer = fit(tmp_path / "run", synthetic_root)
    history = trainer.progress.eval_history
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(0.0 <= h["mAP"] <= 1.0 for h in history)
    rows = read_metrics(tmp_path / "run")
    kinds = {r["kind"] for r in rows}
    assert {"train", "cluster", "eval"} <= kinds
    assert len([r for r in rows if r["kind"] == "train"]) == 6
    summary = [r for r in rows if r["kind"] == "summary"]
    assert len(summary) == 1 and summary[0]["last_epoch"] == 2 and summary[0]["last_mAP"] == history[-1]["mAP"]
    assert summary[0]["best_mAP"] == max(h["mAP"] for h in history[1:])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["epoch"] == 2 and state["iter_in_epoch"] == 0
    assert state["labels"].shape == (96,)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert any((tmp_path / "run" / "tensorboard").iterdir())


def test_resume_after_one_epoch_matches_straight_run(tmp_path, synthetic_root):
    fit(tmp_path / "straight", synthetic_root)
    fit(tmp_path / "split", synthetic_root, **{"train.epochs": 1})
    resumed = fit(tmp_path / "split", synthetic_root)  # same folder, 2 epochs: resumes after epoch 1
    assert resumed.progress.epoch == 2
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "last.pt")
    assert_same_state(a, b, exact=True)
    for name in ("centres_rgb", "centres_gray"):
        assert torch.equal(a[name]["sums"], b[name]["sums"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_kill_mid_epoch_and_resume_matches_straight_run(tmp_path, synthetic_root, sig):
    """Kill a CLI run while it trains (hard, or gracefully with SIGTERM), start the same command
    again, compare with a straight run."""
    straight = run_cli("cacl_dist.train", set_args(tmp_path / "straight", synthetic_root))  # same threads as below
    assert straight.returncode == 0, straight.stderr[-3000:]
    args = set_args(tmp_path / "killed", synthetic_root, **{"checkpoint.every_steps": 1})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "cacl_dist.train", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill once the second step has been checkpointed
            if metrics.exists() and sum('"kind": "train"' in line for line in metrics.read_text().splitlines()) >= 2:
                break
            if proc.poll() is not None:
                pytest.fail("training ended before it could be killed")
            time.sleep(0.05)
        proc.send_signal(sig)
    finally:
        proc.wait(timeout=120)
    before = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert before["global_step"] < 6
    if sig == signal.SIGTERM:  # graceful: checkpointed at the next step and said so
        assert proc.returncode == 3
        assert before["iter_in_epoch"] > 0 or before["epoch"] == 1
        assert "stopped on request" in (tmp_path / "killed" / "log_rank0.txt").read_text()
    result = run_cli("cacl_dist.train", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stdout
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert_same_state(a, b, exact=True)
    keys = [(r["kind"], r["step"], r.get("epoch")) for r in read_metrics(tmp_path / "killed")]
    assert len(keys) == len(set(keys)) and len(read_metrics(tmp_path / "killed", "train")) == 6


def test_resume_records_every_metric_once(tmp_path, synthetic_root):
    """Rows a killed run recorded after its last checkpoint are recorded again by the resumed run, not twice."""
    run_dir = tmp_path / "run"
    fit(run_dir, synthetic_root, **{"train.epochs": 1})
    with (run_dir / "metrics.jsonl").open("a") as fh:  # the next clustering and a step, then a kill
        fh.write('{"kind": "cluster", "step": 3, "epoch": 2, "num_clusters": 1}\n')
        fh.write('{"kind": "train", "step": 4, "epoch": 2, "iter": 1, "loss": 1.0}\n{"kind": "tr')
    fit(run_dir, synthetic_root)  # resumes after epoch 1
    rows = read_metrics(run_dir)
    keys = [(r["kind"], r["step"], r.get("epoch")) for r in rows]
    assert len(keys) == len(set(keys))
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("num_clusters") != 1 for r in rows if r["kind"] == "cluster")


def test_evaluate_cli_reproduces_the_last_evaluation(tmp_path, synthetic_root):
    trainer = fit(tmp_path / "run", synthetic_root, **{"train.epochs": 1})
    result = run_cli("cacl_dist.evaluate", ["--checkpoint", str(tmp_path / "run" / "last.pt"), "--json"])
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    expected = trainer.progress.eval_history[-1]
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key


def test_corrupt_checkpoint_in_run_folder_stops_with_a_clear_error(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    result = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root))
    assert result.returncode == 2
    assert "last.pt" in result.stderr and "truncated or corrupt" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "last.pt").read_bytes() == b"not a checkpoint"  # nothing overwritten


def test_bad_config_value_fails_before_anything_is_written(tmp_path, synthetic_root):
    result = run_cli("cacl_dist.train", set_args(tmp_path / "run", synthetic_root, **{"model.pool": "max"}))
    assert result.returncode == 2
    assert "model.pool" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuml_backend_without_a_gpu_fails_before_training(tmp_path, synthetic_root):
    result = run_cli("cacl_dist.train", set_args(tmp_path / "run", synthetic_root, **{"clustering.backend": "cuml"}))
    assert result.returncode == 2
    assert "clustering.backend 'cuml' cannot run here" in result.stderr
    assert "clustering.backend=torch" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "last.pt").exists()


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, synthetic_root):
    result = run_cli("cacl_dist.train", set_args(tmp_path / "run", synthetic_root, **{
        "model.backbone": "resnet18", "model.pretrained": "imagenet"}),
        env_extra={"TORCH_HOME": str(tmp_path / "torch_home")})
    assert result.returncode == 2
    assert "resnet18-f37072fd.pth" in result.stderr and str(tmp_path / "torch_home") in result.stderr


def test_plain_folder_of_crops_trains_without_evaluation(tmp_path, synthetic_root):
    from cacl_dist.data.factory import generate_if_synthetic

    generate_if_synthetic(load_config(None, tiny_overrides(tmp_path / "prepare", synthetic_root)).data)  # writes images
    trainer = fit(tmp_path / "run", synthetic_root, **{
        "data.dataset": "folder", "data.root": str(synthetic_root / "bounding_box_train"), "train.epochs": 1})
    assert trainer.progress.eval_history == []  # no query/gallery split: nothing to evaluate
    assert len(read_metrics(tmp_path / "run", "train")) == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["labels"].shape == (96,)


def test_resume_restores_labels_and_centres_onto_the_run_device(tmp_path, synthetic_root):
    """Centres built on the CPU are moved to the trainer's device when a checkpoint is loaded
    (the 'meta' device stands in for a GPU: only where the tensors live is checked)."""
    from cacl_dist.training.trainer import Trainer

    trainer = Trainer(load_config(None, tiny_overrides(tmp_path / "run", synthetic_root)), CPU)
    trainer.init_memory()
    trainer.cluster()
    state = trainer.state_dict()
    trainer.pseudo.device = torch.device("meta")  # the device the pseudo labels live on
    trainer.load_state_dict(state)
    assert trainer.pseudo.labels.device.type == "meta"
    for centres in (trainer.pseudo.centres_rgb, trainer.pseudo.centres_gray):
        assert centres.sums_MD.device.type == "meta" and centres.counts_M.device.type == "meta"

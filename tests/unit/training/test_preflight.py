"""What a run says before its long work: the first log line, the sampler check, the first-epoch estimate and the
clustering warnings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cacl_dist.errors import UserError
from cacl_dist.models.cacl import build_model
from cacl_dist.training import preflight


def test_the_first_line_says_new_run_or_resuming_after_n_epochs(tmp_path):
    run_dir = tmp_path / "run"
    assert preflight.start_line(run_dir) == f"new run in {run_dir}"
    run_dir.mkdir()
    torch.save({"epoch": 3, "iter_in_epoch": 0, "model": {}}, run_dir / "last.pt")
    line = preflight.start_line(run_dir, "--fresh ignored: this is a restart of the job (SLURM_RESTART_COUNT=1)")
    assert line.startswith(f"resuming {run_dir} after 3 epochs from last.pt")
    assert "SLURM_RESTART_COUNT=1" in line and "--fresh" in line
    torch.save({"epoch": 1, "iter_in_epoch": 7}, run_dir / "last.pt")
    assert preflight.start_line(run_dir).startswith(f"resuming {run_dir} after 1 epoch, step 7 of epoch 2")


def test_a_fresh_start_in_a_used_folder_says_where_the_records_went(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    line = preflight.start_line(tmp_path)
    assert line.startswith(f"new run in {tmp_path}") and "previous_runs" in line
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("num_train, batch, sampler, fails", [
    (50, 64, "released", True), (63, 64, "released", True), (64, 64, "released", False),
    (50, 64, "cacl", False), (9173, 64, "released", False)])
def test_the_released_sampler_is_checked_before_any_work(num_train, batch, sampler, fails):
    if not fails:
        preflight.check_sampler_fills_batches(num_train, batch, 4, sampler)
        return
    with pytest.raises(UserError) as err:
        preflight.check_sampler_fills_batches(num_train, batch, 4, sampler)
    message = str(err.value)
    assert "train.sampler=cacl" in message and f"train.batch_size={batch}" in message and "\n" not in message


def measured(backbone: str, height: int, width: int) -> float:
    """The forward time per image on this CPU, one thread (two threads on a machine busy with other jobs wait
    for each other on every small operation: hundreds of times slower for the tiny model)."""
    torch.manual_seed(0)
    branch = build_model(backbone, "none", "avg", 1).online.branch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return preflight.measure_forward_seconds(branch, height, width, torch.device("cpu"), batch=2)
    finally:
        torch.set_num_threads(threads)


def test_the_quickstart_gets_no_first_epoch_warning():
    seconds = measured("resnet_tiny", 64, 32)  # the quickstart's model and size, timed on this CPU
    estimate = preflight.first_epoch_estimate(seconds, num_train=720, num_eval=480, batch_size=32, iters_per_epoch=40,
                                              world_size=1, device_type="cpu", fill_banks=True, evaluate_first=True)
    assert 0 < estimate.total < preflight.SLOW_FIRST_EPOCH_S / 4
    assert preflight.first_epoch_warning(estimate, "cpu") is None


def test_a_resnet50_at_real_size_on_a_cpu_gets_one_warning_line():
    # 0.05 s per image is what a ResNet-50 forward at 256x128 takes on a fast desktop CPU (several times that on 2 cores)
    estimate = preflight.first_epoch_estimate(0.05, num_train=12936, num_eval=19281, batch_size=64,
                                              iters_per_epoch=400, world_size=1, device_type="cpu", fill_banks=True,
                                              evaluate_first=True)
    assert estimate.memory > 600 and estimate.steps > estimate.memory  # the banks alone take over 10 minutes
    line = preflight.first_epoch_warning(estimate, "cpu")
    assert line is not None and "\n" not in line
    assert "configs/market1501_cpu.yaml" in line and "memory banks" in line and "on cpu" in line
    eight_gpus = preflight.first_epoch_estimate(0.0005, num_train=12936, num_eval=19281, batch_size=64,
                                                iters_per_epoch=400, world_size=8, device_type="cuda",
                                                fill_banks=True, evaluate_first=True)
    assert preflight.first_epoch_warning(eight_gpus, "cuda:0") is None


def test_a_measured_resnet50_forward_is_slower_than_the_tiny_model():
    assert measured("resnet50", 128, 64) > 5 * measured("resnet_tiny", 128, 64)


def test_the_estimate_leaves_out_what_a_resume_skips():
    fresh = preflight.first_epoch_estimate(0.01, num_train=1000, num_eval=500, batch_size=32, iters_per_epoch=10,
                                           world_size=1, device_type="cpu", fill_banks=True, evaluate_first=True)
    resumed = preflight.first_epoch_estimate(0.01, num_train=1000, num_eval=500, batch_size=32, iters_per_epoch=10,
                                             world_size=1, device_type="cpu", fill_banks=False, evaluate_first=False)
    assert resumed.memory == resumed.evaluation == 0 and fresh.memory > 0 and fresh.evaluation > 0
    assert resumed.steps == fresh.steps and resumed.clustering == fresh.clustering


def test_one_cluster_for_everything_is_a_warning_naming_the_clustering_keys():
    line = preflight.clustering_warning(np.zeros(50, dtype=np.int64), batch_size=16, num_instances=4)
    assert line is not None and "all 50 images into one cluster" in line
    assert "clustering.k1" in line and "clustering.eps" in line and "clustering.min_samples" in line


def test_fewer_clusters_than_a_batch_holds_is_a_warning():
    labels = np.r_[np.repeat(np.arange(3), 5), np.arange(3, 40)]  # 3 clusters of 5, 37 singletons
    line = preflight.clustering_warning(labels, batch_size=32, num_instances=4)
    assert line is not None and "3 clusters of 2+ images" in line and "8 identities" in line
    assert preflight.clustering_warning(labels, batch_size=12, num_instances=4) is None  # 3 identities per batch
    many = np.repeat(np.arange(20), 4)
    assert preflight.clustering_warning(many, batch_size=32, num_instances=4) is None
    dropped = np.full(10, -1)
    assert preflight.clustering_warning(dropped, batch_size=32, num_instances=4) is None

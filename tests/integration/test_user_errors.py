"""Faults and bad input as a new user meets them: one line naming what to fix, also in the run folder's log."""

from __future__ import annotations

import signal

import pytest

from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import (file_permissions_apply, fit, log_text, run_cli, set_args, start_cli, tiny_overrides,
                                wait_for)


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


def test_a_second_run_on_a_busy_folder_stops_naming_the_folder_and_the_owner(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    args = set_args(run_dir, synthetic_root, **{"train.iters_per_epoch": 200})
    first = start_cli("cacl_dist.train", args)
    try:
        wait_for(lambda: read_metrics(run_dir, "train"), first, what="the first run's first step")
        second = run_cli("cacl_dist.train", args)
        line = _one_line(second)
        assert str(run_dir) in line and f"pid {first.pid}" in line and "in use by another run" in line
        assert "in use" not in log_text(run_dir)  # the owner's log and status are not touched
        assert (run_dir / "status.txt").read_text().startswith("running: host ")
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 3
    steps = [row["step"] for row in read_metrics(run_dir, "train")]
    assert steps == sorted(set(steps))  # one writer: no step recorded twice


def test_resuming_with_another_backbone_says_so_in_one_line_and_in_the_log(tmp_path, synthetic_root):
    fit(tmp_path / "run", synthetic_root, **{"train.epochs": 1, "eval.at_start": False})
    result = run_cli("cacl_dist.train", set_args(tmp_path / "run", synthetic_root, **{"model.backbone": "resnet18"}))
    line = _one_line(result)
    assert "last.pt" in line and "model.backbone" in line and "run.output_dir" in line
    assert line.removeprefix("error: ") in log_text(tmp_path / "run").splitlines()[-1]


def test_non_finite_loss_stops_with_one_line_in_the_log(tmp_path, synthetic_root):
    result = run_cli("cacl_dist.train", set_args(tmp_path / "run", synthetic_root, **{
        "loss.tau": 1e-45, "eval.at_start": False}))  # the cluster softmax overflows
    line = _one_line(result)
    assert "non-finite loss" in line and "ERROR training diverged: non-finite loss" in log_text(tmp_path / "run")
    assert (tmp_path / "run" / "status.txt").read_text().startswith("2 error: training diverged: non-finite loss")


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_unusable_output_dir_is_one_line(tmp_path, synthetic_root, kind):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    run_dir = blocker if kind == "file" else blocker / "run"
    line = _one_line(run_cli("cacl_dist.train", set_args(run_dir, synthetic_root)))
    assert str(run_dir) in line and "run.output_dir" in line
    assert blocker.read_text() == "not a folder"


def test_unreadable_data_folder_is_one_line_in_the_log(tmp_path, synthetic_root):
    import shutil

    from cacl_dist.config import load_config
    from cacl_dist.data.factory import generate_if_synthetic

    prefix = file_permissions_apply()
    generate_if_synthetic(load_config(None, tiny_overrides(tmp_path / "prepare", synthetic_root)).data)  # the images
    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data)
    (tmp_path / "run").mkdir()  # a folder of the user's: the error goes into its log (a new one would be removed)
    (data / "bounding_box_train").chmod(0)
    try:
        result = run_cli("cacl_dist.train", set_args(tmp_path / "run", data), prefix=prefix)
    finally:
        (data / "bounding_box_train").chmod(0o755)
    line = _one_line(result)
    assert str(data / "bounding_box_train") in line and "Permission denied" in line
    assert line.removeprefix("error: ") in log_text(tmp_path / "run")


def test_output_dir_without_write_permission_is_one_line(tmp_path, synthetic_root):
    prefix = file_permissions_apply()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for run_dir in (locked, locked / "run"):
            line = _one_line(run_cli("cacl_dist.train", set_args(run_dir, synthetic_root), prefix=prefix))
            assert str(run_dir) in line and "run.output_dir" in line
    finally:
        locked.chmod(0o755)


def test_batch_that_does_not_split_over_the_ranks_fails_before_any_work(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    result = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **{
        "train.batch_size": 9, "train.num_instances": 3}), torchrun_procs=2)
    assert result.returncode != 0
    assert "'train.batch_size': the global batch 9 does not split over 2 processes" in result.stderr
    assert result.stderr.count("Traceback") <= 1  # torchrun's own report of the failed worker, none from a worker
    assert not run_dir.exists()  # nothing initialised, evaluated or clustered first


def test_a_status_file_that_cannot_be_replaced_stops_the_run_before_any_work(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    (run_dir / "status.txt").mkdir(parents=True)  # in the way: status.txt cannot be replaced
    (run_dir / "status.txt" / "notes").write_text("mine")
    line = _one_line(run_cli("cacl_dist.train", set_args(run_dir, synthetic_root)))
    assert str(run_dir / "status.txt") in line and "move what is in the way aside" in line
    assert (run_dir / "status.txt" / "notes").read_text() == "mine"
    assert not (run_dir / "last.pt").exists() and not (run_dir / "metrics.jsonl").exists()


def test_a_file_name_that_is_not_utf8_is_one_line_naming_it_and_the_status_says_so(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    data = tmp_path / "crops"
    data.mkdir()
    for name in (b"a.png", b"caf\xe9.png"):
        Image.fromarray(np.zeros((64, 32, 3), np.uint8)).save(os.fsdecode(os.fsencode(data) + b"/" + name))
    run_dir = tmp_path / "run"
    line = _one_line(run_cli("cacl_dist.train", set_args(run_dir, data, **{"data.dataset": "folder"})))
    assert f"the file name {data}/caf\\xe9.png is not UTF-8 text" in line
    assert not run_dir.exists()  # the start created the folder and failed before any work: removed
    run_dir.mkdir()  # a folder that was there before keeps the outcome
    line = _one_line(run_cli("cacl_dist.train", set_args(run_dir, data, **{"data.dataset": "folder"})))
    assert (run_dir / "status.txt").read_text().startswith("2 error: the file name")

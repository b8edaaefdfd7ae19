"""`python -m launch.slurm --local`: the same task code through submitit's local executor, no SLURM."""

from __future__ import annotations

import re

import pytest

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def test_local_executor_runs_two_gloo_tasks_to_the_end(tmp_path, synthetic_root):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[dev]')")
    run_dir = tmp_path / "run"
    sets = [f"--set={o}" for o in tiny_overrides(run_dir, synthetic_root, **{
        "train.epochs": 1, "train.iters_per_epoch": 2, "eval.at_start": False})]
    result = run_cli("launch.slurm", ["--local", "--config", "configs/quickstart.yaml", "--gpus-per-node", "0",
                                      "--tasks-per-node", "2", "--time", "10", *sets])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"started local job (\d+) on this machine: 1 node x 2 tasks", result.stdout).group(1)
    assert f"job {job_id} finished: {run_dir}; last evaluation mAP" in result.stdout
    assert "task 1 of 2" in (run_dir / "slurm" / f"{job_id}_1_log.out").read_text()
    assert len(read_metrics(run_dir, "train")) == 2
    assert load_checkpoint(run_dir / "last.pt")["world_size"] == 2

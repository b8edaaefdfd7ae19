"""Stopping a training run on request: in every phase, on SIGTERM and Ctrl-C, and when torchrun's agent dies."""

from __future__ import annotations

import os
import signal

import pytest

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import assert_same_state, log_text, run_cli, set_args, start_cli, wait_for


def test_sigterm_during_start_up_checkpoints_the_banks_and_resumes_like_a_straight_run(tmp_path, synthetic_root):
    """A stop requested while the evaluation before epoch 1 runs ends the run at once with the freshly
    initialised banks checkpointed (no clustering, no training step), and the resumed run ends in the
    state of an uninterrupted one."""
    slow_eval = {"eval.batch_size": 1}  # many extraction batches (the banks are filled with the same batches)
    straight = run_cli("cacl_dist.train", set_args(tmp_path / "straight", synthetic_root, **slow_eval))
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "stopped"
    args = set_args(run_dir, synthetic_root, **slow_eval)
    proc = start_cli("cacl_dist.train", args)
    wait_for(lambda: "memory banks initialised" in log_text(run_dir), proc, what="the memory initialisation")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    state = load_checkpoint(run_dir / "last.pt")
    assert (state["epoch"], state["iter_in_epoch"], state["global_step"]) == (0, 0, 0)
    assert state["labels"] is None  # stopped before clustering
    assert "stopped on request before training; checkpoint written" in log_text(run_dir)
    assert (run_dir / "status.txt").read_text().startswith("3 stopped on request (SIGTERM) before training;")
    assert not read_metrics(run_dir, "train") and not read_metrics(run_dir, "cluster")
    resumed = run_cli("cacl_dist.train", args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(load_checkpoint(tmp_path / "straight" / "last.pt"), load_checkpoint(run_dir / "last.pt"))
    assert [r["epoch"] for r in read_metrics(run_dir, "eval")] == [0, 1, 2]  # the interrupted one ran again
    assert (run_dir / "status.txt").read_text() == "0 finished after 2 epochs\n"


def test_ctrl_c_checkpoints_the_current_step_and_exits_130(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    proc = start_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **{"train.iters_per_epoch": 30}))
    wait_for(lambda: read_metrics(run_dir, "train"), proc, what="the first training step")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    state = load_checkpoint(run_dir / "last.pt")
    assert state["epoch"] == 0 and 0 < state["iter_in_epoch"] < 30  # the steps of the epoch are kept
    assert "stopped on request at step" in log_text(run_dir) and "Traceback" not in err
    assert (run_dir / "status.txt").read_text().startswith("130 stopped on request (SIGINT) at step")


@pytest.mark.skipif(not hasattr(os, "getppid") or os.name != "posix", reason="POSIX process tree")
def test_workers_checkpoint_and_stop_when_the_torchrun_agent_dies(tmp_path, synthetic_root):
    """SIGKILL on torchrun's agent cannot be forwarded; the workers notice their parent is gone and stop."""
    run_dir = tmp_path / "run"
    agent = start_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **{"train.iters_per_epoch": 200}),
                      torchrun_procs=2, stdout=open(os.devnull, "w"), stderr=open(os.devnull, "w"))
    try:
        wait_for(lambda: read_metrics(run_dir, "train"), agent, what="the first training step")
        workers = [int(pid) for pid in open(f"/proc/{agent.pid}/task/{agent.pid}/children").read().split()]
        assert len(workers) == 2
        agent.kill()
        agent.wait()
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in workers),
                 timeout=300, what="the workers to end")
    finally:
        if agent.poll() is None:
            agent.kill()
    for rank in (0, 1):
        assert "stopped on request at step" in log_text(run_dir, rank)
    assert 0 < load_checkpoint(run_dir / "last.pt")["iter_in_epoch"] < 200


def _alive(pid: int) -> bool:
    """False for a finished process (gone, or a zombie waiting for its parent to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

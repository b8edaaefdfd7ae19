"""Two "nodes" on this machine: two torchrun agents meeting through the c10d rendezvous on localhost.

Each agent starts 2 workers (gloo, CPU); together they are the same 4-process job as one agent with
4 workers, so they must end in the same state, bit for bit. When one node's agent dies mid-run, its
workers stop the job with a checkpoint, the surviving agent restarts its workers (`--max-restarts`)
and, once the node's agent is back (as a scheduler would restart it), the job resumes from the
checkpoint and still ends in that state (to float rounding).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.gloo import free_port
from tests.helpers.nodes import finish, run_with_a_killed_node, start_agent, start_store_host
from tests.helpers.runs import assert_same_state, log_text, run_cli, set_args

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="POSIX process tree")]

TRAIN = {"train.iters_per_epoch": 6, "train.batch_size": 16}


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory, synthetic_root):
    """The reference: one agent with 4 workers."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    result = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **TRAIN), torchrun_procs=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(run_dir / "last.pt"), step_losses(run_dir)


def step_losses(run_dir: Path) -> dict[int, float]:
    """The logged loss of every training step (each step logged once, also across a resume)."""
    rows = read_metrics(run_dir, "train")
    losses = {row["step"]: row["loss"] for row in rows}
    assert len(losses) == len(rows), "a training step was logged twice"
    return losses


def test_two_agents_of_two_workers_equal_one_agent_of_four(tmp_path, synthetic_root, four_processes):
    run_dir = tmp_path / "run"
    args = set_args(run_dir, synthetic_root, **TRAIN)
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"agent{n}.txt" for n in (0, 1)]
    agents = [start_store_host(endpoint, args, logs[0])]
    agents.append(start_agent(1, endpoint, args, logs[1]))
    finish(agents, logs)
    state, losses = four_processes
    assert_same_state(state, load_checkpoint(run_dir / "last.pt"))
    assert step_losses(run_dir) == losses
    assert "world size 4" in log_text(run_dir)
    assert all(log_text(run_dir, rank) for rank in range(4))


def test_a_killed_agent_comes_back_and_the_job_ends_as_if_never_interrupted(tmp_path, synthetic_root,
                                                                             four_processes):
    run_dir = tmp_path / "run"
    run_with_a_killed_node(run_dir, set_args(run_dir, synthetic_root, **TRAIN), tmp_path, epochs=2,
                           iters_per_epoch=TRAIN["train.iters_per_epoch"])
    assert f"resumed from {run_dir / 'last.pt'}" in log_text(run_dir)
    # Same labels, steps and epochs, the same loss at every step; weights and banks equal to float rounding
    # (amplified a little by Adam where gradients are tiny): the first step after the restart all-reduces
    # its gradients in DDP's initial bucket layout, which sums the 4 ranks' values in another order than
    # the straight run's rebuilt layout did at that step.
    state, losses = four_processes
    assert_same_state(state, load_checkpoint(run_dir / "last.pt"), exact=False, atol=1e-3)
    resumed = step_losses(run_dir)
    assert resumed.keys() == losses.keys()
    for step, loss in losses.items():
        assert resumed[step] == pytest.approx(loss, rel=1e-4), step

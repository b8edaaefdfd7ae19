"""Two "nodes" on this machine: two torchrun agents meeting through the c10d rendezvous on localhost.

Each agent starts 2 workers (gloo, CPU); together they are the same 4-process job as one agent with
4 workers, so they must end in the same state, bit for bit. When one node's agent dies mid-run, its
workers stop the job with a checkpoint, the surviving agent restarts its workers (`--max-restarts`)
and, once the node's agent is back (as a scheduler would restart it), the job resumes from the
checkpoint and still ends in that state (to float rounding).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cacl_dist.checkpoint import load_checkpoint
from cacl_dist.logging import read_metrics

from tests.helpers.gloo import free_port
from tests.helpers.runs import REPO, assert_same_state, log_text, run_cli, set_args, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="POSIX process tree")]

# Each rendezvous round publishes its own worker address. Without this, torchrun's agents reuse the
# first round's, which an agent that joins later never learns: the restarted node waits forever.
AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
TRAIN = {"train.iters_per_epoch": 6, "train.batch_size": 16}


def start_agent(node_rank: int, endpoint: str, args: list[str], log: Path, max_restarts: int = 0) -> subprocess.Popen:
    """One node's torchrun agent: 2 workers, joining the 2-node c10d rendezvous at `endpoint`.

    Node 0 hosts the rendezvous store. Both "nodes" share the endpoint's address here, so node 1 is told
    not to host (on separate machines its hostname tells it); else a restarted node 1 could open a second
    store on the same port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
           f"--node_rank={node_rank}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
           "--rdzv_id=two-nodes", f"--rdzv_conf=is_host={str(node_rank == 0).lower()}",
           f"--max_restarts={max_restarts}", "--monitor_interval=0.5",
           "-m", "cacl_dist.train", *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **AGENT_ENV)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def start_store_host(endpoint: str, args: list[str], log: Path, max_restarts: int = 0) -> subprocess.Popen:
    """Node 0's agent, returned once it listens on the rendezvous endpoint (it hosts the rendezvous store)."""
    agent = start_agent(0, endpoint, args, log, max_restarts)
    host, port = endpoint.rsplit(":", 1)

    def listening() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    wait_for(listening, agent, timeout=300, what="node 0's agent to host the rendezvous")
    return agent


def finish(agents: list[subprocess.Popen], logs: list[Path], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    try:
        for agent, log in zip(agents, logs):
            agent.wait(timeout=max(1.0, deadline - time.monotonic()))
            assert agent.returncode == 0, f"agent exited {agent.returncode}:\n{log.read_text()[-3000:]}"
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory, synthetic_root):
    """The reference: one agent with 4 workers."""
    run_dir = tmp_path_factory.mktemp("one_node") / "run"
    result = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **TRAIN), torchrun_procs=4)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_checkpoint(run_dir / "last.pt")


def test_two_agents_of_two_workers_equal_one_agent_of_four(tmp_path, synthetic_root, four_processes):
    run_dir = tmp_path / "run"
    args = set_args(run_dir, synthetic_root, **TRAIN)
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"agent{n}.txt" for n in (0, 1)]
    agents = [start_store_host(endpoint, args, logs[0])]
    agents.append(start_agent(1, endpoint, args, logs[1]))
    finish(agents, logs)
    assert_same_state(four_processes, load_checkpoint(run_dir / "last.pt"))
    assert "world size 4" in log_text(run_dir)
    assert all(log_text(run_dir, rank) for rank in range(4))


def test_a_killed_agent_comes_back_and_the_job_ends_as_if_never_interrupted(tmp_path, synthetic_root,
                                                                             four_processes):
    run_dir = tmp_path / "run"
    args = set_args(run_dir, synthetic_root, **TRAIN)
    endpoint = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / "agent0.txt", tmp_path / "agent1.txt", tmp_path / "agent1_again.txt"]
    survivor = start_store_host(endpoint, args, logs[0], max_restarts=1)
    doomed = start_agent(1, endpoint, args, logs[1], max_restarts=1)
    agents = [survivor, doomed]
    try:
        # Mid-run: training steps logged, the last epoch not ended (the stop lands in epoch 1 or 2).
        wait_for(lambda: len(read_metrics(run_dir, "train")) >= 2, survivor, timeout=600,
                 what="training steps of the first epoch")
        doomed.kill()  # SIGKILL: nothing is forwarded to its workers
        doomed.wait()
        wait_for(lambda: "stopped on request" in log_text(run_dir), survivor, timeout=300,
                 what="the job to stop with a checkpoint")
        stopped_at = load_checkpoint(run_dir / "last.pt")
        assert stopped_at["global_step"] < 2 * TRAIN["train.iters_per_epoch"]
        back = start_agent(1, endpoint, args, logs[2], max_restarts=1)  # the node's agent, restarted
        agents.append(back)
        finish([survivor, back], [logs[0], logs[2]])
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert f"resumed from {run_dir / 'last.pt'}" in log_text(run_dir)
    # Same labels, steps and epochs; weights and banks equal to float rounding: the first step after the
    # restart all-reduces its gradients in DDP's initial bucket layout, which sums 4 ranks' values in
    # another order than the straight run's rebuilt layout did at that step.
    assert_same_state(four_processes, load_checkpoint(run_dir / "last.pt"), exact=False, atol=1e-5)

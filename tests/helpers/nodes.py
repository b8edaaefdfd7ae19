"""Two torchrun "nodes" on this machine: agents of 2 workers meeting through the c10d rendezvous on localhost."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.gloo import free_port
from tests.helpers.runs import REPO, log_text, wait_for

# Each rendezvous round publishes its own worker address. Without this, torchrun's agents reuse the
# first round's, which an agent that joins later never learns: the restarted node waits forever.
AGENT_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


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


def run_with_a_killed_node(run_dir: Path, args: list[str], logs: Path, epochs: int, iters_per_epoch: int) -> dict:
    """Train on two nodes, SIGKILL node 1's agent mid-run, start it again and let the job finish.

    Returns the checkpoint written when the job stopped (before the restart). Node 1's workers notice
    their agent is gone and stop the job with a checkpoint; node 0's agent restarts its workers
    (`--max-restarts=1`) and waits in the rendezvous until node 1's agent is back.
    """
    endpoint = f"127.0.0.1:{free_port()}"
    names = [logs / "agent0.txt", logs / "agent1.txt", logs / "agent1_again.txt"]
    survivor = start_store_host(endpoint, args, names[0], max_restarts=1)
    agents = [survivor, start_agent(1, endpoint, args, names[1], max_restarts=1)]
    try:
        # Mid-run: training steps logged, the last epoch not ended (the stop lands in any epoch but the last's end).
        wait_for(lambda: len(read_metrics(run_dir, "train")) >= 2, survivor, timeout=600,
                 what="training steps of the first epoch")
        agents[1].kill()  # SIGKILL: nothing is forwarded to its workers
        agents[1].wait()
        wait_for(lambda: "stopped on request" in log_text(run_dir), survivor, timeout=300,
                 what="the job to stop with a checkpoint")
        stopped_at = load_checkpoint(run_dir / "last.pt")
        assert stopped_at["global_step"] < epochs * iters_per_epoch, "the job ended before the kill"
        agents.append(start_agent(1, endpoint, args, names[2], max_restarts=1))  # node 1's agent, restarted
        finish([survivor, agents[2]], [names[0], names[2]])
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    return stopped_at

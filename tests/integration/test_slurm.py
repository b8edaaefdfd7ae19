"""`python -m launch.slurm` against real SLURM clusters on this machine.

The single-node cluster (munged, slurmctld, slurmd on localhost) is started once for the module by
the harness in `slurm_cluster.py`, which installs Debian's packages when they are missing; the
two-node cluster (`slurm_netns.py`) puts each slurmd in its own network namespace with its own
address and host name. The tests skip with the reason where a cluster cannot start (not root, no
apt-get, no network namespaces, a daemon that fails). Each job is the tiny CACL run of the other
integration tests as 2 CPU tasks talking gloo.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cacl_dist.training.checkpoint import load_checkpoint
from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import REPO, assert_same_state, run_cli, set_args, tiny_overrides
from .slurm_cluster import PARTITION, ClusterUnavailable, LocalSlurm
from .slurm_netns import NetnsSlurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = {"train.epochs": 2, "train.iters_per_epoch": 10, "checkpoint.every_steps": 1, "eval.every_epochs": 0,
         "eval.at_start": False}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[dev]')")
    try:
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as exc:
        pytest.skip(f"SLURM cannot start on this machine: {exc}")
    yield cluster
    cluster.stop()


def launch(slurm: LocalSlurm, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.slurm", *args], cwd=REPO, env=dict(slurm.env),
                          capture_output=True, text=True, timeout=timeout)


def job_args(run_dir: Path, data_dir: Path, *extra: str, tasks: int = 2, **overrides) -> list[str]:
    """A CPU job of `tasks` processes running the tiny recipe."""
    sets = [f"--set={o}" for o in tiny_overrides(run_dir, data_dir, **{**STEPS, **overrides})]
    shape = ["--gpus-per-node", "0", "--tasks-per-node", str(tasks)] if tasks else []
    return ["--config", "configs/quickstart.yaml", *shape, "--time", "10", *sets, *extra]


def job_field(slurm: LocalSlurm, job_id: str, name: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=slurm.env, capture_output=True,
                         text=True).stdout
    match = re.search(rf"\b{name}=(\S+)", out)
    return match.group(1) if match else ""


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def train_rows(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return sum('"kind": "train"' in line for line in path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def straight_run(slurm, tmp_path_factory, synthetic_root):
    """One uninterrupted 2-task job, waited for by the launcher."""
    run_dir = tmp_path_factory.mktemp("slurm_runs") / "straight"
    result = launch(slurm, job_args(run_dir, synthetic_root, "--wait"))
    return run_dir, result


def test_two_task_cpu_job_trains_and_reports(straight_run):
    run_dir, result = straight_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+) to partition 'debug'", result.stdout).group(1)
    assert f"run folder: {run_dir}" in result.stdout
    assert f"{job_id}_0_log.out" in result.stdout and f"job {job_id}: COMPLETED" in result.stdout
    rows = read_metrics(run_dir, "train")
    assert [(r["epoch"], r["iter"]) for r in rows] == [(e, i) for e in (1, 2) for i in range(1, 11)]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert len(read_metrics(run_dir, "eval")) == 1  # evaluated after the last epoch
    log0 = (run_dir / "slurm" / f"{job_id}_0_log.out").read_text()
    assert "world size 2 on cpu (gloo)" in log0 and "task 0 of 2" in log0
    assert "task 1 of 2" in (run_dir / "slurm" / f"{job_id}_1_log.out").read_text()
    state = load_checkpoint(run_dir / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2


def test_interrupted_job_requeues_resumes_and_matches_the_straight_run(slurm, straight_run, tmp_path,
                                                                      synthetic_root):
    """Interrupt one job twice mid-training: first with the time-limit warning (the job checkpoints and
    requeues itself), then with `scontrol requeue` (the job checkpoints on SIGTERM, SLURM requeues it)."""
    straight_dir, straight = straight_run
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "interrupted"
    result = launch(slurm, job_args(run_dir, synthetic_root))
    assert result.returncode == 0, result.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+)", result.stdout).group(1)
    log = run_dir / "slurm" / f"{job_id}_0_log.out"

    def restart_now(restarts: str) -> None:
        wait_until(lambda: job_field(slurm, job_id, "Restarts") == restarts, 120, f"requeue number {restarts}")
        wait_until(lambda: job_field(slurm, job_id, "JobState") != "COMPLETING", 120, "the tasks to end")
        # SLURM holds a requeued job for a while before it may start again; let it start now
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=slurm.env)

    wait_until(lambda: train_rows(run_dir) >= 1, 240, "the first training step")
    subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm.env, check=True)  # sent before the limit
    restart_now("1")
    wait_until(lambda: log.read_text().count("resumed from") == 1, 240, "the first resume")
    subprocess.run(["scontrol", "requeue", job_id], env=slurm.env, check=True)
    restart_now("2")
    wait_until(lambda: job_field(slurm, job_id, "JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 240,
               "the requeued job to end")
    assert job_field(slurm, job_id, "JobState") == "COMPLETED", log.read_text()[-3000:]
    text = log.read_text()
    assert f"requeued job {job_id} (requeue 1 of at most 10)" in text  # by the job itself
    assert "checkpointed and stopped on SIGTERM" in text  # then by scontrol
    assert text.count("stopped on request") == 2 and text.count("resumed from") == 2
    assert "requeues so far: 2" in text and "training finished" in text
    assert_same_state(load_checkpoint(straight_dir / "last.pt"), load_checkpoint(run_dir / "last.pt"), exact=True)


def test_sweep_is_a_job_array_with_one_run_folder_per_value(slurm, tmp_path, synthetic_root):
    base = tmp_path / "sweep"
    args = job_args(base, synthetic_root, "--sweep", "optim.lr=1e-3,3e-4", "--wait", tasks=1,
                    **{"train.epochs": 1, "train.iters_per_epoch": 2})
    result = launch(slurm, args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    array = re.search(r"submitted job array (\d+) \(2 runs\)", result.stdout).group(1)
    for index, (text, lr) in enumerate((("1e-3", 1e-3), ("3e-4", 3e-4))):
        run_dir = base / f"optim.lr={text}"
        assert f"job {array}_{index}: COMPLETED" in result.stdout
        assert f"run folder: {run_dir}" in result.stdout
        assert [r["lr"] for r in read_metrics(run_dir, "train")] == pytest.approx([lr, lr])


@pytest.mark.parametrize("extra, message", [
    (["--partition", "nope"], f"partition 'nope' does not exist on this cluster (partitions: {PARTITION}*)"),
    (["--cpus-per-task", "4096"], "impossible request: 8192 CPUs per node"),
    (["--gpus-per-node", "1"], "impossible request: 1 GPUs per node (--gpus-per-node) but no node"),
    (["--nodes", "2"], "impossible request: 2 nodes"),
    (["--config", "configs/missing.yaml"], "config file"),
], ids=["partition", "cpus", "gpus", "nodes", "config"])
def test_bad_requests_fail_before_submission(slurm, tmp_path, synthetic_root, extra, message):
    args = job_args(tmp_path / "run", synthetic_root, tasks=0 if "--gpus-per-node" in extra else 2)
    result = launch(slurm, args + extra, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "submitted" not in result.stdout
    assert not (tmp_path / "run").exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], env=slurm.env, capture_output=True,
                          text=True).stdout.strip() == ""


# ---------------------------------------------------------------------------- two nodes
TWO_NODE_STEPS = {**STEPS, "train.iters_per_epoch": 3}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    pytest.importorskip("submitit", reason="submitit is not installed (pip install -e '.[dev]')")
    try:
        cluster = NetnsSlurm(tmp_path_factory.mktemp("slurm2"), nodes=2).start()
    except ClusterUnavailable as exc:
        pytest.skip(f"a two-node SLURM cluster cannot start on this machine: {exc}")
    yield cluster
    cluster.stop()


PROBE = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], 9)); "
         "print(socket.gethostname(), s.getsockname()[0], socket.gethostbyname(sys.argv[2]))")


def probe_nodes(cluster: NetnsSlurm, name: str) -> dict[str, tuple[str, str]]:
    """One task per node: {host name: (the node's own address, what `name` resolves to there)}."""
    cmd = ["srun", "--nodes", "2", "--ntasks-per-node", "1", sys.executable, "-c", PROBE,
           cluster.addresses["head"], name]
    result = subprocess.run(cmd, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return {host: (own, resolved) for host, own, resolved in (line.split() for line in result.stdout.splitlines())}


def test_two_node_cluster_gives_each_node_its_own_address(two_nodes):
    assert probe_nodes(two_nodes, "node1") == {"node0": (two_nodes.addresses["node0"], two_nodes.addresses["node1"]),
                                               "node1": (two_nodes.addresses["node1"], two_nodes.addresses["node1"])}
    assert two_nodes.addresses["node0"] != two_nodes.addresses["node1"]


def test_two_node_job_runs_one_rank_per_node_and_matches_two_local_processes(two_nodes, tmp_path, synthetic_root):
    run_dir = tmp_path / "two_nodes"
    args = job_args(run_dir, synthetic_root, "--nodes", "2", "--wait", tasks=1, **TWO_NODE_STEPS)
    result = launch(two_nodes, args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\d+) to partition 'debug': 2 nodes x 1 task", result.stdout).group(1)
    assert f"job {job_id}: COMPLETED" in result.stdout
    logs = [(run_dir / "slurm" / f"{job_id}_{rank}_log.out").read_text() for rank in (0, 1)]
    seen = [re.search(r"task (\d) of (\d+) on (\S+); master (\S+):(\d+)", log).groups() for log in logs]
    port = seen[0][4]
    assert seen == [("0", "2", "node0", "node0", port), ("1", "2", "node1", "node0", port)]
    assert "world size 2 on cpu (gloo)" in logs[0] and all("training finished" in log for log in logs)
    # the master name both ranks used is node 0's address on either node
    assert {host: resolved for host, (_, resolved) in probe_nodes(two_nodes, "node0").items()} == {
        "node0": two_nodes.addresses["node0"], "node1": two_nodes.addresses["node0"]}
    state = load_checkpoint(run_dir / "last.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2

    local_dir = tmp_path / "two_processes"
    local = run_cli("cacl_dist.train", ["--config", "configs/quickstart.yaml",
                                        *set_args(local_dir, synthetic_root, **TWO_NODE_STEPS)], torchrun_procs=2)
    assert local.returncode == 0, local.stderr[-3000:]
    assert_same_state(load_checkpoint(local_dir / "last.pt"), state, exact=True)
    losses = [[{k: v for k, v in row.items() if k not in ("time", "images_per_s")} for row in read_metrics(d, "train")]
              for d in (run_dir, local_dir)]
    assert len(losses[0]) == 6 and losses[0] == losses[1]

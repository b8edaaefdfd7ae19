"""The SLURM launcher without a cluster: sinfo parsing, request checks, sweeps, task environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cacl_dist.config import ConfigError
from launch import resources
from launch import slurm as launcher
from launch.plan import build_runs, check_world_size, parse_sweep
from launch.task import TimeLimitWatch, master_port, restart_count, torch_env

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")

SINFO = """\
gpu001|gpu*|64|512000|gpu:a100:8(S:0-1)|up|1-00:00:00
gpu002|gpu*|64|512000|gpu:a100:8(S:0-1),nvme:1|up|1-00:00:00
gpu003|gpu*|32|256000|gpu:4|up|1-00:00:00
cpu001|cpu|128|1024000|(null)|up|infinite
old001|legacy|8|16000|(null)|down|2:00:00
"""


def request(**kw) -> resources.Request:
    values = dict(nodes=1, tasks_per_node=8, gpus_per_node=8, cpus_per_task=8, mem_gb=None, time_min=60.0)
    values.update(kw)
    return resources.Request(**values)


def test_parse_sinfo_reads_partitions_gpus_and_limits():
    nodes = resources.parse_sinfo(SINFO)
    assert [(n.name, n.partition, n.is_default, n.gpus) for n in nodes][:4] == [
        ("gpu001", "gpu", True, 8), ("gpu002", "gpu", True, 8), ("gpu003", "gpu", True, 4),
        ("cpu001", "cpu", False, 0)]
    assert nodes[0].cpus == 64 and nodes[0].memory_mb == 512000 and nodes[0].time_limit_min == 1440
    assert nodes[3].time_limit_min is None and not nodes[4].available


@pytest.mark.parametrize("text, minutes", [("90", 90), ("30:30", 30.5), ("24:00:00", 1440), ("2-00:00:00", 2880),
                                           ("1-12", 2160), ("0-00:45", 45)])
def test_parse_time_minutes(text, minutes):
    assert resources.parse_time_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["", "1h", "00:00:00", "1:2:3:4"])
def test_parse_time_rejects_what_slurm_would(text):
    with pytest.raises(ValueError, match="--time"):
        resources.parse_time_minutes(text)


def test_request_that_fits_goes_to_the_default_partition():
    nodes = resources.parse_sinfo(SINFO)
    assert resources.check_request(nodes, request(nodes=2), None) == "gpu"
    assert resources.check_request(nodes, request(gpus_per_node=0, tasks_per_node=4), "cpu") == "cpu"


@pytest.mark.parametrize("kw, partition, message", [
    ({}, "gpus", "partition 'gpus' does not exist on this cluster (partitions: gpu*, cpu, legacy)"),
    ({"gpus_per_node": 16, "tasks_per_node": 16}, None,
     "impossible request: 16 GPUs per node (--gpus-per-node) but no node of partition 'gpu' has more than 8"),
    ({"cpus_per_task": 10}, None, "impossible request: 80 CPUs per node"),
    ({"mem_gb": 1000}, None, "1024000 MB of memory per node (--mem-gb) but no node of partition 'gpu' has more"),
    ({"nodes": 3}, None, "3 nodes with 8 GPUs and 64 CPUs each, but partition 'gpu' has only 2 such nodes"),
    ({"gpus_per_node": 1, "tasks_per_node": 1}, "cpu", "1 GPUs per node (--gpus-per-node) but no node of "
                                                       "partition 'cpu' has more than 0"),
    ({"time_min": 2000}, None, "exceeds the time limit of partition 'gpu' (1440 min)"),
    ({"gpus_per_node": 0, "tasks_per_node": 1}, "legacy", "partition 'legacy' is down"),
], ids=["unknown-partition", "gpus", "cpus", "memory", "nodes", "gpus-on-cpu-partition", "time", "down"])
def test_impossible_requests_are_named(kw, partition, message):
    with pytest.raises(ValueError) as err:
        resources.check_request(resources.parse_sinfo(SINFO), request(**kw), partition)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_no_default_partition_asks_for_one():
    nodes = resources.parse_sinfo(SINFO.replace("gpu*", "gpu"))
    with pytest.raises(ValueError, match="no default partition; pass --partition"):
        resources.check_request(nodes, request(), None)


def test_sweep_gives_one_validated_run_per_point_with_absolute_folders(tmp_path):
    runs = build_runs(QUICKSTART, ["run.output_dir=runs/lr"], ["optim.lr=1e-3,3e-4", "model.pool=avg,gem"], tmp_path)
    assert [r.run_dir for r in runs] == [tmp_path / "runs" / "lr" / name for name in (
        "optim.lr=1e-3,model.pool=avg", "optim.lr=1e-3,model.pool=gem",
        "optim.lr=3e-4,model.pool=avg", "optim.lr=3e-4,model.pool=gem")]
    assert [(r.cfg.optim.lr, r.cfg.model.pool) for r in runs] == [
        (1e-3, "avg"), (1e-3, "gem"), (3e-4, "avg"), (3e-4, "gem")]
    assert runs[0].cfg.run.output_dir == str(runs[0].run_dir)
    assert runs[0].cfg.data.root == str(tmp_path / "data_cache" / "synthetic")
    argv = runs[0].train_argv(QUICKSTART)
    assert argv[:2] == ["--config", QUICKSTART] and f"run.output_dir={runs[0].run_dir}" in argv


@pytest.mark.parametrize("sweeps, message", [
    (["optim.lr"], "not of the form key.path=value1,value2"),
    (["model.pool=avg,max"], "config key 'model.pool': 'max' is not one of avg, gem (sweep point model.pool=max)"),
    (["optim.lr=1e-3", "optim.lr=3e-4"], "names a key twice"),
    (["optim.nope=1,2"], "unknown config key 'optim.nope'"),
])
def test_bad_sweeps_are_config_errors(tmp_path, sweeps, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_runs(QUICKSTART, [], sweeps, tmp_path)


def test_invalid_or_unreadable_config_is_a_config_error(tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [epochs: 3\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        build_runs(str(bad), [], [], tmp_path)

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)  # root reads anything, so fake the permission error
    with pytest.raises(ConfigError, match=r"config file '.*bad.yaml' cannot be read \(Permission denied\)"):
        build_runs(str(bad), [], [], tmp_path)


def test_parse_sweep_splits_values():
    assert parse_sweep("optim.lr=1e-3, 3e-4") == ("optim.lr", ["1e-3", "3e-4"])


def test_global_batch_must_split_over_the_job(tmp_path):
    runs = build_runs(QUICKSTART, [], [], tmp_path)  # batch 32
    check_world_size(runs, 16)
    with pytest.raises(ConfigError, match="'train.batch_size': the global batch 32 does not split over 3 processes .nodes x tasks per node.; use train.batch_size=96"):
        check_world_size(runs, 3)


def test_task_environment_and_port_are_deterministic(tmp_path):
    env = torch_env(5, 16, 1, 8, "gpu001", 23456)
    assert env == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8",
                   "MASTER_ADDR": "gpu001", "MASTER_PORT": "23456"}
    assert master_port("123", 0) == master_port("123", 0)
    assert master_port("123", 0) != master_port("123", 1)  # a restarted job does not reuse the old port
    assert all(20000 <= master_port(str(j), r) < 50000 for j in range(50) for r in range(3))
    assert restart_count({"SLURM_RESTART_COUNT": "2"}, None) == 2
    counter = tmp_path / "n.txt"
    assert restart_count({}, counter) == 0
    counter.write_text("3")
    assert restart_count({}, counter) == 3


def test_time_limit_warning_becomes_repeated_stop_requests_then_the_deadline():
    stops, deadline = [], []
    with TimeLimitWatch(signal.SIGUSR2, grace_s=0.2, on_deadline=lambda: deadline.append(time.time()),
                        interval_s=0.05) as watch:
        signal.signal(signal.SIGUSR1, lambda signum, frame: stops.append(signum))  # the trainer's handler
        os.kill(os.getpid(), signal.SIGUSR2)
        end = time.time() + 5
        while (not deadline or len(stops) < 3) and time.time() < end:
            time.sleep(0.01)
    assert watch.fired.is_set() and len(stops) >= 3 and len(deadline) == 1
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # handlers restored


def test_stop_request_before_the_trainer_listens_does_not_kill_the_process():
    with TimeLimitWatch(signal.SIGUSR2, grace_s=60, interval_s=0.05) as watch:
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(0.2)  # SIGUSR1 sent several times meanwhile: the placeholder handler swallows it
    assert watch.fired.is_set()


def run_launcher(monkeypatch, capsys, args, sinfo=SINFO):
    monkeypatch.setattr(resources, "query_nodes", lambda: resources.parse_sinfo(sinfo))
    monkeypatch.setattr(launcher.shutil, "which", lambda name: f"/usr/bin/{name}")
    code = launcher.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_prints_the_plan_without_submitting(monkeypatch, capsys, tmp_path):
    code, out, err = run_launcher(monkeypatch, capsys, [
        "--config", QUICKSTART, "--nodes", "2", "--gpus-per-node", "8", "--time", "12:00:00", "--check",
        "--set", f"run.output_dir={tmp_path / 'run'}"])
    assert code == 0, err
    assert "partition 'gpu': 2 nodes x 8 tasks (8 GPUs per node, 1 CPU per task)" in out
    assert f"run folder: {tmp_path / 'run'}" in out
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--partition", "nope"], "partition 'nope' does not exist"),
    (["--gpus-per-node", "16"], "impossible request: 16 GPUs per node"),
    (["--config", "/nonexistent/recipe.yaml"], "config file '/nonexistent/recipe.yaml' does not exist"),
    (["--set", "model.pool=max"], "config key 'model.pool'"),
    (["--gpus-per-node", "3"], "'train.batch_size': the global batch 32 does not split over 3 processes"),
    (["--gpus-per-node", "2", "--tasks-per-node", "4"], "GPU jobs run one task per GPU"),
    (["--local", "--nodes", "2"], "--local runs on this machine only"),
    (["--time", "soon"], "--time 'soon' is not a SLURM time"),
])
def test_bad_input_is_one_line_before_submission(monkeypatch, capsys, args, message):
    code, out, err = run_launcher(monkeypatch, capsys, ["--config", QUICKSTART, *args])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "submitted" not in out


def test_no_slurm_here_says_so(monkeypatch, capsys):
    monkeypatch.setattr(resources.shutil, "which", lambda name: None)
    code = launcher.main(["--config", QUICKSTART])
    err = capsys.readouterr().err
    assert code == 2 and "'sinfo' is not on PATH" in err and "--local" in err


def test_failed_job_reports_the_trainings_own_error_line(tmp_path):
    log = tmp_path / "7_0_log.err"
    log.write_text("error: dataset root /x for 'market1501' does not exist\nTraceback (most recent call last):\n"
                   "RuntimeError: training exited with status 2\n")
    assert launcher.failure_line(log, RuntimeError("x")) == "error: dataset root /x for 'market1501' does not exist"
    log.write_text("Traceback (most recent call last):\nValueError: bad\n")
    assert launcher.failure_line(log, RuntimeError("x")) == "ValueError: bad"
    assert launcher.failure_line(tmp_path / "missing.err", RuntimeError("job failed\ntrace")) == "job failed"


class FakeJob:
    """What submitit.JobEnvironment() offers inside a task of a 2-node, 4-task SLURM job."""

    cluster, raw_job_id, job_id, hostname, USR_SIG = "slurm", "77", "77", "node1", "USR2"
    hostnames, num_tasks, num_nodes, global_rank, local_rank = ["node1", "node2"], 4, 2, 0, 0

    def __init__(self, folder):
        self.paths = type("Paths", (), {"folder": folder})()


@pytest.fixture
def task_env(monkeypatch, tmp_path):
    """Run TrainingTask.__call__ with a fake job environment, a fake training entry and a fake scontrol."""
    submitit = pytest.importorskip("submitit")
    import cacl_dist.cli.train
    import launch.task

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                 "SLURM_RESTART_COUNT"):
        monkeypatch.setenv(name, "")  # restored after the test
    monkeypatch.setattr(submitit, "JobEnvironment", lambda: FakeJob(tmp_path))
    calls, seen = [], {}

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(launch.task.subprocess, "run", fake_run)

    def install(behaviour):
        def fake_main(argv):
            seen.update(argv=argv, env={k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")})
            return behaviour()
        monkeypatch.setattr(cacl_dist.cli.train, "main", fake_main)

    return install, calls, seen


def stopped_by_time_limit() -> int:
    """A training that gets the time-limit signal, stops on the SIGUSR1 it turns into, returns 3."""
    stopped = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: stopped.append(signum))
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        end = time.time() + 5
        while not stopped and time.time() < end:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    return 3 if stopped else 1


def test_task_sets_torch_env_and_requeues_after_the_time_limit_checkpoint(task_env):
    from launch.task import TrainingTask

    install, calls, seen = task_env
    install(stopped_by_time_limit)
    with pytest.raises(SystemExit) as exit_:
        TrainingTask(["--config", "x.yaml"], "/runs/x", max_requeues=3, signal_delay_s=120)()
    assert exit_.value.code == 3 and calls == [["scontrol", "requeue", "77"]]
    assert seen["argv"] == ["--config", "x.yaml"]
    assert seen["env"] == {"RANK": "0", "WORLD_SIZE": "4", "MASTER_ADDR": "node1"}


def test_task_respects_the_requeue_cap_and_leaves_sigterm_requeues_to_slurm(task_env, monkeypatch):
    from launch.task import TrainingTask

    install, calls, _ = task_env
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    install(stopped_by_time_limit)
    with pytest.raises(SystemExit):
        TrainingTask([], "/runs/x", max_requeues=3, signal_delay_s=120)()
    assert calls == []  # requeued 3 times already
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    install(lambda: 3)  # stopped by SIGTERM (scancel, preemption): no requeue of its own
    with pytest.raises(SystemExit) as exit_:
        TrainingTask([], "/runs/x", max_requeues=3, signal_delay_s=120)()
    assert exit_.value.code == 3 and calls == []


def test_task_result_and_failure(task_env):
    from launch.task import TrainingTask

    install, _, _ = task_env
    install(lambda: 0)
    assert TrainingTask([], "/runs/x", 3, 120)() == {"run_dir": "/runs/x", "restarts": 0}
    install(lambda: 2)
    with pytest.raises(RuntimeError, match="training exited with status 2"):
        TrainingTask([], "/runs/x", 3, 120)()


def test_missing_submitit_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "submitit", None)  # makes `import submitit` fail
    code = launcher.main(["--config", QUICKSTART, "--local", "--gpus-per-node", "0",
                          "--set", f"run.output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install cacl_dist[slurm]" in err and len(err.strip().splitlines()) == 1

"""One run per folder, usable run folders, stop signals and the parent watch of torchrun workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from cacl_dist.runs.folder import RunFolderBusy, RunFolderLock, append_error_line, prepare_run_dir
from cacl_dist.training.stopping import StopSignals, watch_parent

from tests.helpers.runs import REPO


def test_lock_is_exclusive_names_the_owner_and_is_free_again_after_release(tmp_path):
    first = RunFolderLock(tmp_path / "run").acquire()
    assert first.held and f"pid {os.getpid()}" in first.owner()
    with pytest.raises(RunFolderBusy) as info:
        RunFolderLock(tmp_path / "run").acquire()
    assert str(tmp_path / "run") in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    first.release()
    with RunFolderLock(tmp_path / "run") as again:
        assert again.held


def test_lock_of_a_killed_process_does_not_stay(tmp_path):
    code = textwrap.dedent(f"""
        import os, sys
        from cacl_dist.runs.folder import RunFolderLock
        RunFolderLock({str(tmp_path / "run")!r}).acquire()
        os._exit(0)  # no release: the operating system drops the lock with the process
    """)
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert RunFolderLock(tmp_path / "run").acquire().held


def test_run_dir_that_is_a_file_or_below_one_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for path in (blocker, blocker / "run"):
        with pytest.raises(ValueError, match="run.output_dir") as info:
            prepare_run_dir(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert prepare_run_dir(tmp_path / "a" / "b").is_dir()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_run_dir_without_write_permission_is_a_one_line_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match="not writable|permission denied"):
        RunFolderLock(locked / "run").acquire()


def test_error_line_goes_to_the_rank_log_only_when_the_folder_exists(tmp_path):
    append_error_line(tmp_path / "missing", 0, "error: x")
    assert not (tmp_path / "missing").exists()
    append_error_line(tmp_path, 1, "error: data.root 'x' cannot be read")
    text = (tmp_path / "log_rank1.txt").read_text()
    assert text.endswith("[rank 1] ERROR data.root 'x' cannot be read\n")


def test_stop_signals_reach_a_late_target_and_set_the_exit_code():
    requests = []
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)  # before any target: remembered, no KeyboardInterrupt
        signals.attach(lambda: requests.append(1))
        assert requests == [1] and signals.exit_code == 130
        os.kill(os.getpid(), signal.SIGTERM)
        assert requests == [1, 1] and signals.exit_code == 130  # the first signal decides
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.exit_code == 3


def test_parent_watch_is_off_outside_torchrun():
    assert watch_parent(environ={}) is None


@pytest.mark.skipif(os.name != "posix", reason="POSIX process tree")
def test_parent_watch_sends_sigterm_when_the_parent_dies(tmp_path):
    """A parent starts a watched child and is killed; the child receives SIGTERM and says so."""
    marker = tmp_path / "child_got_sigterm"
    child = textwrap.dedent(f"""
        import signal, sys, time
        from cacl_dist.training.stopping import watch_parent
        signal.signal(signal.SIGTERM, lambda *a: (open({str(marker)!r}, "w").write("yes"), sys.exit(0)))
        watch_parent(interval_s=0.05)
        print("watching", flush=True)
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        proc = subprocess.Popen([sys.executable, "-c", {child!r}], stdout=subprocess.PIPE, text=True)
        print(proc.pid, proc.stdout.readline().strip(), flush=True)
        time.sleep(60)
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO), TORCHELASTIC_RUN_ID="test")
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child_pid, state = proc.stdout.readline().split()
        assert state == "watching"
    finally:
        proc.kill()
        proc.wait()
    import time

    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "yes"


def test_write_status_says_why_it_could_not_write_instead_of_raising(tmp_path):
    from cacl_dist.runs.folder import write_status

    assert write_status(tmp_path, "running: here") is None
    assert (tmp_path / "status.txt").read_text() == "running: here\n"
    (tmp_path / "status.txt").unlink()
    (tmp_path / "status.txt").mkdir()
    problem = write_status(tmp_path, "0 finished")
    assert problem.startswith(f"cannot write '{tmp_path / 'status.txt'}'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.txt"]  # no temporary file left behind

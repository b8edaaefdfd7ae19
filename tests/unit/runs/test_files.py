"""The one atomic write and the one file lock: a crash mid-write keeps the old file, a lock is exclusive."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from cacl_dist.runs.files import FileLock, atomic_file, atomic_path, write_atomically

from tests.helpers.runs import REPO


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=60)


def test_write_replaces_the_whole_file_with_an_ordinary_mode(tmp_path):
    path = tmp_path / "deep" / "status.txt"
    write_atomically(path, "old and longer\n")
    old = os.umask(0o022)
    try:
        assert write_atomically(path, "new\n") == path
    finally:
        os.umask(old)
    assert path.read_text() == "new\n" and path.stat().st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ["status.txt"]


def test_an_exception_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "labels.npy"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(path) as fh:
            fh.write(b"half of the new")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["labels.npy"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    result = _run(f"""
        import os
        from cacl_dist.runs.files import atomic_file
        with atomic_file({str(path)!r}) as fh:
            fh.write(b"x" * 100000)
            fh.flush()
            os._exit(9)  # killed before the rename
    """)
    assert result.returncode == 9, result.stderr
    assert path.read_bytes() == b"old"
    [temporary] = set(os.listdir(tmp_path)) - {"last.pt"}
    assert temporary.startswith(".last.pt.") and temporary.endswith(".tmp")  # a name the checkpointer clears


def test_atomic_path_renames_only_what_passed_the_check(tmp_path):
    path = tmp_path / "model.ts"
    path.write_text("old")
    with atomic_path(path) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.getsize(tmp) == 0
        with open(tmp, "w") as fh:
            fh.write("new")
    assert path.read_text() == "new"

    def check_fails():
        with atomic_path(path) as tmp:
            with open(tmp, "w") as fh:
                fh.write("bad")
            raise ValueError("reloaded outputs differ")

    with pytest.raises(ValueError):
        check_fails()
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["model.ts"]


def test_atomic_file_refuses_modes_that_do_not_write_a_new_file(tmp_path):
    with pytest.raises(ValueError, match="'ab'"):
        with atomic_file(tmp_path / "x", "ab"):
            pass


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_lock_is_exclusive_between_processes_and_dropped_when_the_holder_dies(tmp_path):
    path = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from cacl_dist.runs.files import FileLock
        lock = FileLock({str(path)!r})
        assert lock.acquire(wait=False) and lock.held
        lock.write_note("pid of the holder")
        print("held", flush=True)
        sys.stdin.readline()
    """)], env=dict(os.environ, PYTHONPATH=str(REPO)), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        other = FileLock(path)
        assert other.acquire(wait=False) is False and not other.held
        assert other.read_note() == "pid of the holder"
    finally:
        holder.kill()
        holder.wait()
    with FileLock(path) as lock:  # the operating system dropped the dead holder's lock
        assert lock.held
    assert not lock.held and path.exists()  # released; the file stays


def test_a_filesystem_without_flock_goes_on_without_a_lock(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock = FileLock(tmp_path / ".lock")
    assert lock.acquire(wait=False) is True and not lock.held
    lock.write_note("ignored")
    assert lock.read_note() == ""

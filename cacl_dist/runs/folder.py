"""The run folder as a resource: usable before any work starts, and held by one run at a time.

:class:`RunFolderLock` takes an exclusive lock (:class:`~cacl_dist.runs.files.FileLock`) on
``<run folder>/.lock`` (the holder writes its host and pid into the file). The operating system drops the lock when the holding process
ends, however it ends, so a killed run never leaves the folder locked; a second run on the same
folder stops at once with one line naming the folder and the holder. On filesystems without
working ``flock`` (some network filesystems) the lock is best effort.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from cacl_dist.runs.files import FileLock, write_atomically
from cacl_dist.errors import RunFolderBusy, UserError

LOCK_NAME = ".lock"
STATUS_NAME = "status.txt"


def prepare_run_dir(run_dir: str | Path) -> Path:
    """Create `run_dir` (and its parents) or fail with one line saying why it cannot be a run folder."""
    path = Path(run_dir)
    if path.exists() and not path.is_dir():
        raise UserError(f"run.output_dir '{path}' is a file, not a folder; point run.output_dir at a folder "
                        "(it is created when missing)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"run.output_dir '{path}' cannot be created: a part of that path is a file; "
                        "pick another run.output_dir") from None
    except PermissionError:
        raise UserError(f"run.output_dir '{path}' cannot be created (permission denied); pick a folder you can "
                        "write to") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"run.output_dir '{path}' is not writable; fix its permissions or pick another "
                        "run.output_dir")
    return path


class RunFolderLock:
    """An exclusive lock on a run folder for the life of this process (or until :meth:`release`)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._lock = FileLock(self.path)

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._lock.held

    def acquire(self) -> "RunFolderLock":
        """Create the run folder if needed and lock it; RunFolderBusy (a ValueError) when another run holds it."""
        prepare_run_dir(self.run_dir)
        try:
            free = self._lock.acquire(wait=False)
        except PermissionError:
            raise UserError(f"run.output_dir '{self.run_dir}' is not writable (cannot create {LOCK_NAME}); fix "
                            "its permissions or pick another run.output_dir") from None
        if not free:
            raise RunFolderBusy(
                f"run folder '{self.run_dir}' is in use by another run ({self.owner() or 'owner unknown'}); "
                "wait for it to end or stop it, or pick another run.output_dir")
        self._lock.write_note(self.describe_holder() + "\n")
        return self

    @staticmethod
    def describe_holder() -> str:
        """'host H pid P since T' of this process."""
        return f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"

    def owner(self) -> str:
        """What the holder wrote into the lock file ('' when unreadable)."""
        return self._lock.read_note()

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a run that is taking it)."""
        self._lock.release()

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_status(run_dir: str | Path, text: str) -> str | None:
    """Replace the run folder's status.txt with one line: 'running ...' while a run holds the folder, then its
    exit status and why (e.g. '3 stopped on request (SIGTERM) after 1 epoch, ...'). A folder whose status
    still says 'running' while no run holds it was left by a killed or crashed run.

    Returns None, or why the status could not be written (one phrase naming the file): it never raises, so
    that it cannot hide what happened (e.g. a full disk); the caller decides whether to stop or warn."""
    path = Path(run_dir) / STATUS_NAME
    try:
        write_atomically(path, " ".join(text.split()) + "\n")
    except OSError as exc:
        return f"cannot write '{path}' ({exc.strerror or exc})"
    return None


def append_error_line(run_dir: str | Path | None, rank: int, line: str) -> None:
    """Write `line` (a one-line error) into the rank's log in the run folder, when that folder exists."""
    from cacl_dist.runs.logs import log_to_run_file

    if run_dir is not None and Path(run_dir).is_dir():
        log_to_run_file(Path(run_dir), rank, line.removeprefix("error: "))


__all__ = ["LOCK_NAME", "STATUS_NAME", "RunFolderBusy", "RunFolderLock", "append_error_line", "prepare_run_dir",
           "write_status"]

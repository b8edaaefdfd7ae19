"""Starting over in a used run folder (``--fresh``), and not leaving an empty one behind.

- :func:`rename_aside`: the whole run folder becomes ``<folder>.old-<time>`` (nothing is deleted), so a
  new run starts in an empty folder of the same name. It takes the folder's lock first: a folder that
  another run holds is never renamed.
- :func:`remove_unused` removes a run folder that this start created and that holds nothing but what a
  failed start writes (lock, status, logs, an empty TensorBoard folder, ...): a start that stops before
  any work, e.g. on a missing dataset, leaves no empty run folder behind. A folder holding anything
  else stays as it is.
- :func:`restarted_attempt`: whether this process is a restart of the same job (a requeued SLURM job, a
  torchrun restart), for which ``--fresh`` must not start over again.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Iterable, Mapping

from cacl_dist.errors import UserError
from cacl_dist.runs.folder import LOCK_NAME, STATUS_NAME, RunFolderLock

OLD_SUFFIX = ".old-"
"""What a renamed run folder's name gets: ``runs/x`` becomes ``runs/x.old-20250101-120000``."""

_START_FILES = re.compile(r"^(log_rank\d+\.txt|config\.yaml|metrics\.jsonl|images_checked\.json)$")
_START_FOLDERS = {"tensorboard": re.compile(r"^events\.out\.tfevents\..*$")}

RESTART_VARIABLES = ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
"""Environment variables that count the restarts of a job: SLURM's requeues, torchrun's worker restarts."""


def restarted_attempt(environ: Mapping[str, str] = os.environ) -> str | None:
    """'NAME=N' when this process is restart N > 0 of a job (SLURM requeue, torchrun restart), else None."""
    for name in RESTART_VARIABLES:
        value = environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return f"{name}={value}"
    return None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def rename_aside(run_dir: str | Path, keep_outside: Iterable[str | Path] = ()) -> Path | None:
    """Rename the run folder to ``<folder>.old-<time>`` and return the new name (None when there is no folder).

    Refused in one line (UserError) when another run holds the folder, when the current folder or one of
    `keep_outside` (e.g. data.root) lies inside it, or when the path is a file."""
    path = Path(run_dir)
    if not path.exists():
        return None
    if not path.is_dir():
        raise UserError(f"run.output_dir '{path}' is a file, not a folder; point run.output_dir at a folder")
    real = path.resolve()
    for what, inner in (("the current folder", Path.cwd()), *(("data.root", Path(p)) for p in keep_outside)):
        if _inside(Path(inner).expanduser().resolve(), real):
            raise UserError(f"--fresh would rename run.output_dir '{path}', which holds {what} ({inner}); pick "
                            "another run.output_dir or move it away by hand")
    lock = RunFolderLock(path).acquire()  # RunFolderBusy (one line) when a run holds it
    try:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = path.with_name(f"{path.name}{OLD_SUFFIX}{stamp}")
        count = 1
        while target.exists():  # two fresh starts within a second
            count += 1
            target = path.with_name(f"{path.name}{OLD_SUFFIX}{stamp}-{count}")
        try:
            os.rename(path, target)
        except OSError as exc:
            raise UserError(f"--fresh cannot rename run.output_dir '{path}' to '{target}' "
                            f"({exc.strerror or exc}); move it away by hand or pick another run.output_dir") from None
    finally:
        lock.release()
    return target


def _start_only(folder: Path) -> list[Path] | None:
    """The files of a folder holding only what a failed start writes (deepest first), else None."""
    found: list[Path] = []
    for entry in folder.iterdir():
        if entry.is_file() and not entry.is_symlink() and (entry.name in (LOCK_NAME, STATUS_NAME)
                                                            or _START_FILES.match(entry.name)):
            found.append(entry)
        elif entry.is_dir() and not entry.is_symlink() and entry.name in _START_FOLDERS:
            inner = list(entry.iterdir())
            if not all(p.is_file() and _START_FOLDERS[entry.name].match(p.name) for p in inner):
                return None
            found.extend([*inner, entry])
        else:
            return None
    return found


def remove_unused(run_dir: str | Path) -> bool:
    """Remove `run_dir` when it holds only what a failed start writes; True when it is gone.

    Call it only for a folder this start created, after the run let go of it. Never raises."""
    folder = Path(run_dir)
    try:
        found = _start_only(folder)
        if found is None:
            return False
        for entry in found:
            entry.rmdir() if entry.is_dir() else entry.unlink()
        folder.rmdir()
    except OSError:  # another rank still writing its log, a vanished file: leave the folder
        return False
    return True


__all__ = ["OLD_SUFFIX", "RESTART_VARIABLES", "remove_unused", "rename_aside", "restarted_attempt"]

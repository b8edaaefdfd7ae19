"""Writing a file so that a reader never sees half of it, and locking a file between processes.

Every room may use this module: it imports nothing else from the package.

- :func:`atomic_file` / :func:`atomic_path` / :func:`write_atomically`: the new content goes to a
  temporary file beside the target (``.<name>.<random>.tmp``, an ordinary file of the umask's
  mode), is flushed to disk, then renamed over the target; the folder is synced so that the
  rename itself lasts. A failure or a crash in the middle leaves the old file as it was; a failure
  removes the temporary, a crash may leave it behind (the checkpointer clears its own).
- :class:`FileLock`: an exclusive ``flock`` on a file, dropped by the operating system when the
  holding process ends, however it ends. Where the system or filesystem has no working ``flock``
  (not POSIX, some network filesystems) the lock is best effort: taking it succeeds without a lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _ordinary_mode(path: str) -> None:
    """Give `path` the mode a plain ``open`` would (mkstemp makes it owner-only)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _sync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort: some filesystems refuse to sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temporary(path: Path) -> Iterator[tuple[int, str]]:
    """(open descriptor, name) of a new temporary beside `path`, renamed onto `path` when the block succeeds.

    The block must leave the temporary's content synced to disk; on any exception the temporary is removed
    and `path` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _ordinary_mode(tmp)
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _sync_folder(path.parent)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """An open file whose content replaces `path` when the block ends without an exception.

    ``with atomic_file(p) as fh: torch.save(obj, fh)``; ``mode`` is ``"wb"`` or ``"w"`` (text, with
    ``encoding``). The file is flushed and synced before the rename."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_file writes a new file: mode must be 'wb' or 'w', not {mode!r}")
    with _temporary(Path(path)) as (fd, _):
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """The name of an empty temporary file that replaces `path` when the block ends without an exception.

    For writers that take a file name (``torch.jit.save``, ``torch.onnx.export``); the block may also check
    what it wrote before the rename. The temporary is synced before the rename."""
    with _temporary(Path(path)) as (fd, tmp):
        os.close(fd)
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())


def write_atomically(path: str | Path, data: str | bytes) -> Path:
    """Replace `path` with `data` (text is written as UTF-8) in one step; returns `path` as a Path."""
    with atomic_file(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


class FileLock:
    """An exclusive lock on the file `path` (created when missing), held until :meth:`release` or the end of
    the process. ``with FileLock(p):`` waits for the lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the operating-system lock (False where locks do not work here)."""
        return self._fd is not None

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock; False only when ``wait`` is False and another process holds it.

        True also where the lock cannot work (no ``fcntl``, a filesystem without ``flock``): then nothing
        is held (:attr:`held` is False) and the caller goes on without it. OSError when the file cannot
        be created or opened (e.g. PermissionError)."""
        if self._fd is not None:
            return True
        try:
            import fcntl
        except ImportError:  # not a POSIX system
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if not wait and exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            return True  # flock unsupported here (e.g. some network filesystems): go on without the lock
        self._fd = fd
        return True

    def write_note(self, text: str) -> None:
        """Replace the lock file's content with `text` (e.g. who holds it); only while held."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)

    def read_note(self) -> str:
        """What the holder wrote into the lock file ('' when unreadable)."""
        try:
            return self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process that is taking it)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire(wait=True)
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["FileLock", "atomic_file", "atomic_path", "write_atomically"]

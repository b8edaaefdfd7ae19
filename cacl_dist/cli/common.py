"""Shared command-line pieces of the entry points: config arguments and user-error reporting."""

from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path
from typing import Callable

from cacl_dist.errors import UserError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"

USER_ERROR_EXIT_CODE = 2
"""Exit status of a run stopped by a user error (bad config, missing or unreadable files, full disk, ...)."""

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_OS_ERROR_HINTS = {
    errno.ENOSPC: "free disk space (or point run.output_dir at another disk) and start the same command again",
    errno.EDQUOT: "free space within your disk quota and start the same command again",
    errno.EACCES: "check its permissions, or pick a path you can use",
    errno.EPERM: "check its permissions, or pick a path you can use",
    errno.EROFS: "the filesystem is read-only; pick a writable path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder, not a file; fix the path",
    errno.EEXIST: "a file of that name is in the way; move it or pick another path",
}


def add_config_args(parser: argparse.ArgumentParser, default_config: bool = True) -> None:
    """--config FILE and --set key=value [key=value ...] (repeatable)."""
    help_default = f" (default: {DEFAULT_CONFIG.name})" if default_config else ""
    parser.add_argument("--config", default=None, help="YAML recipe, e.g. configs/market1501.yaml; a recipe may build on "
                        "another with a top-level 'base: other.yaml'" + help_default)
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set train.epochs=10 optim.lr=1e-3 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (the recipe on top of its base recipes, then --set) as YAML "
                             "and exit, touching nothing")


def print_config_if_asked(args: argparse.Namespace, checkpoint: str | None = None,
                          default: str | None = None) -> bool:
    """With --print-config, print the config the command would use and return True (the caller exits).

    That config is --config (else `default`) with --set applied; an entry that reads a model file passes it as
    `checkpoint`, whose stored config is used when no --config is given (an export stores none: one line)."""
    if not getattr(args, "print_config", False):
        return False
    from cacl_dist.config import dump_yaml, load_config

    if args.config or checkpoint is None:
        cfg = load_config(args.config or default, args.overrides)
    else:
        from cacl_dist.inference.loader import load_feature_model

        cfg = load_feature_model(checkpoint, None, args.overrides).cfg
        if cfg is None:
            raise UserError(f"--checkpoint '{checkpoint}' is an export, which stores no config; pass the recipe "
                            "with --config to see the config in use")
    print(dump_yaml(cfg), end="")
    return True


def default_config_path() -> str | None:
    """The quickstart recipe when it ships beside the package, else None (built-in defaults)."""
    return str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None


def _first_os_error(exc: BaseException) -> OSError | None:
    """`exc` itself or the first OSError with an errno among its causes (torch.save hides ENOSPC that way)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) (?:is killed by signal: ([^.]+)|exited)")


def _worker_died(exc: BaseException) -> str | None:
    """The one line for a DataLoader worker process that died under the run (the kernel's out-of-memory killer,
    a SIGKILL), which PyTorch raises as a RuntimeError wherever the main process happens to be; else None."""
    found = _WORKER_DIED.search(str(exc)) if isinstance(exc, RuntimeError) else None
    if found is None:
        return None
    how = f"was killed (signal: {found.group(2).strip()})" if found.group(2) else "ended unexpectedly"
    return (f"a data loading worker process (pid {found.group(1).strip()}) {how}, most often by the kernel when "
            "memory runs out; lower data.num_workers or give the job more memory, then start the same command again "
            "(training resumes from its last checkpoint, which is kept)")


def user_error_message(exc: BaseException) -> str | None:
    """The one-line message of a user error, or None when `exc` is a bug (it keeps its traceback).

    User errors: a :class:`~cacl_dist.errors.UserError` (every config and input check, a non-finite loss or
    state, a file we looked for and did not find), a data loading worker killed for lack of memory, and
    operating-system errors with an errno such as a full disk or a missing permission, also when a full disk
    hides under another error. Any other exception, a plain ValueError included, is a bug.
    """
    if isinstance(exc, UserError):
        return str(exc)
    if (died := _worker_died(exc)) is not None:
        return died
    os_error = _first_os_error(exc) if isinstance(exc, (OSError, RuntimeError)) else None
    if isinstance(exc, RuntimeError) and (os_error is None or os_error.errno not in _DISK_FULL):
        return None  # only a full disk counts when it hides under another error
    if os_error is None:
        return None  # an OSError without an errno that is not ours
    where = f"'{os_error.filename}': " if os_error.filename else ""
    text = f"{where}{os_error.strerror or os_error}"
    hint = _OS_ERROR_HINTS.get(os_error.errno)
    return f"{text}; {hint}" if hint and hint not in text else text


def run_main(body: Callable[[], int | None], on_error: Callable[[str], None] | None = None,
             interrupted: str = "interrupted") -> int:
    """Run `body`; a user error prints one line ('error: ...') and exits with status 2.

    `on_error(line)` also receives that line (e.g. to write it into the run folder's log), and for any
    other exception (a bug, which keeps its traceback on stderr) a line naming it. Ctrl-C prints `interrupted`
    (training says how to resume; the other entries have nothing to resume) and exits with status 130.
    """
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            _report(on_error, f"crashed: {type(exc).__name__}: {exc} (the traceback is on stderr)")
            raise
        line = "error: " + " ".join(message.split())
        print(line, file=sys.stderr)
        _report(on_error, line)
        return USER_ERROR_EXIT_CODE


def _report(on_error: Callable[[str], None] | None, line: str) -> None:
    if on_error is not None:
        try:
            on_error(" ".join(line.split()))
        except Exception:  # reporting must never hide the error itself
            pass

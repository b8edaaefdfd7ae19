"""Errors a user can fix: the one line an entry point prints instead of a traceback.

Every check of something the user chose or supplied (a config value, a dataset folder, a
checkpoint, a run folder, the number of processes) raises a :class:`UserError` whose message
names the offending value and says what to do. Anything else that escapes an entry point is a
bug and keeps its traceback (:func:`cacl_dist.cli.common.user_error_message`).

The classes stay subclasses of the built-in errors they replace (ValueError, FileNotFoundError,
FloatingPointError), so ``except ValueError`` around a check keeps working. They take one
message argument, so another rank can rebuild them from class and message
(:func:`cacl_dist.distributed.comm.run_everywhere`). This module imports nothing from the
package: any room may raise these.
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message names the value and what to do."""


class ConfigError(UserError):
    """A configuration key or value that cannot be used; the message names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named (or a run needs) is not there; the message names it."""


class NonFiniteError(UserError, FloatingPointError):
    """Training state holding NaN or infinity: never written to, or read from, a checkpoint."""


class RunFolderBusy(UserError):
    """Another live run holds the run folder's lock."""


class StopRequested(Exception):
    """A requested stop interrupts the current phase (the interrupted phase leaves no result behind).

    Not a user error: the entry that catches it stops the run with a checkpoint when there is one.
    """


__all__ = ["ConfigError", "MissingFileError", "NonFiniteError", "RunFolderBusy", "StopRequested", "UserError"]

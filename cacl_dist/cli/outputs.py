"""The output file of an entry point is never one of its own inputs, nor an existing folder.

``extract``, ``search`` and ``export`` check their ``--output`` with :func:`check_output` before any
work: the same file as an input (compared by the file itself, so a symlink or a hard link to the
checkpoint counts too) or a path that is a folder is refused in one line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from cacl_dist.errors import UserError


def check_output(output: str | Path, inputs: Iterable[tuple[str, str | Path | None]], example: str,
                 flag: str = "--output") -> Path:
    """Return ``output`` as a Path; ValueError (one line) when it is a folder or the same file as an input.

    ``inputs`` are (what, path) pairs, e.g. ("--checkpoint", "runs/x/last.pt"); None paths are
    skipped. ``example`` is a file name the message suggests inside a folder given as ``output``.
    """
    path = Path(output).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} '{output}' is a folder; pass a file name, e.g. {path / example}")
    try:
        written = os.stat(path)
    except OSError:  # nothing there yet (or not reachable): it cannot be an input that was read
        return path
    for what, source in inputs:
        if source is None:
            continue
        try:
            same = os.path.samestat(written, os.stat(source))
        except OSError:
            continue
        if same:
            raise UserError(f"{flag} '{output}' is {what} '{source}', one of this command's inputs, which it never "
                            "writes over; pass another file name")
    return path


__all__ = ["check_output"]

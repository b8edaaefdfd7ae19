"""Where synthetic sets are written, and the rules that keep everything else in ``data.root`` safe.

The generator writes only into a folder that is empty (or missing) or that it wrote itself: its
marker ``synthetic.json`` (a finished set) or ``.synthetic-partial.json`` (a set being written,
or one a kill interrupted) holds the settings. Anything else, such as a real dataset named by
``data.root`` while ``data.dataset`` is still the default recipe's ``synthetic``, is refused in one
line before a single file is touched.

A set is never rewritten with other settings. ``data.root`` holds the set of the settings it was
first used with; a set of other settings goes into ``data.root/set-<key>/``, ``<key>`` a short hash
of those settings (:func:`locate`). So the quickstart's images stay where they always were, and a
run that reads one set is never disturbed by a command that asks for another.

A finished set with matching settings is used as it is, without a lock or any write, so it may
lie on a read-only mount.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from typing import Callable

from cacl_dist.runs.files import FileLock, write_atomically
from cacl_dist.errors import UserError

MARKER = "synthetic.json"
"""The settings of a finished set, written last."""
PARTIAL_MARKER = ".synthetic-partial.json"
"""The settings of a set being written, written before the first image and removed after the marker."""
LOCK_NAME = ".synthetic.lock"
"""Processes started together (e.g. parallel benchmark runs) write a set once, one after the other."""
SPLIT_FOLDERS = ("bounding_box_train", "query", "bounding_box_test")


def settings_key(params: dict) -> str:
    """A short, stable name of the settings ``params`` (hex digits of their hash)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _read_settings(path: str) -> dict | None:
    """The settings a marker file of ours holds, or None (missing, unreadable or not ours)."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and "generator_version" in value else None


def written_settings(folder: str) -> dict | None:
    """The settings of the set (finished or not) the generator wrote into ``folder``, or None."""
    for name in (MARKER, PARTIAL_MARKER):
        settings = _read_settings(os.path.join(folder, name))
        if settings is not None:
            return settings
    return None


def _ours_in_passing(name: str) -> bool:
    """Our lock file, or the temporary of a marker being written (another process may be writing it now)."""
    return name == LOCK_NAME or (name.endswith(".tmp") and any(name.startswith(f".{m}.") for m in (MARKER, PARTIAL_MARKER)))


def _is_empty(folder: str) -> bool:
    """True when ``folder`` is missing or holds nothing but our lock file and marker temporaries."""
    try:
        return all(_ours_in_passing(name) for name in os.listdir(folder))
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False


def is_complete(folder: str, params: dict) -> bool:
    """True when ``folder`` holds a finished set made with ``params``."""
    return (_read_settings(os.path.join(folder, MARKER)) == params
            and not os.path.exists(os.path.join(folder, PARTIAL_MARKER))
            and all(os.path.isdir(os.path.join(folder, d)) for d in SPLIT_FOLDERS))


def locate(root: str, params: dict) -> str:
    """The folder that holds (or will hold) the set of ``params`` under ``root`` (reads only).

    ``root`` itself when it is empty or its set has these settings, else ``root/set-<key>``.
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if written_settings(root) == params or _is_empty(root):
        return root
    return os.path.join(root, f"set-{settings_key(params)}")


def _refuse_foreign(folder: str, what: str) -> None:
    """ValueError (one line) unless the generator may write into ``folder``."""
    if _is_empty(folder) or written_settings(folder) is not None:
        return
    if not os.path.isdir(folder):
        raise UserError(f"{what} '{folder}' is not a folder; point {what} at an empty folder for the synthetic set")
    raise UserError(
        f"{what} '{folder}' holds files the synthetic generator did not write, so it writes nothing there "
        "(data.dataset 'synthetic' is the default recipe's); for a real dataset pass its recipe, e.g. "
        "--config configs/market1501.yaml, or point data.root at an empty folder for the synthetic set")


def ensure_set(root: str, params: dict, write: Callable[[str, dict], None], force: bool = False,
               what: str = "data.root") -> str:
    """Make sure the set of ``params`` exists under ``root`` (see :func:`locate`) and return its folder.

    ``write(folder, params)`` draws the images into ``folder``; it is called, under the lock, only
    for a folder that is empty or holds a set of these very settings (unfinished, or ``force``).
    ``what`` names ``root`` in errors (``data.root``, ``--root``).
    """
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not force:  # a finished set needs no lock and no write: it may be read-only
        for folder in (root, os.path.join(root, f"set-{settings_key(params)}")):
            if is_complete(folder, params):
                return folder
    _refuse_foreign(root, what)
    with contextlib.ExitStack() as stack:
        try:
            os.makedirs(root, exist_ok=True)
            stack.enter_context(FileLock(os.path.join(root, LOCK_NAME)))  # waits; none without flock
        except OSError as exc:
            raise UserError(f"cannot write the synthetic set into {what} '{root}' ({exc.strerror or exc}); "
                            f"point {what} at a folder you can write to") from None
        folder = locate(root, params)  # again under the lock: another process may have written meanwhile
        if folder != root:
            _refuse_foreign(folder, f"the synthetic set folder under {what}")
            settings = written_settings(folder)
            if settings is not None and settings != params:
                raise UserError(f"'{folder}' holds a synthetic set of other settings; move it away or point "
                                f"{what} at another folder")
        if force or not is_complete(folder, params):
            _write_marked(folder, params, write)
    return folder


def _write_json(path: str, value: dict) -> None:
    write_atomically(path, json.dumps(value, indent=2, sort_keys=True))


def _write_marked(folder: str, params: dict, write: Callable[[str, dict], None]) -> None:
    """Write the set between the two markers: an interrupted write is ours and unfinished."""
    os.makedirs(folder, exist_ok=True)
    _write_json(os.path.join(folder, PARTIAL_MARKER), params)
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, MARKER))  # ours, with these settings (forced rewrite)
    for sub in SPLIT_FOLDERS:
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    write(folder, params)
    _write_json(os.path.join(folder, MARKER), params)
    os.remove(os.path.join(folder, PARTIAL_MARKER))


__all__ = ["LOCK_NAME", "MARKER", "PARTIAL_MARKER", "SPLIT_FOLDERS", "ensure_set", "is_complete", "locate",
           "settings_key", "written_settings"]

"""Atomic, self-describing checkpoints and auto-resume from the run folder.

A checkpoint is one `torch.save` file holding a dict with a format tag, the resolved config
and every piece of training state. It is written to a temporary file in the same folder,
flushed to disk and renamed over the target, so a kill at any moment leaves either the old
or the new checkpoint, never half of one. :func:`load_trained_model` rebuilds the model a
checkpoint was trained with, for evaluation and export.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, apply_overrides, config_from_dict, load_config
from .models.cacl import CACLModel, build_model

FORMAT = "cacl_dist.checkpoint"
FORMAT_VERSION = 1
LAST = "last.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically to `path` (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file like the rest of the run folder, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = _os_error_behind(exc)
        if cause is not None:  # e.g. ENOSPC, which torch.save reports as a zip-writer RuntimeError
            raise OSError(cause.errno, f"{cause.strerror} (writing the checkpoint)", str(path)) from None
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _os_error_behind(exc: BaseException | None) -> OSError | None:
    """The operating-system error (with an errno) that `exc` is or was raised while handling, if any."""
    for _ in range(8):
        if exc is None or (isinstance(exc, OSError) and exc.errno is not None):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; a truncated, corrupt or foreign file is a clear ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ValueError(
            f"checkpoint '{path}' is truncated or corrupt and cannot be read ({type(exc).__name__}: {exc}). "
            "Delete or move it to resume from scratch, or pass another checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint '{path}' was not written by cacl_dist (no '{FORMAT}' tag); pass a checkpoint "
            "from a cacl_dist run folder, or move this file out of the run folder")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"checkpoint '{path}' has format version {state['format_version']}, newer than this cacl_dist "
            f"understands ({FORMAT_VERSION}); upgrade cacl_dist")
    return state


def load_trained_model(checkpoint: str | Path, config: str | None,
                       overrides: list[str]) -> tuple[dict[str, Any], Config, CACLModel]:
    """Read a cacl_dist checkpoint and rebuild its model: returns (state, cfg, model).

    The run's own config (stored in the checkpoint) is used unless `config` names a recipe;
    `overrides` adjust either. A checkpoint that does not fit the resulting model is a
    one-line ValueError naming the checkpoint.
    """
    state = load_checkpoint(checkpoint)
    if config:
        cfg = load_config(config, overrides)
    elif isinstance(state.get("config"), dict):
        cfg = apply_overrides(config_from_dict(state["config"]), overrides)
    else:
        raise ValueError(f"checkpoint '{checkpoint}' stores no config; pass the run's recipe with --config")
    if "model" not in state:
        raise ValueError(f"checkpoint '{checkpoint}' holds no model weights")
    model = build_model(cfg.model.backbone, "none", cfg.model.pool, cfg.model.last_stride)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        first = detail if len(detail) <= 200 else detail[:200] + "..."
        raise ValueError(f"checkpoint '{checkpoint}' does not fit model.backbone={cfg.model.backbone} "
                         f"model.pool={cfg.model.pool} ({first}); drop the --set/--config that changed the "
                         "model") from None
    return state, cfg, model


def find_resume(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from in a run folder, or None for a fresh start."""
    candidate = Path(run_dir) / LAST
    return candidate if candidate.is_file() else None


def rng_state() -> dict[str, Any]:
    """Random states of python, numpy, torch (and CUDA when present)."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

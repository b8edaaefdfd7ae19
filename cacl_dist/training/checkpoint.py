"""Atomic, self-describing checkpoints and auto-resume from the run folder.

A checkpoint is one `torch.save` file holding a dict with a format tag, the resolved config
and every piece of training state, as tensors and plain Python values only. It is written to a
temporary file in the same folder, flushed to disk and renamed over the target, so a kill at any
moment leaves either the old or the new checkpoint, never half of one (a kill while writing may
leave the temporary, which :func:`remove_stale_temporaries` clears at the next start).

Checkpoints are read with ``torch.load(weights_only=True)``: a file that would need anything else
to be unpickled (a class, a function: code) is refused instead of run. A checkpoint holding a NaN
or an infinity is refused too (:func:`nonfinite_parts`). :func:`load_trained_model` rebuilds the
model a checkpoint was trained with, for evaluation and export.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from cacl_dist.config import Config, apply_overrides, config_from_dict, load_config
from cacl_dist.models.cacl import CACLModel, build_model, model_shape
from cacl_dist.runs.files import atomic_file
from cacl_dist.errors import MissingFileError, NonFiniteError, UserError

FORMAT = "cacl_dist.checkpoint"  # the file format's name, not a module path: old checkpoints keep loading
FORMAT_VERSION = 2
"""2: random states as tensors and plain values (version 1 stored NumPy arrays), dataset fingerprint."""
LAST = "last.pt"
_TEMPORARY = re.compile(r"^\.(last|epoch_\d+)\.pt\.[A-Za-z0-9_]+\.tmp$")
"""Names :func:`save_checkpoint` gives its temporaries (:func:`~cacl_dist.runs.files.atomic_file` beside ``last.pt`` or ``epoch_NNN.pt``)."""


def nonfinite_parts(parts: dict[str, Iterable[torch.Tensor]]) -> list[str]:
    """The names of the groups of tensors in ``parts`` that hold a NaN or an infinity.

    Every tensor is reduced on its own device and the flags are read back once per device
    (one host synchronisation per device, whatever the number of tensors).
    """
    flags: dict[torch.device, list[torch.Tensor]] = {}
    owners: dict[torch.device, list[str]] = {}
    for name, tensors in parts.items():
        for tensor in tensors:
            if tensor.is_floating_point() or tensor.is_complex():
                flags.setdefault(tensor.device, []).append(tensor.isfinite().all())
                owners.setdefault(tensor.device, []).append(name)
    bad = set()
    for device, device_flags in flags.items():
        finite = torch.stack(device_flags).cpu().tolist()
        bad.update(name for name, ok in zip(owners[device], finite) if not ok)
    return [name for name in parts if name in bad]


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside nested dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


STATE_PARTS = ("model", "optimizer", "bank_rgb", "bank_gray", "centres_rgb", "centres_gray", "camera_proxies")
"""The checkpoint entries checked for NaN and infinity, on save and on load."""


def state_parts(state: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
    """The tensors of each of :data:`STATE_PARTS` in ``state`` (the parts it has)."""
    return {name: list(_tensors(state[name])) for name in STATE_PARTS if state.get(name) is not None}


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete the temporaries that :func:`save_checkpoint` left in ``run_dir`` when it was killed; returns them.

    Only files named like its temporaries are touched. Call it where no checkpoint is being written.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for path in sorted(run_dir.iterdir()):
        if _TEMPORARY.match(path.name) and path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` atomically to `path` (:func:`~cacl_dist.runs.files.atomic_file`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    try:
        with atomic_file(path) as fh:
            torch.save(payload, fh)
    except BaseException as exc:
        cause = _os_error_behind(exc)
        if cause is not None:  # e.g. ENOSPC, which torch.save reports as a zip-writer RuntimeError
            raise OSError(cause.errno, f"{cause.strerror} (writing the checkpoint)", str(path)) from None
        raise
    return path


def _os_error_behind(exc: BaseException | None) -> OSError | None:
    """The operating-system error (with an errno) that `exc` is or was raised while handling, if any."""
    for _ in range(8):
        if exc is None or (isinstance(exc, OSError) and exc.errno is not None):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _numpy_array_globals() -> list:
    """What unpickling the NumPy arrays in a version-1 checkpoint's random state needs (data types only)."""
    import numpy as np

    multiarray = getattr(np, "_core", None) or np.core
    return [multiarray.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype("uint32"))]


def _allow_numpy_arrays() -> contextlib.AbstractContextManager:
    """Let ``weights_only`` loading rebuild NumPy arrays for this load only (torch >= 2.5; else nothing)."""
    scoped = getattr(torch.serialization, "safe_globals", None)
    return scoped(_numpy_array_globals()) if scoped is not None else contextlib.nullcontext()


def missing_checkpoint(path: Path, what: str) -> UserError:
    """The one-line error for a checkpoint path that is not a file: a folder (name the checkpoint files in it) or
    nothing at all. `what` names the argument, e.g. '--checkpoint'."""
    if not path.is_dir():
        return MissingFileError(f"{what} '{path}' does not exist")
    found = sorted(path.glob("*.pt"), key=lambda p: (p.name != LAST, p.name))
    hint = (f"pass a checkpoint file in it, e.g. {found[0]}" if found else
            f"it holds no checkpoint (*.pt); pass a file such as RUN/{LAST}")
    return MissingFileError(f"{what} '{path}' is a folder, not a checkpoint file; {hint}")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    check_finite: bool = True) -> dict[str, Any]:
    """Read and validate a checkpoint; a truncated, corrupt, foreign or unsafe file is a clear ValueError.

    Only tensors and plain values are unpickled (``weights_only=True``; NumPy arrays too, for the
    random state of version-1 checkpoints): a file that needs a class or a function is refused,
    so loading never runs code from the file. With ``check_finite`` a checkpoint holding NaN or
    infinity in its weights, optimiser state, banks or centres is refused (:class:`NonFiniteError`).
    """
    path = Path(path)
    if not path.is_file():
        raise missing_checkpoint(path, "checkpoint")
    try:
        with _allow_numpy_arrays():
            state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        unsafe = re.search(r"GLOBAL (\S+)", str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if unsafe:
            raise UserError(
                f"checkpoint '{path}' holds more than tensors and plain values ({unsafe.group(1)}), and loading it "
                "could run code; refusing it. Pass a checkpoint written by cacl_dist from a source you trust") from None
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = "not a torch.save file" if isinstance(exc, pickle.UnpicklingError) else (lines or [""])[0][:200]
        raise UserError(
            f"checkpoint '{path}' is truncated or corrupt and cannot be read ({type(exc).__name__}: {reason}). "
            "Delete or move it to resume from scratch, or pass another checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(
            f"checkpoint '{path}' was not written by cacl_dist (no '{FORMAT}' tag); pass a checkpoint "
            "from a cacl_dist run folder, or move this file out of the run folder")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(
            f"checkpoint '{path}' has format version {state['format_version']}, newer than this cacl_dist "
            f"understands ({FORMAT_VERSION}); upgrade cacl_dist")
    if check_finite:
        bad = nonfinite_parts(state_parts(state))
        if bad:
            raise NonFiniteError(
                f"checkpoint '{path}' holds NaN or infinite values ({', '.join(bad)}): the run had diverged when "
                "it was written; use an earlier checkpoint (epoch_NNN.pt) or train again with a lower optim.lr")
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
        raise UserError(f"checkpoint '{checkpoint}' stores no config; pass the run's recipe with --config")
    if "model" not in state:
        raise UserError(f"checkpoint '{checkpoint}' holds no model weights")
    model = build_model(cfg.model.backbone, "none", **model_shape(cfg.model, cfg.data.height, cfg.data.width))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:] or [str(exc)])
        first = detail if len(detail) <= 200 else detail[:200] + "..."
        raise UserError(f"checkpoint '{checkpoint}' does not fit model.backbone={cfg.model.backbone} "
                        f"model.pool={cfg.model.pool} ({first}); drop the --set/--config that changed the "
                        "model") from None
    return state, cfg, model


def find_resume(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from in a run folder, or None for a fresh start."""
    candidate = Path(run_dir) / LAST
    return candidate if candidate.is_file() else None


def rng_state() -> dict[str, Any]:
    """Random states of python, numpy, torch (and CUDA when present), as tensors and plain values."""
    import random

    import numpy as np

    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` saved (also the NumPy-array form of version-1 checkpoints)."""
    import random

    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                 saved["cached_gaussian"])
    np.random.set_state(saved)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

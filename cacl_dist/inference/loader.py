"""One loader for everything the project writes that maps images to features.

:func:`load_feature_model` reads a training checkpoint (``last.pt``, ``epoch_NNN.pt``) and every
format of ``python -m cacl_dist.export``: a ``torch.export`` program (.pt2), TorchScript and a
state_dict export. No file runs code while it is read: checkpoints and state_dict exports are read
with ``torch.load(weights_only=True)``, a .pt2 is checked by
:func:`~cacl_dist.inference.program_check.check_program_archive` before ``torch.export.load``, and
TorchScript is TorchScript (no Python objects). ONNX files are for other runtimes and are refused.

The input size: ``height``/``width`` when given, else the size the file stores (checkpoint config,
state_dict metadata, the program's input shape), else the ``config`` recipe's data.height x
data.width (TorchScript stores none).
"""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from cacl_dist.errors import UserError
from cacl_dist.inference.program_check import check_program_archive, is_program_archive

STATE_DICT_FORMAT = "cacl_dist.branch"
KINDS = ("checkpoint", "export", "torchscript", "state_dict")


@dataclasses.dataclass
class FeatureModel:
    """A model that maps normalised images to features, and how to feed it."""

    branch: torch.nn.Module
    height: int
    width: int
    source: str
    """The absolute path of the file it was read from."""
    kind: str
    """One of :data:`KINDS`."""
    cfg: Any = None
    """The config: a checkpoint's own (with the overrides), else the recipe given with ``config``, else None."""
    epoch: int | None = None
    """The epoch a checkpoint was written after; None for an export."""


class _Sized(torch.nn.Module):
    """An exported module with the ``dim`` attribute that sharded extraction reads for empty shards."""

    def __init__(self, module: torch.nn.Module, height: int, width: int):
        super().__init__()
        self.module = module
        with torch.no_grad():
            self.dim = int(module(torch.zeros(2, 3, height, width)).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)

    def train(self, mode: bool = True) -> _Sized:
        """Only this wrapper's flag: an export is fixed in eval mode (an exported program refuses ``train()``)."""
        self.training = mode
        return self


def file_kind(path: Path) -> str:
    """'torchscript', 'export' or 'torch.save' (a checkpoint or a state_dict export, or not ours)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if is_program_archive(names):
            return "export"
        if any("/code/" in name for name in names):
            return "torchscript"
    return "torch.save"


def load_exported_branch(path: str | Path):
    """Rebuild the eval-mode :class:`~cacl_dist.models.cacl.Branch` from a ``state_dict`` export."""
    branch, _ = _state_dict_export(Path(path), torch.load(path, map_location="cpu", weights_only=True))
    return branch


def _state_dict_export(path: Path, payload: Any) -> tuple[torch.nn.Module, dict]:
    from cacl_dist.models.cacl import Branch

    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != STATE_DICT_FORMAT:
        raise UserError(f"'{path}' is not a cacl_dist state_dict export (no '{STATE_DICT_FORMAT}' tag)")
    branch = Branch(meta["backbone"], pretrained="none", pool=meta["pool"], last_stride=meta["last_stride"],
                    input_size=(meta["height"], meta["width"]), patch_stride=meta.get("patch_stride", 16))
    branch.load_state_dict(payload["state_dict"])
    return branch.eval(), meta


def _user_config(config: str | None, overrides: list[str]):
    if not config and not overrides:
        return None
    from cacl_dist.config import load_config

    return load_config(config, overrides)


def _size(path: Path, kind: str, given: tuple[int | None, int | None], stored: tuple[int, int] | None,
          cfg) -> tuple[int, int]:
    height, width = given
    if stored is None and cfg is not None:
        stored = (cfg.data.height, cfg.data.width)
    if (height is None or width is None) and stored is None:
        raise UserError(f"'{path}' is a {kind} export, which does not store its input size; pass --height and "
                        "--width (the data.height x data.width it was exported with) or the run's --config")
    return (height or stored[0], width or stored[1])


def _program_size(program) -> tuple[int, int] | None:
    """(H, W) of the program's image input when both are static, else None."""
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            shape = getattr(node.meta.get("val"), "shape", ())
            if len(shape) == 4 and all(isinstance(s, int) for s in shape[2:]):
                return int(shape[2]), int(shape[3])
    return None


def load_feature_model(path: str | Path, config: str | None = None, overrides: list[str] | None = None,
                       height: int | None = None, width: int | None = None) -> FeatureModel:
    """The feature branch stored in ``path`` (any format above), on the CPU, in eval mode."""
    path, overrides = Path(path), list(overrides or [])
    if not path.is_file():
        from cacl_dist.training.checkpoint import missing_checkpoint

        raise missing_checkpoint(path, "--checkpoint")
    kind, source = file_kind(path), str(path.resolve())
    if kind == "torchscript":
        cfg = _user_config(config, overrides)
        h, w = _size(path, "TorchScript", (height, width), None, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
        return FeatureModel(_Sized(module, h, w).eval(), h, w, source, kind, cfg)
    if kind == "export":
        check_program_archive(path)
        with open(path, "rb") as fh:  # a buffer: torch warns about a file name not ending in .pt2
            program = torch.export.load(fh)
        cfg = _user_config(config, overrides)
        h, w = _size(path, "torch.export", (height, width), _program_size(program), cfg)
        return FeatureModel(_Sized(program.module(), h, w), h, w, source, kind, cfg)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unsafe, numpy random state of an old checkpoint, truncated: the checkpoint reader says which
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("meta"), dict):
        branch, meta = _state_dict_export(path, payload)
        cfg = _user_config(config, overrides)
        h, w = _size(path, "state_dict", (height, width), (meta["height"], meta["width"]), cfg)
        return FeatureModel(branch, h, w, source, "state_dict", cfg)
    del payload
    from cacl_dist.training.checkpoint import load_trained_model

    state, cfg, model = load_trained_model(path, config, overrides)
    return FeatureModel(model.inference_branch().eval(), height or cfg.data.height, width or cfg.data.width,
                        source, "checkpoint", cfg, state.get("epoch"))


__all__ = ["FeatureModel", "KINDS", "STATE_DICT_FORMAT", "file_kind", "load_exported_branch", "load_feature_model"]

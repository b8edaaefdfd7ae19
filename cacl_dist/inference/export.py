"""Writers of the inference branch: torch.export program, TorchScript, ONNX and state_dict exports.

Each writer puts the file beside its destination, optionally reloads it and compares its outputs
with the branch on a batch of another size (so the batch axis is proven dynamic), then renames it
into place. :func:`cacl_dist.inference.loader.load_feature_model` reads every format back.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from cacl_dist.errors import UserError
from cacl_dist.inference.loader import STATE_DICT_FORMAT, load_exported_branch
from cacl_dist.runs.files import atomic_path

FORMATS: tuple[str, ...] = ("export", "torchscript", "onnx", "state_dict")
ONNX_PACKAGES: tuple[str, ...] = ("onnx", "onnxscript")
ONNX_OPSET = 17
TRACE_BATCH = 2
VERIFY_BATCH = 3  # differs from TRACE_BATCH, so the check also proves the batch axis is dynamic


def _atomic_write(path: Path, write: Callable[[str], None], check: Callable[[str], None] | None = None) -> None:
    """Call ``write(tmp)`` on a temporary file beside `path`, optionally ``check(tmp)``, then rename."""
    with atomic_path(path) as tmp:
        write(tmp)
        if check is not None:
            check(tmp)


def _missing_packages(names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _onnx_missing_error(missing: list[str]) -> UserError:
    return UserError(f"ONNX export needs the packages {' and '.join(ONNX_PACKAGES)} "
                     f"(missing here: {', '.join(missing)}); install them with: pip install onnx onnxscript "
                     "(or pip install -e \".[onnx]\")")


@contextlib.contextmanager
def _quiet():
    """Silence torch's deprecation notices for torch.jit and the TorchScript-based ONNX exporter.

    Both still work on every supported torch (2.1 on); the notices only say newer tools exist.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


class _ImagesOnly(torch.nn.Module):
    """``branch(images)`` with no optional arguments, so the ONNX tracer sees a single input."""

    def __init__(self, branch: torch.nn.Module):
        super().__init__()
        self.branch = branch

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.branch(images)


def _compare(name: str, got: torch.Tensor, expected: torch.Tensor, atol: float) -> None:
    if got.shape != expected.shape:
        raise RuntimeError(f"exported {name} model gives shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    if not bool(torch.isfinite(got).all() and torch.isfinite(expected).all()):
        raise RuntimeError(f"exported {name} model gives NaN or infinite features")
    diff = (got.float() - expected.float()).abs().max().item()
    if diff > atol:
        raise RuntimeError(f"exported {name} model differs from the branch by {diff:.2e} (> {atol:.0e})")


def export_torchscript(branch: torch.nn.Module, path: Path, height: int, width: int, verify: bool = True) -> None:
    """Trace `branch` (eval mode) and save it with torch.jit.save, atomically."""
    branch.eval()
    example = torch.randn(TRACE_BATCH, 3, height, width)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(branch, (example,), check_trace=False)  # checked below, on another batch size

    def write(tmp: str) -> None:
        with _quiet():
            torch.jit.save(traced, tmp)

    def check(tmp: str) -> None:
        images = torch.randn(VERIFY_BATCH, 3, height, width)
        with torch.no_grad(), _quiet():
            _compare("torchscript", torch.jit.load(tmp, map_location="cpu")(images), branch(images), 1e-5)

    _atomic_write(path, write, check if verify else None)


def export_program(branch: torch.nn.Module, path: Path, height: int, width: int, verify: bool = True) -> None:
    """``torch.export`` the branch (eval mode) with a dynamic batch axis and save it with torch.export.save,
    atomically; ``torch.export.load(path).module()`` gives it back (no TorchScript deprecation notice)."""
    branch.eval()
    example = torch.randn(TRACE_BATCH, 3, height, width)
    with torch.no_grad():
        program = torch.export.export(_ImagesOnly(branch).eval(), (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))

    def check(tmp: str) -> None:
        images = torch.randn(VERIFY_BATCH, 3, height, width)
        with torch.no_grad(), open(tmp, "rb") as fh:  # a buffer: torch warns about a name not ending in .pt2
            _compare("export", torch.export.load(fh).module()(images), branch(images), 1e-5)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a buffer: torch warns about a file name not ending in .pt2
            torch.export.save(program, fh)

    _atomic_write(path, write, check if verify else None)


def _onnx_export(branch: torch.nn.Module, example: torch.Tensor, target: str) -> None:
    kwargs: dict[str, Any] = dict(input_names=["images"], output_names=["features"], opset_version=ONNX_OPSET,
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                                  do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter: same behaviour from torch 2.1 on
    with torch.no_grad(), _quiet():
        torch.onnx.export(_ImagesOnly(branch).eval(), (example,), target, **kwargs)


def export_onnx(branch: torch.nn.Module, path: Path, height: int, width: int, verify: bool = True) -> str:
    """Export `branch` (eval mode) to ONNX with a dynamic batch axis, atomically.

    Returns how the file was checked: with onnxruntime (outputs compared), onnx.checker, or not.
    """
    missing = _missing_packages(("onnx",))
    if missing:
        raise _onnx_missing_error(missing)
    branch.eval()
    example = torch.randn(TRACE_BATCH, 3, height, width)
    checked = ["not verified"]

    def write(tmp: str) -> None:
        try:
            _onnx_export(branch, example, tmp)
        except ImportError as exc:
            raise _onnx_missing_error([getattr(exc, "name", None) or str(exc)]) from None
        except RuntimeError as exc:  # torch.onnx.OnnxExporterError: "Module onnx is not installed!"
            if "not installed" in str(exc):
                raise _onnx_missing_error([str(exc).strip()]) from None
            raise

    def check(tmp: str) -> None:
        import onnx

        onnx.checker.check_model(tmp)
        checked[0] = "checked with onnx.checker"
        if _missing_packages(("onnxruntime",)):
            return
        import onnxruntime

        session = onnxruntime.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        images = torch.randn(VERIFY_BATCH, 3, height, width)
        (got,) = session.run(["features"], {"images": images.numpy()})
        with torch.no_grad():
            _compare("onnx", torch.from_numpy(got), branch(images), 1e-4)
        checked[0] = "verified with onnxruntime"

    _atomic_write(path, write, check if verify else None)
    return checked[0]


def branch_metadata(cfg: Any, dim: int, height: int, width: int) -> dict[str, Any]:
    """What is needed to rebuild and feed the branch: architecture, feature size, input size and norm."""
    from cacl_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {"format": STATE_DICT_FORMAT, "backbone": cfg.model.backbone, "pool": cfg.model.pool,
            "last_stride": int(cfg.model.last_stride), "patch_stride": int(cfg.model.patch_stride), "dim": int(dim),
            "height": int(height), "width": int(width), "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def export_state_dict(branch: torch.nn.Module, path: Path, meta: dict[str, Any], verify: bool = True) -> None:
    """torch.save ``{"state_dict": branch weights, "meta": meta}``, atomically."""
    payload = {"state_dict": {k: v.detach().cpu().clone() for k, v in branch.state_dict().items()}, "meta": meta}

    def check(tmp: str) -> None:
        rebuilt = load_exported_branch(tmp)
        images = torch.randn(VERIFY_BATCH, 3, meta["height"], meta["width"])
        with torch.no_grad():
            _compare("state_dict", rebuilt(images), branch.eval()(images), 1e-5)

    _atomic_write(path, lambda tmp: torch.save(payload, tmp), check if verify else None)


__all__ = ["FORMATS", "branch_metadata", "export_onnx", "export_program", "export_state_dict", "export_torchscript"]

"""Export the inference branch of a checkpoint: `python -m cacl_dist.export --checkpoint RUN/last.pt ...`.

    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format export --output market.pt2
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format torchscript --output market.ts
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format onnx --output market.onnx
    python -m cacl_dist.export --checkpoint runs/market1501/last.pt --format state_dict --output branch.pt

Only branch 1 (the online branch F, the one evaluation uses) is exported: it maps images
B x 3 x H x W, RGB in [0, 1] normalised with the ImageNet mean/std, to L2-normalised features
B x D. The batch size is dynamic; H x W default to the run's data.height x data.width.

  export       torch.export.export in eval mode, saved with torch.export.save (load with
               torch.export.load(path).module()); the current PyTorch format
  torchscript  torch.jit.trace in eval mode, saved with torch.jit.save (load with torch.jit.load; recent
               torch versions deprecate TorchScript and warn when it is loaded: prefer 'export')
  onnx         torch.onnx.export, input "images", output "features", dynamic batch axis
               (needs `pip install onnx onnxscript`; verified with onnxruntime when installed)
  state_dict   torch.save({"state_dict": ..., "meta": {...}}); rebuild it with
               cacl_dist.cli.export.load_exported_branch(path)

The run's own config (stored in the checkpoint) is used unless --config is given; --set adjusts
either. The written file is reloaded and checked against the original branch on a batch of another
size before it replaces OUTPUT (temporary file + rename).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from cacl_dist.training.checkpoint import load_trained_model
from cacl_dist.cli.common import add_config_args, run_main
from cacl_dist.cli.outputs import check_output
from cacl_dist.runs.files import atomic_path
from cacl_dist.errors import UserError

FORMATS: tuple[str, ...] = ("export", "torchscript", "onnx", "state_dict")
STATE_DICT_FORMAT = "cacl_dist.branch"
ONNX_PACKAGES: tuple[str, ...] = ("onnx", "onnxscript")
ONNX_OPSET = 17
TRACE_BATCH = 2
VERIFY_BATCH = 3  # differs from TRACE_BATCH, so the check also proves the batch axis is dynamic


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a cacl_dist checkpoint, e.g. runs/x/last.pt")
    parser.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, help="file to write (parent folders are created)")
    add_config_args(parser, default_config=False)
    parser.add_argument("--height", type=int, default=None, help="input height (default: data.height)")
    parser.add_argument("--width", type=int, default=None, help="input width (default: data.width)")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip reloading the written file and comparing its outputs with the branch")
    return parser


# ----------------------------------------------------------------------------------------- helpers


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


# ----------------------------------------------------------------------------------------- formats


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
        with torch.no_grad():
            _compare("export", torch.export.load(tmp).module()(images), branch(images), 1e-5)

    _atomic_write(path, lambda tmp: torch.export.save(program, tmp), check if verify else None)


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
            "last_stride": int(cfg.model.last_stride), "dim": int(dim), "height": int(height), "width": int(width),
            "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def export_state_dict(branch: torch.nn.Module, path: Path, meta: dict[str, Any], verify: bool = True) -> None:
    """torch.save ``{"state_dict": branch weights, "meta": meta}``, atomically."""
    payload = {"state_dict": {k: v.detach().cpu().clone() for k, v in branch.state_dict().items()}, "meta": meta}

    def check(tmp: str) -> None:
        rebuilt = load_exported_branch(tmp)
        images = torch.randn(VERIFY_BATCH, 3, meta["height"], meta["width"])
        with torch.no_grad():
            _compare("state_dict", rebuilt(images), branch.eval()(images), 1e-5)

    _atomic_write(path, lambda tmp: torch.save(payload, tmp), check if verify else None)


def load_exported_branch(path: str | Path):
    """Rebuild the eval-mode :class:`~cacl_dist.models.cacl.Branch` from a ``state_dict`` export."""
    from cacl_dist.models.cacl import Branch

    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("meta", {}).get("format") != STATE_DICT_FORMAT:
        raise UserError(f"'{path}' is not a cacl_dist state_dict export (no '{STATE_DICT_FORMAT}' tag)")
    meta = payload["meta"]
    branch = Branch(meta["backbone"], pretrained="none", pool=meta["pool"], last_stride=meta["last_stride"])
    branch.load_state_dict(payload["state_dict"])
    return branch.eval()


# ----------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.format not in FORMATS:
            raise UserError(f"unknown export format '{args.format}'; choose one of {', '.join(FORMATS)}")
        output = check_output(args.output, [("--checkpoint", args.checkpoint), ("--config", args.config)],
                              "model.onnx")

        state, cfg, model = load_trained_model(args.checkpoint, args.config, args.overrides)
        height = cfg.data.height if args.height is None else args.height
        width = cfg.data.width if args.width is None else args.width
        if height <= 0 or width <= 0:
            raise UserError(f"--height and --width must be positive, got {height} x {width}")

        branch = model.inference_branch().cpu().eval()
        dim = branch.dim
        del model

        note = "verified: outputs reloaded and compared" if args.verify else "not verified"
        if args.format == "export":
            export_program(branch, output, height, width, verify=args.verify)
        elif args.format == "torchscript":
            export_torchscript(branch, output, height, width, verify=args.verify)
        elif args.format == "onnx":
            note = export_onnx(branch, output, height, width, verify=args.verify)
        else:
            export_state_dict(branch, output, branch_metadata(cfg, dim, height, width), verify=args.verify)
        print(f"wrote {args.format} {output} ({output.stat().st_size / 2**20:.1f} MiB; {note}): "
              f"branch 1 of {cfg.model.backbone} from {args.checkpoint} (epoch {state.get('epoch', '?')})")
        print(f"  input  images   B x 3 x {height} x {width}, RGB in [0, 1] normalised with ImageNet mean/std; "
              "batch size B is dynamic")
        print(f"  output features B x {dim}, L2-normalised")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

"""The model arguments of the entries that read a model file: extract and search."""

from __future__ import annotations

import argparse

from cacl_dist.errors import UserError
from cacl_dist.cli.common import add_config_args


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint, --height/--width, --batch-size, --num-workers, --device, --config/--set."""
    parser.add_argument("--checkpoint", required=required,
                        help="cacl_dist checkpoint or export (torch.export .pt2, TorchScript, state_dict)")
    parser.add_argument("--height", type=int, default=None, help="input height (default: stored in the file, else "
                        "--config's data.height; TorchScript stores none)")
    parser.add_argument("--width", type=int, default=None, help="input width (as --height)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default eval.batch_size "
                        "or 64)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default data.num_workers "
                        "of the config, 0 without one)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    add_config_args(parser, default_config=False)


def model_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files the model arguments read (--checkpoint, --config), as (what, path) for ``check_output``."""
    return [("--checkpoint", args.checkpoint), ("--config", args.config)]


def check_model_args(args: argparse.Namespace) -> None:
    """One-line errors for bad values of the model arguments."""
    for name, low in (("height", 1), ("width", 1), ("batch_size", 1), ("num_workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device '{args.device}' is not one of auto, cpu, cuda")

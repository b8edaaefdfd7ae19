"""What the entries that read a model file share: their arguments (extract, search) and, for evaluate and
visualize, the model on the dataset of its config with the processes set up."""

from __future__ import annotations

import argparse
import contextlib
from typing import Iterator

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


@contextlib.contextmanager
def model_on_its_dataset(args: argparse.Namespace, purpose: str) -> Iterator[tuple]:
    """(model, env, dataset): --checkpoint's model, the processes (torchrun or one) and its config's dataset.

    An export stores no config, so it needs --config (one line says so, naming `purpose`). One rank
    writes a synthetic set while the others wait. The process group ends when the block does.
    """
    from cacl_dist.data.factory import dataset_from_config, generate_if_synthetic
    from cacl_dist.distributed import comm
    from cacl_dist.distributed.env import init_distributed, shutdown_distributed
    from cacl_dist.inference.loader import load_feature_model
    from cacl_dist.runs.logs import setup_logging

    model = load_feature_model(args.checkpoint, args.config, args.overrides)
    if model.cfg is None:
        raise UserError(f"--checkpoint '{args.checkpoint}' is an export ({model.kind}), which stores no config; "
                        f"pass the recipe of the dataset {purpose} with --config")
    cfg = model.cfg
    env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
    try:
        setup_logging(None, env.rank)
        if generate_if_synthetic(cfg.data, write=env.is_main):
            comm.barrier()  # rank 0 wrote the images; the others wait before reading them
        yield model, env, dataset_from_config(cfg.data, cfg.clustering.k1)
    finally:
        shutdown_distributed()

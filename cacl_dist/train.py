"""Training entry point: `python -m cacl_dist.train` or `torchrun ... -m cacl_dist.train`.

    python -m cacl_dist.train                                   # quickstart: synthetic data, CPU, minutes
    python -m cacl_dist.train --config configs/market1501.yaml --set data.root=/data/Market-1501
    torchrun --nproc_per_node=8 -m cacl_dist.train --config configs/market1501.yaml

Starting the same command again resumes from the last checkpoint in run.output_dir.
"""

from __future__ import annotations

import argparse
import sys

from .cli import add_config_args, default_config_path, run_main
from .config import describe, dump_yaml, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--describe-config", action="store_true",
                        help="print every config key with its value and meaning, and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        cfg = load_config(args.config or default_config_path(), args.overrides)
        if args.print_config:
            print(dump_yaml(cfg), end="")
            return 0
        if args.describe_config:
            print(describe(cfg))
            return 0
        from .distributed.env import init_distributed, shutdown_distributed
        from .trainer import Trainer

        env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
        try:
            Trainer(cfg, env).fit()
        finally:
            shutdown_distributed()
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

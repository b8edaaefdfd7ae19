"""Training entry point: `python -m cacl_dist.train` or `torchrun ... -m cacl_dist.train`.

    python -m cacl_dist.train                                   # quickstart: synthetic data, CPU, minutes
    python -m cacl_dist.train --config configs/market1501.yaml --set data.root=/data/Market-1501
    torchrun --nproc_per_node=8 -m cacl_dist.train --config configs/market1501.yaml

Starting the same command again resumes from the last checkpoint in run.output_dir. SIGTERM or
SIGUSR1 make the run checkpoint at its next logging step and exit with status 3.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys

from .cli import add_config_args, default_config_path, run_main
from .config import describe, dump_yaml, load_config


STOPPED_EXIT_CODE = 3
"""Exit status of a run that checkpointed and stopped on SIGTERM/SIGUSR1 (resume by running it again)."""


@contextlib.contextmanager
def stop_on_signals(trainer, signals=(signal.SIGTERM, signal.SIGUSR1)):
    """While training, SIGTERM/SIGUSR1 make the trainer checkpoint at its next logging step and stop."""
    previous = {}

    def handler(signum, frame):
        trainer.request_stop()

    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
        from .config import validate_for_world
        from .distributed.env import init_distributed, shutdown_distributed
        from .trainer import Trainer

        env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
        try:
            validate_for_world(cfg, env)  # batch over the ranks, before any work
            trainer = Trainer(cfg, env)
            with stop_on_signals(trainer):
                trainer.fit()
        finally:
            shutdown_distributed()
        return STOPPED_EXIT_CODE if trainer.stopped else 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate a checkpoint: `python -m cacl_dist.evaluate --checkpoint RUN/last.pt [--config ...]`.

The run's own config (stored in the checkpoint) is used unless --config is given; --set adjusts
either, e.g. `--set data.root=/elsewhere` or `--set eval.rerank=true`. Runs under torchrun too.
"""

from __future__ import annotations

import argparse
import json
import sys

from .cli import add_config_args, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a cacl_dist checkpoint, e.g. runs/x/last.pt")
    add_config_args(parser, default_config=False)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from .checkpoint import load_trained_model
        from .data.factory import prepare_dataset, resolve_pipeline
        from .distributed.env import init_distributed, shutdown_distributed
        from .evaluation.evaluator import evaluate
        from .logging import setup_logging
        from .precision import extraction_precision

        state, cfg, model = load_trained_model(args.checkpoint, args.config, args.overrides)
        env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
        try:
            setup_logging(None, env.rank)
            dataset = prepare_dataset(cfg, env)
            branch = model.inference_branch().to(env.device)
            metrics = evaluate(branch, dataset, rank=env.rank, world_size=env.world_size, height=cfg.data.height,
                               width=cfg.data.width, batch_size=cfg.eval.batch_size,
                               num_workers=cfg.data.num_workers, device=env.device, rerank=cfg.eval.rerank,
                               show_progress=env.is_main and cfg.run.progress,
                               pipeline=resolve_pipeline(cfg.data.eval_pipeline, "data.eval_pipeline"),
                               precision=extraction_precision(cfg.eval.precision, cfg.train.precision))
        finally:
            shutdown_distributed()
        if env.is_main:
            if args.json:
                print(json.dumps(metrics))
            else:
                print(f"{dataset.name} ({len(dataset.query)} query, {len(dataset.gallery)} gallery), "
                      f"checkpoint {args.checkpoint} (epoch {state['epoch']}):")
                print(f"  mAP {100 * metrics['mAP']:.1f}%  rank-1 {100 * metrics['rank1']:.1f}%  "
                      f"rank-5 {100 * metrics['rank5']:.1f}%  rank-10 {100 * metrics['rank10']:.1f}%  "
                      f"mINP {100 * metrics['mINP']:.1f}%")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

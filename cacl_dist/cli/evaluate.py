"""Evaluate a checkpoint: `python -m cacl_dist.evaluate --checkpoint RUN/last.pt [--config ...]`.

The run's own config (stored in the checkpoint) is used unless --config is given; --set adjusts
either, e.g. `--set data.root=/elsewhere` or `--set eval.rerank=true`. Runs under torchrun too.
"""

from __future__ import annotations

import argparse
import json
import sys

from cacl_dist.cli.common import add_config_args, run_main


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
        import dataclasses

        from cacl_dist.training.checkpoint import load_trained_model
        from cacl_dist.data.factory import dataset_from_config, generate_if_synthetic
        from cacl_dist.distributed import comm
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed
        from cacl_dist.evaluation.evaluator import EvalOptions, evaluate
        from cacl_dist.evaluation.extract import ExtractionSettings
        from cacl_dist.runs.logs import setup_logging

        state, cfg, model = load_trained_model(args.checkpoint, args.config, args.overrides)
        env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
        try:
            setup_logging(None, env.rank)
            if generate_if_synthetic(cfg.data, write=env.is_main):
                comm.barrier()  # rank 0 wrote the images; the others wait before reading them
            dataset = dataset_from_config(cfg.data, cfg.clustering.k1)
            branch = model.inference_branch().to(env.device)
            settings = ExtractionSettings.from_config(cfg, env.device, show_progress=env.is_main and cfg.run.progress)
            settings = dataclasses.replace(settings, channels_last=False)  # the rebuilt branch is not NHWC
            scored = comm.run_everywhere(lambda: evaluate(branch, dataset, settings, rank=env.rank,
                                                          world_size=env.world_size,
                                                          options=EvalOptions.from_config(cfg.eval)),
                                         "the evaluation (scored on rank 0)")  # a failure stops every rank
            metrics = comm.broadcast_object(scored, src=0, what="evaluation metrics")
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

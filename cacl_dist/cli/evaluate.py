"""Evaluate a checkpoint: `python -m cacl_dist.evaluate --checkpoint RUN/last.pt [--config ...]`.

The run's own config (stored in the checkpoint) is used unless --config is given; --set adjusts
either, e.g. `--set data.root=/elsewhere` or `--set eval.rerank=true`. --checkpoint may also be an
export of python -m cacl_dist.export (torch.export .pt2, TorchScript, state_dict); it stores no
config, so pass the recipe of the dataset with --config. Runs under torchrun too.
"""

from __future__ import annotations

import argparse
import json
import sys

from cacl_dist.errors import UserError
from cacl_dist.cli.common import add_config_args, print_config_if_asked, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a cacl_dist checkpoint (e.g. runs/x/last.pt) or export")
    add_config_args(parser, default_config=False)
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if print_config_if_asked(args, checkpoint=args.checkpoint):
            return 0
        from cacl_dist.cli.model_args import model_on_its_dataset
        from cacl_dist.inference.features import extraction_settings

        with model_on_its_dataset(args, "to evaluate on") as (model, env, dataset):
            settings = extraction_settings(model, env.device, show_progress=env.is_main and model.cfg.run.progress)
            metrics = _scored(model, dataset, settings, env)
        if env.is_main:
            if args.json:
                print(json.dumps(metrics))
            else:
                print(f"{dataset.name} ({len(dataset.query)} query, {len(dataset.gallery)} gallery), "
                      f"{model.kind} {args.checkpoint}{_epoch(model)}:")
                print(f"  mAP {100 * metrics['mAP']:.1f}%  rank-1 {100 * metrics['rank1']:.1f}%  "
                      f"rank-5 {100 * metrics['rank5']:.1f}%  rank-10 {100 * metrics['rank10']:.1f}%  "
                      f"mINP {100 * metrics['mINP']:.1f}%")
        return 0

    return run_main(body)


def _epoch(model) -> str:
    return "" if model.epoch is None else f" (epoch {model.epoch})"


def _scored(model, dataset, settings, env) -> dict:
    """The metrics on every rank: features of every rank's shard, ranked on rank 0 as training evaluates."""
    import time

    import numpy as np

    from cacl_dist.distributed import comm
    from cacl_dist.evaluation.evaluator import evaluate_features
    from cacl_dist.evaluation.rerank_sparse import RerankParams
    from cacl_dist.inference.features import features

    if not dataset.has_eval:
        raise UserError(f"dataset '{dataset.name}' at '{dataset.root}' has no query/gallery split to evaluate on")
    t0 = time.perf_counter()
    feats = features(model, list(dataset.query) + list(dataset.gallery), settings, env.rank, env.world_size,
                     desc="evaluate")

    def score() -> dict | None:
        if env.rank != 0:
            return None
        n, device = len(dataset.query), settings.device
        ids = [np.array([getattr(r, key) for r in split]) for key in ("pid", "camid")
               for split in (dataset.query, dataset.gallery)]
        found = evaluate_features(feats[:n].to(device), feats[n:].to(device), *ids,
                                  rerank=RerankParams.from_config(model.cfg.eval), device=device)
        result = {k: float(found[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
        return {**result, "num_valid_queries": int(found["num_valid_queries"]), "seconds": time.perf_counter() - t0}

    scored = comm.run_everywhere(score, "the evaluation (scored on rank 0)")  # a failure stops every rank
    return comm.broadcast_object(scored, src=0, what="evaluation metrics")


if __name__ == "__main__":
    sys.exit(main())

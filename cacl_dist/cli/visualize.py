"""Pictures of a run: `python -m cacl_dist.visualize ranked|clusters ...`.

    python -m cacl_dist.visualize ranked --checkpoint runs/market1501/last.pt --num-queries 20 --topk 10
    python -m cacl_dist.visualize ranked --checkpoint runs/market1501/last.pt --select worst --output worst/
    python -m cacl_dist.visualize clusters --run runs/market1501 --epoch 5

ranked    one PNG per query (the query, then its top-K gallery images framed green when correct,
          red when wrong, grey when the protocol ignores them: same identity and camera), with
          index.html (every picture with its AP) and ranked.json. The query's own file is never
          listed; a query whose correct matches all lie below the top-K shows the first one set
          apart, and says where it lies and how many there are (ranked.json: num_matches,
          first_match, first_match_rank, first_match_path). Uses the run's config (stored
          in the checkpoint) for data and image size unless --config is given; --set adjusts it
          (e.g. --set eval.rerank=true ranks by the re-ranked distance, eval.flip=true averages
          each image with its mirror image), and ranks exactly as evaluation does. --checkpoint may
          be an export (pass the dataset's --config). Runs under torchrun too (the features are
          extracted in shards). Default output: CHECKPOINT_FOLDER/ranked/.
clusters  a montage of the pseudo clusters of one epoch (largest, smallest with cross-camera
          ones first, most impure; each cluster once, "8 of 16 images shown") and of points
          refinement removed, from the labels the run saved in RUN/pseudo_labels/.
          Default epoch: the last one stored; default output: RUN/clusters/epoch_EEE.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cacl_dist.errors import MissingFileError, UserError
from cacl_dist.cli.common import add_config_args, print_config_if_asked, run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="{ranked,clusters}", required=True)
    ranked = sub.add_parser("ranked", help="ranked lists of queries with correctness frames")
    ranked.add_argument("--checkpoint", required=True, help="a cacl_dist checkpoint (e.g. runs/x/last.pt) or export")
    ranked.add_argument("--num-queries", type=int, default=20, help="how many queries to draw (default 20)")
    ranked.add_argument("--topk", type=int, default=10, help="gallery images per query (default 10)")
    ranked.add_argument("--select", default="spread", help="spread (default; evenly over the query list), "
                        "worst or best (by AP)")
    ranked.add_argument("--output", default=None, help="output folder (default: next to the checkpoint, ranked/)")
    add_config_args(ranked, default_config=False)
    clusters = sub.add_parser("clusters", help="montage of the pseudo clusters of one epoch")
    clusters.add_argument("--run", required=True, help="the run folder (holds config.yaml and pseudo_labels/)")
    clusters.add_argument("--epoch", type=int, default=None, help="epoch whose labels to show (default: last)")
    clusters.add_argument("--per-section", type=int, default=3, help="clusters shown per kind (default 3)")
    clusters.add_argument("--per-row", type=int, default=12, help="images shown per cluster (default 12)")
    clusters.add_argument("--output", default=None, help="PNG to write (default RUN/clusters/epoch_EEE.png)")
    add_config_args(clusters, default_config=False)
    return parser


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise UserError(f"{name} must be at least 1, got {value}")


def ranked_main(args: argparse.Namespace) -> int:
    """Extract query and gallery features with the checkpoint, then draw the chosen queries."""
    import numpy as np

    from cacl_dist.cli.model_args import model_on_its_dataset
    from cacl_dist.evaluation.rerank_sparse import RerankParams
    from cacl_dist.inference.features import extraction_settings, features
    from cacl_dist.inference.ranking import rank
    from cacl_dist.visualize.ranked import SELECTIONS, choose_queries, rank_queries, write_pictures

    _positive("--num-queries", args.num_queries)
    _positive("--topk", args.topk)
    if args.select not in SELECTIONS:
        raise UserError(f"--select '{args.select}' is not one of {', '.join(SELECTIONS)}")
    with model_on_its_dataset(args, "to rank") as (model, env, dataset):
        cfg = model.cfg
        if not dataset.has_eval:
            raise UserError(f"dataset '{dataset.name}' at '{dataset.root}' has no query/gallery split to rank")
        settings = extraction_settings(model, env.device, show_progress=env.is_main and cfg.run.progress)
        feats = features(model, list(dataset.query) + list(dataset.gallery), settings, env.rank, env.world_size)
    if not env.is_main:
        return 0
    num_query = len(dataset.query)
    ranking = rank(feats[:num_query], feats[num_query:], RerankParams.from_config(cfg.eval), settings.device)
    dist = ranking.ranked_by
    chosen = choose_queries(dist, dataset.query, dataset.gallery, args.num_queries, args.select, cfg.run.progress)
    topk = min(args.topk, len(dataset.gallery))
    ranked = rank_queries(dist, dataset.query, dataset.gallery, chosen, topk, shown=ranking.shown)
    out = Path(args.output) if args.output else Path(args.checkpoint).resolve().parent / "ranked"
    epoch = "?" if model.epoch is None else model.epoch
    title = (f"{dataset.name}: {args.checkpoint} (epoch {epoch}), top {topk} of "
             f"{len(dataset.gallery)} gallery images, {'re-ranked' if ranking.reranked else 'Euclidean'} distance")
    index = write_pictures(out, ranked, dataset.query, dataset.gallery, title, topk, cfg.run.progress)
    aps = [r.ap for r in ranked if r.ap is not None]
    mean = f", mean AP {np.mean(aps):.3f}" if aps else ""
    print(f"wrote {len(ranked)} ranked lists ({args.select}{mean}) to {out}; open {index}")
    return 0


def clusters_main(args: argparse.Namespace) -> int:
    """Draw the montage of one epoch's pseudo clusters."""
    from cacl_dist.config import load_config
    from cacl_dist.data.factory import dataset_from_config, generate_if_synthetic
    from cacl_dist.runs.pseudo_labels import load_round, saved_epochs
    from cacl_dist.visualize import draw
    from cacl_dist.visualize.clusters import montage

    _positive("--per-section", args.per_section)
    _positive("--per-row", args.per_row)
    run = Path(args.run)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise MissingFileError(f"--run '{run}' holds no config.yaml; pass a cacl_dist run folder")
    epochs = saved_epochs(run)
    if not epochs:
        raise MissingFileError(f"--run '{run}' holds no pseudo labels (pseudo_labels/epoch_*.npy); they are "
                               "written from the first clustering of a run on")
    epoch = epochs[-1] if args.epoch is None else args.epoch
    stages = load_round(run, epoch)
    cfg = load_config(str(config_path), args.overrides)
    generate_if_synthetic(cfg.data)
    records = dataset_from_config(cfg.data, cfg.clustering.k1).train
    if len(records) != len(stages["pseudo"]):
        raise UserError(f"the dataset at '{cfg.data.root}' has {len(records)} training images but the labels of "
                        f"epoch {epoch} have {len(stages['pseudo'])}; point --set data.root=... at the run's dataset")
    image = montage(records, stages, f"{run} - pseudo labels of epoch {epoch}", args.per_section, args.per_row)
    out = draw.save_png(image, args.output or run / "clusters" / f"epoch_{epoch:03d}.png")
    print(f"wrote {out} (epoch {epoch} of {', '.join(map(str, epochs))} stored)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.visualize`."""
    args = build_parser().parse_args(argv)
    body = ranked_main if args.command == "ranked" else clusters_main

    def checked() -> int:
        if args.command == "ranked" and print_config_if_asked(args, checkpoint=args.checkpoint):
            return 0
        if args.command == "clusters" and print_config_if_asked(args, default=str(Path(args.run) / "config.yaml")):
            return 0
        return body(args)

    return run_main(checked)


if __name__ == "__main__":
    sys.exit(main())

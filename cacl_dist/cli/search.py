"""Search your own images: `python -m cacl_dist.search (--features F.npz | --checkpoint X --gallery DIR) --query Q`.

    python -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output crops.npz
    python -m cacl_dist.search --features crops.npz --query person.jpg --topk 10 --output result.png
    python -m cacl_dist.search --checkpoint runs/market1501/last.pt --gallery crops/ --query queries/ --topk 5

The gallery is a .npz written by `cacl_dist.extract`, or a folder / list file whose features are
extracted now with --checkpoint. --query is one image, a folder or a list file. Query features
come from the model: --checkpoint, or the one the .npz was extracted with (its stored path);
query images that are themselves in the .npz reuse their stored features and need no model.
For every query the nearest gallery images are printed with their Euclidean distance between
L2-normalised features (the distance evaluation ranks by; 0 is identical, 2 is opposite), or, when
the config says eval.rerank (the checkpoint's, or --config/--set eval.rerank=true), ranked by the
k-reciprocal re-ranked distance of evaluation, computed over all queries and the gallery at once.
--output draws one row per query (the query, then its top-K) into a PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cacl_dist.errors import MissingFileError, UserError
from cacl_dist.cli.common import print_config_if_asked, run_main


def _query_features(args: argparse.Namespace, records, gallery: dict, model=None) -> tuple[np.ndarray, object]:
    """(features, model): stored features when every query is in the .npz, else those of ``model`` or the one
    the .npz names."""
    from cacl_dist.distributed.env import init_distributed
    from cacl_dist.inference.features import extraction_settings, features
    from cacl_dist.inference.loader import load_feature_model

    if model is None:
        index = {p: i for i, p in enumerate(gallery["paths"].tolist())}
        if all(r.path in index for r in records):
            return gallery["features"][[index[r.path] for r in records]], None
        source = args.checkpoint or (str(gallery["model"]) if "model" in gallery else None)
        if not source:
            raise UserError("the query images need a model: pass --checkpoint")
        if not Path(source).is_file():
            raise MissingFileError(f"the model the features were extracted with, '{source}', is gone; pass "
                                   "--checkpoint")
        height = args.height or (int(gallery["height"]) if "height" in gallery else None)
        width = args.width or (int(gallery["width"]) if "width" in gallery else None)
        model = load_feature_model(source, args.config, args.overrides, height, width)
    env = init_distributed(args.device)
    settings = extraction_settings(model, env.device, args.batch_size, args.num_workers)
    return features(model, records, settings).numpy(), model


def _rerank_params(args: argparse.Namespace, model):
    """The re-ranking of the model's config, else of --config/--set, else None (Euclidean)."""
    from cacl_dist.config import load_config
    from cacl_dist.evaluation.rerank_sparse import RerankParams

    cfg = model.cfg if model is not None and model.cfg is not None else (
        load_config(args.config, args.overrides) if args.config or args.overrides else None)
    return None if cfg is None else RerankParams.from_config(cfg.eval)


def without_the_query(order: np.ndarray, dist: np.ndarray, query_paths: list[str], gallery_paths: list[str],
                      topk: int) -> tuple[list[list[int]], list[list[float]]]:
    """Each query's first ``topk`` results, leaving out the gallery entries that are the query's own file (the
    same file after resolving links), as the ranked lists do (:func:`cacl_dist.visualize.ranked.not_own_file`)."""
    from cacl_dist.visualize.ranked import gallery_files, not_own_file

    files = gallery_files(gallery_paths)
    kept_order, kept_dist = [], []
    for q, path in enumerate(query_paths):
        keep = not_own_file(order[q], path, files)
        kept_order.append([int(g) for g in order[q][keep][:topk]])
        kept_dist.append([float(d) for d in dist[q][keep][:topk]])
    return kept_order, kept_dist


def draw_results(out: str | Path, query_records, query_names, gallery: dict, order, dist) -> Path:
    """One row per query: the query (blue), then its nearest gallery images with rank and distance."""
    from cacl_dist.visualize import draw

    rows = []
    for q, (rec, name) in enumerate(zip(query_records, query_names)):
        tiles = [draw.Tile(rec.path, draw.QUERY, ["query", Path(name).name[:12]])]
        for pos, (g, d) in enumerate(zip(order[q], dist[q]), start=1):
            tiles.append(draw.Tile(str(gallery["paths"][g]), draw.NEUTRAL,
                                   [f"{pos}: {d:.3f}", Path(str(gallery["names"][g])).name[:12]]))
        rows.append(draw.draw_row(tiles, header=f"query {name}", separator=True, min_tiles=1 + max(map(len, order)))[0])
    return draw.save_png(draw.stack(rows), out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.search`."""
    from cacl_dist.cli.model_args import add_model_args, check_model_args, model_inputs
    from cacl_dist.cli.outputs import check_output

    parser = argparse.ArgumentParser(prog="python -m cacl_dist.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--query", required=True, help="an image, a folder of images or a list file")
    parser.add_argument("--features", default=None, help="gallery features (.npz from python -m cacl_dist.extract)")
    parser.add_argument("--gallery", default=None, help="gallery folder or list file (with --checkpoint)")
    parser.add_argument("--topk", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--output", default=None, help="PNG to draw the results into")
    add_model_args(parser, required=False)
    args = parser.parse_args(argv)

    def body() -> int:
        if print_config_if_asked(args, checkpoint=args.checkpoint):
            return 0
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed
        from cacl_dist.inference.feature_files import image_records, load_gallery
        from cacl_dist.inference.features import extraction_settings, features
        from cacl_dist.inference.loader import load_feature_model
        from cacl_dist.inference.ranking import rank

        check_model_args(args)
        if args.topk < 1:
            raise UserError(f"--topk must be at least 1, got {args.topk}")
        if (args.features is None) == (args.gallery is None):
            raise UserError("pass either --features F.npz or --gallery DIR (with --checkpoint)")
        if args.gallery is not None and not args.checkpoint:
            raise UserError("--gallery needs --checkpoint to extract its features")
        query_names, query_records = image_records(args.query)
        if args.features is not None:
            gallery = load_gallery(args.features)
            gallery_paths = gallery["paths"].tolist()
        else:
            names, records = image_records(args.gallery)
            gallery_paths = [r.path for r in records]
        if args.output:  # before any work: never over an input, never a folder
            stored_model = str(gallery["model"]) if args.features is not None and "model" in gallery else None
            check_output(args.output, [*model_inputs(args), ("--query", args.query), ("--features", args.features),
                                       ("--gallery", args.gallery), ("the model the features were extracted with",
                                                                     stored_model),
                                       *(("a query image", r.path) for r in query_records),
                                       *(("a gallery image", p) for p in gallery_paths)], "result.png")
        try:
            model = None
            if args.features is None:
                model = load_feature_model(args.checkpoint, args.config, args.overrides, args.height, args.width)
                settings = extraction_settings(model, init_distributed(args.device).device, args.batch_size,
                                               args.num_workers, show_progress=True)
                gallery = {"names": np.array(names), "paths": np.array([r.path for r in records]),
                           "features": features(model, records, settings).numpy()}
            query_feats, query_model = _query_features(args, query_records, gallery, model)
        finally:
            shutdown_distributed()
        topk = min(args.topk, len(gallery["names"]))
        ranking = rank(query_feats, gallery["features"], _rerank_params(args, query_model))
        query_paths, gallery_paths = [r.path for r in query_records], gallery["paths"].tolist()
        from cacl_dist.visualize.ranked import gallery_files, own_file_indices

        files = gallery_files(gallery_paths)  # ask for as many more as a query's own file is listed
        extra = max(len(own_file_indices(p, files)) for p in query_paths)
        order, dist = without_the_query(*ranking.top(min(topk + extra, len(gallery_paths))), query_paths,
                                        gallery_paths, topk)
        for q, name in enumerate(query_names):
            print(f"query {name}")
            for pos, (g, d) in enumerate(zip(order[q], dist[q]), start=1):
                print(f"  {pos:3d}  {d:.4f}  {gallery['names'][g]}")
        if args.output:
            out = draw_results(args.output, query_records, query_names, gallery, order, dist)
            print(f"wrote {out}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

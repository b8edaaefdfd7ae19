"""Search your own images: `python -m cacl_dist.search (--features F.npz | --checkpoint X --gallery DIR) --query Q`.

    python -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output crops.npz
    python -m cacl_dist.search --features crops.npz --query person.jpg --topk 10 --output result.png
    python -m cacl_dist.search --checkpoint runs/market1501/last.pt --gallery crops/ --query queries/ --topk 5

The gallery is a .npz written by `cacl_dist.extract`, or a folder / list file whose features are
extracted now with --checkpoint. --query is one image, a folder or a list file. Query features
come from the model: --checkpoint, or the one the .npz was extracted with (its stored path);
query images that are themselves in the .npz reuse their stored features and need no model.
For every query the nearest gallery images are printed with their Euclidean distance between
L2-normalised features (the distance evaluation ranks by; 0 is identical, 2 is opposite).
--output draws one row per query (the query, then its top-K) into a PNG.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cacl_dist.cli.common import run_main
from cacl_dist.evaluation.metrics import pairwise_distance, stable_argsort_rows
from cacl_dist.errors import MissingFileError, UserError


def nearest(query_feats: np.ndarray, gallery_feats: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (Q, K): the ``topk`` nearest gallery rows of every query row, nearest first.

    Euclidean distance as in evaluation; ties keep the lower gallery index first.
    """
    if gallery_feats.shape[0] == 0:
        raise UserError("the gallery is empty")
    dist = pairwise_distance(query_feats, gallery_feats)
    order = stable_argsort_rows(dist)[:, :topk]
    return order, np.take_along_axis(dist, order, axis=1)


def load_gallery(path: str | Path) -> dict:
    """The arrays of a features .npz written by `cacl_dist.extract` (names, paths, features, model, size)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--features '{path}' does not exist; write it with python -m cacl_dist.extract")
    try:
        with np.load(path, allow_pickle=False) as data:
            gallery = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # e.g. a truncated file
        raise UserError(f"--features '{path}' is not a readable .npz ({exc}); write it again with "
                        "python -m cacl_dist.extract") from None
    missing = {"names", "paths", "features"} - set(gallery)
    if missing:
        raise UserError(f"--features '{path}' lacks {', '.join(sorted(missing))}; write it with "
                        "python -m cacl_dist.extract")
    feats, names, paths = gallery["features"], gallery["names"], gallery["paths"]
    if feats.ndim != 2 or feats.dtype.kind != "f" or not len(feats) or names.ndim != 1 or paths.ndim != 1:
        raise UserError(f"--features '{path}' holds features of shape {feats.shape} ({feats.dtype}), names of shape "
                        f"{names.shape} and paths of shape {paths.shape}, not the rows x dims floats and one name "
                        "and path per row of python -m cacl_dist.extract; write it again")
    if not len(names) == len(paths) == len(feats):
        raise UserError(f"--features '{path}' holds {len(names)} names and {len(paths)} paths for {len(feats)} "
                        "feature rows; write it again with python -m cacl_dist.extract")
    return gallery


def _query_features(args: argparse.Namespace, records, gallery: dict, model=None) -> np.ndarray:
    """Stored features when every query is in the .npz, else features from ``model`` or the one named."""
    from cacl_dist.distributed.env import init_distributed
    from cacl_dist.cli.extract import extraction_settings, features_of, load_feature_model

    if model is None:
        index = {p: i for i, p in enumerate(gallery["paths"].tolist())}
        if all(r.path in index for r in records):
            return gallery["features"][[index[r.path] for r in records]]
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
    return features_of(model, records, settings)


def draw_results(out: str | Path, query_records, query_names, gallery: dict, order, dist) -> Path:
    """One row per query: the query (blue), then its nearest gallery images with rank and distance."""
    from cacl_dist.visualize import draw

    rows = []
    for q, (rec, name) in enumerate(zip(query_records, query_names)):
        tiles = [draw.Tile(rec.path, draw.QUERY, ["query", Path(name).name[:12]])]
        for pos, (g, d) in enumerate(zip(order[q], dist[q]), start=1):
            tiles.append(draw.Tile(str(gallery["paths"][g]), draw.NEUTRAL,
                                   [f"{pos}: {d:.3f}", Path(str(gallery["names"][g])).name[:12]]))
        rows.append(draw.draw_row(tiles, header=f"query {name}", separator=True, min_tiles=1 + order.shape[1])[0])
    return draw.save_png(draw.stack(rows), out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.search`."""
    from cacl_dist.cli.extract import add_model_args, check_model_args, model_inputs
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
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed
        from cacl_dist.cli.extract import extraction_settings, features_of, image_records, load_feature_model

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
                           "features": features_of(model, records, settings)}
            query_feats = _query_features(args, query_records, gallery, model)
        finally:
            shutdown_distributed()
        topk = min(args.topk, len(gallery["names"]))
        order, dist = nearest(query_feats, gallery["features"], topk)
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

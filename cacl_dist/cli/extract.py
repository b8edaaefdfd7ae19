"""Features of your own images: `python -m cacl_dist.extract --checkpoint X --images DIR|LIST --output F.npz`.

    python -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output crops.npz
    python -m cacl_dist.extract --checkpoint export/market.ts --height 256 --width 128 --images list.txt --output f.npz
    torchrun --nproc_per_node=4 -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output f.npz

--checkpoint takes a cacl_dist checkpoint (its config gives the image size and the extraction
settings, eval.flip included; --config/--set adjust them) or an export of python -m cacl_dist.export:
a torch.export program (.pt2) or a state_dict export (both store their size), or TorchScript (pass
--height and --width, or the run's --config). An export extracts in fp32 without flip unless
--config/--set give a config. --images is a folder (searched recursively for
.jpg/.jpeg/.png/.bmp) or a text file with one image path per line (relative to the file's
folder). Branch 1 maps every image, resized and ImageNet-normalised as in evaluation, to an
L2-normalised feature. The .npz holds `names` (paths relative to the folder, or as listed),
`paths` (absolute), `features` (N x D float32), `model` (the absolute path of --checkpoint),
`height` and `width`. Under torchrun every rank extracts its shard and rank 0 writes the file.
"""

from __future__ import annotations

import argparse
import sys

from cacl_dist.cli.common import print_config_if_asked, run_main
from cacl_dist.cli.model_args import add_model_args, check_model_args, model_inputs
from cacl_dist.cli.outputs import check_output


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.extract`."""
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of images, one image, or a list file")
    parser.add_argument("--output", required=True, help=".npz file to write")
    add_model_args(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        if print_config_if_asked(args, checkpoint=args.checkpoint):
            return 0
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed
        from cacl_dist.inference.feature_files import image_records, save_features
        from cacl_dist.inference.features import extraction_settings, features
        from cacl_dist.inference.loader import load_feature_model

        check_model_args(args)
        names, records = image_records(args.images)
        check_output(args.output, [*model_inputs(args), ("--images", args.images),
                                   *(("an image of --images", r.path) for r in records)], "features.npz")
        model = load_feature_model(args.checkpoint, args.config, args.overrides, args.height, args.width)
        env = init_distributed(args.device)
        try:
            settings = extraction_settings(model, env.device, args.batch_size, args.num_workers, env.is_main)
            feats = features(model, records, settings, env.rank, env.world_size).numpy()
        finally:
            shutdown_distributed()
        if env.is_main:
            out = save_features(args.output, names, records, feats, model)
            print(f"wrote {out}: {feats.shape[0]} images x {feats.shape[1]} features ({model.height}x{model.width} "
                  f"input, {env.device}) from {args.checkpoint}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    sys.exit(main())

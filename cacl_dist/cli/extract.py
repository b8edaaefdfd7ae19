"""Features of your own images: `python -m cacl_dist.extract --checkpoint X --images DIR|LIST --output F.npz`.

    python -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output crops.npz
    python -m cacl_dist.extract --checkpoint export/market.ts --height 256 --width 128 --images list.txt --output f.npz
    torchrun --nproc_per_node=4 -m cacl_dist.extract --checkpoint runs/market1501/last.pt --images crops/ --output f.npz

--checkpoint takes a cacl_dist checkpoint (its config gives the image size and the extraction
settings; --config/--set adjust them), a TorchScript export (pass --height and --width) or a
state_dict export (its size is stored in it). --images is a folder (searched recursively for
.jpg/.jpeg/.png/.bmp) or a text file with one image path per line (relative to the file's
folder). Branch 1 maps every image, resized and ImageNet-normalised as in evaluation, to an
L2-normalised feature. The .npz holds `names` (paths relative to the folder, or as listed),
`paths` (absolute), `features` (N x D float32), `model` (the absolute path of --checkpoint),
`height` and `width`. Under torchrun every rank extracts its shard and rank 0 writes the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cacl_dist.cli.common import add_config_args, run_main
from cacl_dist.data.layouts import IMAGE_EXTENSIONS, ImageRecord, check_file_names, read_list_lines
from cacl_dist.cli.outputs import check_output
from cacl_dist.runs.files import atomic_file
from cacl_dist.errors import MissingFileError, UserError


@dataclasses.dataclass
class FeatureModel:
    """A model that maps normalised images to features, and how to feed it."""

    branch: torch.nn.Module
    height: int
    width: int
    source: str
    cfg: Any = None
    """The run config for a cacl_dist checkpoint, else None."""


class _Scripted(torch.nn.Module):
    """A TorchScript branch with the ``dim`` attribute that sharded extraction reads for empty shards."""

    def __init__(self, module: torch.nn.Module, height: int, width: int):
        super().__init__()
        self.module = module
        with torch.no_grad():
            self.dim = int(module(torch.zeros(1, 3, height, width)).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.module(images)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_feature_model(path: str | Path, config: str | None = None, overrides: list[str] | None = None,
                       height: int | None = None, width: int | None = None) -> FeatureModel:
    """Branch 1 of a cacl_dist checkpoint, a TorchScript export or a state_dict export, on the CPU, in eval mode.

    ``height``/``width`` override the size a checkpoint or state_dict export stores; a TorchScript
    file stores none, so both are required for it.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"--checkpoint '{path}' does not exist")
    if _is_torchscript(path):
        if height is None or width is None:
            raise UserError(f"'{path}' is a TorchScript export, which does not store its input size; pass "
                            "--height and --width (the data.height x data.width it was exported with)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu").eval()
        return FeatureModel(_Scripted(module, height, width).eval(), height, width, str(path.resolve()))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # a foreign or broken file, whatever torch makes of it
        raise UserError(f"cannot read --checkpoint '{path}' ({type(exc).__name__}); pass a cacl_dist "
                        "checkpoint, a TorchScript export or a state_dict export") from None
    tag = payload.get("format") if isinstance(payload, dict) else None
    meta_tag = payload.get("meta", {}).get("format") if isinstance(payload, dict) else None
    del payload
    if meta_tag is not None:
        from cacl_dist.cli.export import load_exported_branch

        branch = load_exported_branch(path)
        meta = torch.load(path, map_location="cpu", weights_only=True)["meta"]
        return FeatureModel(branch, height or meta["height"], width or meta["width"], str(path.resolve()))
    if tag is None:
        raise UserError(f"'{path}' is neither a cacl_dist checkpoint nor one of its exports (TorchScript, "
                        "state_dict)")
    from cacl_dist.training.checkpoint import load_trained_model

    _, cfg, model = load_trained_model(path, config, overrides or [])
    return FeatureModel(model.inference_branch().eval(), height or cfg.data.height, width or cfg.data.width,
                        str(path.resolve()), cfg)


def image_records(spec: str | Path) -> tuple[list[str], list[ImageRecord]]:
    """(names, records) of a folder (recursive, sorted) or of a list file with one path per line."""
    spec = Path(spec)
    if spec.is_dir():
        paths = []
        for dirpath, dirnames, filenames in os.walk(spec):
            dirnames.sort()
            paths += [Path(dirpath) / f for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
        paths.sort()
        if not paths:
            raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under '{spec}'")
        names = [str(p.relative_to(spec)) for p in paths]
    elif spec.is_file() and spec.suffix.lower() in IMAGE_EXTENSIONS:
        paths, names = [spec], [spec.name]
    elif spec.is_file():
        paths, names = [], []
        for line_no, line in read_list_lines(str(spec), "the image list"):
            name = line.strip()
            if not name or name.startswith("#"):
                continue
            path = spec.parent / name
            if not path.is_file():
                raise MissingFileError(f"{spec} line {line_no} names {path}, which does not exist")
            paths.append(path)
            names.append(name)
        if not paths:
            raise UserError(f"the list '{spec}' names no images (one path per line)")
    else:
        raise MissingFileError(f"'{spec}' is neither a folder, an image nor a list file")
    records = [ImageRecord(str(p.resolve()), -1, -1) for p in paths]
    check_file_names(r.path for r in records)
    return names, records


def extraction_settings(model: FeatureModel, device: torch.device, batch_size: int | None = None,
                        num_workers: int | None = None, show_progress: bool = False):
    """The run's own extraction settings for a checkpoint; plain torchvision fp32 for an export.

    ``batch_size`` and ``num_workers`` replace the config's values (or the defaults 64 and 0) when given.
    """
    from cacl_dist.evaluation.extract import ExtractionSettings

    if model.cfg is not None:
        settings = ExtractionSettings.from_config(model.cfg, device, show_progress)
        settings = dataclasses.replace(settings, height=model.height, width=model.width, channels_last=False)
    else:
        settings = ExtractionSettings(height=model.height, width=model.width, batch_size=64, device=device,
                                      show_progress=show_progress)
    given = {"batch_size": batch_size, "num_workers": num_workers}
    return dataclasses.replace(settings, **{k: v for k, v in given.items() if v is not None})


def features_of(model: FeatureModel, records: list[ImageRecord], settings, rank: int = 0,
                world_size: int = 1) -> np.ndarray:
    """L2-normalised float32 features of ``records``, every rank extracting its shard (a collective call)."""
    from cacl_dist.evaluation.extract import extract_all

    feats = extract_all(model.branch.to(settings.device), records, settings, rank=rank, world_size=world_size,
                        desc="features")
    return torch.nn.functional.normalize(feats.float(), dim=1).numpy()


def save_features(path: str | Path, names: list[str], records: list[ImageRecord], feats: np.ndarray,
                  model: FeatureModel) -> Path:
    """Write the .npz atomically (:func:`~cacl_dist.runs.files.atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as fh:
        np.savez(fh, names=np.array(names), paths=np.array([r.path for r in records]),
                 features=feats.astype(np.float32), model=np.array(model.source),
                 height=np.array(model.height), width=np.array(model.width))
    return path


def add_model_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--checkpoint, --height/--width, --batch-size, --num-workers, --device, --config/--set."""
    parser.add_argument("--checkpoint", required=required,
                        help="cacl_dist checkpoint, TorchScript export or state_dict export")
    parser.add_argument("--height", type=int, default=None, help="input height (required for TorchScript)")
    parser.add_argument("--width", type=int, default=None, help="input width (required for TorchScript)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per batch (default eval.batch_size "
                        "or 64)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default data.num_workers "
                        "of a checkpoint, 0 for an export)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    add_config_args(parser, default_config=False)


def model_inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files the model arguments read (--checkpoint, --config), as (what, path) for :func:`check_output`."""
    return [("--checkpoint", args.checkpoint), ("--config", args.config)]


def check_model_args(args: argparse.Namespace) -> None:
    """One-line errors for bad values of the model arguments."""
    for name, low in (("height", 1), ("width", 1), ("batch_size", 1), ("num_workers", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    if args.device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device '{args.device}' is not one of auto, cpu, cuda")


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m cacl_dist.extract`."""
    parser = argparse.ArgumentParser(prog="python -m cacl_dist.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of images, one image, or a list file")
    parser.add_argument("--output", required=True, help=".npz file to write")
    add_model_args(parser)
    args = parser.parse_args(argv)

    def body() -> int:
        from cacl_dist.distributed.env import init_distributed, shutdown_distributed

        check_model_args(args)
        names, records = image_records(args.images)
        check_output(args.output, [*model_inputs(args), ("--images", args.images),
                                   *(("an image of --images", r.path) for r in records)], "features.npz")
        model = load_feature_model(args.checkpoint, args.config, args.overrides, args.height, args.width)
        env = init_distributed(args.device)
        try:
            settings = extraction_settings(model, env.device, args.batch_size, args.num_workers, env.is_main)
            feats = features_of(model, records, settings, env.rank, env.world_size)
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

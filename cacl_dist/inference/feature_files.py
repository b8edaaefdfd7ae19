"""Files of the inference entries: image folders and lists in, feature .npz files out and back in.

A features .npz (written by ``python -m cacl_dist.extract``) holds ``names`` (paths relative to the
folder, or as listed), ``paths`` (absolute), ``features`` (N x D float32), ``model`` (the absolute
path of the model file), ``height`` and ``width``.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cacl_dist.errors import MissingFileError, UserError
from cacl_dist.runs.files import atomic_file
from cacl_dist.data.layouts import IMAGE_EXTENSIONS, ImageRecord, check_file_names, read_list_lines
from cacl_dist.inference.loader import FeatureModel


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


def save_features(path: str | Path, names: list[str], records: list[ImageRecord], feats: np.ndarray,
                  model: FeatureModel) -> Path:
    """Write the .npz atomically (:func:`~cacl_dist.runs.files.atomic_file`)."""
    path = Path(path)
    with atomic_file(path) as fh:
        np.savez(fh, names=np.array(names), paths=np.array([r.path for r in records]),
                 features=feats.astype(np.float32), model=np.array(model.source),
                 height=np.array(model.height), width=np.array(model.width))
    return path


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


__all__ = ["image_records", "load_gallery", "save_features"]

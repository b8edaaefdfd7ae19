"""Dataset layouts on disk: Market-1501, DukeMTMC-reID, MSMT17 (v1/v2), a plain folder, synthetic, custom lists.

The 'custom' layout reads list files under the root: ``train.txt`` (required) and, to evaluate,
``query.txt`` and ``gallery.txt``. Each line is ``path pid camera`` (whitespace-separated; the
path is relative to the list's folder or absolute and may contain spaces; ``#`` starts a comment
line). Cameras are any integers >= 0 (used as ids). Training images may carry pid or camera -1
(unknown): training never reads the pids, they only score the pseudo labels. Query and gallery
need both, since evaluation removes same-pid same-camera gallery items per query. Lists are UTF-8
(a byte-order mark is dropped); an image listed twice, or in both query and gallery, is refused.

Every loader returns a :class:`ReidDataset` whose splits are lists of :class:`ImageRecord`
sorted by path, so that the index of an image is the same on every rank and every run.
"""

from __future__ import annotations

import codecs
import os
import re
from dataclasses import dataclass, field

from cacl_dist.errors import MissingFileError, UserError


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""File extensions (lower case) treated as images."""

_MARKET_SPLITS = (("train", "bounding_box_train"), ("query", "query"), ("gallery", "bounding_box_test"))
_MARKET_PATTERN = re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+$")
_DUKE_PATTERN = re.compile(r"^(-?\d+)_c(\d+)_f\d+$")
_PATTERN_HELP = {
    "market1501": "PID_cCAMsSEQ_FRAME_BOX.jpg, e.g. 0002_c1s1_000451_03.jpg",
    "synthetic": "PID_cCAMsSEQ_FRAME_BOX.jpg, e.g. 0002_c1s1_000451_03.jpg",
    "dukemtmc": "PID_cCAM_fFRAME.jpg, e.g. 0001_c2_f0046182.jpg",
}
_MSMT_LISTS = (("train", "list_train.txt"), ("query", "list_query.txt"), ("gallery", "list_gallery.txt"))
_MSMT_NAME_HELP = "PID_INDEX_CAM_..., e.g. 0000_000_01_0303morning_0015_0.jpg (CAM is the third field)"


@dataclass(frozen=True)
class ImageRecord:
    """One image: absolute ``path``, identity ``pid`` and 0-based camera ``camid`` (-1 = unknown)."""

    path: str
    pid: int
    camid: int


@dataclass
class ReidDataset:
    """A re-identification dataset: training images plus (optionally) query and gallery."""

    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @property
    def has_eval(self) -> bool:
        """True when both query and gallery are non-empty, so the dataset can be evaluated."""
        return bool(self.query) and bool(self.gallery)

    def summary(self) -> str:
        """One line with the number of images, identities and cameras of every split."""
        parts = []
        for split in ("train", "query", "gallery"):
            records = getattr(self, split)
            pids = {r.pid for r in records if r.pid >= 0}
            cams = {r.camid for r in records if r.camid >= 0}
            parts.append(f"{split} {len(records)} images / {len(pids)} ids / {len(cams)} cams")
        return f"{self.name} at {self.root}: " + ", ".join(parts)


def load_dataset(name: str, root: str) -> ReidDataset:
    """Read the dataset ``name`` (one of :data:`DATASET_NAMES`) stored under ``root``.

    Raises FileNotFoundError when ``root`` or an expected sub-folder / list file is missing and
    ValueError for an unknown name, an empty split or a file name that cannot be parsed.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset name {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    if not os.path.isdir(root):
        hint = "; pass the dataset's folder with --set data.root=DIR (or data.root in the recipe)"
        if name == "synthetic":
            hint = f" (create it with: python -m cacl_dist.data.synthetic --root {root})"
        raise MissingFileError(f"dataset root {root} for {name!r} does not exist or is not a folder{hint}")
    dataset = ReidDataset(name=name, root=root, **_LAYOUTS[name](name, root))
    check_file_names(r.path for split in (dataset.train, dataset.query, dataset.gallery) for r in split)
    return dataset


def check_file_names(paths) -> None:
    """ValueError naming the first path that is not UTF-8 (legal on Linux, but the run's logs, records and
    DALI need text)."""
    for path in paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise UserError(f"the file name {shown} is not UTF-8 text; rename it (e.g. `convmv -f latin1 -t utf8 "
                            "--notest -r FOLDER`)") from None


MAX_LABEL = 2**63 - 1
"""Largest pid or camera number (labels are kept in 64-bit integers)."""


def read_list_lines(list_path: str, what: str):
    """(line number, line) of a UTF-8 list file (a byte-order mark dropped); ValueError naming file and line."""
    with open(list_path, "rb") as handle:
        data = handle.read().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{what}: {list_path} line {line_no} is not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                        "save the list as UTF-8 and name the files in UTF-8") from None
    return enumerate(text.splitlines(), start=1)


def _list_images(folder: str) -> list[str]:
    """Image file names directly inside ``folder`` (not recursive), sorted."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def _load_named_folders(name: str, root: str, pattern: re.Pattern) -> dict[str, list[ImageRecord]]:
    """Market-style layout: three flat folders whose file names carry pid and camera."""
    splits: dict[str, list[ImageRecord]] = {}
    for split, sub in _MARKET_SPLITS:
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            raise MissingFileError(
                f"{name}: expected the folder {folder} ({split} split) with images named "
                f"{_PATTERN_HELP[name]}; check that data.root (--set data.root=DIR) points at the extracted dataset"
            )
        records = []
        for fname in _list_images(folder):
            match = pattern.match(os.path.splitext(fname)[0])
            if match is None:
                raise UserError(
                    f"{name}: cannot parse pid/camera from {os.path.join(folder, fname)}; "
                    f"expected {_PATTERN_HELP[name]}"
                )
            pid, cam = int(match.group(1)), int(match.group(2))
            if pid == -1:
                continue  # junk images are dropped everywhere
            if pid < -1 or cam < 1:
                raise UserError(
                    f"{name}: {os.path.join(folder, fname)} has pid {pid} / camera {cam}; expected "
                    f"pid >= -1 and camera >= 1 ({_PATTERN_HELP[name]})"
                )
            records.append(ImageRecord(os.path.join(folder, fname), pid, cam - 1))
        if not records:
            raise UserError(f"{name}: the {split} split {folder} contains no usable images")
        splits[split] = records
    return splits


def _load_msmt17(root: str) -> dict[str, list[ImageRecord]]:
    """MSMT17 v1 (train/, test/) or v2 (mask_train_v2/, mask_test_v2/) with list_*.txt files."""
    if os.path.isdir(os.path.join(root, "mask_train_v2")):
        train_dir, test_dir = os.path.join(root, "mask_train_v2"), os.path.join(root, "mask_test_v2")
    elif os.path.isdir(os.path.join(root, "train")):
        train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    else:
        raise MissingFileError(
            f"msmt17: found neither {os.path.join(root, 'train')} (MSMT17_V1) nor "
            f"{os.path.join(root, 'mask_train_v2')} (MSMT17_V2); point data.root at the extracted folder (--set data.root=DIR)"
        )
    if not os.path.isdir(test_dir):
        raise MissingFileError(f"msmt17: expected the folder {test_dir} next to {train_dir}")
    splits: dict[str, list[ImageRecord]] = {}
    for split, list_name in _MSMT_LISTS:
        image_dir = train_dir if split == "train" else test_dir
        records = _read_msmt_list(os.path.join(root, list_name), image_dir, required=True)
        if split == "train":
            # The validation list holds further training images; older copies may lack it.
            records += _read_msmt_list(os.path.join(root, "list_val.txt"), image_dir, required=False)
        if not records:
            raise UserError(f"msmt17: the {split} split ({os.path.join(root, list_name)}) lists no images")
        splits[split] = sorted(records, key=lambda r: r.path)
    return splits


def _read_msmt_list(list_path: str, image_dir: str, required: bool) -> list[ImageRecord]:
    """Parse an MSMT17 list file of ``relative/path.jpg label`` lines."""
    if not os.path.isfile(list_path):
        if required:
            raise MissingFileError(
                f"msmt17: expected the list file {list_path} (lines like "
                "'0000_000/0000_000_01_0303morning_0015_0.jpg 0')"
            )
        return []
    records = []
    for line_no, line in read_list_lines(list_path, "msmt17"):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise UserError(
                f"msmt17: {list_path} line {line_no} is {line.strip()!r}; expected 'relative/path.jpg label'"
            )
        rel, pid = fields[0], int(fields[1])
        if pid > MAX_LABEL:
            raise UserError(f"msmt17: {list_path} line {line_no} has label {pid}; labels are at most 2^63 - 1")
        name_fields = os.path.basename(rel).split("_")
        if len(name_fields) < 3 or not name_fields[2].isdigit() or int(name_fields[2]) < 1:
            raise UserError(f"msmt17: cannot parse the camera of {rel} in {list_path}; expected {_MSMT_NAME_HELP}")
        path = os.path.join(image_dir, rel)
        if not records and not os.path.isfile(path):
            raise MissingFileError(
                f"msmt17: {list_path} line {line_no} names {path}, which does not exist; "
                f"the images of this list are expected under {image_dir}"
            )
        if pid == -1:
            continue
        records.append(ImageRecord(path, pid, int(name_fields[2]) - 1))
    return records


def _load_plain_folder(root: str) -> list[ImageRecord]:
    """Every image under ``root`` (recursively), unlabelled and without camera."""
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise UserError(
            f"folder: no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}; "
            "point data.root at a folder that contains person crops (--set data.root=DIR)"
        )
    return [ImageRecord(p, -1, -1) for p in sorted(paths)]


def _load_folder_layout(_name: str, root: str) -> dict[str, list[ImageRecord]]:
    """A plain folder of unlabelled crops: training images only."""
    return {"train": _load_plain_folder(root), "query": [], "gallery": []}


CUSTOM_LISTS = (("train", "train.txt"), ("query", "query.txt"), ("gallery", "gallery.txt"))
"""The list files of the 'custom' layout under data.root: train.txt (required), query.txt + gallery.txt."""
_CUSTOM_LINE_HELP = "'path pid camera', e.g. 'images/0001_a.jpg 1 0' (path relative to the list's folder)"


def _parse_custom_line(list_path: str, line_no: int, line: str, split: str) -> ImageRecord:
    """One ``path pid camera`` line of a custom list; the path may contain spaces."""
    fields = line.rsplit(None, 2)
    where = f"custom: {list_path} line {line_no}"
    if len(fields) != 3 or not all(f.lstrip("-").isdigit() for f in fields[1:]):
        raise UserError(f"{where} is {line.strip()!r}; expected {_CUSTOM_LINE_HELP}")
    rel, pid, cam = fields[0], int(fields[1]), int(fields[2])
    low = -1 if split == "train" else 0  # -1 = unknown, only for training images
    if not (low <= pid <= MAX_LABEL and low <= cam <= MAX_LABEL):
        raise UserError(f"{where} has pid {pid} / camera {cam}; {split} images need pid >= {low} and camera >= "
                        f"{low}, both at most 2^63 - 1" + (" (-1 marks an unknown one)" if low < 0 else ""))
    path = os.path.normpath(os.path.join(os.path.dirname(list_path), os.path.expanduser(rel)))
    if not os.path.isfile(path):
        raise MissingFileError(f"{where} names {path}, which does not exist")
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise UserError(f"{where} names {path}, which is not an image ({', '.join(IMAGE_EXTENSIONS)})")
    return ImageRecord(path, pid, cam)


def _read_custom_list(list_path: str, split: str) -> list[ImageRecord]:
    """The records of one custom list file (blank lines and lines starting with '#' are skipped)."""
    records, first_line = [], {}
    for line_no, line in read_list_lines(list_path, "custom"):
        if line.strip() and not line.lstrip().startswith("#"):
            record = _parse_custom_line(list_path, line_no, line, split)
            if record.path in first_line:
                raise UserError(f"custom: {list_path} lines {first_line[record.path]} and {line_no} both name "
                                f"{record.path}; list every image once")
            first_line[record.path] = line_no
            records.append(record)
    if not records:
        raise UserError(f"custom: {list_path} lists no images; expected lines {_CUSTOM_LINE_HELP}")
    return sorted(records, key=lambda r: r.path)


def _load_custom(_name: str, root: str) -> dict[str, list[ImageRecord]]:
    """Your own labelled data: train.txt, and optionally query.txt + gallery.txt, under ``root``."""
    paths = {split: os.path.join(root, fname) for split, fname in CUSTOM_LISTS}
    if not os.path.isfile(paths["train"]):
        raise MissingFileError(f"custom: expected the list file {paths['train']} with lines {_CUSTOM_LINE_HELP}")
    has = {split: os.path.isfile(paths[split]) for split in ("query", "gallery")}
    if has["query"] != has["gallery"]:
        present, missing = ("query", "gallery") if has["query"] else ("gallery", "query")
        raise MissingFileError(f"custom: {paths[present]} exists but {paths[missing]} does not; evaluation "
                               "needs both (or remove both to train only)")
    splits = {"train": _read_custom_list(paths["train"], "train"), "query": [], "gallery": []}
    if has["query"]:
        splits["query"] = _read_custom_list(paths["query"], "query")
        splits["gallery"] = _read_custom_list(paths["gallery"], "gallery")
        both = sorted({r.path for r in splits["query"]} & {r.path for r in splits["gallery"]})
        if both:
            raise UserError(f"custom: {len(both)} image(s) of {paths['query']} are also in {paths['gallery']} "
                            f"(first {both[0]}); a query found as itself scores rank-1 100%; remove them from "
                            "one of the lists")
    return splits


_LAYOUTS = {
    "market1501": lambda name, root: _load_named_folders(name, root, _MARKET_PATTERN),
    "dukemtmc": lambda name, root: _load_named_folders(name, root, _DUKE_PATTERN),
    "msmt17": lambda _name, root: _load_msmt17(root),
    "folder": _load_folder_layout,
    "synthetic": lambda name, root: _load_named_folders(name, root, _MARKET_PATTERN),
    "custom": _load_custom,
}
"""The dataset registry: layout name -> reader of its train / query / gallery splits."""

DATASET_NAMES = tuple(_LAYOUTS)
"""Names accepted by :func:`load_dataset` (and by the config's ``data.dataset``)."""

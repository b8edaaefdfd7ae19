"""Is every image file of a dataset readable, and is a record list the one a checkpoint was trained on?

NVIDIA DALI parses the headers of a whole batch before it decodes it, and a file whose header it
cannot parse (random bytes, a JPEG cut inside its header, a PNG cut anywhere, a GIF) takes the
process down with a segmentation fault instead of raising. :func:`image_problem` therefore walks
the structure of each file without decoding it: a JPEG's marker segments up to its first scan and
its end-of-image marker, a PNG's chunks (with their CRCs) up to IEND; a BMP is decoded with PIL.
That costs about one read of the file, so :func:`check_images` checks a whole dataset in seconds
(on a thread pool), once per process for every path (:data:`_KNOWN_GOOD`), and
:func:`check_dataset_images` remembers a checked dataset in the run folder by the sizes and
modification times of its files.

:func:`records_fingerprint` names a list of training records by their relative paths and sizes,
so that a checkpoint can tell a different dataset of the same size from its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cacl_dist.data.image_files import DEEP_SAMPLES, not_a_regular_file
from cacl_dist.data.layouts import ImageRecord, ReidDataset
from cacl_dist.runs.files import write_atomically
from cacl_dist.errors import StopRequested
from cacl_dist.errors import UserError

CHECK_VERSION = 2
"""Part of the run folder's record of a checked dataset: a stricter check invalidates old records."""
CHECK_RECORD = "images_checked.json"
"""File in the run folder that records which dataset state passed :func:`check_dataset_images`."""
THREADS = 8
"""Threads reading files in :func:`check_images` (the work is mostly waiting for the disk)."""
SHOWN = 3
"""Unreadable files named in the error, besides their count."""

_JPEG_SOI = b"\xff\xd8"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_BMP_SIGNATURE = b"BM"
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOF0..SOF15 (not DHT, JPG, DAC)
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn, TEM: no length field


_KNOWN_GOOD: set[str] = set()
"""Paths that passed the check in this process (a file is assumed not to change during a run)."""

Wrap = Callable[[Iterable, int], Iterable]


def _jpeg_frame_problem(seg: bytes, marker: int) -> str | None:
    """What is wrong with the body ``seg`` of a JPEG frame header (SOFn), or None."""
    if len(seg) < 6 or len(seg) != 6 + 3 * seg[5]:
        return "the JPEG frame header has the wrong length"
    precision, height, width, channels = seg[0], int.from_bytes(seg[1:3], "big"), int.from_bytes(seg[3:5], "big"), seg[5]
    if not 2 <= precision <= 16 or height == 0 or width == 0 or channels not in (1, 3, 4):
        return f"the JPEG frame header says {width} x {height} pixels, {channels} channels of {precision} bits"
    if precision != 8:
        return "the JPEG has " + DEEP_SAMPLES.format(bits=precision)
    for c in range(channels):
        sampling, table = seg[7 + 3 * c], seg[8 + 3 * c]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4) or table > 3:
            return "the JPEG frame header has invalid component parameters"
    return None


def _jpeg_tables_problem(seg: bytes, marker: int) -> str | None:
    """What is wrong with the body of a quantisation (DQT) or Huffman (DHT) table segment, or None."""
    pos = 0
    while pos < len(seg):
        kind, index = seg[pos] >> 4, seg[pos] & 15
        if kind > 1 or index > 3:
            return "the JPEG has an invalid table id"
        if marker == 0xDB:
            pos += 1 + 64 * (1 + kind)
        elif pos + 17 > len(seg) or sum(seg[pos + 1:pos + 17]) > 256:
            return "the JPEG has an invalid Huffman table"
        else:
            pos += 17 + sum(seg[pos + 1:pos + 17])
    return None if pos == len(seg) else "the JPEG has a table segment of the wrong length"


def _jpeg_scan_problem(seg: bytes, marker: int) -> str | None:
    """What is wrong with the body of a JPEG scan header (SOS), or None."""
    if not seg or not 1 <= seg[0] <= 4 or len(seg) != 4 + 2 * seg[0]:
        return "the JPEG scan header is invalid"
    return None


_JPEG_SEGMENT_CHECKS = {**{m: _jpeg_frame_problem for m in _JPEG_FRAMES}, 0xDB: _jpeg_tables_problem,
                        0xC4: _jpeg_tables_problem, 0xDA: _jpeg_scan_problem}


def _jpeg_problem(data: bytes) -> str | None:
    """What is wrong with the JPEG ``data`` (starting with SOI), or None.

    Walks the marker segments up to the first scan, checks the fields of the frame, table and
    scan headers that a decoder sizes its work by, and looks for the end-of-image marker.
    """
    pos, size, frame = 2, len(data), False
    while True:
        if pos >= size or data[pos] != 0xFF:
            return "the JPEG ends inside its header" if pos >= size else f"no JPEG marker at byte {pos}"
        while pos < size and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 1 > size:
            return "the JPEG ends inside its header"
        marker = data[pos]
        pos += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0x00):
            return f"unexpected JPEG marker 0xFF{marker:02X} in the header"
        if pos + 2 > size:
            return "the JPEG ends inside its header"
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2 or pos + length > size:
            return "the JPEG ends inside a header segment (truncated file)"
        check = _JPEG_SEGMENT_CHECKS.get(marker)
        problem = check(data[pos + 2:pos + length], marker) if check else None
        if problem:
            return problem
        frame = frame or marker in _JPEG_FRAMES
        if marker == 0xDA:  # start of scan: the header is complete
            if not frame:
                return "the JPEG has image data but no frame header"
            if data.rfind(b"\xff\xd9", pos + length) < 0:
                return "the JPEG has no end-of-image marker (truncated file)"
            return None
        pos += length


def _png_problem(data: bytes) -> str | None:
    """What is wrong with the PNG ``data`` (starting with its signature), or None."""
    pos, size, first = len(_PNG_SIGNATURE), len(data), True
    while True:
        if pos + 8 > size:
            return "the PNG ends before its IEND chunk (truncated file)"
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        name = kind.decode("ascii") if kind.isalpha() else f"0x{kind.hex()}"
        end = pos + 12 + length
        if end > size:
            return f"the PNG ends inside its {name} chunk (truncated file)"
        if first and (kind != b"IHDR" or length != 13 or data[pos + 8:pos + 12] == bytes(4)
                      or data[pos + 12:pos + 16] == bytes(4)):
            return "the PNG does not start with a valid IHDR chunk"
        if first and data[pos + 16] == 16:
            return "the PNG has " + DEEP_SAMPLES.format(bits=16)
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"the PNG's {name} chunk fails its checksum"
        if kind == b"IEND":
            return None
        pos, first = end, False


def _bmp_problem(path: str) -> str | None:
    """What PIL says about decoding the BMP at ``path``, or None."""
    from cacl_dist.data.transforms import load_image

    try:
        load_image(path)
    except ValueError as err:
        return str(err.__cause__ or err)
    return None


def _read_regular(path: str) -> bytes | str:
    """The bytes of the regular file ``path``, or why it cannot be read (opening never blocks, even on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        return err.strerror or str(err)
    why = not_a_regular_file(os.fstat(fd).st_mode)
    if why is not None:
        os.close(fd)
        return why
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read()
        except OSError as err:
            return err.strerror or str(err)


def image_problem(path: str) -> str | None:
    """Why the image file ``path`` cannot be read by both pipelines (a short phrase), or None when it can.

    A JPEG or PNG is checked by its structure, without decoding (a file that passes may still
    hold damaged pixel data, which both decoders then report as an error naming the file); a BMP
    is decoded; anything else is refused, since DALI cannot read it, and so is anything that is
    not a regular file (a FIFO named ``*.jpg`` is refused at once instead of read forever).
    """
    data = _read_regular(path)
    if isinstance(data, str):
        return data
    if data.startswith(_JPEG_SOI):
        return _jpeg_problem(data)
    if data.startswith(_PNG_SIGNATURE):
        return _png_problem(data)
    if data.startswith(_BMP_SIGNATURE):
        return _bmp_problem(path)
    if not data:
        return "the file is empty"
    return f"not a JPEG, PNG or BMP file (it starts with {data[:8].hex(' ')})"


def check_images(paths: Iterable[str], wrap: Wrap | None = None, should_stop: Callable[[], bool] | None = None) -> None:
    """ValueError naming the unreadable files among ``paths``; the others are remembered as good.

    Paths already checked in this process are skipped. ``wrap(iterable, total)`` may wrap the
    checks in a progress bar. ``should_stop``, when given, is asked after every file; once it
    answers True the check ends (the files not yet read are left) with
    :class:`~cacl_dist.training.stopping.StopRequested`.
    """
    todo = sorted({p for p in paths if p not in _KNOWN_GOOD})
    if not todo:
        return
    problems = []
    pool = ThreadPoolExecutor(max_workers=min(THREADS, len(todo)))
    try:
        results = pool.map(image_problem, todo)
        for path, why in zip(todo, wrap(results, len(todo)) if wrap else results):
            if should_stop is not None and should_stop():
                raise StopRequested("stop requested during the image check")
            if why:
                problems.append((path, why))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after a stop: only the reads under way finish
    bad = {p for p, _ in problems}
    _KNOWN_GOOD.update(p for p in todo if p not in bad)
    if len(problems) == 1:
        path, why = problems[0]
        raise UserError(f"cannot read the image {path}: {why}; replace or remove the file, or re-extract the dataset")
    if problems:
        named = "; ".join(f"{p}: {why}" for p, why in problems[:SHOWN])
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
        raise UserError(f"{len(problems)} of {len(todo)} images cannot be read: {named}{more}; replace or remove "
                        "these files, or re-extract the dataset")


def _state_digest(paths: Sequence[str]) -> str:
    """sha1 of the sorted paths with their sizes and modification times (and :data:`CHECK_VERSION`)."""
    digest = hashlib.sha1(f"check {CHECK_VERSION}\n".encode())
    for path in sorted(paths):
        try:
            st = os.stat(path)
        except OSError:
            return ""  # a missing file: never matches, the check names it
        digest.update(f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def check_dataset_images(dataset: ReidDataset, run_dir: str | Path | None = None, wrap: Wrap | None = None,
                         should_stop: Callable[[], bool] | None = None) -> bool:
    """Check every image of ``dataset`` (:func:`check_images`); False when ``run_dir`` shows it checked before.

    With ``run_dir``, a dataset whose files have the sizes and modification times recorded there
    by an earlier successful check is not read again; a successful check is recorded. ``should_stop``:
    as in :func:`check_images`.
    """
    paths = [r.path for split in (dataset.train, dataset.query, dataset.gallery) for r in split]
    record = Path(run_dir) / CHECK_RECORD if run_dir is not None else None
    digest = _state_digest(paths) if record is not None else ""
    if record is not None and digest and record.is_file():
        try:
            if json.loads(record.read_text()).get("digest") == digest:
                _KNOWN_GOOD.update(paths)
                return False
        except (OSError, ValueError):
            pass  # an unreadable record: check again
    check_images(paths, wrap, should_stop)
    if record is not None and digest:
        write_atomically(record, json.dumps({"digest": digest, "images": len(paths)}) + "\n")
    return True


def records_fingerprint(records: Sequence[ImageRecord], root: str) -> str:
    """sha1 of the records' paths relative to ``root`` with their sizes, in record order.

    Two copies of a dataset in different places have the same fingerprint; a dataset with other
    files (even as many) has another.
    """
    digest = hashlib.sha1()
    for record in records:
        try:
            size = os.stat(record.path).st_size
        except OSError:
            size = -1
        digest.update(f"{os.path.relpath(record.path, root)}\t{size}\n".encode())
    return digest.hexdigest()


__all__ = ["CHECK_RECORD", "check_dataset_images", "check_images", "image_problem", "not_a_regular_file",
           "records_fingerprint"]

"""Image structure checks (what DALI cannot survive is refused first) and the training-set fingerprint."""

import io
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cacl_dist.data import integrity
from cacl_dist.data.integrity import check_dataset_images, check_images, image_problem, records_fingerprint
from cacl_dist.data.layouts import ImageRecord, ReidDataset


def _encoded(fmt: str, seed: int = 0, size=(48, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def _jpeg_with(offset_from_sof: int, value: int) -> bytes:
    data = bytearray(_encoded("JPEG"))
    data[data.find(b"\xff\xc0") + offset_from_sof] = value
    return bytes(data)


JPEG = _encoded("JPEG")
BAD = {
    "random bytes": (np.random.default_rng(1).bytes(3000), "not a JPEG, PNG or BMP"),
    "empty": (b"", "empty"),
    "header only": (JPEG[:600], "ends inside"),
    "cut in the pixel data": (JPEG[: len(JPEG) // 2 + 300], "no end-of-image marker"),
    "no end marker": (JPEG[:-2], "no end-of-image marker"),
    "no scan": (JPEG[:JPEG.find(b"\xff\xda")], "ends inside its header"),
    "32-bit samples": (_jpeg_with(4, 32), "32 bits"),
    "nine channels": (_jpeg_with(9, 9), "frame header"),
    "zero sampling factor": (_jpeg_with(11, 0), "component parameters"),
    "gif": (_encoded("GIF"), "not a JPEG, PNG or BMP"),
    "png cut": (_encoded("PNG")[:200], "truncated"),
    "png bad checksum": (_encoded("PNG")[:29] + b"\0\0\0\0" + _encoded("PNG")[33:], "checksum"),
    "bmp cut": (_encoded("BMP")[:400], "truncated"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_broken_images_are_named(tmp_path, name):
    data, expected = BAD[name]
    path = tmp_path / "img.jpg"
    path.write_bytes(data)
    problem = image_problem(str(path))
    assert problem is not None and expected in problem, problem


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP"])
def test_good_images_pass(tmp_path, fmt):
    path = tmp_path / "img.jpg"
    path.write_bytes(_encoded(fmt))
    assert image_problem(str(path)) is None


def test_bytes_after_the_end_marker_are_accepted_as_pil_does(tmp_path):
    path = tmp_path / "img.jpg"
    path.write_bytes(JPEG + b"trailing bytes")
    assert image_problem(str(path)) is None
    Image.open(path).load()


def test_missing_file_is_named(tmp_path):
    assert "No such file" in image_problem(str(tmp_path / "gone.jpg"))


def _files(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}_c1s1_000000_00.jpg"
        path.write_bytes(_encoded("JPEG", seed=i))
        paths.append(str(path))
    return paths


def test_check_images_names_the_bad_file_in_one_line(tmp_path):
    paths = _files(tmp_path, 5)
    with open(paths[3], "wb") as handle:
        handle.write(b"\xff\xd8\xff")
    with pytest.raises(ValueError) as err:
        check_images(paths)
    message = str(err.value)
    assert paths[3] in message and len(message.splitlines()) == 1 and "replace or remove" in message
    assert not any(p in message for p in paths[:3])
    for path in paths[:3]:
        os.unlink(path)
    check_images(paths[:3])  # remembered as good in this process: not read again
    more = _files(tmp_path / "more", 6)
    for path in more[1:6]:
        with open(path, "wb") as handle:
            handle.write(b"GIF89a")
    with pytest.raises(ValueError, match=r"5 of 6 images cannot be read: .*\(and 2 more\)") as err:
        check_images(more)
    assert len(str(err.value).splitlines()) == 1


def test_dataset_check_is_recorded_in_the_run_folder(tmp_path, monkeypatch):
    train = [ImageRecord(p, 0, 0) for p in _files(tmp_path / "data" / "train", 4)]
    dataset = ReidDataset("folder", str(tmp_path / "data"), train=train)
    monkeypatch.setattr(integrity, "_KNOWN_GOOD", set())
    assert check_dataset_images(dataset, tmp_path / "run") is True
    assert json.loads((tmp_path / "run" / integrity.CHECK_RECORD).read_text())["images"] == 4
    monkeypatch.setattr(integrity, "_KNOWN_GOOD", set())
    assert check_dataset_images(dataset, tmp_path / "run") is False  # same files: not read again
    with open(train[2].path, "wb") as handle:
        handle.write(b"garbage")  # another size: the record no longer matches
    monkeypatch.setattr(integrity, "_KNOWN_GOOD", set())
    with pytest.raises(ValueError, match=train[2].path):
        check_dataset_images(dataset, tmp_path / "run")


def test_fingerprint_follows_names_and_sizes_not_the_location(tmp_path):
    paths = _files(tmp_path / "a", 3)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    records = lambda root: [ImageRecord(str(root / os.path.basename(p)), 0, 0) for p in paths]  # noqa: E731
    first = records_fingerprint(records(tmp_path / "a"), str(tmp_path / "a"))
    assert records_fingerprint(records(tmp_path / "b"), str(tmp_path / "b")) == first
    (tmp_path / "b" / os.path.basename(paths[1])).write_bytes(_encoded("JPEG", seed=99, size=(40, 20)))
    assert records_fingerprint(records(tmp_path / "b"), str(tmp_path / "b")) != first


def _png_48bit(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), chunk by chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


@pytest.mark.parametrize("kind", ["gray 16-bit", "RGB 48-bit"])
def test_16_bit_pngs_are_refused_alike_by_the_check_and_the_pil_decoder(tmp_path, kind):
    """Decoded as they were, PIL made a 16-bit gray PNG all white, DALI scaled it down to 8 bits."""
    from cacl_dist.data.transforms import load_image

    rng = np.random.default_rng(0)
    path = tmp_path / "deep.png"
    if kind == "gray 16-bit":
        Image.fromarray(rng.integers(0, 2**16, (32, 16), dtype=np.uint16)).save(path)
    else:
        path.write_bytes(_png_48bit(rng.integers(0, 2**16, (32, 16, 3), dtype=np.uint16)))
    assert "16 bits per sample" in image_problem(str(path))
    with pytest.raises(ValueError, match=r"deep.png: the PNG has 16 bits per sample.*convert it to 8 bits"):
        load_image(str(path))
    eight = tmp_path / "eight.png"
    Image.fromarray(rng.integers(0, 256, (32, 16), dtype=np.uint8)).save(eight)
    assert image_problem(str(eight)) is None and load_image(str(eight)).shape == (3, 32, 16)


def test_a_12_bit_jpeg_is_refused():
    assert "12 bits per sample" in integrity._jpeg_problem(_jpeg_with(4, 12))

"""Only regular files are images: a FIFO named *.jpg is refused by name at once (reading it would wait forever),
and the image check ends early when a stop is requested."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from PIL import Image

from cacl_dist.data import integrity
from cacl_dist.data.integrity import check_images, image_problem
from cacl_dist.data.transforms import load_image
from cacl_dist.training.stopping import StopRequested

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")


def _within(seconds: float, fn, fifo: str):
    """fn()'s result, or a failure when it is still blocked after `seconds` (the FIFO is then fed so the
    blocked reader ends and the test process does not hang)."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer that leaves at once: the reader sees EOF
        thread.join(10)
        pytest.fail(f"still blocked on the FIFO {fifo} after {seconds} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def _jpeg(path) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 8, 3), np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())
    return str(path)


def test_a_fifo_named_jpg_is_refused_by_name_without_blocking(tmp_path):
    fifo = str(tmp_path / "0001_c1s1_000001_00.jpg")
    os.mkfifo(fifo)
    assert _within(5, lambda: image_problem(fifo), fifo) == "it is a named pipe (FIFO), not a regular file"
    paths = [_jpeg(tmp_path / "0001_c1s1_000000_00.jpg"), fifo]
    with pytest.raises(ValueError) as err:
        _within(5, lambda: check_images(paths), fifo)
    message = str(err.value)
    assert fifo in message and "not a regular file" in message and "\n" not in message


def test_the_torchvision_decoder_refuses_a_fifo_without_blocking(tmp_path):
    fifo = str(tmp_path / "query.jpg")
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="named pipe") as err:
        _within(5, lambda: load_image(fifo), fifo)
    assert fifo in str(err.value)


def test_a_folder_or_device_named_jpg_is_no_image(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    assert "a folder, not a regular file" in image_problem(str(tmp_path / "folder.jpg"))
    if os.path.exists("/dev/zero"):
        assert "a character device" in image_problem("/dev/zero")  # read to the end, it never ends


def test_the_image_check_ends_at_a_stop_request(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "_KNOWN_GOOD", set())
    paths = [_jpeg(tmp_path / f"{i:04d}_c1s1_000000_00.jpg") for i in range(40)]
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 3

    with pytest.raises(StopRequested):
        check_images(paths, should_stop=should_stop)
    assert len(asked) == 3 and not integrity._KNOWN_GOOD  # nothing remembered from an interrupted check
    check_images(paths, should_stop=lambda: False)
    assert integrity._KNOWN_GOOD == set(paths)

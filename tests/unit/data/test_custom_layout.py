"""The 'custom' layout: train.txt / query.txt / gallery.txt lists of 'path pid camera' lines."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cacl_dist.data.layouts import load_dataset


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 2, 3), np.uint8)).save(path)


def _lists(root: Path, train: str, query: str | None = None, gallery: str | None = None) -> None:
    for name in ("a.jpg", "b.jpg", "c d.png", "sub/e.jpg"):
        _image(root / "img" / name)
    (root / "train.txt").write_text(train)
    if query is not None:
        (root / "query.txt").write_text(query)
    if gallery is not None:
        (root / "gallery.txt").write_text(gallery)


def test_lists_give_sorted_records_with_relative_and_spaced_paths(tmp_path):
    _lists(tmp_path, "# comment\nimg/b.jpg 3 1\n\nimg/a.jpg -1 -1\nimg/c d.png 2 0\n",
           "img/sub/e.jpg 3 0\n", f"{tmp_path}/img/a.jpg 3 2\nimg/b.jpg 4 0\n")
    ds = load_dataset("custom", str(tmp_path))
    assert [(Path(r.path).name, r.pid, r.camid) for r in ds.train] == [("a.jpg", -1, -1), ("b.jpg", 3, 1),
                                                                       ("c d.png", 2, 0)]
    assert [(Path(r.path).name, r.pid, r.camid) for r in ds.query] == [("e.jpg", 3, 0)]
    assert [r.pid for r in ds.gallery] == [3, 4]
    assert ds.has_eval and all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)


def test_train_list_alone_trains_without_evaluation(tmp_path):
    _lists(tmp_path, "img/a.jpg 0 0\n")
    ds = load_dataset("custom", str(tmp_path))
    assert len(ds.train) == 1 and not ds.has_eval


@pytest.mark.parametrize("train,query,gallery,error,pattern", [
    ("img/a.jpg 1\n", None, None, ValueError, r"train.txt line 1 is 'img/a.jpg 1'; expected 'path pid camera'"),
    ("img/a.jpg 1 0\nimg/b.jpg x 0\n", None, None, ValueError, r"train.txt line 2 .*expected"),
    ("img/a.jpg 1 0\nimg/zz.jpg 1 0\n", None, None, FileNotFoundError, r"train.txt line 2 names .*zz.jpg"),
    ("img/a.jpg -2 0\n", None, None, ValueError, r"train.txt line 1 has pid -2"),
    ("img/a.jpg 1 0\n", "img/b.jpg -1 0\n", "img/a.jpg 1 0\n", ValueError, r"query.txt line 1 has pid -1.*>= 0"),
    ("img/a.jpg 1 0\n", "img/b.jpg 1 0\n", None, FileNotFoundError, r"query.txt exists but .*gallery.txt"),
    ("# nothing\n", None, None, ValueError, r"train.txt lists no images"),
])
def test_bad_lists_name_the_file_and_line(tmp_path, train, query, gallery, error, pattern):
    _lists(tmp_path, train, query, gallery)
    with pytest.raises(error, match=pattern):
        load_dataset("custom", str(tmp_path))


def test_missing_train_list(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train.txt with lines 'path pid camera'"):
        load_dataset("custom", str(tmp_path))


@pytest.mark.parametrize("train,query,gallery,pattern", [
    ("img/a.jpg 1 0\nimg/b.jpg 2 0\n./img/a.jpg 1 0\n", None, None, r"train.txt lines 1 and 3 both name .*a.jpg"),
    ("img/a.jpg 1 0\n", "img/b.jpg 1 0\n", "img/a.jpg 1 1\nimg/b.jpg 1 0\n",
     r"1 image\(s\) of .*query.txt are also in .*gallery.txt \(first .*b.jpg\)"),
    (f"img/a.jpg {2**63} 0\n", None, None, r"train.txt line 1 has pid 9223372036854775808 .*2\^63 - 1"),
    (f"img/a.jpg 1 {2**64}\n", None, None, r"train.txt line 1 has pid 1 / camera 18446744073709551616"),
])
def test_lists_that_would_count_an_image_twice_or_overflow_are_refused(tmp_path, train, query, gallery, pattern):
    _lists(tmp_path, train, query, gallery)
    with pytest.raises(ValueError, match=pattern) as info:
        load_dataset("custom", str(tmp_path))
    assert "\n" not in str(info.value)


def test_a_latin1_list_is_refused_naming_the_file_and_line(tmp_path):
    _lists(tmp_path, "img/a.jpg 1 0\n")
    (tmp_path / "train.txt").write_bytes("img/a.jpg 1 0\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"train.txt line 2 is not UTF-8 text \(byte 0xe9\)"):
        load_dataset("custom", str(tmp_path))


def test_a_byte_order_mark_does_not_hide_the_first_path(tmp_path):
    _lists(tmp_path, "img/a.jpg 1 0\n")
    (tmp_path / "train.txt").write_bytes(b"\xef\xbb\xbfimg/a.jpg 1 0\nimg/b.jpg 2 1\n")
    ds = load_dataset("custom", str(tmp_path))
    assert [Path(r.path).name for r in ds.train] == ["a.jpg", "b.jpg"]


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path):
    _lists(tmp_path, "img/a.jpg 1 0\n")
    odd = Image.fromarray(np.zeros((4, 2, 3), np.uint8))
    odd.save(Path(os.fsdecode(os.fsencode(tmp_path) + b"/img/caf\xe9.jpg")))
    with pytest.raises(ValueError, match=r"the file name .*img/caf\\xe9.jpg is not UTF-8 text; rename it"):
        load_dataset("folder", str(tmp_path / "img"))

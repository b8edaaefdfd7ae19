"""Dataset layouts: Market-1501, DukeMTMC-reID, MSMT17 v1/v2, plain folder, error messages."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cacl_dist.data.layouts import DATASET_NAMES, ImageRecord, load_dataset

MARKET_MINI = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "market1501-mini"


def _touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 2, 3), np.uint8)).save(path)


def _make_market(root: Path) -> None:
    train = ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "-1_c1s1_000401_03.jpg", "0007_c6s2_000100_02.jpg"]
    for name in train:
        _touch_image(root / "bounding_box_train" / name)
    for name in ["0010_c2s1_000100_01.jpg", "0011_c1s1_000200_01.jpg"]:
        _touch_image(root / "query" / name)
    gallery = ["0010_c4s1_000300_01.jpg", "0000_c5s1_000400_01.jpg", "-1_c2s1_000500_01.jpg", "0011_c2s1_000600_01.jpg"]
    for name in gallery:
        _touch_image(root / "bounding_box_test" / name)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")


def test_dataset_names_cover_all_layouts():
    assert set(DATASET_NAMES) == {"market1501", "dukemtmc", "msmt17", "folder", "synthetic", "custom"}


def test_market_layout_parses_pids_cameras_and_drops_junk(tmp_path):
    _make_market(tmp_path)
    ds = load_dataset("market1501", str(tmp_path))
    assert ds.name == "market1501" and ds.root == str(tmp_path)
    assert [(os.path.basename(r.path), r.pid, r.camid) for r in ds.train] == [
        ("0002_c1s1_000451_03.jpg", 2, 0),
        ("0002_c3s1_000551_01.jpg", 2, 2),
        ("0007_c6s2_000100_02.jpg", 7, 5),
    ]
    assert [(r.pid, r.camid) for r in ds.query] == [(10, 1), (11, 0)]
    # Junk (-1) dropped, distractors (0) kept, non-image files ignored.
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 4), (10, 3), (11, 1)]
    for split in (ds.train, ds.query, ds.gallery):
        assert all(os.path.isabs(r.path) and os.path.isfile(r.path) for r in split)
        assert [r.path for r in split] == sorted(r.path for r in split)
    assert ds.has_eval
    assert "train 3 images / 2 ids" in ds.summary()


def test_dukemtmc_layout(tmp_path):
    _touch_image(tmp_path / "bounding_box_train" / "0001_c2_f0046182.jpg")
    _touch_image(tmp_path / "bounding_box_train" / "0001_c8_f0000001.jpg")
    _touch_image(tmp_path / "query" / "0005_c1_f0000002.jpg")
    _touch_image(tmp_path / "bounding_box_test" / "0005_c3_f0000003.jpg")
    ds = load_dataset("dukemtmc", str(tmp_path))
    assert [(r.pid, r.camid) for r in ds.train] == [(1, 1), (1, 7)]
    assert [(r.pid, r.camid) for r in ds.query + ds.gallery] == [(5, 0), (5, 2)]


def _make_msmt(root: Path, train_dir: str, test_dir: str, with_val: bool = True) -> None:
    train = ["0000_000/0000_000_01_0303morning_0015_0.jpg 0", "0000_000/0000_001_05_0303morning_0020_1.jpg 0",
             "0001_000/0001_000_15_0303noon_0001_0.jpg 1"]
    val = ["0002_000/0002_000_03_0303noon_0005_0.jpg 2"]
    query = ["0000_000/0000_000_02_0303morning_0001_0.jpg 0"]
    gallery = ["0000_000/0000_003_07_0303morning_0002_0.jpg 0", "0001_000/0001_000_09_0303noon_0003_0.jpg 1"]
    lists = {"list_train.txt": (train_dir, train), "list_query.txt": (test_dir, query),
             "list_gallery.txt": (test_dir, gallery)}
    if with_val:
        lists["list_val.txt"] = (train_dir, val)
    for list_name, (folder, lines) in lists.items():
        (root / list_name).parent.mkdir(parents=True, exist_ok=True)
        (root / list_name).write_text("\n".join(lines) + "\n")
        for line in lines:
            _touch_image(root / folder / line.split()[0])


@pytest.mark.parametrize("train_dir,test_dir", [("train", "test"), ("mask_train_v2", "mask_test_v2")])
def test_msmt17_v1_and_v2(tmp_path, train_dir, test_dir):
    _make_msmt(tmp_path, train_dir, test_dir)
    ds = load_dataset("msmt17", str(tmp_path))
    # train = list_train + list_val; camera = third field of the file name, 0-based.
    assert sorted((r.pid, r.camid) for r in ds.train) == [(0, 0), (0, 4), (1, 14), (2, 2)]
    assert all(f"{os.sep}{train_dir}{os.sep}" in r.path for r in ds.train)
    assert [(r.pid, r.camid) for r in ds.query] == [(0, 1)]
    assert sorted((r.pid, r.camid) for r in ds.gallery) == [(0, 6), (1, 8)]
    assert all(f"{os.sep}{test_dir}{os.sep}" in r.path and os.path.isfile(r.path) for r in ds.query + ds.gallery)
    assert [r.path for r in ds.train] == sorted(r.path for r in ds.train)


def test_msmt17_without_val_list_uses_train_list_only(tmp_path):
    _make_msmt(tmp_path, "train", "test", with_val=False)
    assert len(load_dataset("msmt17", str(tmp_path)).train) == 3


def test_msmt17_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mask_train_v2"):
        load_dataset("msmt17", str(tmp_path))
    _make_msmt(tmp_path, "train", "test")
    os.remove(tmp_path / "list_query.txt")
    with pytest.raises(FileNotFoundError, match="list_query.txt"):
        load_dataset("msmt17", str(tmp_path))
    (tmp_path / "list_query.txt").write_text("0000_000/0000_000_02_0303morning_0001_0.jpg\n")
    with pytest.raises(ValueError, match=r"list_query.txt line 1"):
        load_dataset("msmt17", str(tmp_path))
    (tmp_path / "list_query.txt").write_text("0000_000/badname.jpg 0\n")
    with pytest.raises(ValueError, match="badname.jpg"):
        load_dataset("msmt17", str(tmp_path))


def test_msmt17_list_pointing_at_missing_images(tmp_path):
    _make_msmt(tmp_path, "train", "test")
    (tmp_path / "list_gallery.txt").write_text("9999_000/9999_000_01_0303morning_0001_0.jpg 9\n")
    with pytest.raises(FileNotFoundError, match="9999_000_01_0303morning_0001_0.jpg"):
        load_dataset("msmt17", str(tmp_path))


def test_folder_layout_is_recursive_sorted_and_unlabelled(tmp_path):
    for rel in ["b/x.png", "a/deep/y.jpeg", "a/z.JPG", "c.bmp"]:
        _touch_image(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("skip me")
    ds = load_dataset("folder", str(tmp_path))
    rels = [os.path.relpath(r.path, tmp_path) for r in ds.train]
    assert rels == sorted(rels) and len(rels) == 4 and "notes.txt" not in rels
    assert {(r.pid, r.camid) for r in ds.train} == {(-1, -1)}
    assert ds.query == [] and ds.gallery == [] and not ds.has_eval
    assert isinstance(ds.train[0], ImageRecord)


def test_missing_root_and_subfolder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        load_dataset("market1501", str(missing))
    with pytest.raises(FileNotFoundError, match="cacl_dist.data.synthetic"):
        load_dataset("synthetic", str(missing))
    _make_market(tmp_path)
    for rel in (tmp_path / "query").iterdir():
        rel.unlink()
    (tmp_path / "query").rmdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "query"))):
        load_dataset("market1501", str(tmp_path))


def test_empty_split_and_empty_folder_errors(tmp_path):
    _make_market(tmp_path)
    for f in (tmp_path / "bounding_box_train").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"train split .*bounding_box_train"):
        load_dataset("market1501", str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        load_dataset("folder", str(empty))


def test_unparsable_file_name_names_file_and_pattern(tmp_path):
    _make_market(tmp_path)
    _touch_image(tmp_path / "query" / "person_7.jpg")
    with pytest.raises(ValueError, match=r"person_7\.jpg.*0002_c1s1_000451_03\.jpg"):
        load_dataset("market1501", str(tmp_path))
    with pytest.raises(ValueError, match=r"0001_c2_f0046182"):
        load_dataset("dukemtmc", str(tmp_path))


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="cuhk03.*market1501"):
        load_dataset("cuhk03", str(tmp_path))


@pytest.mark.skipif(not MARKET_MINI.is_dir(), reason="market1501-mini is not available")
def test_market1501_mini_loads():
    ds = load_dataset("market1501", str(MARKET_MINI))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (9173, 1122, 2641)
    assert len({r.pid for r in ds.train}) == 500
    assert {r.camid for r in ds.train} == set(range(6))
    assert not {r.pid for r in ds.train} & {r.pid for r in ds.query}

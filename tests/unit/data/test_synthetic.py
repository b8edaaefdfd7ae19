"""Synthetic dataset: determinism, layout, idempotency, and colour as a nuisance."""

import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from cacl_dist.data import synthetic
from cacl_dist.data.layouts import load_dataset
from cacl_dist.data.synthetic_folder import SPLIT_FOLDERS
from cacl_dist.data.synthetic import (
    generate_synthetic,
    make_camera,
    make_identity,
    render_person,
    synthetic_settings,
)
from cacl_dist.data.synthetic_folder import locate

from tests.helpers.synthetic import identity_specs

SMALL = dict(num_train_ids=5, num_test_ids=3, images_per_id=5, num_cameras=2, height=64, width=32)


def _read_tree(root):
    files = {}
    for sub in SPLIT_FOLDERS:
        for name in sorted(os.listdir(os.path.join(root, sub))):
            with open(os.path.join(root, sub, name), "rb") as handle:
                files[(sub, name)] = handle.read()
    return files


def test_same_seed_gives_identical_bytes_and_different_seed_differs(tmp_path):
    a = _read_tree(generate_synthetic(str(tmp_path / "a"), seed=3, **SMALL))
    b = _read_tree(generate_synthetic(str(tmp_path / "b"), seed=3, **SMALL))
    c = _read_tree(generate_synthetic(str(tmp_path / "c"), seed=4, **SMALL))
    assert a == b
    assert len(a) == 8 * 5
    shared = set(a) & set(c)
    assert shared, "file names should mostly repeat across seeds"
    assert sum(a[k] != c[k] for k in shared) == len(shared)


def test_layout_is_loadable_and_splits_are_consistent(tmp_path):
    root = generate_synthetic(str(tmp_path), seed=0, **SMALL)
    ds = load_dataset("synthetic", root)
    assert {r.pid for r in ds.train} == {1, 2, 3, 4, 5}
    test_pids = {r.pid for r in ds.query} | {r.pid for r in ds.gallery}
    assert test_pids == {6, 7, 8}
    assert len(ds.train) == 25 and len(ds.query) + len(ds.gallery) == 15
    # One query per (pid, camera); every query identity keeps gallery images.
    pairs = [(r.pid, r.camid) for r in ds.query]
    assert len(pairs) == len(set(pairs)) == 3 * 2
    assert {r.pid for r in ds.gallery} == {6, 7, 8}
    assert {r.camid for r in ds.train} == {0, 1}
    with Image.open(ds.train[0].path) as img:
        assert img.size == (32, 64) and img.mode == "RGB"


def test_idempotent_and_force_redraws_only_its_own_images(tmp_path):
    root = generate_synthetic(str(tmp_path), seed=0, **SMALL)
    before = _read_tree(root)
    (tmp_path / "keep.txt").write_text("user file")
    user_file = tmp_path / "bounding_box_train" / "notes.txt"
    user_file.write_text("a user's file among the images")
    image = tmp_path / "bounding_box_train" / sorted(os.listdir(tmp_path / "bounding_box_train"))[0]
    image.write_bytes(b"damaged")
    generate_synthetic(root, seed=0, **SMALL)
    assert image.read_bytes() == b"damaged", "same parameters must not redraw"
    generate_synthetic(root, seed=0, force=True, **SMALL)
    assert _read_tree(root) == {**before, ("bounding_box_train", "notes.txt"): b"a user's file among the images"}
    assert (tmp_path / "keep.txt").read_text() == "user file"


def test_other_settings_go_to_a_new_folder_and_never_touch_the_first_set(tmp_path):
    root = generate_synthetic(str(tmp_path), seed=0, **SMALL)
    assert root == str(tmp_path), "an empty data.root holds the set itself (the quickstart's images stay put)"
    before = _all_bytes(tmp_path)
    other = generate_synthetic(str(tmp_path), seed=0, **dict(SMALL, num_train_ids=2))
    assert os.path.dirname(other) == str(tmp_path) and os.path.basename(other).startswith("set-")
    assert {k: v for k, v in _all_bytes(tmp_path).items() if not k.startswith(os.path.basename(other))} == before
    assert len(load_dataset("synthetic", other).train) == 2 * 5
    assert json.loads((tmp_path / "synthetic.json").read_text())["num_train_ids"] == 5
    # Both sets are found again where they are, without writing anything.
    assert locate(str(tmp_path), synthetic_settings(seed=0, **SMALL)) == root
    assert locate(str(tmp_path), synthetic_settings(seed=0, **dict(SMALL, num_train_ids=2))) == other
    assert generate_synthetic(str(tmp_path), seed=0, **dict(SMALL, num_train_ids=2)) == other
    assert _all_bytes(tmp_path) == {**before, **{k: v for k, v in _all_bytes(tmp_path).items() if k not in before}}


def _all_bytes(root):
    """Every file under ``root`` (relative path -> bytes), the generator's lock file left out."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if name != ".synthetic.lock":
                with open(path, "rb") as handle:
                    found[os.path.relpath(path, root)] = handle.read()
    return found


def _market_like(root):
    """A real dataset of a user's: images in the three split folders and a file of their own."""
    rng = np.random.default_rng(0)
    for sub in SPLIT_FOLDERS:
        (root / sub).mkdir(parents=True)
        for i in range(3):
            (root / sub / f"{i + 1:04d}_c1s1_00000{i}_00.jpg").write_bytes(rng.bytes(64))
    (root / "readme.txt").write_text("Market-1501")
    return _all_bytes(root)


def test_a_folder_with_files_it_did_not_write_is_refused_and_left_as_it_was(tmp_path):
    before = _market_like(tmp_path / "Market-1501")
    for params in (SMALL, dict(SMALL, seed=5)):
        with pytest.raises(ValueError) as info:
            generate_synthetic(str(tmp_path / "Market-1501"), **params)
        message = str(info.value)
        assert str(tmp_path / "Market-1501") in message and "--config configs/market1501.yaml" in message
        assert "\n" not in message
    with pytest.raises(ValueError, match="Market-1501"):
        generate_synthetic(str(tmp_path / "Market-1501"), force=True, **SMALL)
    assert _all_bytes(tmp_path / "Market-1501") == before
    assert not (tmp_path / "Market-1501" / ".synthetic.lock").exists()


def test_a_set_interrupted_while_written_is_finished_on_the_next_call(tmp_path, monkeypatch):
    calls = []

    def killed(root, params):
        calls.append(root)
        raise KeyboardInterrupt  # stands for a kill in the middle of the images

    monkeypatch.setattr(synthetic, "write_images", killed)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(str(tmp_path), seed=0, **SMALL)
    monkeypatch.undo()
    assert not (tmp_path / "synthetic.json").exists() and (tmp_path / ".synthetic-partial.json").exists()
    root = generate_synthetic(str(tmp_path), seed=0, **SMALL)
    assert root == str(tmp_path) and calls == [str(tmp_path)]
    assert _read_tree(root) == _read_tree(generate_synthetic(str(tmp_path / "alone"), seed=0, **SMALL))
    assert not (tmp_path / ".synthetic-partial.json").exists()


def test_a_finished_set_is_used_without_a_lock_or_a_write(tmp_path, monkeypatch):
    """A complete set on a read-only mount: neither its lock file nor any other file is opened for writing."""
    import builtins

    from cacl_dist.data import synthetic_folder

    root = generate_synthetic(str(tmp_path), seed=0, **SMALL)
    other = generate_synthetic(str(tmp_path), seed=1, **SMALL)
    os.remove(tmp_path / ".synthetic.lock")
    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise OSError(30, "Read-only file system", str(file))
        return real_open(file, mode, *args, **kwargs)

    def no_makedirs(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(synthetic_folder.os, "makedirs", no_makedirs)
    assert generate_synthetic(str(tmp_path), seed=0, **SMALL) == root
    assert generate_synthetic(str(tmp_path), seed=1, **SMALL) == other
    with pytest.raises(ValueError, match="cannot write the synthetic set into data.root .*Read-only"):
        generate_synthetic(str(tmp_path), seed=2, **SMALL)  # a set that is not there yet: one line


def test_invalid_parameters_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="images_per_id=2"):
        generate_synthetic(str(tmp_path), images_per_id=2, num_cameras=2)
    with pytest.raises(ValueError, match="height=12"):
        generate_synthetic(str(tmp_path), height=12)


def test_cli_writes_dataset(tmp_path, capsys):
    synthetic.main(["--root", str(tmp_path), "--num-train-ids", "2", "--num-test-ids", "2",
                    "--images-per-id", "3", "--num-cameras", "2", "--height", "32", "--width", "16", "--seed", "1"])
    assert "ready" in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "bounding_box_train")) == 6
    assert json.loads((tmp_path / "synthetic.json").read_text())["seed"] == 1


def test_cli_refuses_a_folder_it_did_not_write_in_one_line(tmp_path, capsys):
    before = _market_like(tmp_path / "data")
    with pytest.raises(SystemExit) as info:
        synthetic.main(["--root", str(tmp_path / "data")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: --root ")
    assert _all_bytes(tmp_path / "data") == before


def test_palettes_are_shared_and_cameras_cast_colour():
    specs = identity_specs(100, seed=0)
    palettes = Counter(s.palette for s in specs)
    assert len(palettes) <= len(synthetic.PALETTES) and max(palettes.values()) >= 10
    # Identities that share a palette differ in garment cut, bag and texture.
    by_palette = {}
    for spec in specs:
        by_palette.setdefault(spec.palette, []).append((spec.texture, spec.long_coat, spec.skirt, spec.bag))
    for group in by_palette.values():
        assert len(set(group)) >= min(len(group), 5)
    gains = np.array([make_camera(0, c).gain for c in range(4)])
    assert np.abs(gains[:, None] - gains[None]).max() > 0.2


def _colour_histogram(img):
    centre = img[img.shape[0] // 8 : -img.shape[0] // 8, img.shape[1] // 3 : -img.shape[1] // 3]
    hist = [np.histogram(centre[..., ch], bins=8, range=(0, 1))[0] for ch in range(3)]
    return np.concatenate(hist + [centre.mean(axis=(0, 1)) * 50.0])


def _gray_gradient_profile(img):
    gray = img @ np.array([0.299, 0.587, 0.114], np.float32)
    grad_y = np.abs(np.diff(gray, axis=0))[:, :-1]
    grad_x = np.abs(np.diff(gray, axis=1))[:-1]
    rows = grad_y.shape[0] // 8 * 8
    bands = [g[:rows].reshape(8, -1).mean(axis=1) for g in (grad_y, grad_x)]
    return np.concatenate(bands)


def _cross_camera_rank1(feats, pids, cams):
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    dist = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    dist[cams[:, None] == cams[None]] = np.inf
    return float((pids[dist.argmin(1)] == pids).mean())


def test_shape_and_texture_identify_people_better_than_colour():
    """Across cameras, a colour-free gradient profile retrieves identities far better than colour."""
    cameras = [make_camera(0, c) for c in range(4)]
    imgs, pids, cams = [], [], []
    for pid in range(1, 41):
        spec, rng = make_identity(0, pid), np.random.default_rng([7, pid])
        for k in range(8):
            imgs.append(render_person(spec, cameras[k % 4], rng, 64, 32).astype(np.float32) / 255.0)
            pids.append(pid)
            cams.append(k % 4)
    pids, cams = np.array(pids), np.array(cams)
    rank1_colour = _cross_camera_rank1(np.stack([_colour_histogram(x) for x in imgs]), pids, cams)
    rank1_shape = _cross_camera_rank1(np.stack([_gray_gradient_profile(x) for x in imgs]), pids, cams)
    assert rank1_shape > 0.3
    assert rank1_shape > 2.0 * rank1_colour


def test_processes_started_together_write_the_dataset_once(tmp_path):
    """Several runs on one fresh data.root (e.g. parallel benchmark runs) all get the whole dataset."""
    import subprocess
    import sys

    root = tmp_path / "shared"
    code = ("import sys; from cacl_dist.data.synthetic import generate_synthetic; "
            f"generate_synthetic(sys.argv[1], seed=3, **{SMALL!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    assert _read_tree(root) == _read_tree(generate_synthetic(str(tmp_path / "alone"), seed=3, **SMALL))


def test_a_filesystem_without_flock_still_gets_the_dataset(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    root = generate_synthetic(str(tmp_path / "nfs"), seed=3, **SMALL)
    assert len(_read_tree(root)) == 8 * 5


def test_a_marker_being_written_by_another_process_is_not_someone_elses_data(tmp_path):
    """Processes started together: one may see the other's marker temporary before its rename."""
    from cacl_dist.data import synthetic_folder as sf
    from cacl_dist.errors import UserError

    root = tmp_path / "root"
    root.mkdir()
    (root / f".{sf.PARTIAL_MARKER}.k3j9x1.tmp").write_text("{")
    (root / sf.LOCK_NAME).write_text("")
    sf._refuse_foreign(str(root), "data.root")  # ours in passing: no refusal
    assert sf.locate(str(root), {"a": 1}) == str(root)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write"):
        sf._refuse_foreign(str(root), "data.root")

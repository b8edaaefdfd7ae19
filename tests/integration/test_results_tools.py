"""The result tools on a tiny synthetic run: ranked lists, pseudo-label quality, cluster montage,
report, feature extraction and search for one's own images, and a custom-list dataset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cacl_dist.training.checkpoint import load_checkpoint, load_trained_model
from cacl_dist.data.layouts import load_dataset
from cacl_dist.evaluation.cluster_quality import cluster_quality
from cacl_dist.evaluation.extract import ExtractionSettings, extract_all
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.runs.pseudo_labels import load_round, saved_epochs
from cacl_dist.visualize import draw
from cacl_dist.cli.visualize import main as visualize
from cacl_dist.visualize.clusters import refined_away
from cacl_dist.visualize.ranked import RankedQuery, render

from tests.helpers.runs import fit

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_root):
    """One finished tiny run (2 epochs, evaluated after each), shared by the tests of this module."""
    run_dir = tmp_path_factory.mktemp("results") / "run"
    trainer = fit(run_dir, synthetic_root, **{"checkpoint.keep_every_epochs": 1})
    return run_dir, trainer


def _eval_features(checkpoint, records):
    _, cfg, model = load_trained_model(checkpoint, None, [])
    settings = ExtractionSettings.from_config(cfg, torch.device("cpu"))
    return extract_all(model.inference_branch(), records, settings, rank=0, world_size=1).numpy()


def test_pseudo_labels_are_saved_and_their_quality_logged(run):
    run_dir, trainer = run
    assert saved_epochs(run_dir) == [1, 2]
    assert np.load(run_dir / "pseudo_labels" / "epoch_002.npy").dtype == np.int32
    stages = load_round(run_dir, 2)
    assert np.array_equal(stages["pseudo"], load_checkpoint(run_dir / "last.pt")["labels"].numpy())
    pids = np.array([r.pid for r in trainer.dataset.train])
    rows = read_metrics(run_dir, "cluster")
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        stages = load_round(run_dir, row["epoch"])
        assert int(((stages["raw"] >= 0) & (stages["refined"] < 0)).sum()) == row["num_refined_away"]
        for prefix, stage in (("pseudo", "pseudo"), ("raw", "raw")):
            expected = cluster_quality(stages[stage], pids)
            for key, value in expected.items():
                assert row[f"{prefix}_{key}"] == pytest.approx(value, abs=1e-12), (prefix, key)
    log = (run_dir / "log_rank0.txt").read_text()
    assert "pseudo labels vs identities: F" in log and "raw DBSCAN vs identities" in log


def test_ranked_frames_match_the_ground_truth(run, capsys):
    run_dir, trainer = run
    out = run_dir / "ranked"
    assert visualize(["ranked", "--checkpoint", str(run_dir / "last.pt"), "--num-queries", "5", "--topk", "6",
                      "--output", str(out)]) == 0
    dataset = trainer.dataset
    feats = _eval_features(run_dir / "last.pt", list(dataset.query) + list(dataset.gallery))
    q, g = feats[:len(dataset.query)].astype(np.float64), feats[len(dataset.query):].astype(np.float64)
    dist = np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)
    listed = json.loads((out / "ranked.json").read_text())["queries"]
    assert len(listed) == 5
    colours_seen = set()
    for item in listed:
        qi = item["query"]
        top = np.argsort(dist[qi], kind="stable")[:6]
        assert item["gallery"] == top.tolist()
        np.testing.assert_allclose(item["distances"], dist[qi, top], atol=1e-5)
        image = Image.open(out / item["picture"]).convert("RGB")
        _, layout = render(RankedQuery(**{k: item[k] for k in ("query", "gallery", "distances", "status", "ap")}),
                           dataset.query, dataset.gallery, 6)
        left, top_y, _, _ = layout.frame_box(0)
        assert image.getpixel((left + 1, top_y + 1)) == draw.QUERY
        qrec = dataset.query[qi]
        for pos, gi in enumerate(top.tolist(), start=1):
            grec = dataset.gallery[gi]
            expected = (draw.JUNK if (grec.pid, grec.camid) == (qrec.pid, qrec.camid)
                        else draw.CORRECT if grec.pid == qrec.pid else draw.WRONG)
            left, top_y, right, bottom = layout.frame_box(pos)
            assert image.getpixel((left + 1, top_y + 1)) == expected
            assert image.getpixel((right - 2, bottom - 2)) == expected
            colours_seen.add(expected)
    assert {draw.CORRECT, draw.WRONG} <= colours_seen
    index = (out / "index.html").read_text()
    assert all(item["picture"] in index for item in listed) and "AP" in index
    assert "wrote 5 ranked lists" in capsys.readouterr().out


def test_cluster_montage_is_written(run):
    run_dir, _ = run
    assert visualize(["clusters", "--run", str(run_dir), "--epoch", "1"]) == 0
    image = Image.open(run_dir / "clusters" / "epoch_001.png")
    assert image.width > 600 and image.height > 400
    stages = load_round(run_dir, 1)
    assert len(refined_away(stages["raw"], stages["refined"])) == read_metrics(run_dir, "cluster")[0][
        "num_refined_away"]
    assert visualize(["clusters", "--run", str(run_dir), "--epoch", "9"]) == 2  # one-line error


def _report(run_dir, capsys):
    from cacl_dist.cli.report import main as report

    assert report([str(run_dir)]) == 0
    capsys.readouterr()
    return (run_dir / "report" / "report.md").read_text()


def test_report_on_a_finished_a_running_and_a_resumed_run(run, tmp_path, synthetic_root, capsys):
    pytest.importorskip("matplotlib")
    from cacl_dist.runs.report import read_rows

    run_dir, trainer = run
    text = _report(run_dir, capsys)
    assert "(finished)" in text and "pseudo labels |" in text
    for name in ("evaluation", "cmc", "distances", "losses", "clustering", "pseudo_label_quality", "speed"):
        assert (run_dir / "report" / f"{name}.png").is_file() and f"({name}.png)" in text
    last = trainer.progress.eval_history[-1]
    assert f"| last | 2 | {100 * last['mAP']:.1f}% |" in text

    # still running: a half-written last line is skipped
    going = tmp_path / "going"
    going.mkdir()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (going / "metrics.jsonl").write_text("\n".join(lines[:8]) + '\n{"kind": "train", "st')
    rows, skipped = read_rows(going)
    assert skipped == 1 and len(rows) == 8
    assert "in progress" in _report(going, capsys)

    # resumed from the epoch-1 checkpoint: epoch 2 is trained and logged again
    resumed = tmp_path / "resumed"
    shutil.copytree(run_dir, resumed, ignore=shutil.ignore_patterns("report", "ranked", "clusters"))
    shutil.copy(resumed / "epoch_001.pt", resumed / "last.pt")
    fit(resumed, synthetic_root, **{"checkpoint.keep_every_epochs": 1})
    raw_train = [r for r in read_metrics(resumed) if r["kind"] == "train"]
    assert [r["step"] for r in raw_train] == [1, 2, 3, 4, 5, 6]  # rows after the checkpoint were dropped
    rows, _ = read_rows(resumed)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in rows if r["kind"] == "eval"] == [0, 1, 2]
    text = _report(resumed, capsys)
    assert "(finished)" in text and f"| last | 2 | {100 * last['mAP']:.1f}% |" in text

    # a metrics file that logged steps 4-6 twice (a resume that kept its rows) reports each step once
    repeated = tmp_path / "repeated"
    shutil.copytree(resumed, repeated, ignore=shutil.ignore_patterns("report", "ranked", "clusters"))
    again = [line for line in (resumed / "metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in line and json.loads(line)["step"] >= 4]
    with open(repeated / "metrics.jsonl", "a") as out:
        out.write("\n".join(again) + "\n")
    assert len([r for r in read_metrics(repeated) if r["kind"] == "train"]) == 9
    rows, _ = read_rows(repeated)
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_extracted_features_equal_evaluation_features(run, tmp_path, synthetic_root, capsys):
    from cacl_dist.inference.export import branch_metadata, export_state_dict, export_torchscript
    from cacl_dist.cli.extract import main as extract

    run_dir, trainer = run
    checkpoint = run_dir / "last.pt"
    assert extract(["--checkpoint", str(checkpoint), "--images", str(synthetic_root / "query"),
                    "--output", str(tmp_path / "q.npz")]) == 0
    data = np.load(tmp_path / "q.npz")
    records = trainer.dataset.query
    assert [str(n) for n in data["names"]] == [r.path.rsplit("/", 1)[1] for r in records]
    expected = _eval_features(checkpoint, records)
    np.testing.assert_allclose(data["features"], expected, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(data["features"], axis=1), 1.0, atol=1e-5)

    _, cfg, model = load_trained_model(checkpoint, None, [])
    export_torchscript(model.inference_branch().eval(), tmp_path / "branch.ts", 64, 32)
    assert extract(["--checkpoint", str(tmp_path / "branch.ts"), "--images", str(synthetic_root / "query"),
                    "--output", str(tmp_path / "ts.npz")]) == 2  # no input size: one-line error
    assert "--height and --width" in capsys.readouterr().err
    assert extract(["--checkpoint", str(tmp_path / "branch.ts"), "--height", "64", "--width", "32",
                    "--images", str(synthetic_root / "query"), "--output", str(tmp_path / "ts.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "ts.npz")["features"], expected, atol=1e-5)

    branch = model.inference_branch().eval()
    export_state_dict(branch, tmp_path / "branch.pt", branch_metadata(cfg, branch.dim, 64, 32))
    assert extract(["--checkpoint", str(tmp_path / "branch.pt"), "--images", str(synthetic_root / "query"),
                    "--output", str(tmp_path / "sd.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "sd.npz")["features"], expected, atol=1e-5)


def test_search_returns_the_nearest_neighbours(run, tmp_path, synthetic_root, capsys):
    from cacl_dist.cli.extract import main as extract
    from cacl_dist.cli.search import main as search

    run_dir, trainer = run
    gallery_dir = synthetic_root / "bounding_box_test"
    assert extract(["--checkpoint", str(run_dir / "last.pt"), "--images", str(gallery_dir),
                    "--output", str(tmp_path / "g.npz")]) == 0
    query = trainer.dataset.query[:3]
    (tmp_path / "queries.txt").write_text("".join(f"{r.path}\n" for r in query))
    capsys.readouterr()
    assert search(["--features", str(tmp_path / "g.npz"), "--query", str(tmp_path / "queries.txt"), "--topk", "4",
                   "--output", str(tmp_path / "result.png")]) == 0
    printed = capsys.readouterr().out.splitlines()

    gallery = trainer.dataset.gallery
    feats = _eval_features(run_dir / "last.pt", list(query) + list(gallery)).astype(np.float64)
    dist = np.linalg.norm(feats[:3, None] - feats[None, 3:], axis=2)
    names = [r.path.rsplit("/", 1)[1] for r in gallery]
    for qi in range(3):
        block = printed[qi * 5:(qi + 1) * 5]
        assert block[0] == f"query {query[qi].path}"
        got = [line.split()[2] for line in block[1:]]
        assert got == [names[j] for j in np.argsort(dist[qi], kind="stable")[:4]]
    assert Image.open(tmp_path / "result.png").height > 3 * draw.TILE_H

    # on the fly from a folder, and a query that is in the .npz needs no model
    assert search(["--checkpoint", str(run_dir / "last.pt"), "--gallery", str(gallery_dir),
                   "--query", query[0].path, "--topk", "4"]) == 0
    assert capsys.readouterr().out.splitlines()[1:5] == printed[1:5]
    # a query that is itself in the gallery: its own file is never listed, the next nearest come instead
    assert search(["--features", str(tmp_path / "g.npz"), "--query", gallery[0].path, "--topk", "3"]) == 0
    listed = [line.split()[2] for line in capsys.readouterr().out.splitlines()[1:]]
    g_feats = feats[3:]
    nearest = np.argsort(np.linalg.norm(g_feats - g_feats[0], axis=1), kind="stable")
    assert names[0] not in listed and listed == [names[j] for j in nearest if j != 0][:3]


def test_custom_lists_train_and_evaluate_like_the_same_images(run, tmp_path, synthetic_root):
    run_dir, trainer = run
    dataset = load_dataset("synthetic", str(synthetic_root))
    root = tmp_path / "lists"
    root.mkdir()
    for split in ("train", "query", "gallery"):
        lines = [f"{r.path} {r.pid} {r.camid}\n" for r in getattr(dataset, split)]
        (root / f"{split}.txt").write_text("# path pid camera\n" + "".join(lines))
    custom = fit(tmp_path / "custom_run", root, **{"data.dataset": "custom", "data.root": str(root)})
    assert custom.dataset.name == "custom" and custom.dataset.has_eval
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in custom.progress.eval_history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in trainer.progress.eval_history]
    assert "pseudo_fscore" in read_metrics(tmp_path / "custom_run", "cluster")[0]

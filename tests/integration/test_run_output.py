"""What a training run shows and keeps for its pictures: stage bars of the clustering with run.progress
(on rank 0), the run's ETA in the epoch lines, cluster sizes, the CMC curve and the distance histograms."""

from __future__ import annotations

import json

import pytest

from cacl_dist.runs.eval_distances import last_histogram
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.evaluation.evaluator import CMC_RANKS

from tests.helpers.runs import fit, log_text


@pytest.mark.parametrize("show", [True, False])
def test_progress_bars_follow_run_progress_and_the_epoch_line_has_the_eta(tmp_path, synthetic_root, capsys, show):
    run = tmp_path / "run"
    fit(run, synthetic_root, **{"run.progress": show, "train.epochs": 1, "eval.every_epochs": 1})
    err = capsys.readouterr().err
    for number, stage in enumerate(("neighbours", "Jaccard", "DBSCAN", "refinement"), start=1):
        assert (f"clustering {number}/4: {stage}" in err) == show, err[-2000:]
    assert ("epoch 1:" in err) == show
    epoch_lines = [line for line in log_text(run).splitlines() if " INFO epoch 1 [" in line]
    assert epoch_lines and all(", run ETA " in line for line in epoch_lines)
    assert epoch_lines[-1].endswith("run ETA 0 s")  # the last step of the run
    assert_records_for_the_pictures(run)


def assert_records_for_the_pictures(run):
    """Cluster sizes, the CMC curve of every evaluation and the distance histograms in the run folder."""
    cluster = read_metrics(run, "cluster")[0]
    assert cluster["num_multi_clusters"] + cluster["num_singletons"] == cluster["num_clusters"]
    evals = read_metrics(run, "eval")
    assert [e["epoch"] for e in evals] == [0, 1]
    for row in evals:
        cmc = row["cmc"]
        assert len(cmc) == CMC_RANKS and cmc == sorted(cmc) and cmc[0] == pytest.approx(row["rank1"], abs=1e-6)
        assert cmc[4] == pytest.approx(row["rank5"], abs=1e-6) and cmc[9] == pytest.approx(row["rank10"], abs=1e-6)
    stored = sorted(p.name for p in (run / "eval_distances").iterdir())
    assert stored == ["epoch_000.json", "epoch_001.json"]
    hist = last_histogram(run)
    assert hist["epoch"] == 1 and hist["kind"] == "squared Euclidean distance"
    # 6 test identities x 6 images over 3 cameras: every query against every gallery image is counted once
    first = json.loads((run / "eval_distances" / "epoch_000.json").read_text())
    assert sum(first["positive"]) > 0 and sum(first["negative"]) > sum(first["positive"])
    assert len(hist["positive"]) == len(hist["negative"]) == 80

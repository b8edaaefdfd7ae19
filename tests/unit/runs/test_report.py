"""The training report's reading of metrics.jsonl: last entry per step, time split, summary."""

import json

import pytest

from cacl_dist.runs.report import markdown, read_rows, summarize, training_seconds


def _write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def test_repeated_steps_keep_their_last_entry_in_step_order(tmp_path):
    rows = [
        {"kind": "eval", "step": 0, "time": 0.0, "epoch": 0, "mAP": 0.1, "seconds": 1.0},
        {"kind": "cluster", "step": 0, "time": 1.0, "epoch": 1, "seconds": 2.0},
        {"kind": "train", "step": 1, "time": 2.0, "epoch": 1, "iter": 1, "loss": 5.0},
        {"kind": "train", "step": 2, "time": 3.0, "epoch": 1, "iter": 2, "loss": 4.0},
        {"kind": "train", "step": 2, "time": 9.0, "epoch": 1, "iter": 2, "loss": 3.0},  # after a resume
        {"kind": "train", "step": 3, "time": 10.0, "epoch": 1, "iter": 3, "loss": 2.0},
    ]
    _write(tmp_path / "metrics.jsonl", rows, tail='{"kind": "tr')
    got, skipped = read_rows(tmp_path)
    assert skipped == 1
    assert [(r["kind"], r["step"]) for r in got] == [("eval", 0), ("cluster", 0), ("train", 1), ("train", 2),
                                                     ("train", 3)]
    assert [r["loss"] for r in got if r["kind"] == "train"] == [5.0, 3.0, 2.0]


def test_missing_metrics_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_rows(tmp_path)


def test_training_seconds_from_images_per_second():
    rows = [{"epoch": 1, "iter": 20, "images_per_s": 64.0}, {"epoch": 1, "iter": 40, "images_per_s": 32.0},
            {"epoch": 2, "iter": 20, "images_per_s": 64.0}]
    # 20 steps x 32 images at 64/s, 20 at 32/s, then a new epoch: 20 steps again at 64/s
    assert training_seconds(rows, 32) == pytest.approx(10.0 + 20.0 + 10.0)
    assert training_seconds(rows, None) is None


def test_summary_best_last_and_time_split(tmp_path):
    rows = [
        {"kind": "eval", "step": 0, "time": 0.0, "epoch": 0, "mAP": 0.1, "rank1": 0.2, "seconds": 1.5},
        {"kind": "cluster", "step": 0, "time": 1.0, "epoch": 1, "seconds": 2.0, "num_clusters": 5,
         "pseudo_fscore": 0.5, "pseudo_precision": 0.6, "pseudo_recall": 0.4, "pseudo_ari": 0.3, "pseudo_nmi": 0.8},
        {"kind": "train", "step": 4, "time": 5.0, "epoch": 1, "iter": 4, "images_per_s": 8.0, "loss": 1.0},
        {"kind": "eval", "step": 4, "time": 6.0, "epoch": 1, "mAP": 0.3, "rank1": 0.4, "seconds": 0.5},
        {"kind": "eval", "step": 8, "time": 9.0, "epoch": 2, "mAP": 0.25, "rank1": 0.5, "seconds": 0.5},
    ]
    config = {"train": {"batch_size": 2, "epochs": 3, "iters_per_epoch": 4}, "data": {"dataset": "synthetic"}}
    summary = summarize(rows, config)
    assert summary["best_eval"]["epoch"] == 1 and summary["last_eval"]["epoch"] == 2
    assert summary["training_s"] == pytest.approx(1.0) and summary["clustering_s"] == 2.0
    assert summary["evaluation_s"] == 2.5 and summary["span_s"] == 9.0 and not summary["finished"]
    text = markdown(tmp_path, summary, config, ["x/evaluation.png"], "")
    assert "| best (by mAP, after training began) | 1 | 30.0% | 40.0% |" in text and "| last | 2 | 25.0% | 50.0% |" in text
    assert "| pseudo labels | 0.600 | 0.400 | 0.500 | 0.300 | 0.800 |" in text
    assert "in progress" in text and "![evaluation](evaluation.png)" in text


def test_null_lists_and_binary_junk_are_skipped_and_named(tmp_path, capsys):
    from cacl_dist.cli.report import main

    rows = [{"kind": "train", "step": 1, "time": 0.0, "epoch": 1, "iter": 1, "loss": 5.0}]
    _write(tmp_path / "metrics.jsonl", rows)
    with open(tmp_path / "metrics.jsonl", "ab") as fh:
        fh.write(b"null\n[1, 2]\n\xff\xfe junk\x00\n")
    got, skipped = read_rows(tmp_path)
    assert skipped == 3 and [r["step"] for r in got] == [1]
    assert main([str(tmp_path), "--output", str(tmp_path / "report")]) == 0
    err = capsys.readouterr().err
    assert f"skipped 3 unreadable line(s) of {tmp_path / 'metrics.jsonl'}" in err


def _run_rows():
    """Two epochs of 4 steps (2 logging rows each), evaluations after 0, 1 and 2 epochs (best: epoch 1)."""
    rows = []
    for epoch in (1, 2):
        rows.append({"kind": "cluster", "step": 4 * (epoch - 1), "time": 0.0, "epoch": epoch, "seconds": 1.0,
                     "num_clusters": 50, "num_raw_clusters": 10, "num_outliers": 30, "num_refined_away": 5,
                     "num_multi_clusters": 8, "num_singletons": 42,
                     **{f"{p}_{k}": 0.1 * epoch for p in ("pseudo", "raw")
                        for k in ("precision", "recall", "fscore", "ari", "nmi")}})
        for it in (2, 4):
            rows.append({"kind": "train", "step": 4 * (epoch - 1) + it, "time": 1.0, "epoch": epoch, "iter": it,
                         "lr": 1e-3 / epoch, "images_per_s": 10.0, "loss": 10.0 - it, "instance": 0.01 * it,
                         "inter": -0.001 * it, "intra_rgb": 5.0 + it, "intra_gray": 4.0 - it})
    for epoch, m in ((0, 0.5), (1, 0.3), (2, 0.2)):
        rows.append({"kind": "eval", "step": 4 * epoch, "time": 2.0, "epoch": epoch, "mAP": m, "rank1": m,
                     "rank5": m, "rank10": m, "mINP": m, "seconds": 1.0, "cmc": [m + 0.01 * r for r in range(50)]})
    return sorted(rows, key=lambda r: r["step"])


def test_report_plots_mark_epochs_best_and_lr_and_show_cmc_distances_sizes_and_pairwise_scores(tmp_path,
                                                                                                monkeypatch):
    pytest.importorskip("matplotlib")
    from cacl_dist.runs import report_plots

    figures = {}

    def keep(fig, path):  # look at the figures instead of the pixels
        figures[path.stem] = fig
        return str(path)

    monkeypatch.setattr(report_plots, "_save", keep)
    histogram = {"epoch": 2, "kind": "squared Euclidean distance", "low": 0.0, "high": 4.0,
                 "positive": [0, 5, 3, 0], "negative": [0, 1, 10, 20]}
    written = report_plots.write_plots(_run_rows(), tmp_path, histogram)
    assert [p.split("/")[-1] for p in written] == ["evaluation.png", "cmc.png", "distances.png", "losses.png",
                                                   "clustering.png", "pseudo_label_quality.png", "speed.png"]

    def labels(ax):
        return [line.get_label() for line in ax.get_lines()] + [p.get_label() for p in ax.patches]

    [evaluation] = figures["evaluation"].axes
    assert "best mAP 30.0% (epoch 1)" in labels(evaluation)  # epoch 0 (untrained) is not the best
    losses = figures["losses"].axes
    assert [ax.get_title() for ax in losses] == ["loss (weighted sum)", "instance", "inter", "intra_rgb",
                                                 "intra_gray", "learning rate"]
    for ax in losses:  # each on its own scale, the epoch boundary at step 4 and the best evaluation's step (4)
        vertical = [line.get_xdata()[0] for line in ax.get_lines()[1:]]
        assert vertical == [4, 4]
    assert list(losses[5].get_lines()[0].get_ydata()) == [1e-3, 1e-3, 5e-4, 5e-4]
    assert losses[1].get_ylim() != losses[0].get_ylim()
    [cmc] = figures["cmc"].axes
    assert [len(line.get_xdata()) for line in cmc.get_lines()] == [50, 50]  # the last and the best evaluation
    assert "cmc" in figures and labels(cmc)[0].startswith("last (epoch 2): rank-1 20.0%")
    [distances] = figures["distances"].axes
    assert any(label.startswith("correct matches") and "8 pairs" in label for label in labels(distances))
    assert any(label.startswith("other identities") and "31 pairs" in label for label in labels(distances))
    [clustering] = figures["clustering"].axes
    assert {"clusters with 2+ images", "singletons"} <= set(labels(clustering))
    pseudo, raw = figures["pseudo_label_quality"].axes[:2]
    assert {"pairwise precision", "pairwise recall", "NMI"} <= set(labels(pseudo)) and "raw" in raw.get_title()


def test_report_text_names_clusters_with_two_or_more_images(tmp_path):
    rows = _run_rows()
    text = markdown(tmp_path, summarize(rows, {}), {}, [], "")
    assert "50 pseudo clusters (8 with 2+ images, 42 singletons; 10 raw)" in text
    assert "| best (by mAP, after training began) | 1 | 30.0%" in text

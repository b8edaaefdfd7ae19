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
    assert "| best (by mAP) | 1 | 30.0% | 40.0% |" in text and "| last | 2 | 25.0% | 50.0% |" in text
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

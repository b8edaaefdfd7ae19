"""metrics.jsonl: the row kinds and their keys, the one writer (also on resume) and the one tolerant reader."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest

from cacl_dist.runs.metrics import (EVAL_SCORES, QUALITY_SCORES, MetricsWriter, make_row, read_complete,
                                    read_metrics, row_keys)
from cacl_dist.training import run_log


def test_rows_recorded_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    """Checkpoint after 1 epoch at step 3 (evaluated after 0 and 1 epochs); a kill came after the next clustering
    and a step; a torn line ends the file."""
    rows = [("eval", 0, {"epoch": 0}), ("cluster", 0, {"epoch": 1}), ("train", 3, {"epoch": 1}),
            ("eval", 3, {"epoch": 1}), ("cluster", 3, {"epoch": 2}), ("train", 4, {"epoch": 2})]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"kind": k, "step": s, **v}) + "\n" for k, s, v in rows) + '{"kind": "tr')
    writer = MetricsWriter(tmp_path, tensorboard=False)
    dropped = writer.rewind(lambda row: run_log.written_before_checkpoint(row, 3, 1, {0, 1}), next_step=4)
    assert dropped == 3
    assert [(r["kind"], r["step"]) for r in read_metrics(tmp_path)] == [("eval", 0), ("cluster", 0), ("train", 3),
                                                                       ("eval", 3)]
    mid_epoch = {"kind": "cluster", "step": 3, "epoch": 2}  # a checkpoint inside epoch 2 keeps its clustering row
    assert run_log.written_before_checkpoint(mid_epoch, 5, 1, {0, 1})


JUNK_LINES = [b"null\n", b"[1, 2]\n", b'{"kind": "train"}\n', b'{"kind": "train", "step": true}\n', b"42\n",
              b"\xff\xfe\x00\x81 binary\n", b"[" * 100000 + b"\n"]


def test_lines_that_are_not_records_are_skipped_by_every_reader_and_dropped_on_resume(tmp_path, caplog):
    good = [{"kind": "train", "step": 1, "loss": 2.0}, {"kind": "train", "step": 2, "loss": 1.0}]
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(json.dumps(good[0]).encode() + b"\n" + b"".join(JUNK_LINES) + json.dumps(good[1]).encode()
                     + b"\n")
    assert read_metrics(tmp_path) == good
    writer = MetricsWriter(tmp_path, tensorboard=False)
    with caplog.at_level(logging.WARNING, logger="cacl_dist"):
        dropped = writer.rewind(lambda row: row["step"] < 2, next_step=2)
    assert dropped == 1 + len(JUNK_LINES)
    assert read_metrics(tmp_path) == good[:1] and path.read_bytes() == json.dumps(good[0]).encode() + b"\n"
    assert f"dropping {len(JUNK_LINES)} unreadable line(s) of {path}" in caplog.text


# The key order of each kind as the quickstart writes it (a line of each kind of its metrics.jsonl):
# metrics.jsonl stays byte for byte the same for the same run. The camera-proxy losses are written only
# with loss.camera_proxy_weight > 0 (the loss names in sorted order, as the trainer writes them).
CAMERA_PROXY_KEYS = ["camera_inter_gray", "camera_inter_rgb", "camera_intra_gray", "camera_intra_rgb"]
QUICKSTART_KEYS = {
    "train": ["kind", "step", "time", "epoch", "iter", "lr", "images_per_s", *CAMERA_PROXY_KEYS, "instance", "inter",
              "intra_gray", "intra_rgb", "loss"],
    "cluster": ["kind", "step", "time", "epoch", "num_clusters", "num_raw_clusters", "num_outliers",
                "num_refined_away", "backend", "seconds", "num_multi_clusters", "num_singletons"] + [f"{p}_{s}" for p in ("pseudo", "raw")
                                                             for s in ("precision", "recall", "fscore", "ari", "nmi")],
    "eval": ["kind", "step", "time", "epoch", "mAP", "rank1", "rank5", "rank10", "mINP", "num_valid_queries",
             "seconds", "cmc"],
    "summary": ["kind", "step", "time"] + [f"{w}_{k}" for w in ("first", "last", "best")
                                           for k in ("mAP", "rank1", "epoch")],
}


@pytest.mark.parametrize("kind", sorted(QUICKSTART_KEYS))
def test_each_kind_defines_the_keys_in_the_order_the_trainer_writes_them(kind, tmp_path):
    assert ["kind", "step", "time", *row_keys(kind)] == QUICKSTART_KEYS[kind]
    values = {k: 1 for k in row_keys(kind)}
    MetricsWriter(tmp_path, tensorboard=False).write(kind, 7, **values)
    [line] = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert list(json.loads(line)) == QUICKSTART_KEYS[kind]
    assert line.startswith('{"kind": "%s", "step": 7, "time": ' % kind)


def test_the_report_plots_only_keys_the_rows_define():
    from cacl_dist.runs.report import CLUSTER_KEYS, EVAL_KEYS, QUALITY_KEYS

    assert {k for k, _ in EVAL_KEYS} <= set(EVAL_SCORES) and {k for k, _ in QUALITY_KEYS} <= set(QUALITY_SCORES)
    assert {k for k, _ in CLUSTER_KEYS} <= set(row_keys("cluster")) and set(EVAL_SCORES) <= set(row_keys("eval"))


def test_a_row_that_does_not_match_its_kind_is_a_bug_in_the_writer():
    with pytest.raises(ValueError, match="unknown metrics row kind 'trian'"):
        make_row("trian", 1, {})
    with pytest.raises(ValueError, match="lacks \\['mAP'"):
        make_row("eval", 1, {k: 0.5 for k in row_keys("eval") if k != "mAP"})
    with pytest.raises(ValueError, match="'top1'"):
        make_row("eval", 1, {**{k: 0.5 for k in row_keys("eval")}, "top1": 0.5})
    cluster = {k: 1 for k in row_keys("cluster") if not k.startswith(("pseudo_", "raw_"))}
    assert make_row("cluster", 2, cluster)["num_clusters"] == 1  # without identities: no quality keys


def _eval_line(epoch: int, mAP: float) -> bytes:
    row = {"kind": "eval", "step": epoch, "time": 1.0, "epoch": epoch, **{k: mAP for k in EVAL_SCORES},
           "num_valid_queries": 3, "seconds": 0.1}
    return json.dumps(row).encode() + b"\n"


def _run_with_junk(run_dir):
    """Two evaluations among junk lines, an eval row without scores, and a torn last line."""
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_bytes(_eval_line(0, 0.1) + b"".join(JUNK_LINES)
                                            + b'{"kind": "eval", "step": 5, "epoch": 1}\n'
                                            + _eval_line(2, 0.25) + b'{"kind": "eval", "step": 9, "mA')


def test_the_launcher_reports_the_last_evaluation_despite_junk_and_a_torn_line(tmp_path, capsys):
    from launch.slurm import report_outcome

    _run_with_junk(tmp_path / "run")
    job = SimpleNamespace(job_id="42", results=lambda: [None])
    assert report_outcome(job, SimpleNamespace(run_dir=tmp_path / "run")) is True
    assert capsys.readouterr().out.strip() == f"job 42 finished: {tmp_path / 'run'}; last evaluation mAP 25.0%"
    assert report_outcome(job, SimpleNamespace(run_dir=tmp_path / "none")) is True  # no metrics.jsonl yet


def test_the_ablation_reads_each_evaluation_despite_junk_and_a_torn_line(tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3] / "benchmarks"))  # as the script runs
    from ablation import eval_curve

    _run_with_junk(tmp_path / "run")
    assert [(p["epoch"], p["mAP"], p["mINP"]) for p in eval_curve(tmp_path / "run")] == [(0, 0.1, 0.1), (2, 0.25, 0.25)]
    assert len(read_complete(tmp_path / "run", "eval")) == 2 and len(read_metrics(tmp_path / "run", "eval")) == 3

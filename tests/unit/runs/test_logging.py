"""What a run tells its user: log lines beside progress bars, positions, the summary, metrics after a resume."""

from __future__ import annotations

import io
import json
import logging

from cacl_dist.training import run_log
from cacl_dist.runs.logs import MetricsWriter, read_metrics, setup_logging


def test_log_lines_go_above_an_active_progress_bar(tmp_path, monkeypatch):
    import tqdm

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, text, file=None, **kw: written.append(text)))
    log = setup_logging(tmp_path, 0)
    log.info("before any bar")
    with tqdm.tqdm(range(3), file=io.StringIO()):
        log.info("while a bar is shown")
    log.info("after the bar")
    assert len(written) == 1 and written[0].endswith("INFO while a bar is shown")
    assert "after the bar" in (tmp_path / "log_rank0.txt").read_text()
    setup_logging(None, 0)


def test_positions_are_said_the_same_way_everywhere():
    assert run_log.position(0, 0) == "before training"
    assert run_log.position(0, 4) == "at step 4 of epoch 1"
    assert run_log.position(1, 0) == "after 1 epoch"
    assert run_log.position(1, 2) == "after 1 epoch, step 2 of epoch 2"
    assert run_log.position(3, 0) == "after 3 epochs"


def _summary(history):
    stream = io.StringIO()
    log = logging.getLogger("test_summary")
    log.handlers[:] = [logging.StreamHandler(stream)]
    log.setLevel(logging.INFO)
    run_log.log_summary(log, history)
    return stream.getvalue().strip()


def test_summary_with_one_evaluation_gives_just_that_one():
    one = {"epoch": 2, "mAP": 0.082, "rank1": 0.2}
    assert _summary([one]) == "done: mAP 8.2%, rank-1 20.0% after 2 epochs"
    two = [{"epoch": 0, "mAP": 0.05, "rank1": 0.1}, one]
    assert _summary(two) == ("done: mAP 5.0% -> 8.2%, rank-1 10.0% -> 20.0% (epoch 0 -> 2, last evaluation); "
                             "best mAP 8.2% (rank-1 20.0%) at epoch 2")


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

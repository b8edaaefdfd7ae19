"""What a run tells its user: log lines beside progress bars, positions, the summary."""

from __future__ import annotations

import io
import logging

from cacl_dist.training import run_log
from cacl_dist.runs.logs import setup_logging


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

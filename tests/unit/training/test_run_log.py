"""The run's final summary: first, last and best evaluation (cacl_dist/run_log.py)."""

import logging

from cacl_dist.training.run_log import eval_summary, log_summary


def _history(maps):
    return [{"epoch": epoch, "mAP": m, "rank1": m + 0.1} for epoch, m in maps]


def test_summary_names_first_last_and_best():
    summary = eval_summary(_history([(0, 0.05), (5, 0.30), (10, 0.42), (15, 0.42), (20, 0.40)]))
    assert (summary["first_mAP"], summary["first_epoch"]) == (0.05, 0)
    assert (summary["last_mAP"], summary["last_rank1"], summary["last_epoch"]) == (0.40, 0.5, 20)
    assert (summary["best_mAP"], summary["best_rank1"], summary["best_epoch"]) == (0.42, 0.52, 10)  # earliest tie
    assert eval_summary([]) is None


def test_best_leaves_out_the_untrained_evaluation_unless_it_is_the_only_one():
    assert eval_summary(_history([(0, 0.5), (5, 0.2), (10, 0.3)]))["best_epoch"] == 10
    assert eval_summary(_history([(0, 0.1)]))["best_epoch"] == 0


def test_final_line_states_last_and_best(caplog):
    log = logging.getLogger("test_run_log")
    with caplog.at_level(logging.INFO, logger="test_run_log"):
        returned = log_summary(log, _history([(0, 0.054), (10, 0.16), (30, 0.132)]))
    line = caplog.records[-1].getMessage()
    assert line.startswith("done: mAP 5.4% -> 13.2%, rank-1 15.4% -> 23.2% (epoch 0 -> 30, last evaluation)")
    assert line.endswith("best mAP 16.0% (rank-1 26.0%) at epoch 10")
    assert returned["best_epoch"] == 10

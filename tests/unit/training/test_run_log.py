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


def test_run_clock_estimates_the_time_left_from_the_pace_of_this_process():
    from cacl_dist.training.run_log import RunClock

    clock = RunClock(total_steps=100, start_step=40)  # a resumed run: 40 steps were done before
    assert clock.left(40, now=clock.started + 5.0) is None  # no step of its own yet
    assert clock.left(50, now=clock.started + 20.0) == 100.0  # 2 s per step, 50 steps to go
    assert clock.left(100, now=clock.started + 120.0) == 0.0
    clock.restart(60)
    assert clock.left(70, now=clock.started + 10.0) == 30.0


def test_epoch_line_ends_with_the_run_eta(caplog):
    from cacl_dist.training.run_log import duration, log_losses

    assert [duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
    log = logging.getLogger("test_run_log")
    row = {"loss": 1.0, "instance": 0.1, "inter": 0.2, "intra_rgb": 0.3, "intra_gray": 0.4}
    with caplog.at_level(logging.INFO, logger="test_run_log"):
        log_losses(log, 2, 20, 40, row, 1e-3, 123.0, eta_s=754.0)
        log_losses(log, 1, 1, 40, row, 1e-3, 123.0)
    with_eta, without = (r.getMessage() for r in caplog.records[-2:])
    assert with_eta.startswith("epoch 2 [20/40] loss 1.0000 (instance 0.1000 inter 0.2000 intra rgb 0.3000")
    assert with_eta.endswith("123 img/s, run ETA 12 min 34 s")
    assert without.endswith("123 img/s")

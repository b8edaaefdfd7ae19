"""benchmarks/quickstart_pipelines.py: its summary, checkpoint comparison and table, on made-up runs (no training)."""

from __future__ import annotations

import statistics

import pytest
import torch

from benchmarks.quickstart_pipelines import compare_states, identical, render_markdown, run_row, summarise


def evals(*maps: float) -> list[dict]:
    return [{"epoch": 10 * i, "mAP": m, "rank1": m / 2} for i, m in enumerate(maps)]


def test_run_row_takes_the_first_and_last_evaluation_in_percent():
    row = run_row("torchvision", 1, evals(0.05, 0.09, 0.125), wall_s=101.26, cpu_s=88.04)
    assert row == {"pipeline": "torchvision", "seed": 1, "mAP_before": pytest.approx(5.0),
                   "mAP_last": pytest.approx(12.5), "rank1_last": pytest.approx(6.25), "epochs": 20,
                   "wall_s": 101.3, "cpu_s": 88.0}
    with pytest.raises(ValueError, match="torch-gpu seed 2: no evaluation"):
        run_row("torch-gpu", 2, [], 1.0, 1.0)


def test_summarise_groups_by_pipeline_with_sample_sd_and_spread():
    last = {"torch-gpu": [12.0, 14.5, 13.0], "torchvision": [11.0, 15.0]}
    runs = [{"pipeline": p, "mAP_last": v} for p, values in last.items() for v in values]
    summary = summarise(runs)
    assert list(summary) == ["torch-gpu", "torchvision"]
    for p, values in last.items():
        s = summary[p]
        assert s["runs"] == len(values) and s["mean"] == pytest.approx(statistics.fmean(values))
        assert s["sd"] == pytest.approx(statistics.stdev(values))
        assert (s["min"], s["max"], s["spread"]) == (min(values), max(values), max(values) - min(values))
    assert summarise([{"pipeline": "x", "mAP_last": 3.0}])["x"]["sd"] == 0.0


def test_compare_states_is_bitwise_per_entry():
    torch.manual_seed(0)
    state = {"model": {"a.weight": torch.randn(3, 2), "n": torch.tensor(4)}, "bank_rgb": torch.randn(5, 2),
             "bank_gray": torch.randn(5, 2), "labels": torch.tensor([0, 1, -1, 1, 0]), "optimizer": {"lr": 0.1}}
    copy = {k: (dict(v) if isinstance(v, dict) else v.clone()) for k, v in state.items()}
    assert compare_states(state, copy) == {"model": True, "bank_rgb": True, "bank_gray": True, "labels": True}

    copy["model"]["a.weight"] = torch.nextafter(state["model"]["a.weight"], torch.tensor(1.0))  # one ulp
    copy["labels"] = state["labels"].to(torch.int32)  # same values, other dtype
    del copy["bank_gray"]
    assert compare_states(state, copy) == {"model": False, "bank_rgb": True, "bank_gray": False, "labels": False}
    assert identical(None, None) and not identical(None, torch.zeros(1)) and not identical([1, 2], (1, 2))


def test_markdown_states_the_numbers_and_names_what_differs():
    runs = [run_row(p, s, evals(0.05, m), 100.0, 80.0)
            for p, ms in (("torch-gpu", (0.12, 0.14)), ("torchvision", (0.12, 0.15))) for s, m in enumerate(ms)]
    payload = {"runs": runs, "summary": summarise(runs), "seeds": [0, 1], "command": "CMD", "run_command": "RUN",
               "final_state_identical": {"0": {"model": True, "labels": True}, "1": {"model": False, "labels": True}},
               "hardware": "cpu", "load_before": 1.0, "load_after": 2.0, "torch": "t", "python": "p",
               "commit": "abc", "date": "d"}
    md = render_markdown(payload)
    assert "| torch-gpu | 2 | 13.00 ± 1.41 | 12.00 .. 14.00 (2.00) |" in md
    assert "| torchvision | 1 | 5.00 | 15.00 | 7.50 | 100 | 80 |" in md
    assert "seed 0: yes, seed 1: no (model differ)" in md

"""What a new user meets in the first runs: resume or new run said first, --fresh, checks before any work,
warnings on small sets, a folder passed as --checkpoint, and evaluation on another dataset."""

from __future__ import annotations

import json

import pytest

from cacl_dist.cli import evaluate, train
from cacl_dist.training.checkpoint import load_checkpoint

from tests.helpers.runs import MARKET_MINI, REPO, log_text, set_args

QUICK = {"train.epochs": 1, "train.iters_per_epoch": 1, "eval.at_start": False, "eval.every_epochs": 0}


def first_line(run_dir) -> str:
    """The first line the latest start wrote into the run's log (each start appends to it)."""
    lines = [line.split(" INFO ", 1)[1] for line in log_text(run_dir).splitlines() if " INFO " in line]
    starts = [i for i, line in enumerate(lines) if line.startswith(("new run in ", "resuming "))]
    assert starts and lines[starts[-1] - 1 if starts[-1] else 0].startswith(("done:", "new run", "resuming")), lines
    return lines[starts[-1]]


def test_fresh_renames_the_old_folder_and_the_first_line_says_what_happened(tmp_path, synthetic_root, monkeypatch):
    run_dir = tmp_path / "run"
    assert train.main(set_args(run_dir, synthetic_root, **QUICK)) == 0
    assert first_line(run_dir) == f"new run in {run_dir}"
    assert train.main(set_args(run_dir, synthetic_root, **{**QUICK, "train.epochs": 2})) == 0
    assert first_line(run_dir).startswith(f"resuming {run_dir} after 1 epoch from last.pt")
    before = load_checkpoint(run_dir / "last.pt")["global_step"]

    assert train.main([*set_args(run_dir, synthetic_root, **QUICK), "--fresh"]) == 0
    old = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(old) == 1 and load_checkpoint(old[0] / "last.pt")["global_step"] == before  # kept whole
    assert first_line(run_dir) == f"new run in {run_dir}; --fresh: the earlier folder is now {old[0]}"
    assert load_checkpoint(run_dir / "last.pt")["global_step"] == 1  # started over

    # a requeued SLURM job (or a torchrun restart) carries the same --fresh: it must resume, not start over again
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert train.main([*set_args(run_dir, synthetic_root, **{**QUICK, "train.epochs": 2}), "--fresh"]) == 0
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]) == 1
    line = first_line(run_dir)
    assert line.startswith(f"resuming {run_dir} after 1 epoch") and "--fresh ignored" in line
    assert load_checkpoint(run_dir / "last.pt")["global_step"] == 2


def test_fresh_never_renames_a_folder_that_holds_the_dataset(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    data = run_dir / "data"
    data.mkdir(parents=True)
    assert train.main([*set_args(run_dir, synthetic_root, **{**QUICK, "data.root": str(data)}), "--fresh"]) == 2
    assert "data.root" in capsys.readouterr().err and data.is_dir()


def test_the_released_sampler_check_fails_before_any_work(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    code = train.main(set_args(run_dir, synthetic_root, **{**QUICK, "train.sampler": "released",
                                                              "train.batch_size": 128}))
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1
    assert "train.sampler=cacl" in err and "96 training images" in err
    assert "memory banks initialised" not in out and "clustering" not in out  # no work was done
    assert not run_dir.exists()  # this start created the folder and failed before any work: nothing left


def test_one_cluster_for_everything_warns_with_the_keys_to_change(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    assert train.main(set_args(run_dir, synthetic_root, **{**QUICK, "clustering.eps": 1.0,
                                                            "clustering.refine": False})) == 0
    warnings = [line for line in log_text(run_dir).splitlines() if " WARNING " in line]
    assert any("all 96 images into one cluster" in w and "clustering.eps" in w and "clustering.k1" in w
               for w in warnings), warnings


def test_the_quickstart_starts_without_warnings(tmp_path):
    """The quickstart recipe as it ships (its 720 synthetic images), cut to one step: no first-epoch, sampler or
    clustering warning. One thread, so that other jobs on a shared machine do not make the timed forward slow."""
    import torch

    run_dir = tmp_path / "run"
    args = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--set", f"run.output_dir={run_dir}",
            f"data.root={tmp_path / 'data'}", "run.progress=false", "run.device=cpu", "train.epochs=1",
            "train.iters_per_epoch=1", "eval.at_start=false"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(args) == 0
    finally:
        torch.set_num_threads(threads)
    text = log_text(run_dir)
    assert "epoch 1 clustering [" in text and "720 train" in text
    assert " WARNING " not in text, text


def test_a_folder_given_as_checkpoint_says_it_is_a_folder(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    assert train.main(set_args(run_dir, synthetic_root, **QUICK)) == 0
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a checkpoint file" in err and f"e.g. {run_dir / 'last.pt'}" in err
    assert "does not exist" not in err and err.count("\n") == 1


@pytest.mark.slow
@pytest.mark.skipif(not MARKET_MINI.is_dir(), reason="needs ../shared/data/market1501-mini")
def test_train_on_one_dataset_and_evaluate_on_another(tmp_path, synthetic_root, capsys):
    run_dir = tmp_path / "run"
    assert train.main(set_args(run_dir, synthetic_root, **QUICK)) == 0  # synthetic pedestrians, resnet_tiny at 64x32
    capsys.readouterr()
    argv = ["--checkpoint", str(run_dir / "last.pt"), "--config", str(REPO / "configs" / "market1501_cpu.yaml"),
            "--set", f"data.root={MARKET_MINI}", "run.progress=false", "run.device=cpu", "--json"]
    assert evaluate.main(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 1000 < metrics["num_valid_queries"] <= 1122 and 0 < metrics["mAP"] < 1  # market1501-mini's 1,122 queries

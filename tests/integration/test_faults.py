"""Faults and bad input, end to end: one-line errors, no crash, no lost or poisoned checkpoint."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cacl_dist.training.checkpoint import FORMAT, NonFiniteError, load_checkpoint, save_checkpoint
from cacl_dist.runs.metrics import read_metrics
from cacl_dist.training.trainer import Trainer

from tests.helpers.runs import assert_same_state, fit, run_cli, set_args


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_root):
    """A private copy of the synthetic dataset, a run folder after one epoch and a straight two-epoch run."""
    base = tmp_path_factory.mktemp("faults")
    fit(base / "straight", synthetic_root)
    fit(base / "one_epoch", synthetic_root, **{"train.epochs": 1})
    shutil.copytree(synthetic_root, base / "data")
    return base


def _copy(runs, tmp_path):
    """The one-epoch run folder and the dataset, copied into `tmp_path`: (run, data)."""
    shutil.copytree(runs / "one_epoch", tmp_path / "run")
    shutil.copytree(runs / "data", tmp_path / "data")
    return tmp_path / "run", tmp_path / "data"


def _one_line(result) -> str:
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, result.stderr[-3000:]
    return err


# ------------------------------------------------------------------------------------- unreadable images

PIPELINES = {
    "torchvision": {"data.pipeline": "torchvision", "data.eval_pipeline": "torchvision", "data.num_workers": 1},
    "dali": {"data.pipeline": "dali", "data.eval_pipeline": "dali", "data.num_workers": 1},
    "torch-gpu": {"data.pipeline": "torch-gpu", "data.eval_pipeline": "torch-gpu", "data.num_workers": 1},
}


@pytest.mark.parametrize("split, kind, pipeline", [("bounding_box_train", "random bytes", "torchvision"),
                                                   ("query", "header only", "dali"),
                                                   ("bounding_box_train", "header only", "torch-gpu")])
def test_unreadable_image_is_one_line_naming_it_and_the_checkpoint_stays(runs, tmp_path, split, kind, pipeline):
    """Unchecked, DALI ends the process with SIGSEGV on these files (evaluation batch of 64), and a
    torchvision worker's error comes with the worker's traceback."""
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    run, data = _copy(runs, tmp_path)
    files = sorted((data / split).iterdir())
    files[2].write_bytes(np.random.default_rng(0).bytes(3000) if kind == "random bytes"
                         else files[3].read_bytes()[:600])
    before = (run / "last.pt").read_bytes()
    err = _one_line(run_cli("cacl_dist.train", set_args(run, data, **PIPELINES[pipeline])))
    assert str(files[2]) in err
    assert (run / "last.pt").read_bytes() == before


# ------------------------------------------------------------------------------------- NaN and infinity

def test_nan_between_logging_steps_is_never_checkpointed(runs, tmp_path, monkeypatch):
    run, data = _copy(runs, tmp_path)
    original = Trainer.train_step

    def poisoned(self, *args, **kwargs):
        parts = original(self, *args, **kwargs)
        if self.progress.global_step == 3:  # the first step of epoch 2, which is checkpointed but not logged
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return parts

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    with pytest.raises(NonFiniteError, match=r"NaN or infinite values in model after step 4; the last good "
                                             r"checkpoint .*last.pt is kept\. Lower optim.lr") as err:
        fit(run, data, **{"checkpoint.every_steps": 1, "run.log_every": 100})
    assert len(str(err.value).splitlines()) == 1
    assert load_checkpoint(run / "last.pt")["global_step"] == 3  # finite, or it would be refused


def test_nonfinite_checkpoint_is_neither_resumed_nor_evaluated(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    state = load_checkpoint(run / "last.pt")
    state["bank_rgb"][5, 0] = float("inf")
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")})
    err = _one_line(run_cli("cacl_dist.train", set_args(run, data, **{"train.epochs": 2})))
    assert "NaN or infinite values (bank_rgb)" in err and "last.pt" in err
    err = _one_line(run_cli("cacl_dist.evaluate", ["--checkpoint", str(run / "last.pt")]))
    assert "NaN or infinite values (bank_rgb)" in err


# ------------------------------------------------------------------------------------- changed settings

def test_changed_learning_rate_and_schedule_apply_on_resume(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    trainer = fit(run, data, **{"optim.lr": 1e-3, "optim.step_size": 1, "optim.gamma": 0.5})
    epoch_2 = [row["lr"] for row in read_metrics(run, "train") if row["epoch"] == 2]
    assert epoch_2 and all(lr == pytest.approx(5e-4) for lr in epoch_2)  # 1e-3 * 0.5 ** (1 epoch // 1)
    assert trainer.optimiser.scheduler.base_lrs == [1e-3]
    assert trainer.optimiser.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # after the step of epoch 2
    assert trainer.optimiser.scheduler.get_last_lr() == [pytest.approx(2.5e-4)]
    assert "optim.lr 0.00035 -> 0.001" in (run / "log_rank0.txt").read_text()


def test_model_change_on_resume_is_one_line(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    before = (run / "config.yaml").read_text()
    err = _one_line(run_cli("cacl_dist.train", set_args(run, data, **{"model.pool": "gem"})))
    assert "model.pool='avg' (now 'gem')" in err and "new run.output_dir" in err
    assert (run / "config.yaml").read_text() == before  # still the config the checkpoint was trained with


@pytest.mark.parametrize("change", [{"data.height": 32}, {"model.last_stride": 2}])
def test_settings_the_state_depends_on_are_refused(runs, tmp_path, change):
    run, data = _copy(runs, tmp_path)
    with pytest.raises(ValueError, match=f"{next(iter(change))}=.*cannot change"):
        fit(run, data, **change)


def test_other_images_of_the_same_number_are_refused(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    image = sorted((data / "bounding_box_train").iterdir())[7]
    from PIL import Image

    Image.open(image).convert("RGB").save(image, quality=60)  # the same name, other content
    with pytest.raises(ValueError, match="other images than those at"):
        fit(run, data)


def test_checkpoint_without_fingerprint_resumes_with_a_warning(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    state = load_checkpoint(run / "last.pt")
    del state["data_fingerprint"]
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")})
    assert fit(run, data).progress.epoch == 2
    assert "records no fingerprint" in (run / "log_rank0.txt").read_text()


def test_batch_settings_cannot_change_inside_an_epoch(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    state = load_checkpoint(run / "last.pt")
    state["iter_in_epoch"] = 2  # as if stopped after two steps of epoch 2
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k not in ("format", "format_version")})
    with pytest.raises(ValueError, match=r"stopped inside epoch 2 \(step 2\).*train.batch_size=16 \(now 32\)"):
        fit(run, data, **{"train.batch_size": 32})


# ------------------------------------------------------------------------------------- evaluation order

def test_failed_evaluation_keeps_the_epoch_and_the_resume_evaluates_it(runs, tmp_path, monkeypatch):
    run, data = _copy(runs, tmp_path)
    original = Trainer.evaluate

    def failing(self):
        if self.progress.epoch == 2:
            raise RuntimeError("evaluation failed")
        return original(self)

    monkeypatch.setattr(Trainer, "evaluate", failing)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        fit(run, data)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # the epoch was checkpointed before evaluating
    monkeypatch.undo()
    resumed = fit(run, data)
    straight = load_checkpoint(runs / "straight" / "last.pt")
    assert [h["epoch"] for h in resumed.progress.eval_history] == [0, 1, 2]
    final = load_checkpoint(run / "last.pt")
    assert [h["mAP"] for h in final["eval_history"]] == [h["mAP"] for h in straight["eval_history"]]
    assert_same_state(straight, final, exact=True)


# ------------------------------------------------------------------------------------- files in the run folder

def test_stale_checkpoint_temporaries_are_removed_at_start(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    stale = [run / ".last.pt.x8_k2a9q.tmp", run / ".epoch_001.pt.abc123.tmp"]
    other = run / ".notes.tmp"
    for path in [*stale, other]:
        path.write_bytes(b"partial")
    fit(run, data, **{"train.epochs": 1})  # resumes a finished run
    assert not any(path.exists() for path in stale) and other.exists()


def test_checkpoint_that_would_run_code_is_refused_everywhere(runs, tmp_path):
    run, data = _copy(runs, tmp_path)
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": FORMAT, "format_version": 2, "epoch": 1, "x": Payload()}, run / "last.pt")
    for module, args in [("cacl_dist.train", set_args(run, data)),
                         ("cacl_dist.evaluate", ["--checkpoint", str(run / "last.pt")]),
                         ("cacl_dist.export", ["--checkpoint", str(run / "last.pt"), "--format", "state_dict",
                                               "--output", str(tmp_path / "branch.pt")])]:
        err = _one_line(run_cli(module, args))
        assert "could run code" in err and "last.pt" in err, module
        assert not marker.exists(), module


"""Each training component gives and takes its own checkpoint entries; the checkpointer's timetable."""

from __future__ import annotations

import dataclasses
import logging
import types
from pathlib import Path

import pytest
import torch

from cacl_dist.config import load_config
from cacl_dist.config.schema import OptimConfig
from cacl_dist.training.banks import MemoryBanks
from cacl_dist.training.checkpointer import Checkpointer, TrainingParts
from cacl_dist.training.labels import PseudoLabels
from cacl_dist.training.optim import Optimiser
from cacl_dist.training.progress import Progress
from tests.helpers.optim import trained_optimiser

CPU = torch.device("cpu")


def _optim(lr=1e-3, gamma=0.5, step_size=2):
    return OptimConfig(lr=lr, gamma=gamma, step_size=step_size, weight_decay=5e-4, implementation="for_loop")


def _trained(optim, epochs: int) -> Optimiser:
    return trained_optimiser(optim, epochs)


def test_progress_state_round_trips_and_counts_steps_and_epochs():
    progress = Progress()
    progress.step_done()
    progress.step_done()
    assert (progress.epoch, progress.iter_in_epoch, progress.global_step) == (0, 2, 2)
    progress.epoch_done()
    progress.eval_history.append({"epoch": 1, "mAP": 0.5})
    restored = Progress()
    restored.load_state_dict(progress.state_dict())
    assert restored == progress and restored.evaluated(1) and not restored.evaluated(0)
    assert set(progress.state_dict()) == {"epoch", "iter_in_epoch", "global_step", "eval_history"}


def test_unchanged_schedule_is_restored_bit_for_bit():
    saved = _trained(_optim(), 3)
    resumed = _trained(_optim(), 0)
    resumed.load_state_dict(saved.state_dict(), saved_settings=_optim())
    assert resumed.scheduler.state_dict() == saved.scheduler.state_dict()
    assert resumed.lr == saved.lr and resumed.scheduler.get_last_lr() == saved.scheduler.get_last_lr()


@pytest.mark.parametrize("epochs", [0, 1, 2, 3, 4])
def test_changed_schedule_continues_from_the_new_values_exactly(epochs):
    saved = _trained(_optim(lr=3.5e-4, gamma=0.1, step_size=1), epochs)
    new = _optim(lr=1e-3, gamma=0.5, step_size=2)
    resumed = _trained(new, 0)
    resumed.load_state_dict(saved.state_dict(), saved_settings=_optim(lr=3.5e-4, gamma=0.1, step_size=1))
    lr = 1e-3 * 0.5 ** (epochs // 2)
    assert resumed.lr == lr and resumed.scheduler.get_last_lr() == [lr]
    assert resumed.scheduler.base_lrs == [1e-3] and resumed.scheduler.last_epoch == epochs
    assert (resumed.scheduler.gamma, resumed.scheduler.step_size) == (0.5, 2)
    assert set(resumed.scheduler.state_dict()) == set(saved.scheduler.state_dict())  # the same entries
    resumed.optimizer.step()
    resumed.scheduler.step()  # the next epoch steps down by the new gamma at the new step size
    assert resumed.lr == (lr * 0.5 if (epochs + 1) % 2 == 0 else lr)


def test_changed_weight_decay_takes_effect_and_moments_are_kept():
    saved = _trained(_optim(), 2)
    resumed = _trained(dataclasses.replace(_optim(), weight_decay=0.0), 0)
    resumed.load_state_dict(saved.state_dict(), saved_settings=_optim())
    assert resumed.optimizer.param_groups[0]["weight_decay"] == 0.0
    moments = [s["exp_avg"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert moments and torch.equal(moments[0], [s["exp_avg"] for s in saved.optimizer.state_dict()["state"].values()][0])


def _banks_with_labels(num=12, dim=4):
    banks = MemoryBanks(num, dim, (0, num), CPU)
    gen = torch.Generator().manual_seed(0)
    banks.rgb.load(torch.randn(num, dim, generator=gen))
    banks.gray.load(torch.randn(num, dim, generator=gen))
    labels = PseudoLabels(CPU)
    labels.assign(torch.tensor([0, 1, 2, -1] * 3), banks)
    labels.cluster_stats = {"num_clusters": 3}
    return banks, labels


def test_banks_and_pseudo_labels_round_trip_through_their_entries():
    banks, labels = _banks_with_labels()
    state = {**banks.state_dict(), **labels.state_dict()}
    assert set(state) == {"bank_rgb", "bank_gray", "labels", "centres_rgb", "centres_gray", "cluster_stats"}
    other_banks, other_labels = MemoryBanks(12, 4, (0, 12), CPU), PseudoLabels(CPU)
    other_banks.load_state_dict(state)
    other_labels.load_state_dict(state)
    assert torch.equal(other_banks.rgb.rows, banks.rgb.rows) and torch.equal(other_banks.gray.rows, banks.gray.rows)
    assert torch.equal(other_labels.labels, labels.labels) and other_labels.cluster_stats == {"num_clusters": 3}
    assert torch.equal(other_labels.centres_rgb.centres(), labels.centres_rgb.centres())
    assert torch.equal(other_labels.centres_gray.centres(), labels.centres_gray.centres())


def test_a_shard_takes_its_own_rows_of_the_whole_banks():
    banks, _ = _banks_with_labels()
    shard = MemoryBanks(12, 4, (4, 8), CPU)
    shard.load_state_dict(banks.state_dict())
    assert torch.equal(shard.rgb.rows, banks.rgb.rows[4:8])


def test_labels_before_any_clustering_are_none_and_round_trip():
    labels = PseudoLabels(CPU)
    again = PseudoLabels(CPU)
    again.load_state_dict(labels.state_dict())
    assert again.labels is None and again.centres_rgb is None and again.centres_gray is None


def _checkpointer(tmp_path: Path, has_eval=True, **settings) -> tuple[Checkpointer, Progress]:
    overrides = [f"run.output_dir={tmp_path}"] + [f"{k}={v}" for k, v in settings.items()]
    cfg = load_config(None, overrides)
    progress = Progress()
    parts = TrainingParts(progress, None, None, None, None, None)
    dataset = types.SimpleNamespace(has_eval=has_eval, train=[], root=tmp_path)
    return Checkpointer(cfg, tmp_path, dataset, "fp", parts, 1, logging.getLogger("test")), progress


def test_evaluation_is_due_at_start_every_n_epochs_and_at_the_end_once(tmp_path):
    timing, progress = _checkpointer(tmp_path, **{"eval.at_start": "true", "eval.every_epochs": 2,
                                                  "train.epochs": 5})
    due = []
    for epoch in range(6):
        progress.epoch = epoch
        due.append(timing.evaluation_due())
    assert due == [True, False, True, False, True, True]
    progress.eval_history.append({"epoch": 5})
    assert not timing.evaluation_due()  # done already (e.g. before a stop)
    progress.iter_in_epoch = 3
    progress.epoch = 4
    assert not timing.evaluation_due()  # inside an epoch


def test_no_evaluation_without_a_query_gallery_split(tmp_path):
    timing, progress = _checkpointer(tmp_path, has_eval=False, **{"eval.at_start": "true"})
    assert not timing.evaluation_due()


def test_kept_checkpoints_and_saves_inside_an_epoch(tmp_path):
    timing, progress = _checkpointer(tmp_path, **{"checkpoint.keep_every_epochs": 2, "checkpoint.every_steps": 5,
                                                  "train.iters_per_epoch": 10})
    kept = []
    for epoch in range(5):
        progress.epoch = epoch
        kept.append(timing.keep_due())
    assert kept == [True, False, True, False, True]
    saves = []
    for step in range(1, 11):
        progress.iter_in_epoch = step
        saves.append(timing.save_due_in_epoch())
    assert saves == [step == 5 for step in range(1, 11)]  # the epoch's last step is saved by the epoch's end
    never, progress = _checkpointer(tmp_path, **{"checkpoint.every_steps": 0})
    progress.iter_in_epoch = 5
    assert not never.save_due_in_epoch()

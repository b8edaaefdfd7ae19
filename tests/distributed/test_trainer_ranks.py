"""The trainer on two gloo processes: the resume decision, the checkpoint gather and a failing rank 0."""

from __future__ import annotations

import torch

from cacl_dist.training.checkpoint import load_checkpoint

from tests.helpers.gloo import run_gloo
from tests.helpers.runs import fit

QUIET = {"eval.at_start": False, "eval.every_epochs": 0, "train.epochs": 1}


def _resume_save_and_fail(rank, world_size, run_dir, data_dir):
    import cacl_dist.training.checkpoint as ckpt
    from cacl_dist import clustering
    from cacl_dist.config import load_config
    from cacl_dist.distributed import comm
    from cacl_dist.distributed.env import DistEnv
    from cacl_dist.training.trainer import Trainer
    from tests.helpers.runs import tiny_overrides

    if rank != 0:  # a lagging shared filesystem: this rank does not list last.pt yet
        ckpt.find_resume = lambda run_dir: None
    cfg = load_config(None, tiny_overrides(run_dir, data_dir, **{**QUIET, "train.epochs": 2}))
    trainer = Trainer(cfg, DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo"))
    out = {"resumed": trainer.resume(), "epoch": trainer.progress.epoch}
    state = trainer.state_dict()
    out["state_banks"] = (state["bank_rgb"], state["bank_gray"])
    out["all_gathered"] = (comm.all_gather_cat(trainer.banks.rgb.rows), comm.all_gather_cat(trainer.banks.gray.rows))
    trainer.save()

    def broken(*args, **kwargs):
        raise ValueError("no clusters at clustering.eps=0.6; raise clustering.eps")

    clustering.cluster = broken  # only rank 0 clusters
    try:
        trainer.cluster()
        out["cluster_error"] = None
    except Exception as exc:
        out["cluster_error"] = (type(exc).__name__, str(exc))
    return out


def test_rank0_decides_gathers_alone_and_its_failure_stops_every_rank(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    fit(run_dir, synthetic_root, **QUIET)  # one epoch on one process: last.pt
    before = load_checkpoint(run_dir / "last.pt")
    results = run_gloo(_resume_save_and_fail, 2, run_dir, synthetic_root, timeout=300.0, pg_timeout=600.0)

    # Rank 1 did not see last.pt, yet resumed with rank 0.
    assert [(r["resumed"], r["epoch"]) for r in results] == [(True, 1), (True, 1)]
    # Only rank 0 holds the whole banks, bit for bit what every rank would have gathered.
    assert results[1]["state_banks"] == (None, None)
    for mine, everyone, saved in zip(results[0]["state_banks"], results[0]["all_gathered"],
                                     (before["bank_rgb"], before["bank_gray"])):
        assert torch.equal(mine, everyone) and torch.equal(mine, saved)
    after = load_checkpoint(run_dir / "last.pt")
    assert after["world_size"] == 2
    assert torch.equal(after["bank_rgb"], before["bank_rgb"]) and torch.equal(after["bank_gray"], before["bank_gray"])
    # Clustering raised on rank 0: both ranks stop with its error (a long process-group timeout
    # would show a hang; the harness gives up long before it).
    message = "no clusters at clustering.eps=0.6; raise clustering.eps"
    assert [r["cluster_error"] for r in results] == [("ValueError", message)] * 2


def _stop_on_rank0_during_memory_init(rank, world_size, run_dir, data_dir):
    import dataclasses

    from cacl_dist.config import load_config
    from cacl_dist.distributed.env import DistEnv
    from cacl_dist.training.trainer import Trainer
    from tests.helpers.runs import tiny_overrides

    cfg = load_config(None, tiny_overrides(run_dir, data_dir, **{**QUIET, "eval.batch_size": 4}))
    trainer = Trainer(cfg, DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo"))
    if rank == 0:  # rank 0 alone is asked to stop, while it fills its share of the banks
        trainer.extraction = dataclasses.replace(trainer.extraction, should_stop=lambda: True)
    trainer.fit()
    return trainer.stopped, trainer.progress.epoch, trainer.progress.global_step


def test_a_stop_on_one_rank_during_memory_init_stops_both_without_a_half_filled_checkpoint(tmp_path,
                                                                                           synthetic_root):
    """Rank 1 fills its rows of the banks, rank 0 stops between extraction batches: both stop at the same
    point, and no checkpoint is written (rank 0's rows are missing, so the banks are not worth saving)."""
    run_dir = tmp_path / "run"
    from cacl_dist.config import load_config
    from cacl_dist.data.factory import generate_if_synthetic
    from tests.helpers.runs import tiny_overrides

    generate_if_synthetic(load_config(None, tiny_overrides(tmp_path / "prepare", synthetic_root)).data)  # the images
    results = run_gloo(_stop_on_rank0_during_memory_init, 2, run_dir, synthetic_root, timeout=300.0,
                       pg_timeout=120.0)
    assert results == [(True, 0, 0), (True, 0, 0)]
    assert not (run_dir / "last.pt").exists()
    assert "nothing new to checkpoint" in (run_dir / "log_rank0.txt").read_text()

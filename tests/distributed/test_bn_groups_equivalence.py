"""BatchNorm groups of a fixed size make training independent of the process count.

The same global batch of 32 with model.bn_group_size=16 trains with BatchNorm in training mode on
1 process (ghost BatchNorm, 2 groups), 2 processes (plain BatchNorm) and 4 gloo processes
(synchronised pairs of ranks): every step's losses, the parameters and running statistics, both
memory banks, the pseudo labels of the second clustering (made from banks filled by training
steps), the evaluation metrics and evaluation features agree within 1e-4, and the final log line
is the same. Without groups (0) one process normalises over 32 images and the run differs from
the two-process one by far more. docs/method.md section 1.

Tolerance: the runs differ by float32 rounding (convolutions over 32, 16 or 8 images, DDP's
gradient average, the order of the statistics sums), which BatchNorm's backward turns into
gradient differences of a few 1e-6 relative. Adam's first steps move every weight by about the
learning rate whatever its gradient's size, so a weight whose gradient lies within that rounding
of zero can step either way; the runs use optim.lr=1e-4 (the test's 6 steps move weights by up to
6e-4) so that such a weight stays within 1e-4 of the other run's.
"""

from __future__ import annotations

import re

import torch

from cacl_dist.training.checkpoint import load_checkpoint, load_trained_model
from cacl_dist.runs.metrics import read_metrics
from tests.helpers.runs import assert_same_state, run_cli, set_args

TOL = 1e-4  # see the module docstring


def _run(tmp_path, synthetic_root, name: str, procs: int, group: int, **more):
    extra = {"run.device": "cpu", "model.bn_group_size": group, "train.batch_size": 32, "optim.lr": 1e-4,
             "train.iters_per_epoch": 3, "eval.at_start": False, "eval.every_epochs": 0, **more}
    result = run_cli("cacl_dist.train", set_args(tmp_path / name, synthetic_root, **extra), torchrun_procs=procs)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    losses = torch.tensor([[r[k] for k in ("loss", "instance", "inter", "intra_rgb", "intra_gray")]
                           for r in read_metrics(tmp_path / name, "train")])
    evals = read_metrics(tmp_path / name, "eval")
    done = re.findall(r"done: .*", result.stdout)
    return result.stdout, losses, evals, done, load_checkpoint(tmp_path / name / "last.pt")


def _features(run_dir) -> torch.Tensor:
    """Branch-1 features in eval mode (as evaluation extracts them) of fixed images."""
    _, _, model = load_trained_model(run_dir / "last.pt", None, [])
    images = torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.inference_branch().eval()(images)


def test_bn_groups_of_16_give_the_same_run_on_1_2_and_4_processes(tmp_path, synthetic_root):
    log1, loss1, eval1, done1, state1 = _run(tmp_path, synthetic_root, "p1", 0, 16)
    assert "ghost BatchNorm, 2 groups per process" in log1
    assert len(loss1) == 6 and len(eval1) == 1 and len(done1) == 1
    runs = {}
    for procs, how in ((2, "plain BatchNorm, one group per process"), (4, "synchronised over 2 consecutive ranks")):
        log, losses, evals, done, state = runs[procs] = _run(tmp_path, synthetic_root, f"p{procs}", procs, 16)
        assert how in log and f"world size {procs}" in log
        torch.testing.assert_close(losses, loss1, atol=TOL, rtol=0)
        assert state["world_size"] == procs
        assert_same_state(state1, state, exact=False, atol=TOL)  # params, running stats, banks, labels
        for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
            assert abs(evals[0][key] - eval1[0][key]) < 1e-6, key
        assert done == done1
        torch.testing.assert_close(_features(tmp_path / f"p{procs}"), _features(tmp_path / "p1"), atol=TOL, rtol=0)
    assert state1["model"]["online.branch.neck.num_batches_tracked"] == 6

    # Without groups one process normalises over all 32 images, two processes over 16 each (the
    # plain run above): the first step already differs.
    log0, loss0, _, _, _ = _run(tmp_path, synthetic_root, "p1_nogroups", 0, 0, **{"train.epochs": 1,
                                                                                 "train.iters_per_epoch": 1})
    assert "model.bn_group_size 0" in log0
    assert (loss0[0] - runs[2][1][0]).abs().max() > 100 * TOL
    assert (loss1[0] - runs[2][1][0]).abs().max() < TOL

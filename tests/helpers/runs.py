"""Tiny end-to-end runs shared by the training tests: configs, the command line, state comparison."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from cacl_dist.config import load_config
from cacl_dist.distributed.env import DistEnv
from cacl_dist.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
MARKET_MINI = REPO.parent / "shared" / "data" / "market1501-mini"


def tiny_overrides(run_dir: Path, data_dir: Path, **extra: object) -> list[str]:
    """A few-second CACL run: 96 synthetic training images, resnet_tiny at 64x32.

    The runs are pinned to the CPU (``run.device=cpu``), so the bit-for-bit comparisons between
    them hold on a machine with a GPU as well.
    """
    values = {
        "run.output_dir": str(run_dir), "run.progress": False, "run.log_every": 1, "run.seed": 3,
        "run.device": "cpu",
        "data.dataset": "synthetic", "data.root": str(data_dir), "data.height": 64, "data.width": 32,
        "data.num_workers": 0, "data.pipeline": "torchvision",  # the reference pipeline, installed or not
        "data.synthetic.num_train_ids": 16, "data.synthetic.num_test_ids": 6,
        "data.synthetic.images_per_id": 6, "data.synthetic.num_cameras": 3,
        "data.synthetic.height": 64, "data.synthetic.width": 32,
        "augment.pad": 4, "model.backbone": "resnet_tiny", "model.pretrained": "none",
        "model.bn_group_size": 0,  # BatchNorm over each process's batch, whatever the recipe sets
        "clustering.k1": 8, "clustering.k2": 3, "clustering.min_samples": 3,
        "train.epochs": 2, "train.iters_per_epoch": 3, "train.batch_size": 16, "train.num_instances": 4,
        "eval.every_epochs": 1, "eval.batch_size": 64,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def _command(module: str, args: list[str], env_extra: dict | None, torchrun_procs: int,
             prefix: list[str] = ()) -> tuple[list[str], dict]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update(env_extra or {})
    if torchrun_procs:
        from tests.helpers.gloo import free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun_procs}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
    return [*prefix, *cmd], env


def run_cli(module: str, args: list[str], env_extra: dict | None = None, timeout: float = 600,
            torchrun_procs: int = 0, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    """Run `python -m module args` (or under torchrun with N processes; `prefix` wraps the command) and return
    the result."""
    cmd, env = _command(module, args, env_extra, torchrun_procs, prefix)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def start_cli(module: str, args: list[str], env_extra: dict | None = None, torchrun_procs: int = 0,
              **popen: object) -> subprocess.Popen:
    """Start `python -m module args` (or torchrun with N processes) in the background, output captured as text."""
    cmd, env = _command(module, args, env_extra, torchrun_procs)
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen(cmd, cwd=REPO, env=env, **popen)


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 300, what: str = "the condition"):
    """Poll `condition()` until it is true; fails when `proc` ends first or `timeout` seconds pass."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended (status {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def file_permissions_apply() -> list[str]:
    """A command prefix under which file permissions hold (root without its override capabilities), or
    pytest.skip when there is none."""
    import shutil

    import pytest

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("root ignores file permissions and setpriv is not installed to drop that")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]


def log_text(run_dir: Path, rank: int = 0) -> str:
    """The rank's log in the run folder ('' while it does not exist)."""
    path = Path(run_dir) / f"log_rank{rank}.txt"
    return path.read_text() if path.exists() else ""


CPU = DistEnv(0, 1, 0, torch.device("cpu"), None)


def fit(run_dir, data_dir, **extra):
    cfg = load_config(None, tiny_overrides(run_dir, data_dir, **extra))
    trainer = Trainer(cfg, CPU)
    trainer.fit()
    return trainer


def set_args(run_dir, data_dir, **extra) -> list[str]:
    return ["--set=" + o for o in tiny_overrides(run_dir, data_dir, **extra)]


def assert_same_state(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    assert torch.equal(a["labels"], b["labels"])
    for key in a["model"]:
        if exact:
            assert torch.equal(a["model"][key], b["model"][key]), key
        else:
            torch.testing.assert_close(a["model"][key], b["model"][key], atol=atol, rtol=0)
    for bank in ("bank_rgb", "bank_gray"):
        if exact:
            assert torch.equal(a[bank], b[bank]), bank
        else:
            torch.testing.assert_close(a[bank], b[bank], atol=atol, rtol=0)


def export_gives_the_checkpoint_features(run_dir: Path, images: Path, tmp_path: Path, fmt: str) -> Path:
    """Export branch 1 of ``run_dir/last.pt`` as ``fmt``, extract ``images`` with the checkpoint and with the
    export (given the run's config), assert the features agree, and return the export's path."""
    from cacl_dist.cli.export import main as export
    from cacl_dist.cli.extract import main as extract

    ckpt, config = str(run_dir / "last.pt"), str(run_dir / "config.yaml")
    out = tmp_path / f"branch.{fmt}"
    assert export(["--checkpoint", ckpt, "--format", fmt, "--output", str(out)]) == 0
    assert extract(["--checkpoint", ckpt, "--images", str(images), "--output", str(tmp_path / "ref.npz")]) == 0
    assert extract(["--checkpoint", str(out), "--images", str(images), "--output", str(tmp_path / "x.npz"),
                    "--config", config]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "x.npz")["features"], np.load(tmp_path / "ref.npz")["features"],
                               atol=1e-5)
    return out

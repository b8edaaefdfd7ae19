"""The pieces of the fault-injection script (tests/integration/fault_injection.py): cases, the scratch lab
with its synthetic data and finished base run, and checks of what a user sees."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tests.helpers.runs import run_cli, set_args, start_cli, wait_for


class Skip(Exception):
    """The case cannot run here (the reason is the message)."""


@dataclass
class Case:
    name: str
    expected: str
    run: Callable[["Lab"], tuple[bool, str]]
    torchrun: bool = False  # starts torchrun (slower)


class Lab:
    """A scratch folder with the synthetic data and one finished base run (1 epoch, one evaluation)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self._base: Path | None = None
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        return self.root / f"{self._count:02d}_{name}"

    def args(self, run_dir: Path, **extra) -> list[str]:
        return set_args(run_dir, self.data, **extra)

    def base(self) -> Path:
        """A finished 1-epoch run (evaluated once, after training); made on first use."""
        if self._base is None:
            run_dir = self.root / "base"
            result = run_cli("cacl_dist.train", self.args(run_dir, **BASE))
            if result.returncode != 0:
                raise RuntimeError(f"the base run failed: {result.stderr[-2000:]}")
            self._base = run_dir
        return self._base

    def copy_of_base(self, name: str) -> Path:
        run_dir = self.folder(name)
        shutil.copytree(self.base(), run_dir, ignore=shutil.ignore_patterns(".lock"))
        return run_dir


BASE = {"train.epochs": 1, "eval.at_start": False, "eval.every_epochs": 0}
NEXT_EPOCH = {"train.epochs": 2, "eval.at_start": False, "eval.every_epochs": 0}


def one_line_error(result: subprocess.CompletedProcess, *needles: str) -> tuple[bool, str]:
    lines = result.stderr.strip().splitlines()
    observed = f"exit {result.returncode}: " + (lines[-1][:150] if lines else "(no stderr)")
    if len(lines) > 1:
        observed += f" (+{len(lines) - 1} more stderr lines)"
    ok = result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return ok and all(n in lines[0] for n in needles), observed


def no_override_prefix() -> list[str]:
    """A command prefix under which file permissions apply (root loses its override), or Skip."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        raise Skip("root ignores file permissions and setpriv is missing")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"]


def stop_with(lab: Lab, name: str, sig: int, ready: Callable[[Path], bool], extra: dict) -> tuple[int, dict, Path]:
    run_dir = lab.folder(name)
    proc = start_cli("cacl_dist.train", lab.args(run_dir, **extra))
    wait_for(lambda: ready(run_dir), proc, what=f"the moment to send signal {sig}")
    proc.send_signal(sig)
    proc.communicate(timeout=300)
    from cacl_dist.training.checkpoint import load_checkpoint

    state = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else {}
    return proc.returncode, state, run_dir


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

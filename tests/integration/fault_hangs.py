"""Fault-injection cases for hangs and lost work (tests/integration/fault_injection.py runs and tabulates them):
a FIFO among the images, a stop during a slow image check, a DataLoader worker killed by the kernel, and
Ctrl-C or SIGTERM to a whole process group (DataLoader workers included) with each pipeline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.helpers.faults import BASE, Case, Lab, Skip, one_line_error
from tests.helpers.runs import log_text, run_cli, set_args, start_cli, wait_for

SLOW_CHECK_S = 1.0
"""Seconds the slowed image check spends on every file (8 threads: a tiny dataset then takes ~17 s)."""


def case_fifo_image(lab: Lab):
    if not hasattr(os, "mkfifo"):
        raise Skip("no named pipes here")
    data = lab.folder("fifo_data")
    shutil.copytree(lab.data, data)
    fifo = data / "bounding_box_train" / "0001_c1s1_999999_00.jpg"
    os.mkfifo(fifo)
    try:
        result = run_cli("cacl_dist.train", set_args(lab.folder("fifo_image"), data, **BASE), timeout=180)
    except subprocess.TimeoutExpired:
        return False, "still running after 180 s (blocked reading the FIFO)"
    return one_line_error(result, str(fifo), "not a regular file")


def slowed_check_module(folder: Path, marker: Path) -> str:
    """A module in `folder` that runs `python -m cacl_dist.train` with every file of the image check taking
    :data:`SLOW_CHECK_S` (a slow network filesystem); `marker` appears when the check starts. Returns its name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "slow_image_check.py").write_text(textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from cacl_dist.data import integrity

        _read = integrity.image_problem

        def slow(path):
            Path({str(marker)!r}).touch()
            time.sleep({SLOW_CHECK_S})
            return _read(path)

        integrity.image_problem = slow
        from cacl_dist.cli.train import main
        sys.exit(main())
    """))
    return "slow_image_check"


def case_sigterm_image_check(lab: Lab):
    inject = lab.folder("inject_slow_check")
    marker = inject / "check_started"
    module = slowed_check_module(inject, marker)
    run_dir = lab.folder("sigterm_check")
    env = {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    proc = start_cli(module, lab.args(run_dir, **BASE), env_extra=env)
    try:
        wait_for(marker.exists, proc, what="the image check")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    took = time.monotonic() - sent
    status = (run_dir / "status.txt").read_text().strip() if (run_dir / "status.txt").exists() else "no status.txt"
    ok = (proc.returncode == 3 and took < 10 and status.startswith("3 stopped on request (SIGTERM) during the image "
                                                                   "check") and not (run_dir / "last.pt").exists())
    return ok, f"exit {proc.returncode} {took:.1f} s after SIGTERM, status '{status[:70]}'"


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def case_worker_killed(lab: Lab):
    from cacl_dist.training.checkpoint import load_checkpoint

    if not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        raise Skip("no /proc children lists to find the DataLoader workers")
    run_dir = lab.folder("worker_killed")
    args = lab.args(run_dir, **{**BASE, "data.num_workers": 2, "train.iters_per_epoch": 60, "checkpoint.every_steps": 2})
    proc = start_cli("cacl_dist.train", args)
    try:
        wait_for(lambda: (run_dir / "last.pt").exists() and _children(proc.pid), proc, what="a checkpoint in epoch 1")
        victim = _children(proc.pid)[0]
        os.kill(victim, signal.SIGKILL)  # what the kernel's out-of-memory killer does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    ok, observed = one_line_error(subprocess.CompletedProcess(args, proc.returncode, out, err), "data.num_workers",
                                  "memory")
    status = (run_dir / "status.txt").read_text()
    state = load_checkpoint(run_dir / "last.pt")
    kept = state["epoch"] == 0 and state["iter_in_epoch"] >= 2
    ok = ok and status.startswith("2 error: ") and "data.num_workers" in status and kept
    return ok, f"{observed}; checkpoint {'kept' if kept else 'lost'} (step {state['iter_in_epoch']})"


def case_group_sigterm_with_workers(lab: Lab):
    """SIGTERM to the whole process group (as torchrun's agent sends it), DataLoader workers included."""
    from cacl_dist.training.checkpoint import load_checkpoint
    from cacl_dist.runs.metrics import read_metrics

    run_dir = lab.folder("group_sigterm")
    proc = start_cli("cacl_dist.train", lab.args(run_dir, **{**BASE, "data.num_workers": 2, "train.iters_per_epoch": 60}),
                     start_new_session=True)  # its own process group, as torchrun gives each worker
    try:
        wait_for(lambda: read_metrics(run_dir, "train"), proc, what="the first step")
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = load_checkpoint(run_dir / "last.pt")["iter_in_epoch"] if (run_dir / "last.pt").exists() else None
    ok = proc.returncode == 3 and step is not None and 0 < step < 60 and "Traceback" not in err
    lines = err.strip().splitlines()
    return ok, f"exit {proc.returncode}, checkpoint at step {step}" + (f": {lines[-1][:100]}" if lines and not ok else "")


def sigterm_torchrun_agent(lab: Lab, name: str, pipeline: str, busy: bool = False) -> tuple[bool, str]:
    """SIGTERM to torchrun's agent at the first step (2 workers): both must checkpoint and stop, status 3.

    `busy`: a process spinning on the CPU throughout (a loaded machine makes a late rank in the stop vote).
    """
    run_dir = lab.folder(name)
    extra = {"train.iters_per_epoch": 200, "data.pipeline": pipeline, "data.eval_pipeline": pipeline,
             "data.num_workers": 1, **BASE}
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    agent = start_cli("cacl_dist.train", lab.args(run_dir, **extra), torchrun_procs=2,
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        from cacl_dist.runs.metrics import read_metrics

        wait_for(lambda: read_metrics(run_dir, "train"), agent, what="the first step")
        sent = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        agent.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        for proc in (agent, spinner):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    from cacl_dist.training.checkpoint import load_checkpoint

    status = (run_dir / "status.txt").read_text().strip() if (run_dir / "status.txt").exists() else "no status.txt"
    stopped = all("stopped on request at step" in log_text(run_dir, rank) for rank in (0, 1))
    step = load_checkpoint(run_dir / "last.pt")["iter_in_epoch"] if (run_dir / "last.pt").exists() else None
    ok = stopped and status.startswith("3 stopped on request (SIGTERM)") and step is not None and 0 < step < 200
    return ok, (f"{'both ranks stopped' if stopped else 'a rank did not stop'} {took:.1f} s after SIGTERM, "
                f"checkpoint at step {step}, status '{status[:40]}'")


def case_torchrun_sigterm(lab: Lab):
    return sigterm_torchrun_agent(lab, "torchrun_sigterm", "torchvision")


def case_torchrun_sigterm_dali(lab: Lab):
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise Skip("NVIDIA DALI is not installed") from None
    return sigterm_torchrun_agent(lab, "torchrun_sigterm_dali", "dali")


HANG_CASES = [
    Case("fifo_image", "a FIFO named *.jpg among the training images: one line naming it, exit 2 (no hang)",
         case_fifo_image),
    Case("sigterm_image_check", "SIGTERM during a slow image check: stops within seconds, exit 3, status says so",
         case_sigterm_image_check),
    Case("worker_killed", "a DataLoader worker SIGKILLed (as by the OOM killer): one line naming data.num_workers "
         "and memory, in status.txt, exit 2, the last checkpoint kept", case_worker_killed),
    Case("group_sigterm", "SIGTERM to the process group, 2 DataLoader workers: checkpoint of the current step, exit 3",
         case_group_sigterm_with_workers),
    Case("torchrun_sigterm", "SIGTERM to torchrun's agent (torchvision): both workers checkpoint and stop, status 3",
         case_torchrun_sigterm, torchrun=True),
    Case("torchrun_sigterm_dali", "SIGTERM to torchrun's agent (DALI on the CPU): both workers checkpoint and stop, "
         "status 3", case_torchrun_sigterm_dali, torchrun=True),
]

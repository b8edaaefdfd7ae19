"""Fault injection: try every fault and bad input as a new user would, and print what happened.

    python -m tests.integration.fault_injection                 # every case
    python -m tests.integration.fault_injection --cases lock,disk_full --keep /tmp/faults

Each case runs the real command line on a tiny synthetic run (`tests.helpers.runs.tiny_overrides`)
and compares what a user would see (exit status, stderr, the run folder) with what should happen.
The table lists case, expected, observed and the verdict: ok, FAIL or skipped (with the reason).
Exit status 1 when a case failed. The torchrun cases (`--no-torchrun` leaves them out) include two
"nodes" on this machine: two torchrun agents on the c10d rendezvous, one of them killed and started
again. The two-node SLURM job has its own cluster: tests/integration/test_slurm.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

from tests.helpers.faults import (BASE, NEXT_EPOCH, Case, Lab, Skip, no_override_prefix, one_line_error, running,
                                  stop_with)
from tests.helpers.runs import log_text, run_cli, set_args, start_cli, tiny_overrides, wait_for
from tests.integration.fault_cases_data_loss import CASES as DATA_LOSS_CASES
from tests.integration.fault_cases_input import INPUT_CASES
from tests.integration.fault_hangs import HANG_CASES


def case_gamma(lab: Lab):
    return one_line_error(run_cli("cacl_dist.train", lab.args(lab.folder("gamma"), **{"optim.gamma": -0.5})),
                           "optim.gamma")


def case_nan(lab: Lab):
    return one_line_error(run_cli("cacl_dist.train", lab.args(lab.folder("nan"), **{"optim.lr": ".nan"})),
                           "optim.lr", "finite")


def case_set_pairs(lab: Lab):
    result = run_cli("cacl_dist.train", ["--print-config", "--set", "train.epochs=7", "optim.lr=0.002"])
    ok = result.returncode == 0 and "epochs: 7" in result.stdout and "lr: 0.002" in result.stdout
    return ok, f"exit {result.returncode}" + (": both values in the config" if ok else f": {result.stderr[-150:]}")


def case_output_is_file(lab: Lab):
    blocker = lab.folder("file")
    blocker.write_text("x")
    return one_line_error(run_cli("cacl_dist.train", lab.args(blocker)), str(blocker), "run.output_dir")


def case_output_read_only(lab: Lab):
    prefix = no_override_prefix()
    parent = lab.folder("read_only")
    parent.mkdir()
    parent.chmod(0o555)
    try:
        result = run_cli("cacl_dist.train", lab.args(parent / "run"), prefix=prefix)
    finally:
        parent.chmod(0o755)
    return one_line_error(result, "run.output_dir")


def case_data_unreadable(lab: Lab):
    prefix = no_override_prefix()
    data = lab.folder("data_copy")
    shutil.copytree(lab.data, data)
    (data / "bounding_box_train").chmod(0)
    try:
        result = run_cli("cacl_dist.train", set_args(lab.folder("unreadable"), data), prefix=prefix)
    finally:
        (data / "bounding_box_train").chmod(0o755)
    return one_line_error(result, "bounding_box_train", "Permission denied")


def case_lock(lab: Lab):
    from cacl_dist.runs.folder import RunFolderLock

    run_dir = lab.copy_of_base("busy")
    with RunFolderLock(run_dir):  # this process plays the run that holds the folder
        result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH))
    return one_line_error(result, "in use by another run", f"pid {os.getpid()}")


def case_other_backbone(lab: Lab):
    run_dir = lab.copy_of_base("backbone")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH, **{"model.backbone": "resnet18"}))
    ok, observed = one_line_error(result, "model.backbone")
    return ok and "ERROR" in log_text(run_dir).splitlines()[-1], observed


def case_disk_full(lab: Lab):
    if not os.path.exists("/dev/full"):
        raise Skip("no /dev/full to fake a full disk")
    inject = lab.folder("inject_full_disk")
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(textwrap.dedent("""
        import os, tempfile
        _mkstemp = tempfile.mkstemp
        def mkstemp(*args, **kwargs):  # checkpoint writes land on a device that is always full
            fd, path = _mkstemp(*args, **kwargs)
            if ".pt." in os.path.basename(path):
                os.close(fd)
                fd = os.open("/dev/full", os.O_WRONLY)
            return fd, path
        tempfile.mkstemp = mkstemp
    """))
    run_dir = lab.copy_of_base("disk_full")
    env = {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH), env_extra=env)
    ok, observed = one_line_error(result, "last.pt", "No space left on device", "free disk space")
    status = (run_dir / "status.txt").read_text()
    return ok and status.startswith("2 error:") and "No space" in log_text(run_dir), observed


def case_non_finite_loss(lab: Lab):
    run_dir = lab.copy_of_base("non_finite")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH, **{"loss.tau": 1e-45}))
    ok, observed = one_line_error(result, "non-finite loss")
    return ok and "non-finite loss" in log_text(run_dir), observed


def case_sigterm_start_up(lab: Lab):
    code, state, run_dir = stop_with(lab, "sigterm_start", signal.SIGTERM,
                                 lambda d: "memory banks initialised" in log_text(d), {"eval.batch_size": 1})
    observed = f"exit {code}, checkpoint at step {state.get('global_step')}"
    return code == 3 and state.get("global_step") == 0, observed


def case_ctrl_c(lab: Lab):
    from cacl_dist.runs.metrics import read_metrics

    code, state, run_dir = stop_with(lab, "ctrl_c", signal.SIGINT, lambda d: read_metrics(d, "train"),
                                 {"train.iters_per_epoch": 30})
    observed = f"exit {code}, checkpoint at step {state.get('iter_in_epoch')} of epoch 1"
    return code == 130 and 0 < state.get("iter_in_epoch", 0) < 30, observed


def case_metrics_once(lab: Lab):
    from cacl_dist.runs.metrics import read_metrics

    run_dir = lab.copy_of_base("metrics_once")
    args = lab.args(run_dir, **NEXT_EPOCH, **{"checkpoint.every_steps": 1})
    proc = start_cli("cacl_dist.train", args)
    wait_for(lambda: len(read_metrics(run_dir, "train")) >= 5, proc, what="two steps of epoch 2")
    proc.kill()
    proc.wait()
    result = run_cli("cacl_dist.train", args)
    keys = [(r["kind"], r["step"], r.get("epoch")) for r in read_metrics(run_dir)]
    twice = len(keys) - len(set(keys))
    return result.returncode == 0 and twice == 0, f"exit {result.returncode}, {twice} rows recorded twice"


def case_messages(lab: Lab):
    """Checkpoint lines say where the run stands; one evaluation gives a one-evaluation summary."""
    text = log_text(lab.base())
    ok = "(after 1 epoch)" in text and "done: mAP" in text and "->" not in text.split("done:")[-1]
    return ok, " / ".join(line.split(" INFO ")[-1][:70] for line in text.splitlines()
                          if "checkpoint written" in line or "done:" in line)


def case_umask(lab: Lab):
    mode = stat.S_IMODE((lab.base() / "last.pt").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return mode == 0o666 & ~umask, f"last.pt mode {mode:o} under umask {umask:03o}"


def case_export_warning(lab: Lab):
    import torch

    out = lab.folder("export") / "branch.pt2"
    result = run_cli("cacl_dist.export", ["--checkpoint", str(lab.base() / "last.pt"), "--format", "export",
                                          "--output", str(out)])
    if result.returncode != 0:
        return False, f"export exit {result.returncode}: {result.stderr[-150:]}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.export.load(str(out)).module()
    notices = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    return not notices, f"{len(notices)} deprecation notices on load"


def case_world_size(lab: Lab):
    run_dir = lab.folder("world_size")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **{"train.batch_size": 9, "train.num_instances": 3}),
                     torchrun_procs=2)
    ok = result.returncode != 0 and "does not split over 2" in result.stderr and not run_dir.exists()
    return ok, f"exit {result.returncode}, run folder {'created' if run_dir.exists() else 'not created'}"


def case_agent_killed(lab: Lab):
    from cacl_dist.runs.metrics import read_metrics

    run_dir = lab.folder("agent_killed")
    agent = start_cli("cacl_dist.train", lab.args(run_dir, **{"train.iters_per_epoch": 200}), torchrun_procs=2,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: read_metrics(run_dir, "train"), agent, what="the first step")
    workers = [int(p) for p in Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()]
    agent.kill()
    agent.wait()
    wait_for(lambda: not any(running(pid) for pid in workers), timeout=300, what="the workers to end")
    stopped = all("stopped on request" in log_text(run_dir, rank) for rank in (0, 1))
    return stopped, "workers stopped with a checkpoint" if stopped else "workers did not stop on request"


def case_node_killed(lab: Lab):
    from tests.helpers.nodes import run_with_a_killed_node

    run_dir = lab.folder("node_killed")
    iters = 6
    stopped_at = run_with_a_killed_node(run_dir, lab.args(run_dir, **{"train.iters_per_epoch": iters}),
                                        run_dir.parent, epochs=2, iters_per_epoch=iters)
    status = (run_dir / "status.txt").read_text().strip() if (run_dir / "status.txt").exists() else "no status.txt"
    resumed = f"resumed from {run_dir / 'last.pt'}" in log_text(run_dir)
    ok = resumed and status.startswith("0 finished")
    return ok, (f"stopped at step {stopped_at['global_step']} with a checkpoint, "
                f"{'resumed' if resumed else 'not resumed'}, status '{status}'")


def case_corrupt_jpeg(lab: Lab):
    data = lab.folder("corrupt_data")
    shutil.copytree(lab.data, data)
    victim = sorted((data / "bounding_box_train").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    return one_line_error(run_cli("cacl_dist.train", set_args(lab.folder("corrupt_jpeg"), data, **BASE)),
                           victim.name)


def case_nan_checkpoint(lab: Lab):
    import torch

    run_dir = lab.copy_of_base("nan_checkpoint")
    state = torch.load(run_dir / "last.pt", weights_only=False)
    next(v for v in state["model"].values() if v.is_floating_point()).fill_(float("nan"))
    torch.save(state, run_dir / "last.pt")
    return one_line_error(run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH)), "last.pt")


def case_lr_on_resume(lab: Lab):
    from cacl_dist.runs.metrics import read_metrics

    run_dir = lab.copy_of_base("lr_change")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH, **{"optim.lr": 0.0005}))
    lrs = sorted({r["lr"] for r in read_metrics(run_dir, "train") if r["epoch"] == 2})
    return result.returncode == 0 and lrs == [0.0005], f"exit {result.returncode}, epoch-2 lr {lrs}"


def case_eval_failure(lab: Lab):
    from cacl_dist.training.checkpoint import load_checkpoint
    from cacl_dist.runs.metrics import read_metrics

    data = lab.folder("eval_fail_data")
    shutil.copytree(lab.data, data)
    victim = sorted((data / "query").iterdir())[0]
    run_dir = lab.folder("eval_failure")
    proc = start_cli("cacl_dist.train", set_args(run_dir, data, **{**BASE, "train.iters_per_epoch": 20}))
    wait_for(lambda: read_metrics(run_dir, "train"), proc, what="the first training step")
    victim.write_bytes(victim.read_bytes()[:100])  # damaged while training: the evaluation after it cannot read it
    out, err = proc.communicate(timeout=300)
    ok, observed = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), victim.name)
    kept = (run_dir / "last.pt").exists() and load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    return ok and kept, observed + ("; trained epoch kept" if kept else "; trained epoch lost")


def case_orphan_tmp(lab: Lab):
    run_dir = lab.copy_of_base("orphans")
    orphan = run_dir / ".last.pt.abcd1234.tmp"
    orphan.write_bytes(b"half a checkpoint")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH))
    return result.returncode == 0 and not orphan.exists(), f"exit {result.returncode}, orphan " + (
        "left behind" if orphan.exists() else "removed")


def case_pickled_callable(lab: Lab):
    import torch

    marker = lab.root / "pickled_callable_ran"
    run_dir = lab.copy_of_base("pickle")
    state = torch.load(run_dir / "last.pt", weights_only=False)
    state["cluster_stats"] = _Touch(str(marker))
    torch.save(state, run_dir / "last.pt")
    result = run_cli("cacl_dist.train", lab.args(run_dir, **NEXT_EPOCH))
    ok, observed = one_line_error(result, "last.pt")
    return ok and not marker.exists(), observed + ("; the callable ran" if marker.exists() else "")


class _Touch:
    """Unpickling this creates a file: stands for code hidden in a checkpoint."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


CASES = [
    Case("gamma", "optim.gamma=-0.5: one line naming optim.gamma, exit 2", case_gamma),
    Case("nan", "optim.lr=.nan: one line naming optim.lr (not finite), exit 2", case_nan),
    Case("set_pairs", "--set a=1 b=2 after one --set: both applied", case_set_pairs),
    Case("output_is_file", "run.output_dir is a file: one line, exit 2", case_output_is_file),
    Case("output_read_only", "run.output_dir not writable: one line, exit 2", case_output_read_only),
    Case("data_unreadable", "unreadable data folder: one line naming it, exit 2", case_data_unreadable),
    Case("lock", "a second run on a held folder: one line naming the owner's pid, exit 2", case_lock),
    Case("other_backbone", "resume with another backbone: one line, also in the log, exit 2", case_other_backbone),
    Case("disk_full", "disk full at a checkpoint: one line (ENOSPC, path, free disk space), in log and status",
         case_disk_full),
    Case("non_finite_loss", "non-finite loss: one line, also in the log, exit 2", case_non_finite_loss),
    Case("sigterm_start", "SIGTERM during start-up: stop at once, banks checkpointed (step 0), exit 3",
         case_sigterm_start_up),
    Case("ctrl_c", "Ctrl-C while training: checkpoint of the current step, exit 130", case_ctrl_c),
    Case("metrics_once", "SIGKILL then resume: every metrics row once", case_metrics_once),
    Case("messages", "checkpoint lines 'after 1 epoch'; one evaluation: summary without '->'", case_messages),
    Case("umask", "last.pt follows the umask", case_umask),
    Case("export_warning", "'export' format loads without deprecation notices", case_export_warning),
    Case("world_size", "batch 9 on 2 processes: fails before any work", case_world_size, torchrun=True),
    Case("agent_killed", "torchrun agent SIGKILLed: workers checkpoint and stop", case_agent_killed, torchrun=True),
    Case("node_killed", "2 nodes, node 1's agent SIGKILLed, started again: the job resumes and finishes",
         case_node_killed, torchrun=True),
    Case("corrupt_jpeg", "a truncated training JPEG: one line naming it, exit 2", case_corrupt_jpeg),
    Case("nan_checkpoint", "NaN weights in last.pt: resume refused in one line, exit 2", case_nan_checkpoint),
    Case("lr_on_resume", "optim.lr changed on resume: the new lr is used", case_lr_on_resume),
    Case("eval_failure", "a query image damaged during training: the evaluation after it fails in one line "
         "naming it, the trained epoch is kept", case_eval_failure),
    Case("orphan_tmp", "orphan temporary checkpoint: removed on the next start", case_orphan_tmp),
    Case("pickled_callable", "callable pickled in last.pt: refused, never run", case_pickled_callable),
    *INPUT_CASES,
    *DATA_LOSS_CASES,
    *HANG_CASES,
]


def run_cases(names: list[str] | None, keep: Path | None = None) -> list[tuple[Case, str, str]]:
    """Run the named cases (all by default); returns (case, observed, verdict) rows."""
    from cacl_dist.config import load_config
    from cacl_dist.data.factory import generate_if_synthetic

    unknown = set(names or []) - {c.name for c in CASES}
    if unknown:
        raise SystemExit(f"unknown case(s): {', '.join(sorted(unknown))}; known: {', '.join(c.name for c in CASES)}")
    root = Path(tempfile.mkdtemp(prefix="faults_")) if keep is None else keep
    root.mkdir(parents=True, exist_ok=True)
    lab = Lab(root)
    generate_if_synthetic(load_config(None, tiny_overrides(root / "prepare", lab.data)).data)
    rows = []
    try:
        for case in CASES:
            if names and case.name not in names:
                continue
            start = time.perf_counter()
            try:
                ok, observed = case.run(lab)
                verdict = "ok" if ok else "FAIL"
            except Skip as exc:
                observed, verdict = str(exc), "skipped"
            except Exception as exc:  # a crash of the case itself is reported like a failure
                observed = f"{type(exc).__name__}: {' '.join(str(exc).split())[:150]}"
                verdict = "FAIL"
            rows.append((case, observed, verdict))
            print(f"[{time.perf_counter() - start:5.1f} s] {case.name}: {verdict}", file=sys.stderr, flush=True)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows


def table(rows: list[tuple[Case, str, str]]) -> str:
    """The results as a markdown table: case, expected, observed, verdict."""
    lines = ["| case | expected | observed | verdict |", "|---|---|---|---|"]
    for case, observed, verdict in rows:
        cells = [case.name, case.expected, observed.replace("|", "/"), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.integration.fault_injection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--no-torchrun", action="store_true", help="leave out the cases that start torchrun")
    parser.add_argument("--keep", type=Path, default=None, help="run in this folder and keep it")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n] or [c.name for c in CASES if not (args.no_torchrun and c.torchrun)]
    rows = run_cases(names, args.keep)
    print(table(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([{"case": c.name, "expected": c.expected, "observed": o, "verdict": v}
                                         for c, o, v in rows], indent=1))
    return 1 if any(v == "FAIL" for _, _, v in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU acceptance: one command that checks the whole GPU path of cacl_dist on a new machine.

    bash scripts/gpu_acceptance.sh [--data DIR] [--out DIR] [--dry-run]
    python3 benchmarks/gpu_acceptance.py [--data DIR] [--out DIR] [--dry-run] [--budget-s S] [--parts NAME ...]

For one NVIDIA GPU, no internet, the repository plus a Market-1501 layout folder (e.g.
market1501-mini, ~52 MB). Each part runs in its own process (a new session, so everything it
starts goes with it) under its own time limit, shortened so the parts after it keep their
minimum; a part that fails or hangs is recorded and the next one starts. The run ends with a
one-screen pass/fail summary and exits non-zero when a part failed (a skipped part, e.g. DALI
not installed, is not a failure).

Parts: env (versions, GPU, driver), data, tests (pytest -m gpu and the CUDA-only tests),
collectives (one-rank NCCL group: every collective and dtype of the trainer, DDP static graph +
bucket view, fused Adam, fp16 scaler), two_process (two gloo processes sharing the GPU == one
process), resume (ResNet-50 x 2, bf16 + channels-last, short schedule with evaluation, SIGTERM
mid-epoch, resume), clustering (N = 12,936 ... 1,000,000 on CUDA, labels vs the dense reference),
throughput (full step fp32 / bf16 + channels-last / + torch.compile, images/s and MFU), dali.

Files: <out>/acceptance_<part>_<gpu>.{md,json,png}, bench_{cluster,train,data}_<gpu>.*, and the
summary <out>/gpu_acceptance_<gpu>.{md,json}; <out> is benchmarks/results unless --out is given.
--dry-run runs the same parts on the CPU with tiny sizes (gloo instead of NCCL) into --out or a
new temporary folder, in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.acceptance.common import Context  # noqa: E402  (stdlib only)
from benchmarks.acceptance.report import screen, summary_markdown, write_part  # noqa: E402
from benchmarks.machine import file_tag  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One part: where its function lives, its time limits (GPU, dry run) and the least time worth starting it."""

    name: str
    title: str
    function: str       # "module:function" under benchmarks.acceptance
    limit_s: float
    dry_limit_s: float
    minimum_s: float
    dry_title: str = ""  # what the part does in a dry run, where it differs

    def describe(self, dry_run: bool) -> str:
        """The title for this mode."""
        return self.dry_title if dry_run and self.dry_title else self.title


PARTS = [
    Part("env", "versions, GPU name, memory, driver", "system:part_env", 60, 60, 10),
    Part("data", "the data folder (--data, or a synthetic set)", "system:part_data", 60, 60, 5),
    Part("tests", "pytest -m gpu and the CUDA-only tests", "system:part_tests", 100, 150, 20,
         "pytest -m gpu and the CUDA-only tests (skipped on a CPU)"),
    Part("collectives", "one-rank NCCL group: collectives, DDP, fused Adam, fp16", "collectives:part_collectives",
         60, 90, 15, "one-rank gloo group: collectives, DDP, Adam, fp16"),
    Part("two_process", "2 gloo processes on the GPU == 1 process", "training:part_two_process", 100, 200, 30,
         "2 gloo processes on the CPU == 1 process"),
    Part("resume", "ResNet-50 x 2 bf16 + channels-last, SIGTERM, resume", "training:part_resume", 150, 200, 45,
         "resnet_tiny x 2 bf16 + channels-last, SIGTERM, resume"),
    Part("clustering", "clustering on CUDA, N = 12,936 ... 1,000,000", "benches:part_clustering", 180, 200, 45,
         "clustering on the CPU, N = 1,000 and 2,000"),
    Part("throughput", "full-step images/s and MFU, ResNet-50 x 2", "benches:part_throughput", 180, 200, 45,
         "full-step images/s and MFU, resnet_tiny x 2"),
    Part("dali", "DALI two-view rate on the GPU", "benches:part_dali", 60, 60, 5,
         "DALI two-view rate, CPU-only pipeline"),
]
NEEDS_DATA = ("resume", "throughput", "dali")
#: Whole-run budgets: 9 minutes on the GPU machine; a dry run takes 2-3 minutes on 2 idle cores, and its
#: cap leaves room for a CPU shared with other jobs.
BUDGET_S = {"gpu": 540.0, "dry": 1000.0}
SUMMARY_RESERVE_S = 5.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Market-1501 layout folder (e.g. market1501-mini); default: a synthetic set")
    p.add_argument("--out", help="folder for the result files (default benchmarks/results; dry run: a temp folder)")
    p.add_argument("--dry-run", action="store_true", help="the same parts on the CPU with tiny sizes (gloo)")
    p.add_argument("--budget-s", type=float, help="wall-clock budget of the whole run (default 540; dry run 1000)")
    p.add_argument("--parts", nargs="+", choices=[part.name for part in PARTS], help="run only these parts")
    p.add_argument("--run-part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--context", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------- one part
def run_part_here(args) -> int:
    """Child mode: run one part's function and write its result dict as JSON."""
    import importlib

    part = next(p for p in PARTS if p.name == args.run_part)
    module, function = part.function.split(":")
    ctx = Context.load(Path(args.context))
    outcome = getattr(importlib.import_module(f"benchmarks.acceptance.{module}"), function)(ctx)
    Path(args.result).write_text(json.dumps(outcome, indent=1, default=str))
    return 0


def kill_session(sid: int) -> None:
    """SIGKILL every process of session `sid` (a part and everything it started)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError, ValueError):
            continue
    for pid in pids or [sid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def run_isolated(cmd: list[str], timeout: float, log: Path, env: dict | None = None) -> tuple[int | None, bool, float]:
    """Run `cmd` in a new session with its output in `log`; on time-out kill the whole session.

    Returns (exit status or None, timed out, seconds).
    """
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, timeout))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        kill_session(proc.pid)  # also what a finished part left running
        proc.wait()
    return (None if timed_out else proc.returncode), timed_out, time.time() - t0


def last_lines(log: Path, count: int = 3) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return " | ".join(line.strip()[:200] for line in lines[-count:]) or "(empty log)"


def run_part(part: Part, ctx: Context, timeout: float) -> dict:
    """Run one part in its own process under `timeout`; its result dict with status, time and limit."""
    work = Path(ctx.work)
    ctx_path, result_path = work / f"context_{part.name}.json", work / f"result_{part.name}.json"
    log = work / "logs" / f"{part.name}.log"
    result_path.unlink(missing_ok=True)
    ctx.deadline = time.time() + timeout
    ctx.save(ctx_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ctx.repo, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
               PYTHONUNBUFFERED="1")
    cmd = [ctx.python, str(Path(__file__).resolve()), "--run-part", part.name, "--context", str(ctx_path),
           "--result", str(result_path)]
    code, timed_out, seconds = run_isolated(cmd, timeout, log, env)
    if result_path.is_file():
        outcome = json.loads(result_path.read_text())
    elif timed_out:
        outcome = {"status": "fail", "summary": f"stopped after its {timeout:.0f} s limit; last output: "
                                                f"{last_lines(log)}", "details": []}
    else:
        outcome = {"status": "fail", "summary": f"crashed (exit status {code}): {last_lines(log)}", "details": []}
    return {"data": {}, "commands": [], "files": [], **outcome, "seconds": seconds, "limit": timeout,
            "log": str(log)}


# ------------------------------------------------------------------------------------- the run
def plan_timeout(part: Part, later: list[Part], dry_run: bool, deadline: float) -> float:
    """The part's limit, shortened so every later part keeps its minimum before the deadline."""
    reserve = sum(p.minimum_s for p in later) + SUMMARY_RESERVE_S
    return min(part.dry_limit_s if dry_run else part.limit_s, deadline - time.time() - reserve)


def not_run_because(part: Part, timeout: float, ctx: Context, env: dict | None, done: list[dict]) -> str | None:
    """Why `part` is not started (no time left, no CUDA device, no data folder), or None."""
    if timeout < part.minimum_s:
        return f"{max(0.0, timeout):.0f} s left of the budget, it needs {part.minimum_s:.0f} s"
    env_done = any(row["name"] == "env" for row in done)
    if not ctx.dry_run and env_done and not ((env or {}).get("gpu") or {}).get("cuda_available"):
        return "torch sees no CUDA device (on a machine without a GPU use --dry-run)"
    if part.name in NEEDS_DATA and not ctx.data:
        return "no data folder (the data part failed)"
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.run_part:
        return run_part_here(args)
    t_start = time.time()
    budget = args.budget_s or BUDGET_S["dry" if args.dry_run else "gpu"]
    deadline = t_start + budget
    if args.out:
        results = Path(args.out).resolve()
    elif args.dry_run:
        results = Path(tempfile.mkdtemp(prefix="gpu_acceptance_dry_run_"))
    else:
        results = REPO / "benchmarks" / "results"
    work = results / "work" if args.dry_run or args.out else REPO / "benchmarks" / ".runs" / "gpu_acceptance"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    harness = "bash scripts/gpu_acceptance.sh " + shlex.join(sys.argv[1:] if argv is None else argv)
    data = str(Path(args.data).resolve()) if args.data else None
    ctx = Context(dry_run=args.dry_run, repo=str(REPO), python=sys.executable, work=str(work), results=str(results),
                  tag="dry_run_cpu" if args.dry_run else "unknown_gpu", data=data, data_given=bool(args.data),
                  deadline=deadline, harness_command=harness.strip())
    parts = [p for p in PARTS if not args.parts or p.name in args.parts or p.name in ("env", "data")]
    print(f"GPU acceptance{' (dry run on the CPU)' if args.dry_run else ''}: {len(parts)} parts, budget "
          f"{budget:.0f} s, results in {results}", flush=True)
    rows, env = [], None
    for i, part in enumerate(parts):
        timeout = plan_timeout(part, parts[i + 1:], args.dry_run, deadline)
        reason = not_run_because(part, timeout, ctx, env, rows)
        if reason:
            row = {"status": "fail", "summary": f"not run: {reason}", "details": [], "data": {}, "commands": [],
                   "files": [], "seconds": 0.0, "limit": max(0.0, timeout)}
        else:
            print(f"[{time.time() - t_start:5.0f} s] {part.name}: {part.describe(args.dry_run)} "
                  f"(limit {timeout:.0f} s) ...", flush=True)
            row = run_part(part, ctx, timeout)
        row.update(name=part.name, title=part.describe(args.dry_run))
        if part.name == "env" and row["data"].get("versions"):
            env = row["data"]
            if not args.dry_run:
                ctx.tag = file_tag((env.get("gpu") or {}).get("name") or "no_gpu")
        if part.name == "data" and row["data"].get("root"):
            ctx.data = row["data"]["root"]
        print(f"[{time.time() - t_start:5.0f} s] {part.name}: {row['status'].upper()} ({row['seconds']:.0f} s) "
              f"{row['summary']}", flush=True)
        rows.append(row)
    for row in rows:
        row["written"] = write_part(results, ctx.tag, row["name"], row["title"], row, env, ctx.harness_command)
    gpu = (env or {}).get("gpu", {})
    header = (f"{gpu.get('name', 'no GPU')}" + (f", {gpu['memory_gib']:.1f} GiB, driver {gpu.get('driver', '?')}"
                                                 if gpu.get("memory_gib") else "")
              + (f"; torch {env['versions']['torch']}" if env else "")
              + (" (DRY RUN on the CPU)" if args.dry_run else ""))
    total = time.time() - t_start
    summary = results / f"gpu_acceptance_{ctx.tag}.md"
    summary.write_text(summary_markdown(rows, header, env, ctx.harness_command, total, budget))
    summary.with_suffix(".json").write_text(json.dumps(
        {"header": header, "budget_s": budget, "total_s": total, "command": ctx.harness_command, "env": env,
         "parts": [{k: r[k] for k in ("name", "title", "status", "summary", "seconds", "limit", "data", "files",
                                      "written")} for r in rows]}, indent=1, default=str) + "\n")
    print("\n" + screen(rows, "GPU acceptance: " + header, total, budget, summary), flush=True)
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""GPU acceptance: one command that checks the whole GPU path of cacl_dist on a new machine.

    bash scripts/gpu_acceptance.sh [--data DIR] [--out DIR] [--work DIR] [--bundle FILE] [--dry-run]
    python3 benchmarks/gpu_acceptance.py [...the same...] [--budget-s S] [--parts NAME ...]

The script imports its parts as ``benchmarks.acceptance``: run it from the repository root with the root on
PYTHONPATH (``PYTHONPATH=$PWD python3 benchmarks/...``), as scripts/gpu_acceptance.sh does; cacl_dist comes from
the installed package.

For one NVIDIA GPU, no internet, the repository plus a Market-1501 layout folder (e.g.
market1501-mini, ~52 MB). Each part runs in its own process (a new session, so everything it
starts goes with it) under its own time limit, shortened so the parts after it keep their
minimum; a part that fails or hangs is recorded and the next one starts. The run ends with a
one-screen pass/fail summary and exits non-zero when a part failed (a skipped part, e.g. DALI
not installed, is not a failure). Outside a dry run, every GPU part fails unless its work ran on
CUDA, and on a machine without CUDA the run fails after the env part.

Parts: env (versions, GPU, driver), data, tests (every test marked gpu must pass), collectives
(one-rank NCCL group: every collective and dtype of the trainer, the gloo control group, DDP static
graph + bucket view, fused Adam, fp16 scaler), two_process (two gloo processes sharing the GPU,
BatchNorm synchronised over both, == one process), resume (ResNet-50 x 2, bf16 + channels-last,
ghost BatchNorm, short schedule with evaluation, SIGTERM mid-epoch, resume), clustering (N =
1,000,000 first, then 12,936 ... 100,000 on CUDA; labels vs the dense reference at 12,936), throughput
(full step fp32 / bf16 + channels-last / + torch.compile when it can build, images/s and MFU; the bf16 +
channels-last step also fed by the input pipeline a run takes here), pipeline (two-view samples/s of the
torch-gpu pipeline at batch 64 and 256, and of DALI when it is installed).

Files: <out>/acceptance_<part>_<gpu>.{md,json,png}, bench_{cluster,train,data}_<gpu>.*, and the
summary <out>/gpu_acceptance_<gpu>.{md,json}; <out> is benchmarks/results unless --out is given.
Runs, checkpoints and logs go to --work (never inside <out>). --bundle FILE packs <out> and the logs
into one .tar.gz of at most 16 MiB and copies the summary markdown beside it: two files to return
from a machine that gives back few. --dry-run runs the same parts on the CPU with tiny sizes (gloo
instead of NCCL) into --out or a new temporary folder, in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.acceptance.common import Context  # (stdlib only)
from benchmarks.acceptance.report import screen, summary_markdown, write_part
from benchmarks.machine import file_tag

REPO = Path(__file__).resolve().parents[1]


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


#: Limits (GPU, dry run) and minimums in seconds. The estimate beside each part is for one H100 and
#: market1501-mini (9,173 training / 3,763 test images), from the work it does; their sum, ~7.5 minutes,
#: fits the 8-minute budget. A part's limit shrinks so that the parts after it keep their minimum.
PARTS = [
    # ~15 s: import torch, CUDA initialisation, nvidia-smi, one float64 matmul
    Part("env", "versions, GPU name, memory, driver", "system:part_env", 45, 60, 10),
    # ~5 s: list and count 12,936 files
    Part("data", "the data folder (--data, or a synthetic set)", "system:part_data", 30, 60, 5),
    # ~75 s: collection ~10 s, 4 gloo processes with CUDA BatchNorm groups ~20 s, kNN and clustering on
    # 3-4k points ~15 s, the bf16 training test ~20 s, the rest ~10 s
    Part("tests", "every test marked gpu must pass", "system:part_tests", 110, 150, 30,
         "the tests marked gpu are collected (each skipped on a CPU)"),
    # ~20 s: NCCL and gloo groups ~5 s, 16 collectives < 1 s, 2 x 4 DDP steps of resnet_tiny ~5 s
    Part("collectives", "one-rank NCCL group: collectives, control group, DDP, fused Adam, fp16",
         "collectives:part_collectives", 45, 90, 15, "one-rank gloo group: collectives, DDP, Adam, fp16"),
    # ~45 s: one tiny run in 1 process (~15 s) and one under torchrun in 2 (~25 s)
    Part("two_process", "2 gloo processes on the GPU (synchronised BatchNorm) == 1 process",
         "training:part_two_process", 80, 200, 30, "2 gloo processes on the CPU == 1 process"),
    # ~90 s: 2 starts ~20 s, banks of 9,173 images x 2 views ~15 s, 2 clusterings ~6 s, 2 x 40 steps ~15 s,
    # evaluation of 3,763 images ~5 s
    Part("resume", "ResNet-50 x 2 bf16 + channels-last, ghost BatchNorm, SIGTERM, resume", "training:part_resume",
         150, 200, 45, "resnet_tiny x 2 bf16 + channels-last, ghost BatchNorm, SIGTERM, resume"),
    # ~100 s: N = 1M first (features on the GPU ~5 s, 2e15 TF32 FLOP of search ~15 s, Jaccard, DBSCAN and
    # refinement on the sparse graph ~40 s), the dense reference at 12,936 ~10 s, 5 process starts ~25 s
    Part("clustering", "clustering on CUDA, N = 1,000,000 first, then 12,936 ... 100,000", "benches:part_clustering",
         140, 200, 60, "clustering on the CPU, N = 2,000 and 1,000"),
    # ~80 s: 3 process starts ~30 s, 13 steps per variant, 13 more of bf16+cl fed by the input pipeline (its
    # workers start ~5 s); + ~30 s: the ViT-S x 2 step (bf16), one process start and 13 steps, when timm is
    # installed; + torch.compile (~60-120 s) only when time is left
    Part("throughput", "full-step images/s and MFU, ResNet-50 x 2 and ViT-S x 2, and fed by the input pipeline",
         "benches:part_throughput", 200, 280, 40,
         "full-step images/s and MFU, resnet_tiny x 2 and the tiny test ViT x 2, fed by torch-gpu"),
    # ~30 s: start ~10 s, 2 batch sizes x 23 batches of torch-gpu (each start of 8 workers ~3 s); DALI ~20 s more
    Part("pipeline", "input pipeline two-view rate on the GPU: torch-gpu (and DALI) at batch 64 and 256",
         "benches:part_pipeline", 60, 90, 15, "input pipeline two-view rate on the CPU: torch-gpu (and DALI)"),
]
NEEDS_DATA = ("resume", "throughput", "pipeline")
#: Parts whose work must have run on the GPU (outside a dry run a pass on the CPU is a failure).
GPU_PARTS = ("tests", "collectives", "two_process", "resume", "clustering", "throughput", "pipeline")
#: Whole-run budgets: 8 minutes on the GPU machine; a dry run takes 2-3 minutes on 2 idle cores, and its
#: cap leaves room for a CPU shared with other jobs.
BUDGET_S = {"gpu": 480.0, "dry": 1000.0}
SUMMARY_RESERVE_S = 5.0
#: The most a returned file may weigh on the GPU machine (what --bundle writes stays under it).
BUNDLE_LIMIT_BYTES = 16 * 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Market-1501 layout folder (e.g. market1501-mini); default: a synthetic set")
    p.add_argument("--out", help="folder for the result files (default benchmarks/results; dry run: a temp folder)")
    p.add_argument("--work", help="scratch folder for runs, checkpoints and logs (default: beside --out, "
                                  "never inside it; benchmarks/.runs/gpu_acceptance without --out)")
    p.add_argument("--bundle", help="also write ONE .tar.gz of every result and log (at most 16 MiB) to this path, "
                                    "with the summary markdown beside it")
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


def check_ran_on_gpu(part: Part, row: dict, dry_run: bool) -> None:
    """Outside a dry run, a GPU part that passed without its work running on CUDA fails (in place)."""
    if dry_run or part.name not in GPU_PARTS or row["status"] != "pass":
        return
    ran_on = row["data"].get("ran_on")
    if ran_on != "cuda":
        row["status"] = "fail"
        row["summary"] = f"ran on {ran_on or 'an unknown device'}, not on the GPU; {row['summary']}"


def write_bundle(bundle: Path, folders: list[Path], limit: int = BUNDLE_LIMIT_BYTES) -> list[str]:
    """One .tar.gz of every file under `folders` (each by its folder name), at most `limit` bytes.

    When the files do not fit, the largest ones are left out until the archive does, and a
    LEFT_OUT.txt inside it names them. Returns the names left out.
    """
    import io
    import tarfile

    files = sorted((f for folder in folders if folder.is_dir() for f in folder.rglob("*") if f.is_file()),
                   key=lambda f: f.stat().st_size)
    left_out: list[str] = []
    bundle.parent.mkdir(parents=True, exist_ok=True)
    while True:
        with tarfile.open(bundle, "w:gz") as tar:
            for f in files:
                folder = next(d for d in folders if d in f.parents)
                tar.add(f, arcname=str(Path(folder.name) / f.relative_to(folder)))
            if left_out:
                note = ("left out to keep the archive under "
                        f"{limit / 2**20:.0f} MiB:\n" + "\n".join(left_out) + "\n").encode()
                info = tarfile.TarInfo("LEFT_OUT.txt")
                info.size = len(note)
                tar.addfile(info, io.BytesIO(note))
        if bundle.stat().st_size <= limit or not files:
            return left_out
        largest = files.pop()
        left_out.append(f"{largest} ({largest.stat().st_size / 2**20:.1f} MiB)")


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
    if args.work:
        work = Path(args.work).resolve()
    elif args.dry_run or args.out:  # beside the results, so that they can be returned without the runs
        work = results.parent / f"{results.name}_work"
    else:
        work = REPO / "benchmarks" / ".runs" / "gpu_acceptance"
    if work == results or results in work.parents:
        print(f"error: --work {work} lies inside --out {results}; choose a folder outside it", file=sys.stderr)
        return 2
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
        check_ran_on_gpu(part, row, args.dry_run)
        if part.name == "env" and row["data"].get("versions"):
            env = row["data"]
            if not args.dry_run:
                ctx.tag = file_tag((env.get("gpu") or {}).get("name") or "no_gpu")
        if part.name == "data":  # the later parts read the data folder only when this part found it
            ctx.data = row["data"].get("root") if row["status"] == "pass" else None
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
    if args.bundle:
        bundle = Path(args.bundle).resolve()
        left_out = write_bundle(bundle, [results, work / "logs"])
        shutil.copy2(summary, bundle.parent / summary.name)
        print(f"bundle: {bundle} ({bundle.stat().st_size / 2**20:.1f} MiB) and {bundle.parent / summary.name}"
              + (f"; left out to fit {BUNDLE_LIMIT_BYTES / 2**20:.0f} MiB: {', '.join(left_out)}" if left_out else ""),
              flush=True)
    return 1 if any(r["status"] == "fail" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

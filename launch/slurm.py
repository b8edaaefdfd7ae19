"""Submit CACL training to SLURM through submitit: `python -m launch.slurm`.

    python -m launch.slurm --config configs/market1501.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --time 24:00:00 --set data.root=/data/Market-1501-v15.09.15
    python -m launch.slurm --config configs/quickstart.yaml --gpus-per-node 0 --tasks-per-node 2 --time 30
    python -m launch.slurm --config configs/quickstart.yaml --sweep optim.lr=1e-3,3e-4   # a job array
    python -m launch.slurm --config configs/quickstart.yaml --local --gpus-per-node 0 --tasks-per-node 2

One task per GPU (or --tasks-per-node CPU tasks); every task runs the same training entry as
torchrun with RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT derived from SLURM. The config,
partition and resources are checked before anything is submitted. Before the time limit the job
checkpoints and requeues itself (--max-requeues); submitting the same command again resumes too.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

from cacl_dist.cli.common import add_config_args, default_config_path, print_config_if_asked, run_main
from cacl_dist.errors import UserError

from . import resources
from .plan import Run, build_runs, check_world_size
from .task import TrainingTask

FINISHED_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "REVOKED", "SPECIAL_EXIT"}  # PREEMPTED may still turn into a requeue


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch.slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="one run per value (repeatable: the product of all sweeps), submitted as a job array")
    job = parser.add_argument_group("job shape")
    job.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    job.add_argument("--gpus-per-node", type=int, default=1,
                     help="GPUs per node, one task each (default 1); 0 for a CPU job")
    job.add_argument("--tasks-per-node", type=int, default=None,
                     help="processes per node of a CPU job (default 1); GPU jobs run one per GPU")
    job.add_argument("--cpus-per-task", type=int, default=None,
                     help="CPUs per task (default: data.num_workers + 1)")
    job.add_argument("--mem-gb", type=float, default=None, help="memory per node in GB (default: the cluster's)")
    job.add_argument("--time", default="24:00:00", help="time limit per job start, SLURM format (default 24:00:00)")
    where = parser.add_argument_group("where")
    where.add_argument("--partition", default=None, help="partition (default: the cluster's default partition)")
    where.add_argument("--account", default=None, help="account to charge")
    where.add_argument("--qos", default=None, help="quality of service")
    where.add_argument("--constraint", default=None, help="node features, e.g. a100")
    where.add_argument("--job-name", default=None, help="job name (default: cacl-<config name>)")
    where.add_argument("--local", action="store_true",
                       help="run on this machine through submitit's local executor (waits for the end)")
    requeue = parser.add_argument_group("time limits and requeue")
    requeue.add_argument("--signal-delay-s", type=int, default=120,
                         help="seconds before the time limit at which the job checkpoints and requeues (default 120)")
    requeue.add_argument("--max-requeues", type=int, default=10,
                         help="requeue a job at most this many times over its life (default 10)")
    requeue.add_argument("--array-parallelism", type=int, default=16,
                         help="sweep runs that may run at the same time (default 16)")
    parser.add_argument("--log-dir", default=None,
                        help="submitit logs and pickles (default: <run.output_dir>/slurm); must be shared by the nodes")
    parser.add_argument("--master-port", type=int, default=None,
                        help="rendezvous port on the first node (default: derived from the job id)")
    parser.add_argument("--fresh", action="store_true",
                        help="start new runs: each existing run folder is renamed to <folder>.old-<time> here, "
                             "before submitting (the jobs themselves never start over, so a requeued job resumes)")
    parser.add_argument("--check", action="store_true", help="check everything and print the plan, submit nothing")
    parser.add_argument("--wait", action="store_true", help="wait for the job(s) to end and report how they ended")
    return parser


def _validate_shape(args: argparse.Namespace) -> None:
    for flag, value, low in (("--nodes", args.nodes, 1), ("--gpus-per-node", args.gpus_per_node, 0),
                             ("--signal-delay-s", args.signal_delay_s, 1), ("--max-requeues", args.max_requeues, 0),
                             ("--array-parallelism", args.array_parallelism, 1)):
        if value < low:
            raise UserError(f"{flag} must be at least {low}, got {value}")
    if args.tasks_per_node is not None:
        if args.gpus_per_node > 0 and args.tasks_per_node != args.gpus_per_node:
            raise UserError(f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {args.gpus_per_node}: "
                            "GPU jobs run one task per GPU; drop --tasks-per-node")
        if args.tasks_per_node < 1:
            raise UserError(f"--tasks-per-node must be at least 1, got {args.tasks_per_node}")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise UserError(f"--cpus-per-task must be at least 1, got {args.cpus_per_task}")
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise UserError(f"--mem-gb must be positive, got {args.mem_gb}")
    if args.local and args.nodes != 1:
        raise UserError("--local runs on this machine only: use --nodes 1")


def plan_request(args: argparse.Namespace, runs: list[Run]) -> resources.Request:
    tasks = args.gpus_per_node if args.gpus_per_node > 0 else (args.tasks_per_node or 1)
    cpus = args.cpus_per_task or max(r.cfg.data.num_workers for r in runs) + 1
    return resources.Request(nodes=args.nodes, tasks_per_node=tasks, gpus_per_node=args.gpus_per_node,
                             cpus_per_task=cpus, mem_gb=args.mem_gb,
                             time_min=resources.parse_time_minutes(args.time))


def check_local(request: resources.Request) -> None:
    if request.gpus_per_node:
        import torch

        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if request.gpus_per_node > found:
            raise UserError(f"impossible request: --gpus-per-node {request.gpus_per_node} with --local, but this "
                            f"machine has {found} CUDA device{'s' if found != 1 else ''}")


def make_executor(args: argparse.Namespace, request: resources.Request, partition: str | None, folder: Path,
                  name: str):
    try:
        import submitit
    except ImportError:
        raise UserError("submitting jobs needs submitit: pip install cacl_dist[slurm] "
                        "(or pip install 'submitit>=1.5')") from None
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if args.local else "slurm")
    params = dict(name=name, timeout_min=max(1, math.ceil(request.time_min)), nodes=request.nodes,
                  tasks_per_node=request.tasks_per_node, cpus_per_task=request.cpus_per_task,
                  gpus_per_node=request.gpus_per_node or None, mem_gb=request.mem_gb)
    threads = f"export OMP_NUM_THREADS={request.cpus_per_task}"  # torch's threads = the CPUs SLURM gives a task
    if args.local:
        params.update(local_setup=[threads])
    else:
        params.update(slurm_partition=partition, slurm_signal_delay_s=args.signal_delay_s,
                      slurm_array_parallelism=args.array_parallelism, slurm_account=args.account,
                      slurm_qos=args.qos, slurm_constraint=args.constraint,
                      slurm_additional_parameters={"requeue": True},
                      slurm_setup=[threads])
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return executor


def _signal_delay(args: argparse.Namespace) -> int:
    return 30 if args.local else args.signal_delay_s  # submitit's local executor warns 30 s before its limit


def describe_job(job, run: Run) -> list[str]:
    out = job.paths.stdout
    pattern = out.name[: -len("_0_log.out")] + "_<task>_log.out" if out.name.endswith("_0_log.out") else out.name
    return [f"  run folder: {run.run_dir}",
            f"  logs:       {out} (task 0; {pattern} and .err for the others)",
            f"  metrics:    {run.run_dir / 'metrics.jsonl'}"]


def job_state(job_id: str) -> tuple[str, int]:
    """(state, restarts) from `scontrol show job`; ('GONE', -1) once SLURM forgot the job."""
    result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return "GONE", -1
    fields = dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)
    return fields.get("JobState", "UNKNOWN"), int(fields.get("Restarts", "0") or 0)


def wait_slurm(jobs: list, poll_s: float = 5.0) -> bool:
    """Print state changes until every job has ended; True when all completed."""
    last: dict[str, tuple[str, int]] = {}
    ended: dict[str, str] = {}
    while len(ended) < len(jobs):
        for job in jobs:
            if job.job_id in ended:
                continue
            state, restarts = job_state(job.job_id)
            if state == "GONE":
                state = "COMPLETED" if job.paths.result_pickle.exists() else "UNKNOWN"
            if (state, restarts) != last.get(job.job_id):
                extra = f" (restarts: {restarts})" if restarts > 0 else ""
                print(f"job {job.job_id}: {state}{extra}", flush=True)
                last[job.job_id] = (state, restarts)
            if state in FINISHED_STATES or state == "UNKNOWN":
                ended[job.job_id] = state
        if len(ended) < len(jobs):
            time.sleep(poll_s)
    return all(state == "COMPLETED" for state in ended.values())


def failure_line(log: Path, exc: Exception) -> str:
    """The training's own one-line error from a task log, else the last error line there, else `exc`."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    for prefix in ("error: ", ""):
        found = [line.strip() for line in lines if line.startswith(prefix) and ("Error" in line or prefix)]
        if found:
            return found[-1]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def report_outcome(job, run: Run) -> bool:
    from cacl_dist.runs.metrics import read_complete

    try:
        job.results()  # one result per task; every task must have finished training
    except Exception as exc:  # submitit raises its own error types carrying the task's traceback
        print(f"job {job.job_id} did not finish training: {failure_line(job.paths.stderr, exc)} "
              f"(log: {job.paths.stderr})", file=sys.stderr, flush=True)
        return False
    evals = read_complete(run.run_dir, "eval")  # skips a torn or junk line
    summary = f"; last evaluation mAP {100 * evals[-1]['mAP']:.1f}%" if evals else ""
    print(f"job {job.job_id} finished: {run.run_dir}{summary}", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        if print_config_if_asked(args, default=default_config_path()):
            return 0
        _validate_shape(args)
        cwd = Path.cwd()
        config = args.config or default_config_path()
        config = str(Path(config).resolve()) if config and Path(config).is_file() else config
        runs = build_runs(config, list(args.overrides), list(args.sweep), cwd)
        request = plan_request(args, runs)
        check_world_size(runs, request.nodes * request.tasks_per_node)
        if request.gpus_per_node == 0:
            runs = [Run(r.name, r.overrides + ("run.device=cpu",), r.run_dir, r.cfg)
                    if not any(o.startswith("run.device=") for o in r.overrides) else r for r in runs]
        partition = None
        if args.local:
            check_local(request)
        else:
            partition = resources.check_request(resources.query_nodes(), request, args.partition)
            if shutil.which("sbatch") is None:
                raise UserError("SLURM's 'sbatch' is not on PATH: run this on a SLURM login node, or pass --local")
        base = Path(runs[0].run_dir.parent if args.sweep else runs[0].run_dir)
        folder = Path(args.log_dir).resolve() if args.log_dir else base / "slurm"
        name = args.job_name or f"cacl-{Path(config).stem if config else 'default'}"
        shape = (f"{request.nodes} node{'s' if request.nodes > 1 else ''} x {request.tasks_per_node} "
                 f"task{'s' if request.tasks_per_node > 1 else ''} ({request.gpus_per_node} GPUs per node, "
                 f"{request.cpus_per_task} CPU{'s' if request.cpus_per_task > 1 else ''} per task), time limit {args.time}, up to {args.max_requeues} requeues")
        where = "this machine (local executor)" if args.local else f"partition '{partition}'"
        if args.check:
            print(f"checked: {len(runs)} run{'s' if len(runs) > 1 else ''} on {where}: {shape}")
            for run in runs:
                print(f"  run folder: {run.run_dir}")
            return 0
        if args.fresh:  # here, once: the tasks resume whenever SLURM starts them again
            from cacl_dist.runs.fresh import rename_aside

            for run in runs:
                if (moved := rename_aside(run.run_dir, keep_outside=[run.cfg.data.root])) is not None:
                    print(f"--fresh: {run.run_dir} is now {moved}")
        executor = make_executor(args, request, partition, folder, name)
        tasks = [TrainingTask(run.train_argv(config), str(run.run_dir), args.max_requeues, _signal_delay(args),
                              args.master_port) for run in runs]
        if args.local:
            return _run_local(executor, tasks, runs, shape)
        if len(tasks) == 1:
            jobs = [executor.submit(tasks[0])]
            print(f"submitted job {jobs[0].job_id} to {where}: {shape}")
        else:
            with executor.batch():
                pending = [executor.submit(task) for task in tasks]
            jobs = list(pending)
            print(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} runs) to {where}: {shape}")
        for job, run in zip(jobs, runs):
            if len(jobs) > 1:
                print(f"job {job.job_id}:")
            print("\n".join(describe_job(job, run)))
        first = jobs[0].job_id.split("_")[0]
        print(f"watch: squeue -j {first}; cancel: scancel {first} (checkpoints first); resume: submit the same "
              "command again", flush=True)
        if not args.wait:
            return 0
        ok = wait_slurm(jobs)
        return 0 if all([report_outcome(job, run) for job, run in zip(jobs, runs)]) and ok else 1

    return run_main(body)


def _run_local(executor, tasks: list, runs: list[Run], shape: str) -> int:
    ok = True
    for task, run in zip(tasks, runs):  # one after the other: they share this machine
        job = executor.submit(task)
        print(f"started local job {job.job_id} on this machine: {shape}")
        print("\n".join(describe_job(job, run)), flush=True)
        try:
            job.wait()
        except KeyboardInterrupt:
            job.cancel()
            raise
        ok = report_outcome(job, run) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

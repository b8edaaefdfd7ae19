"""Cost of fixed-size BatchNorm groups: training-step time with and without model.bn_group_size.

The step measured is ``Trainer.train_step`` (both branches forward and backward, losses, memory
update, Adam) on random inputs already in memory, the banks sized as the market1501-mini training
split (synthetic data when it is absent). For one global batch:

  1 process    bn_group_size 0 (one BatchNorm over the whole batch) vs ghost groups (16, 8 images)
  2 processes  bn_group_size 0 (plain BatchNorm per process, gloo) vs one group synchronised over
               both ranks (bn_group_size = the global batch), which adds an all-reduce per BatchNorm
               layer in the forward and one in the backward

Every case runs in its own process group (torchrun for 2 processes), interleaved over repeats;
the table gives the median wall time per step of rank 0 and its ratio to the case without groups.

    python3 benchmarks/bench_bn_groups.py               # resnet_tiny 64x32, batch 32 (about 2 min)
    python3 benchmarks/bench_bn_groups.py --backbone resnet18 --height 128 --width 64

Writes benchmarks/results/bench_bn_groups.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from machine import cpu_description, git_commit

REPO = Path(__file__).resolve().parents[1]

MARKET_MINI = REPO.parent / "shared" / "data" / "market1501-mini"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="global batch")
    p.add_argument("--steps", type=int, default=8, help="timed steps per case and repeat")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--runs-dir", default="benchmarks/.runs/bench_bn_groups")
    p.add_argument("--note", default="", help="a sentence added to the markdown report")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON), rank 0 prints JSON
    return p.parse_args(argv)


def cases(batch: int) -> list[dict]:
    """(processes, bn_group_size) pairs: the baseline first in each process count."""
    return [dict(procs=1, group=0), dict(procs=1, group=16), dict(procs=1, group=8),
            dict(procs=2, group=0), dict(procs=2, group=batch)]


# ----------------------------------------------------------------------------------------- one case
def run_case(case: dict, args, runs_dir: Path) -> dict:
    """Time `case` in this process (rank of a torchrun job or a single process)."""
    import logging

    from cacl_dist.config import load_config
    from cacl_dist.distributed import comm
    from cacl_dist.distributed.env import init_distributed
    from cacl_dist.distributed.sharding import shard_bounds
    from cacl_dist.training.trainer import Trainer

    logging.disable(logging.INFO)
    torch.set_num_threads(args.threads)
    data = (["data.dataset=market1501", f"data.root={MARKET_MINI}"] if MARKET_MINI.is_dir()
            else ["data.dataset=synthetic", f"data.root={runs_dir / 'synthetic'}"])
    overrides = data + [
        f"run.output_dir={runs_dir / 'run'}", "run.progress=false", "run.device=cpu",
        f"model.backbone={args.backbone}", "model.pretrained=none", f"data.height={args.height}",
        f"data.width={args.width}", f"train.batch_size={args.batch}", f"model.bn_group_size={case['group']}",
        "clustering.k1=4", "clustering.k2=4"]
    env = init_distributed("cpu", "gloo")
    trainer = Trainer(load_config(None, overrides), env)
    num, dim = len(trainer.dataset.train), trainer.model.dim
    gen = torch.Generator().manual_seed(0)
    start, end = shard_bounds(num, env.rank, env.world_size)
    trainer.banks.rgb.load(torch.randn(num, dim, generator=gen)[start:end])
    trainer.banks.gray.load(torch.randn(num, dim, generator=gen)[start:end])
    trainer.pseudo.assign(torch.randperm(num, generator=gen) % max(1, num // 8), trainer.banks)
    shape = (args.batch, 3, args.height, args.width)
    rgb, gray = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    indices = torch.randperm(num, generator=gen)[: args.batch]
    share = args.batch // env.world_size
    mine = slice(env.rank * share, (env.rank + 1) * share)
    wall, cpu = [], []
    for step in range(args.warmup + args.steps):
        comm.barrier()
        t, c = time.perf_counter(), time.process_time()
        trainer.train_step(rgb[mine], gray[mine], indices, mine, 1)
        if step >= args.warmup:
            wall.append(1e3 * (time.perf_counter() - t))
            cpu.append(1e3 * (time.process_time() - c))
    return {**case, "step_ms": wall, "cpu_ms": cpu, "per_process": share, "bank_rows": num}


def run_case_subprocess(case: dict, args) -> dict:
    runs_dir = Path(args.runs_dir).resolve() / f"p{case['procs']}_g{case['group']}"
    script = [str(Path(__file__).resolve()), "--one", json.dumps(case), "--runs-dir", str(runs_dir),
              "--backbone", args.backbone, "--height", str(args.height), "--width", str(args.width),
              "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--threads", str(args.threads)]
    launcher = [sys.executable]
    if case["procs"] > 1:
        with socket.socket() as sock:  # a free port for the rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={case['procs']}", "--master_addr=127.0.0.1",
                     f"--master_port={port}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    proc = subprocess.run(launcher + script, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


# ----------------------------------------------------------------------------------------- report
def label(case: dict, batch: int) -> str:
    if case["group"] == 0:
        return f"{case['procs']} proc, no groups"
    per = batch // case["procs"]
    how = (f"ghost x{per // case['group']}" if per > case["group"] else
           f"synced over {case['group'] // per}" if per < case["group"] else "plain")
    return f"{case['procs']} proc, groups of {case['group']} ({how})"


def summarise(results: list[dict], batch: int) -> list[dict]:
    rows = []
    for case in cases(batch):
        runs = [r for r in results if r["procs"] == case["procs"] and r["group"] == case["group"]]
        rows.append({**case, "label": label(case, batch),
                     "step_ms_median": statistics.median([t for r in runs for t in r["step_ms"]]),
                     "cpu_ms_median": statistics.median([t for r in runs for t in r["cpu_ms"]]),
                     "repeat_medians": [statistics.median(r["step_ms"]) for r in runs]})
    for row in rows:
        base = next(r for r in rows if r["procs"] == row["procs"] and r["group"] == 0)
        row["ratio"] = row["step_ms_median"] / base["step_ms_median"]
        row["cpu_ratio"] = row["cpu_ms_median"] / base["cpu_ms_median"]
    return rows


def write_results(args, rows: list[dict], meta: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_bn_groups.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = [
        "# BatchNorm statistics groups: training-step time with and without `model.bn_group_size`",
        "",
        f"`Trainer.train_step` of {args.backbone} at {args.height}x{args.width}, global batch {args.batch}, "
        f"{args.threads} torch thread(s) per process, CPU, gloo between processes. Median wall time per step "
        f"of rank 0 over {args.repeats} interleaved repeats of {args.steps} steps (after {args.warmup} warm-up "
        "steps), and rank 0's CPU time per step (less sensitive to other load on the machine; time spent "
        "waiting in a collective is not in it); the ratios are to the case without groups on the same number "
        "of processes.",
        "",
        "| processes | bn_group_size | realised as | wall ms / step (median) | repeat medians | wall ratio | "
        "CPU ms / step | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        how = row["label"].split("(")[-1].rstrip(")") if row["group"] else "BatchNorm per process"
        lines.append(f"| {row['procs']} | {row['group']} | {how} | {row['step_ms_median']:.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in row['repeat_medians'])} | {row['ratio']:.2f}x | "
                     f"{row['cpu_ms_median']:.1f} | {row['cpu_ratio']:.2f}x |")
    lines += ["", args.note, ""] if args.note else [""]
    lines += ["```bash", meta["command"], "```", "",
              f"- Hardware: {meta['hardware']}",
              f"- torch {meta['torch']}, Python {meta['python']}, commit {meta['commit']}",
              f"- Date: {meta['date']}; 1-minute load average before -> after: {meta['load_before']} -> "
              f"{meta['load_after']} (on {os.cpu_count()} cores)", "",
              "![step time](bench_bn_groups.png)", ""]
    (out / "bench_bn_groups.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3))
    colours = ["tab:gray" if r["group"] == 0 else "tab:blue" for r in rows]
    ax.barh([r["label"] for r in rows][::-1], [r["step_ms_median"] for r in rows][::-1], color=colours[::-1])
    ax.set_xlabel("ms per training step (median, rank 0)")
    ax.set_title(f"{args.backbone} {args.height}x{args.width}, batch {args.batch}, CPU")
    fig.tight_layout()
    fig.savefig(out / "bench_bn_groups.png", dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        result = run_case(json.loads(args.one), args, Path(args.runs_dir))
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(result), flush=True)
        return
    load_before = os.getloadavg()[0]
    results = []
    for repeat in range(args.repeats):
        for case in cases(args.batch):
            result = run_case_subprocess(case, args)
            results.append(result)
            print(f"repeat {repeat + 1}: {label(case, args.batch):40s} "
                  f"{statistics.median(result['step_ms']):8.1f} ms/step", flush=True)
    rows = summarise(results, args.batch)
    print(f"{'case':40s} {'ms/step':>9s} {'ratio':>6s} {'CPU ms':>8s} {'ratio':>6s}")
    for row in rows:
        print(f"{row['label']:40s} {row['step_ms_median']:9.1f} {row['ratio']:5.2f}x {row['cpu_ms_median']:8.1f} "
              f"{row['cpu_ratio']:5.2f}x")
    meta = {"command": shlex.join(["python3", "benchmarks/bench_bn_groups.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
            "hardware": cpu_description(with_memory=True), "torch": torch.__version__,
            "python": platform.python_version(), "commit": git_commit(REPO),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_before": f"{load_before:.2f}", "load_after": f"{os.getloadavg()[0]:.2f}"}
    write_results(args, rows, meta)


if __name__ == "__main__":
    main()

"""Input pipeline throughput: two-view training samples per second, torchvision vs DALI.

Decodes real JPEGs (a Market-1501 layout folder given by --root), plans global
batches with the identity sampler (true identities as labels, one process, rank 0 of 1) and
iterates each pipeline's training loader, which emits the RGB view, the grayscale view and the
indices, at 256 x 128 with the default augmentation (flip, pad 10 + crop, erasing):

    torchvision  PIL decoding + tensor ops in `--cores` DataLoader worker processes
    dali-cpu     DALI CPU-only pipeline (device_id=None) with `--cores` threads
    dali-gpu     DALI with `mixed` decoding on CUDA device 0 (only when CUDA is available)

A sample is one image turned into both views. Each measurement skips `--warmup` batches, then
times `--iters` batches; it is repeated `--repeats` times (alternating the pipelines) and the
median is reported.

    python3 benchmarks/bench_data.py --root /data/market1501-mini     # ~2 min on 2 cores
    python3 benchmarks/bench_data.py --root DIR --cores 4 --iters 40
    python3 benchmarks/bench_data.py --root DIR --pipelines dali-gpu  # only some pipelines

Writes <out>/<stem>.{json,md,png} (default benchmarks/results/bench_data.*).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from machine import cpu_description, git_commit, gpu_description
from cacl_dist.data.epoch_plan import plan_epoch
from cacl_dist.data.layouts import load_dataset
from cacl_dist.data.pipelines import dali as dali_pipeline
from cacl_dist.data.pipelines import torchvision as torchvision_pipeline
from cacl_dist.data.transforms import AugmentParams

REPO = Path(__file__).resolve().parents[1]

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="Market-1501 layout dataset with real JPEGs")
    parser.add_argument("--pipelines", nargs="+", choices=["torchvision", "dali-cpu", "dali-gpu"], default=None,
                        help="pipelines to measure (default: torchvision, plus DALI CPU and GPU where available)")
    parser.add_argument("--cores", type=int, default=2, help="worker processes / DALI threads")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per batch (one rank)")
    parser.add_argument("--iters", type=int, default=20, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches before timing")
    parser.add_argument("--repeats", type=int, default=3, help="measurements per pipeline (median reported)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results", help="folder for the result files")
    parser.add_argument("--stem", default="bench_data", help="file name of the results, without extension")
    parser.add_argument("--note", default="", help="a sentence about the conditions, added to the report")
    return parser.parse_args(argv)


def make_loader(name: str, records, params, plan, cores: int):
    if name == "torchvision":
        return torchvision_pipeline.train_loader(records, params, plan, num_workers=cores)
    device = "cuda:0" if name == "dali-gpu" else "cpu"
    return dali_pipeline.train_loader(records, params, plan, num_workers=cores, device=device)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(name: str, records, params, plan, args) -> tuple[float, float]:
    """(two-view samples per second over the timed batches, CPU milliseconds per sample over all batches)."""
    cpu0 = _cpu_seconds()
    loader = make_loader(name, records, params, plan, args.cores)
    seen, total, t0 = 0, 0, None
    for step, (view_rgb, view_gray, _) in enumerate(loader):
        total += view_rgb.shape[0]
        if step == args.warmup:
            if view_rgb.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        elif step > args.warmup:
            seen += view_rgb.shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    rate = seen / (time.perf_counter() - t0)
    del loader
    return rate, 1000.0 * (_cpu_seconds() - cpu0) / total


def hardware() -> str:
    gpu = gpu_description()
    return cpu_description() + (f"; GPU {gpu}" if gpu else "")


def write_results(args, results: dict, out: Path, load_before: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    dali_version = "not installed"
    if dali_pipeline.dali_available():
        dali_version = dali_pipeline.require_dali().__version__
    meta = {"command": "python3 benchmarks/bench_data.py " + shlex.join(sys.argv[1:]), "hardware": hardware(),
            "torch": torch.__version__, "dali": dali_version, "python": platform.python_version(),
            "commit": git_commit(REPO), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_average_1m_before": round(load_before, 2), "load_average_1m_after": round(load[0], 2),
            "cores": args.cores, "batch_size": args.batch_size, "iters": args.iters, "size": [args.height, args.width]}
    (out / f"{args.stem}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")

    base = results.get("torchvision", {}).get("median")
    base_cpu = results.get("torchvision", {}).get("cpu_ms_per_sample")
    rows = ["| pipeline | samples/s (median) | runs | speed-up vs torchvision | CPU ms per sample | CPU saving |",
            "|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{r['median'] / base:.2f}x" if base else "-"
        cpu_ratio = f"{base_cpu / r['cpu_ms_per_sample']:.2f}x" if base_cpu else "-"
        runs = ", ".join(f"{v:.0f}" for v in r["runs"])
        rows.append(f"| {name} | {r['median']:.0f} | {runs} | {ratio} | {r['cpu_ms_per_sample']:.2f} | {cpu_ratio} |")
    text = [
        "# Input pipeline throughput: two-view samples per second",
        "",
        f"Real JPEGs from `{Path(args.root).name}` (Market-1501 crops, 128 x 64 on disk) decoded and turned into "
        f"both training views at {args.height} x {args.width} (flip, pad 10 + crop, erasing; second view "
        f"grayscale), batch {args.batch_size}, {args.cores} cores for each pipeline (DataLoader worker "
        f"processes for torchvision, DALI threads for DALI). Median of {args.repeats} runs of {args.iters} "
        "batches after a warm-up.",
        "",
        *rows,
        "",
        "CPU ms per sample is user + system time of the process and its DataLoader workers over all "
        "batches of a measurement (including start-up and warm-up) divided by the samples: it depends "
        "less on other load than the wall-clock rate does.",
        "" if torch.cuda.is_available() else "DALI-GPU was not measured: no CUDA device on this machine.",
        "",
        args.note,
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"- Hardware: {meta['hardware']}",
        f"- torch {meta['torch']}, DALI {meta['dali']}, Python {meta['python']}, commit {meta['commit']}",
        f"- Date: {meta['date']}; 1-minute load average before -> after the runs: "
        f"{meta['load_average_1m_before']} -> {meta['load_average_1m_after']} (on {os.cpu_count()} cores)",
        "",
        f"![samples per second]({args.stem}.png)",
        "",
    ]
    (out / f"{args.stem}.md").write_text("\n".join(text))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    colours = ["tab:gray", "tab:green", "tab:blue"][: len(names)]
    fig, (ax_rate, ax_cpu) = plt.subplots(1, 2, figsize=(8, 3))
    ax_rate.bar(names, [results[n]["median"] for n in names], color=colours)
    ax_rate.set_ylabel("two-view samples / s (wall)")
    ax_cpu.bar(names, [results[n]["cpu_ms_per_sample"] for n in names], color=colours)
    ax_cpu.set_ylabel("CPU ms per sample")
    fig.suptitle(f"{args.height}x{args.width}, {args.cores} cores, batch {args.batch_size} "
                 f"(load {load_before:.1f} -> {load[0]:.1f})")
    fig.tight_layout()
    fig.savefig(out / f"{args.stem}.png", dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    records = load_dataset("market1501", args.root).train
    labels = np.unique([r.pid for r in records], return_inverse=True)[1]
    cams = np.array([r.camid for r in records])
    plan = plan_epoch(labels, cams, epoch=0, num_iters=args.warmup + args.iters + 1, batch_size=args.batch_size,
                      num_instances=4, seed=0, num_clusters=int(labels.max()) + 1)
    params = AugmentParams(height=args.height, width=args.width)
    names = args.pipelines or ["torchvision"] + (["dali-cpu"] if dali_pipeline.dali_available() else []) + (
        ["dali-gpu"] if dali_pipeline.dali_available() and torch.cuda.is_available() else [])
    if any(n.startswith("dali") for n in names) and not dali_pipeline.dali_available():
        raise SystemExit("--pipelines: DALI is not installed (pip install -e '.[dali]'); measure torchvision only")
    if "dali-gpu" in names and not torch.cuda.is_available():
        raise SystemExit("--pipelines dali-gpu: no CUDA device is visible")
    runs: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats):
        for name in names:
            rate, cpu_ms = measure(name, records, params, plan, args)
            runs[name].append(rate)
            cpu[name].append(cpu_ms)
            print(f"repeat {rep + 1}: {name:12s} {rate:8.0f} samples/s  {cpu_ms:6.2f} CPU ms/sample", flush=True)
    results = {n: {"median": statistics.median(runs[n]), "runs": runs[n],
                   "cpu_ms_per_sample": statistics.median(cpu[n]), "cpu_ms_runs": cpu[n]} for n in names}
    print(f"{'pipeline':12s} {'samples/s':>10s} {'CPU ms/sample':>14s}")
    for name, r in results.items():
        print(f"{name:12s} {r['median']:10.0f} {r['cpu_ms_per_sample']:14.2f}")
    write_results(args, results, Path(args.out), load_before)


if __name__ == "__main__":
    main()

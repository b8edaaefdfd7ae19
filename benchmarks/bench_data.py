"""Input pipeline throughput: two-view training samples per second, torchvision vs DALI vs torch-gpu.

Decodes real JPEGs (a Market-1501 layout folder given by --root), plans global
batches with the identity sampler (true identities as labels, one process, rank 0 of 1) and
iterates each pipeline's training loader, which emits the RGB view, the grayscale view and the
indices, at 256 x 128 with the default augmentation (flip, pad 10 + crop, erasing):

    torchvision  PIL decoding + tensor ops in `--cores` DataLoader worker processes
    dali-cpu     DALI CPU-only pipeline (device_id=None) with `--cores` threads
    dali-gpu     DALI with `mixed` decoding on CUDA device 0 (only when CUDA is available)
    torch-gpu-cpu   the torch-gpu pipeline on the CPU: `--cores` workers read the bytes and draw the
                 choices, the main process decodes and augments each batch with `--cores` torch threads
    torch-gpu-cuda  the torch-gpu pipeline on CUDA device 0: nvJPEG decoding, batched augmentation
                 (only when CUDA is available)

A sample is one image turned into both views. Each measurement skips `--warmup` batches, then
times `--iters` batches; it is repeated `--repeats` times (alternating the pipelines) and the
median is reported. Several `--batch-size` values measure every pipeline at each. For torch-gpu
the first batch is also compared with the torchvision pipeline's (same plan, same choices): the
largest, 99.9th-percentile and mean pixel difference in uint8 levels (0 on the CPU).

    python3 benchmarks/bench_data.py --root /data/market1501-mini     # ~2 min on 2 cores
    python3 benchmarks/bench_data.py --root DIR --cores 4 --iters 40
    python3 benchmarks/bench_data.py --root DIR --pipelines dali-gpu  # only some pipelines
    python3 benchmarks/bench_data.py --root DIR --pipelines torch-gpu-cuda --batch-size 64 256

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
from cacl_dist.data.pipelines import torch_gpu as torch_gpu_pipeline
from cacl_dist.data.pipelines import torchvision as torchvision_pipeline
from cacl_dist.data.transforms import IMAGENET_STD
from cacl_dist.data.transforms import AugmentParams

REPO = Path(__file__).resolve().parents[1]
PIPELINES = ["torchvision", "dali-cpu", "dali-gpu", "torch-gpu-cpu", "torch-gpu-cuda"]

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="Market-1501 layout dataset with real JPEGs")
    parser.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=None,
                        help="pipelines to measure (default: torchvision, torch-gpu-cpu, plus DALI and CUDA ones "
                             "where available)")
    parser.add_argument("--cores", type=int, default=2, help="worker processes / DALI threads")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64], help="samples per batch (one rank)")
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
    device = "cuda:0" if name.endswith(("-gpu", "-cuda")) else "cpu"
    if name.startswith("torch-gpu"):
        return torch_gpu_pipeline.train_loader(records, params, plan, num_workers=cores, device=device)
    return dali_pipeline.train_loader(records, params, plan, num_workers=cores, device=device)


def pixel_difference(name: str, records, params, plan) -> dict:
    """Largest, 99.9th-percentile and mean |difference| in uint8 levels of the first batch vs torchvision's."""
    ours = next(iter(make_loader(name, records, params, plan, 0)))
    ref = next(iter(torchvision_pipeline.train_loader(records, params, plan)))
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    diff = torch.cat([((a.cpu() - b) * std * 255).abs().flatten() for a, b in zip(ours[:2], ref[:2])])
    return {"max": float(diff.max()), "p999": float(torch.quantile(diff[:: max(1, diff.numel() // 2**24)], 0.999)),
            "mean": float(diff.mean())}


def _cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(name: str, records, params, plan, args) -> tuple[float, float]:
    """(two-view samples per second over the timed batches, CPU milliseconds per sample over all batches)."""
    cpu0 = _cpu_seconds()
    torch.set_num_threads(args.cores if name == "torch-gpu-cpu" else 1)  # its main process does the pixel work
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
    torch.set_num_threads(1)
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

    rows = ["| pipeline | batch | samples/s (median) | runs | speed-up vs torchvision | CPU ms per sample | CPU saving "
            "| pixels vs torchvision (levels: max / 99.9% / mean) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        same = results.get(f"torchvision b{r['batch_size']}", results.get("torchvision", {}))
        base, base_cpu = same.get("median"), same.get("cpu_ms_per_sample")
        ratio = f"{r['median'] / base:.2f}x" if base else "-"
        cpu_ratio = f"{base_cpu / r['cpu_ms_per_sample']:.2f}x" if base_cpu else "-"
        runs = ", ".join(f"{v:.0f}" for v in r["runs"])
        pixels = r.get("pixel_diff_levels")
        pixels = f"{pixels['max']:.0f} / {pixels['p999']:.0f} / {pixels['mean']:.3f}" if pixels else "-"
        rows.append(f"| {name} | {r['batch_size']} | {r['median']:.0f} | {runs} | {ratio} | "
                    f"{r['cpu_ms_per_sample']:.2f} | {cpu_ratio} | {pixels} |")
    text = [
        "# Input pipeline throughput: two-view samples per second",
        "",
        f"Real JPEGs from `{Path(args.root).name}` (Market-1501 crops, 128 x 64 on disk) decoded and turned into "
        f"both training views at {args.height} x {args.width} (flip, pad 10 + crop, erasing; second view "
        f"grayscale), batch {' and '.join(map(str, args.batch_size))}, {args.cores} cores for each pipeline "
        "(DataLoader worker processes for torchvision and torch-gpu, DALI threads for DALI; torch-gpu-cpu's main "
        f"process decodes and augments with {args.cores} torch threads). Median of {args.repeats} runs of "
        f"{args.iters} batches after a warm-up.",
        "",
        *rows,
        "",
        "CPU ms per sample is user + system time of the process and its DataLoader workers over all "
        "batches of a measurement (including start-up and warm-up) divided by the samples: it depends "
        "less on other load than the wall-clock rate does.",
        "" if torch.cuda.is_available() else "DALI-GPU and torch-gpu-cuda were not measured: no CUDA device on "
        "this machine.",
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
    colours = ["tab:gray", "tab:green", "tab:blue", "tab:orange", "tab:red", "tab:purple"] * len(names)
    colours = colours[: len(names)]
    fig, (ax_rate, ax_cpu) = plt.subplots(1, 2, figsize=(10, 3.4))
    ax_rate.bar(names, [results[n]["median"] for n in names], color=colours)
    ax_rate.set_ylabel("two-view samples / s (wall)")
    ax_cpu.bar(names, [results[n]["cpu_ms_per_sample"] for n in names], color=colours)
    ax_cpu.set_ylabel("CPU ms per sample")
    for ax in (ax_rate, ax_cpu):
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.suptitle(f"{args.height}x{args.width}, {args.cores} cores, batch {'/'.join(map(str, args.batch_size))} "
                 f"(load {load_before:.1f} -> {load[0]:.1f})")
    fig.tight_layout()
    fig.savefig(out / f"{args.stem}.png", dpi=120)


def default_pipelines() -> list[str]:
    """torchvision and torch-gpu on the CPU, DALI CPU-only when installed, and the CUDA pipelines with a GPU."""
    dali, cuda = dali_pipeline.dali_available(), torch.cuda.is_available()
    return (["torchvision", "torch-gpu-cpu"] + (["dali-cpu"] if dali else []) + (["dali-gpu"] if dali and cuda else [])
            + (["torch-gpu-cuda"] if cuda else []))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    torch.set_num_threads(1)
    records = load_dataset("market1501", args.root).train
    labels = np.unique([r.pid for r in records], return_inverse=True)[1]
    cams = np.array([r.camid for r in records])
    params = AugmentParams(height=args.height, width=args.width)
    names = args.pipelines or default_pipelines()
    if any(n.startswith("dali") for n in names) and not dali_pipeline.dali_available():
        raise SystemExit("--pipelines: DALI is not installed (pip install -e '.[dali]'); measure the others")
    if any(n in ("dali-gpu", "torch-gpu-cuda") for n in names) and not torch.cuda.is_available():
        raise SystemExit("--pipelines dali-gpu / torch-gpu-cuda: no CUDA device is visible")
    cases = [(n, b) for b in args.batch_size for n in names]
    key = {c: c[0] if len(args.batch_size) == 1 else f"{c[0]} b{c[1]}" for c in cases}
    plans = {b: plan_epoch(labels, cams, epoch=0, num_iters=args.warmup + args.iters + 1, batch_size=b,
                           num_instances=4, seed=0, num_clusters=int(labels.max()) + 1) for b in args.batch_size}
    runs: dict[str, list[float]] = {key[c]: [] for c in cases}
    cpu: dict[str, list[float]] = {key[c]: [] for c in cases}
    for rep in range(args.repeats):
        for name, batch in cases:
            rate, cpu_ms = measure(name, records, params, plans[batch], args)
            runs[key[name, batch]].append(rate)
            cpu[key[name, batch]].append(cpu_ms)
            print(f"repeat {rep + 1}: {key[name, batch]:18s} {rate:8.0f} samples/s  {cpu_ms:6.2f} CPU ms/sample",
                  flush=True)
    results = {key[n, b]: {"pipeline": n, "batch_size": b, "median": statistics.median(runs[key[n, b]]),
                           "runs": runs[key[n, b]], "cpu_ms_per_sample": statistics.median(cpu[key[n, b]]),
                           "cpu_ms_runs": cpu[key[n, b]]} for n, b in cases}
    for name in names:  # pixels against the torchvision pipeline's, on the smallest batch
        if name.startswith("torch-gpu"):
            batch = min(args.batch_size)
            results[key[name, batch]]["pixel_diff_levels"] = pixel_difference(name, records, params, plans[batch])
    print(f"{'pipeline':18s} {'samples/s':>10s} {'CPU ms/sample':>14s}")
    for name, r in results.items():
        print(f"{name:18s} {r['median']:10.0f} {r['cpu_ms_per_sample']:14.2f}"
              + (f"  pixels vs torchvision: {r['pixel_diff_levels']}" if "pixel_diff_levels" in r else ""))
    write_results(args, results, Path(args.out), load_before)


if __name__ == "__main__":
    main()

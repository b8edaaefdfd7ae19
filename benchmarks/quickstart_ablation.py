"""Quickstart ablation: full CACL (grayscale second view) versus two RGB views.

Trains the quickstart recipe (configs/quickstart.yaml, built-in synthetic dataset) once per
variant and seed, one run at a time, each in its own subprocess:

    cacl      the recipe as is (grayscale second view, branch-2 bank filled from grayscale images)
    rgb_only  --set augment.gray_second_view=false --set memory.init_gray_from=rgb
              (two RGB views, everything else identical)

The seed is `run.seed` (model init, sampler, augmentations); the dataset (data.synthetic.seed)
stays fixed. The initial and final evaluations are read from each run's metrics.jsonl.

    python3 benchmarks/quickstart_ablation.py                       # seeds 0 1 2, ~15 min on 2 cores
    python3 benchmarks/quickstart_ablation.py --seeds 0 --extra-set train.epochs=2

Writes <out>/quickstart_ablation.{json,md,png}. Run folders go to benchmarks/.runs/ (ignored by
git) unless --runs-dir says otherwise; an existing run folder is removed first so that every
run starts from scratch instead of resuming.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cacl_dist.logging import read_metrics  # noqa: E402
from benchmarks.machine import cpu_description  # noqa: E402

CONFIG = "configs/quickstart.yaml"
VARIANTS: dict[str, list[str]] = {
    "cacl": [],
    "rgb_only": ["augment.gray_second_view=false", "memory.init_gray_from=rgb"],
}
VARIANT_LABELS = {
    "cacl": "CACL (RGB + grayscale view)",
    "rgb_only": "no grayscale branch (two RGB views)",
}
COLOURS = {"cacl": "tab:blue", "rgb_only": "tab:orange"}
METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="values of run.seed")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the result files")
    parser.add_argument("--runs-dir", default="benchmarks/.runs/quickstart_ablation",
                        help="parent folder of the run folders (keep it out of git)")
    parser.add_argument("--extra-set", dest="extra_set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override passed to both variants (repeatable)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="variants to run (default: both)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------- environment
def torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def load_average() -> float | None:
    """The 1-minute load average (other jobs on the machine inflate wall times)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


# ------------------------------------------------------------------------------------- runs
def train_command(run_dir: Path, seed: int, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "cacl_dist.train", "--config", CONFIG,
           "--set", f"run.output_dir={run_dir}", "--set", "run.progress=false", "--set", f"run.seed={seed}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def run_one(variant: str, seed: int, runs_dir: Path, extra: list[str]) -> dict:
    run_dir = runs_dir / f"{variant}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # never resume: every run starts from scratch
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(run_dir, seed, VARIANTS[variant] + extra)
    print(f"[{variant} seed {seed}] {shlex.join(cmd)}", flush=True)
    load_before, cpu_before = load_average(), children_cpu_s()
    start = time.perf_counter()
    with (runs_dir / f"{variant}_seed{seed}.stdout.txt").open("w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    cpu = children_cpu_s() - cpu_before
    load_after = load_average()
    if proc.returncode != 0:
        raise SystemExit(f"run {variant} seed {seed} failed (exit {proc.returncode}); "
                         f"see {runs_dir / f'{variant}_seed{seed}.stdout.txt'}")
    evals = read_metrics(run_dir, "eval")
    if not evals:
        raise SystemExit(f"run {variant} seed {seed} wrote no evaluation to {run_dir / 'metrics.jsonl'}")
    curve = [{"epoch": r["epoch"], **{k: r[k] for k in METRIC_KEYS}} for r in evals]
    first, last = curve[0], curve[-1]
    result = {"variant": variant, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "load_before": load_before, "load_after": load_after, "run_dir": str(run_dir),
              "initial": first, "final": last, "curve": curve}
    print(f"[{variant} seed {seed}] mAP {100 * first['mAP']:.1f} -> {100 * last['mAP']:.1f}, "
          f"rank-1 {100 * first['rank1']:.1f} -> {100 * last['rank1']:.1f} ({wall:.0f} s wall, {cpu:.0f} s CPU, "
          f"load {load_before} -> {load_after})", flush=True)
    return result


# ------------------------------------------------------------------------------------- report
def mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std


def summarise(results: list[dict], variants: list[str]) -> dict:
    summary = {}
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        entry = {"n": len(rows)}
        for when in ("initial", "final"):
            for key in METRIC_KEYS:
                m, s = mean_std([r[when][key] for r in rows])
                entry[f"{when}_{key}"] = {"mean": m, "std": s}
        for key in ("wall_s", "cpu_s"):
            m, s = mean_std([r[key] for r in rows])
            entry[key] = {"mean": m, "std": s}
        summary[variant] = entry
    return summary


def markdown_table(results: list[dict], summary: dict) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = ["| variant | seed | mAP before | mAP after | R1 before | R1 after | R5 after | mINP after "
             "| final epoch | wall s | CPU s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        i, f = r["initial"], r["final"]
        lines.append(f"| {r['variant']} | {r['seed']} | {pct(i['mAP'])} | {pct(f['mAP'])} | {pct(i['rank1'])} "
                     f"| {pct(f['rank1'])} | {pct(f['rank5'])} | {pct(f['mINP'])} | {f['epoch']} "
                     f"| {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['load_before']} -> {r['load_after']} |")
    lines += ["", "Mean ± std over seeds (percent; std is the sample standard deviation):", "",
              "| variant | runs | mAP before | mAP after | R1 before | R1 after | R5 after | mINP after | wall s "
              "| CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(entry: dict) -> str:
        return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"

    for variant, e in summary.items():
        lines.append(f"| {variant} | {e['n']} | {ms(e['initial_mAP'])} | {ms(e['final_mAP'])} "
                     f"| {ms(e['initial_rank1'])} | {ms(e['final_rank1'])} | {ms(e['final_rank5'])} "
                     f"| {ms(e['final_mINP'])} | {e['wall_s']['mean']:.0f} ± {e['wall_s']['std']:.0f} "
                     f"| {e['cpu_s']['mean']:.0f} ± {e['cpu_s']['std']:.0f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    seen = set()
    markers = "os^Dv<>p"
    for r in results:
        epochs = [p["epoch"] for p in r["curve"]]
        maps = [100 * p["mAP"] for p in r["curve"]]
        label = VARIANT_LABELS[r["variant"]] if r["variant"] not in seen else None
        seen.add(r["variant"])
        ax.plot(epochs, maps, color=COLOURS[r["variant"]], marker=markers[r["seed"] % len(markers)],
                alpha=0.8, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP (%)")
    ax.set_title("Quickstart (synthetic): mAP per evaluation (marker = seed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out = out if out.is_absolute() else REPO / out
    runs_dir = Path(args.runs_dir)
    runs_dir = runs_dir if runs_dir.is_absolute() else REPO / runs_dir
    out.mkdir(parents=True, exist_ok=True)

    command = "python3 benchmarks/quickstart_ablation.py " + shlex.join(
        ["--seeds", *map(str, args.seeds)]
        + ([] if args.out == "benchmarks/results" else ["--out", args.out])
        + ([] if args.runs_dir == "benchmarks/.runs/quickstart_ablation" else ["--runs-dir", args.runs_dir])
        + [x for item in args.extra_set for x in ("--extra-set", item)]
        + ([] if args.variants == list(VARIANTS) else ["--variants", *args.variants]))
    started = _dt.datetime.now(_dt.timezone.utc)

    results = []
    for seed in args.seeds:  # interleave variants so load drift on the machine hits both alike
        for variant in args.variants:
            results.append(run_one(variant, seed, runs_dir, args.extra_set))
    results.sort(key=lambda r: (args.variants.index(r["variant"]), r["seed"]))
    summary = summarise(results, args.variants)
    table = markdown_table(results, summary)
    print()
    print(table)

    hardware = cpu_description()
    tv = torch_version()
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    payload = {
        "benchmark": "quickstart_ablation",
        "command": command,
        "config": CONFIG,
        "variants": {v: VARIANTS[v] for v in args.variants},
        "extra_set": args.extra_set,
        "seeds": args.seeds,
        "hardware": hardware,
        "torch": tv,
        "python": platform.python_version(),
        "git_commit": git_commit(),
        "date": date,
        "summary": summary,
        "runs": results,
    }
    (out / "quickstart_ablation.json").write_text(json.dumps(payload, indent=2) + "\n")
    have_png = plot(results, out / "quickstart_ablation.png")

    md = [
        "# Quickstart ablation: grayscale second view",
        "",
        f"Full CACL on `{CONFIG}` (built-in synthetic dataset, fixed `data.synthetic.seed`) versus the same "
        "run without the grayscale branch (`--set augment.gray_second_view=false --set "
        "memory.init_gray_from=rgb`: two RGB views, otherwise identical), seeds "
        f"{', '.join(map(str, args.seeds))} (`run.seed`). \"Before\" is the evaluation of the randomly "
        "initialised model before epoch 1, \"after\" the last evaluation. Values in percent. Runs were "
        "sequential, one process each; wall and CPU seconds (user + system of the training process) "
        "include start-up, dataset loading and all evaluations. Wall time depends on whatever else runs "
        "on the machine: the load column is the 1-minute load average before -> after each run.",
        "",
        table,
        "",
        "```bash",
        command,
        "```",
        "",
        f"- Hardware: {hardware}",
        f"- torch {tv}, Python {platform.python_version()}, commit {payload['git_commit']}",
        f"- Date: {date}",
    ]
    if args.extra_set:
        md.append(f"- Extra overrides (both variants): {', '.join(f'`{s}`' for s in args.extra_set)}")
    if have_png:
        md += ["", "![mAP per epoch](quickstart_ablation.png)"]
    (out / "quickstart_ablation.md").write_text("\n".join(md) + "\n")
    print(f"\nwrote {out / 'quickstart_ablation.json'}, {out / 'quickstart_ablation.md'}"
          + (f", {out / 'quickstart_ablation.png'}" if have_png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

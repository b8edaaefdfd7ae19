"""Ablations of CACL: train every variant with every seed from scratch, tabulate and plot the evaluations.

Four suites, each a base recipe and a set of variants (config overrides on top of the base):

    quickstart   configs/quickstart.yaml on the built-in synthetic dataset; the recipe as it ships (the
                 released code's choices) versus two RGB views and versus the paper's literal reading.
                 ~2 min per run on 2 cores.
                     python3 benchmarks/ablation.py --suite quickstart --seeds 0 1 2
    quickstart-cameras
                 the same recipe and dataset: CACL, CACL + camera-aware proxies, one branch + camera-aware
                 proxies, one branch alone, and CACL on a tiny ViT (given with --vit-backbone NAME).
                     python3 benchmarks/ablation.py --suite quickstart-cameras --seeds 0 1 2
    market-mini-cameras
                 the market-mini base, CACL against CACL + camera-aware proxies (2 seeds).
                     python3 benchmarks/ablation.py --suite market-mini-cameras --threads 1
    market-mini  configs/market1501.yaml (the released code's recipe) on real Market-1501 images
                 (../shared/data/market1501-mini: 500 training identities, 251 test identities),
                 shrunk to run in minutes on a CPU: a tiny ResNet from scratch at 64x32, 20 epochs of
                 100 steps of 64 images. Eight variants (full CACL, paper-literal refinement, no
                 refinement, no grayscale view, without L_I, without L_inter, focal exponent 2, one
                 branch), ~7 CPU-minutes per run (one thread).
                     python3 benchmarks/ablation.py --suite market-mini --seeds 0 1 2 --jobs 2

Each run is a `python -m cacl_dist.train` subprocess with its own run folder under --runs-dir
(ignored by git; an existing folder is removed first, so nothing resumes). With --jobs N, N runs go
at once, each limited to (cores / N) threads. The seed is `run.seed` (model init, sampler,
augmentations); the data never change. Results: <out>/<suite file>.{json,md,png}, with per-run
curves, the first, last and best evaluation, mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from cacl_dist.runs.metrics import EVAL_SCORES, read_complete
from machine import cpu_description, git_commit, load_average

REPO = Path(__file__).resolve().parents[1]

METRIC_KEYS = EVAL_SCORES


@dataclass(frozen=True)
class Variant:
    overrides: tuple[str, ...]
    label: str
    colour: str
    backbone: str = ""  # "vit": takes `--vit-backbone` (its `{vit_backbone}` in the overrides)


@dataclass(frozen=True)
class Suite:
    name: str
    result_name: str
    title: str
    config: str
    base: tuple[str, ...]
    variants: dict[str, Variant]
    default_seeds: tuple[int, ...]
    needs_data: bool = False
    notes: tuple[str, ...] = field(default=())


#: What the recipes (configs/market1501.yaml, configs/quickstart.yaml) take from the authors' released code
#: where a literal reading of the paper differs (README "Paper vs the released code").
RELEASED_CHOICES = ("clustering.refine_score=official", "loss.focal_gamma=4", "memory.init_gray_from=rgb",
                    "train.sampler=released", "model.predictor_init=kaiming", "data.resize_interpolation=bicubic",
                    "augment.erase_ratio_sampling=uniform", "augment.erase_ratio_max=3.3333333333333335",
                    "augment.erase_fill=imagenet_mean")
#: The paper's literal reading of the same keys (the schema's defaults; the quickstart's recipe before it took
#: the released code's choices).
PAPER_CHOICES = ("clustering.refine_score=paper", "loss.focal_gamma=2", "memory.init_gray_from=gray",
                 "train.sampler=cacl", "model.predictor_init=default", "data.resize_interpolation=bilinear",
                 "augment.erase_ratio_sampling=log_uniform", "augment.erase_ratio_max=3.3", "augment.erase_fill=zero")

SINGLE_BRANCH = ("loss.instance_weight=0", "loss.inter_weight=0", "loss.intra_gray_weight=0", "loss.focal_gamma=0")
"""Only branch 1's cluster loss, without the focal factor: a cluster-contrast baseline."""
CAMERA_PROXIES = ("loss.camera_proxy_weight=1",)
"""CAP's camera-aware proxy losses with the published settings (the schema's defaults)."""

SUITES: dict[str, Suite] = {
    "quickstart": Suite(
        name="quickstart",
        result_name="quickstart_ablation",
        title="Quickstart ablation: grayscale second view, the paper's literal reading",
        config="configs/quickstart.yaml",
        base=(),
        variants={
            "cacl": Variant((), "CACL (RGB + grayscale view)", "tab:blue"),
            "rgb_only": Variant(("augment.gray_second_view=false", "memory.init_gray_from=rgb"),
                                "no grayscale view (two RGB views)", "tab:orange"),
            "paper": Variant(PAPER_CHOICES, "the paper's literal reading", "tab:green"),
        },
        default_seeds=(0, 1, 2),
        notes=("Built-in synthetic dataset with a fixed `data.synthetic.seed`; the recipe as it ships, which "
               "takes the authors' released code's choices (refinement, focal exponent, bank init, sampler, "
               "predictor init, resize, erasing) like the real recipes.",),
    ),
    "quickstart-cameras": Suite(
        name="quickstart-cameras",
        result_name="quickstart_camera_proxies",
        title="Quickstart ablation: camera-aware proxies (the synthetic cameras tint every image)",
        config="configs/quickstart.yaml",
        base=(),
        variants={
            "cacl": Variant((), "CACL", "tab:blue"),
            "cacl_cap": Variant(CAMERA_PROXIES, "CACL + camera-aware proxies", "tab:red"),
            "single_cap": Variant(SINGLE_BRANCH + CAMERA_PROXIES, "one branch (γ=0) + camera-aware proxies",
                                  "tab:green"),
            "single_branch": Variant(SINGLE_BRANCH, "one branch, cluster contrast only (γ=0)", "tab:gray"),
            "cacl_vit": Variant(("model.backbone={vit_backbone}",), "CACL, tiny ViT", "tab:purple", backbone="vit"),
        },
        default_seeds=(0, 1, 2),
        notes=(
            "Built-in synthetic dataset with a fixed `data.synthetic.seed`; each of its 4 cameras tints every "
            "image it sees, so a feature can tell cameras apart without telling people apart. Camera-aware "
            "proxies: CAP (Wang et al., AAAI 2021) with its published settings (temperature 0.07, 50 hard "
            "negatives, inter-camera factor 0.5 from epoch 5), `loss.camera_proxy_weight=1`; docs/method.md "
            "section 9.",
            "`cacl_vit` runs the recipe with the backbone named by `--vit-backbone`; without it the variant is "
            "left out of the default list.",
        ),
    ),
    "market-mini": Suite(
        name="market-mini",
        result_name="ablation_market_mini",
        title="Ablation on real Market-1501 images (market1501-mini)",
        config="configs/market1501.yaml",
        base=("data.height=64", "data.width=32", "augment.pad=4", "data.num_workers=0",
              "data.pipeline=torchvision", "model.backbone=resnet_tiny", "model.pretrained=none",
              "model.bn_group_size=64", "train.channels_last=false", "train.batch_size=64",
              "train.iters_per_epoch=100", "train.epochs=20", "optim.lr=1e-3", "optim.step_size=15",
              "eval.every_epochs=2", "eval.batch_size=256", "checkpoint.every_steps=0",
              "checkpoint.keep_every_epochs=0", "run.log_every=50"),
        variants={
            "cacl": Variant((), "CACL, released recipe", "tab:blue"),
            "paper_refine": Variant(("clustering.refine_score=paper",), "paper-literal refinement", "tab:red"),
            "no_refine": Variant(("clustering.refine=false",), "no refinement", "tab:orange"),
            "rgb_only": Variant(("augment.gray_second_view=false",), "no grayscale view (two RGB views)",
                                "tab:green"),
            "no_instance": Variant(("loss.instance_weight=0",), "without L_I (instance)", "tab:purple"),
            "no_inter": Variant(("loss.inter_weight=0",), "without L_inter (inter-view)", "tab:brown"),
            "gamma2": Variant(("loss.focal_gamma=2",), "focal exponent 2 (paper) instead of 4", "tab:pink"),
            "single_branch": Variant(("loss.instance_weight=0", "loss.inter_weight=0", "loss.intra_gray_weight=0",
                                      "loss.focal_gamma=0"),
                                     "one branch, cluster contrast only (γ=0)", "tab:gray"),
        },
        default_seeds=(0, 1, 2),
        needs_data=True,
        notes=(
            "Base: `configs/market1501.yaml` (the released code's recipe: official refinement, focal "
            "exponent 4, bicubic resize, released sampler, fp32) with a tiny ResNet trained from scratch at "
            "64x32 instead of an ImageNet ResNet-50 at 256x128 (no pretrained weights can be had here, and "
            "each run must take minutes on a CPU), 20 epochs of 100 steps of 64 images, learning rate 1e-3 "
            "divided by 10 after epoch 15, an evaluation every 2 epochs.",
            "`single_branch` keeps both networks in the step (their cost is measured) but only branch 1's "
            "cluster loss, without the focal factor, trains: a cluster-contrast baseline on the same banks, "
            "clustering and schedule.",
        ),
    ),
}


SUITES["market-mini-cameras"] = replace(
    SUITES["market-mini"], name="market-mini-cameras", result_name="ablation_market_mini_camera_proxies",
    title="Camera-aware proxies on real Market-1501 images (market1501-mini, 6 cameras)",
    variants={"cacl": SUITES["market-mini"].variants["cacl"],
              "cacl_cap": Variant(CAMERA_PROXIES, "CACL + camera-aware proxies", "tab:red")},
    default_seeds=(0, 1),
    notes=(SUITES["market-mini"].notes[0],
           "Camera-aware proxies: CAP (Wang et al., AAAI 2021) with its published settings (temperature 0.07, 50 "
           "hard negatives, inter-camera factor 0.5 from epoch 5), `loss.camera_proxy_weight=1`; docs/method.md "
           "section 9."))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=list(SUITES), default="quickstart")
    parser.add_argument("--data", default="../shared/data/market1501-mini",
                        help="dataset folder of the market-mini suite (relative paths: from the repository)")
    parser.add_argument("--seeds", type=int, nargs="+", help="values of run.seed (default: the suite's)")
    parser.add_argument("--variants", nargs="+", help="variants to run (default: all of the suite's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each gets cores / jobs threads)")
    parser.add_argument("--threads", type=int,
                        help="threads of each run (default cores / jobs; 1 on a machine other work shares)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the result files")
    parser.add_argument("--runs-dir", help="parent folder of the run folders (default benchmarks/.runs/<suite>)")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the markdown and the plot again from <out>/<suite file>.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the runs of <out>/<suite file>.json that this call does not redo (e.g. add a seed)")
    parser.add_argument("--extra-set", dest="extra_set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override passed to every variant (repeatable)")
    parser.add_argument("--vit-backbone", dest="vit_backbone", metavar="NAME",
                        help="model.backbone of the variants that train a ViT (e.g. quickstart-cameras' cacl_vit); "
                             "without it those variants are left out")
    args = parser.parse_args(argv)
    suite = SUITES[args.suite] = with_vit_backbone(SUITES[args.suite], args.vit_backbone)
    args.seeds = args.seeds or list(suite.default_seeds)
    pending = [v for v, variant in suite.variants.items() if variant.backbone == "vit" and not args.vit_backbone]
    if args.variants and set(args.variants) & set(pending):
        parser.error(f"--variants: {', '.join(sorted(set(args.variants) & set(pending)))} train a ViT; name its "
                     f"model.backbone with --vit-backbone")
    args.variants = args.variants or [v for v in suite.variants if v not in pending]
    unknown = [v for v in args.variants if v not in suite.variants]
    if unknown:
        parser.error(f"--variants: {', '.join(unknown)} not in suite {suite.name} ({', '.join(suite.variants)})")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--jobs and --threads must be at least 1")
    if suite.needs_data and not args.report_only and not (resolve(args.data) / "bounding_box_train").is_dir():
        parser.error(f"--data {args.data}: no bounding_box_train/ folder there; pass the market1501-mini folder")
    return args


def with_vit_backbone(suite: Suite, name: str | None) -> Suite:
    """The suite with `{vit_backbone}` in its ViT variants' overrides replaced by `name` (unchanged without one)."""
    if not name:
        return suite
    variants = {key: (replace(v, overrides=tuple(o.replace("{vit_backbone}", name) for o in v.overrides))
                      if v.backbone == "vit" else v) for key, v in suite.variants.items()}
    return replace(suite, variants=variants)


def resolve(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_absolute() else REPO / path


# ------------------------------------------------------------------------------------- environment
def torch_version() -> str:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                         capture_output=True, text=True, cwd=REPO)
    return out.stdout.strip() or "unknown"


def load_now() -> float | None:
    """The 1-minute load average to 2 decimals (other jobs on the machine inflate wall times)."""
    load = load_average()
    return None if load is None else round(load, 2)


# ------------------------------------------------------------------------------------- runs
def overrides_for(suite: Suite, variant: str, data: str, extra: list[str]) -> list[str]:
    data_set = [f"data.root={resolve(data)}"] if suite.needs_data else []
    return [*data_set, *suite.base, *suite.variants[variant].overrides, *extra]


def train_command(suite: Suite, run_dir: Path, seed: int, overrides: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "cacl_dist.train", "--config", suite.config,
           "--set", f"run.output_dir={run_dir}", "--set", "run.progress=false", "--set", f"run.seed={seed}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(message, flush=True)


def run_one(suite: Suite, variant: str, seed: int, args: argparse.Namespace, runs_dir: Path) -> dict:
    run_dir = runs_dir / f"{variant}_seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # never resume: every run starts from scratch
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cmd = train_command(suite, run_dir, seed, overrides_for(suite, variant, args.data, args.extra_set))
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    say(f"[{variant} seed {seed}] {shlex.join(cmd)}")
    log_path = runs_dir / f"{variant}_seed{seed}.stdout.txt"
    load_before = load_now()
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, even with runs in parallel
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    load_after = load_now()
    if proc.returncode != 0:
        raise RuntimeError(f"run {variant} seed {seed} failed (exit {proc.returncode}); see {log_path}")
    curve = eval_curve(run_dir)
    if not curve:
        raise RuntimeError(f"run {variant} seed {seed} wrote no evaluation to {run_dir / 'metrics.jsonl'}")
    best = max(curve, key=lambda p: (p["mAP"], -p["epoch"]))
    result = {"variant": variant, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
              "threads": threads, "load_before": load_before, "load_after": load_after, "run_dir": str(run_dir),
              "initial": curve[0], "final": curve[-1], "best": best, "curve": curve}
    say(f"[{variant} seed {seed}] mAP {100 * curve[0]['mAP']:.1f} -> {100 * curve[-1]['mAP']:.1f} "
        f"(best {100 * best['mAP']:.1f} at epoch {best['epoch']}), rank-1 {100 * curve[-1]['rank1']:.1f} "
        f"({wall:.0f} s wall, {cpu:.0f} s CPU, load {load_before} -> {load_after})")
    return result


def eval_curve(run_dir: Path) -> list[dict]:
    """Epoch and scores of each evaluation of a run (a torn or junk line of its metrics.jsonl is skipped)."""
    return [{"epoch": r["epoch"], **{k: r[k] for k in METRIC_KEYS}} for r in read_complete(run_dir, "eval")]


# ------------------------------------------------------------------------------------- report
def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(results: list[dict], variants: list[str]) -> dict:
    summary = {}
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        entry: dict = {"n": len(rows)}
        for when in ("initial", "final", "best"):
            for key in METRIC_KEYS:
                entry[f"{when}_{key}"] = mean_std([r[when][key] for r in rows])
        for key in ("wall_s", "cpu_s"):
            entry[key] = mean_std([r[key] for r in rows])
        summary[variant] = entry
    return summary


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ms(entry: dict) -> str:
    return f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"


def summary_table(summary: dict, suite: Suite) -> str:
    reference = summary.get(next(iter(suite.variants)))
    lines = ["| variant | runs | mAP last | Δ mAP last | mAP best | R1 last | R5 last | mINP last | mAP before "
             "| CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in summary.items():
        delta = ("—" if reference is None or e is reference
                 else f"{100 * (e['final_mAP']['mean'] - reference['final_mAP']['mean']):+.1f}")
        lines.append(f"| {variant}: {suite.variants[variant].label} | {e['n']} | {ms(e['final_mAP'])} | {delta} "
                     f"| {ms(e['best_mAP'])} | {ms(e['final_rank1'])} | {ms(e['final_rank5'])} "
                     f"| {ms(e['final_mINP'])} | {ms(e['initial_mAP'])} "
                     f"| {e['cpu_s']['mean']:.0f} ± {e['cpu_s']['std']:.0f} |")
    return "\n".join(lines)


def runs_table(results: list[dict]) -> str:
    lines = ["| variant | seed | mAP before | mAP last | mAP best (epoch) | R1 last | R5 last | mINP last "
             "| last epoch | wall s | CPU s | threads | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        i, f, b = r["initial"], r["final"], r["best"]
        lines.append(f"| {r['variant']} | {r['seed']} | {pct(i['mAP'])} | {pct(f['mAP'])} "
                     f"| {pct(b['mAP'])} ({b['epoch']}) | {pct(f['rank1'])} | {pct(f['rank5'])} | {pct(f['mINP'])} "
                     f"| {f['epoch']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | {r['threads']} "
                     f"| {r['load_before']} -> {r['load_after']} |")
    return "\n".join(lines)


def plot(results: list[dict], suite: Suite, variants: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return False
    fig, (ax, dots) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    shown = [v for v in variants if any(r["variant"] == v for r in results)]
    for variant in shown:
        rows = [r for r in results if r["variant"] == variant]
        epochs = [p["epoch"] for p in rows[0]["curve"]]
        per_seed = [[100 * p["mAP"] for p in r["curve"]] for r in rows if len(r["curve"]) == len(epochs)]
        mean = [statistics.fmean(col) for col in zip(*per_seed)]
        lo, hi = [min(col) for col in zip(*per_seed)], [max(col) for col in zip(*per_seed)]
        colour = suite.variants[variant].colour
        ax.plot(epochs, mean, color=colour, marker="o", markersize=3, label=f"{variant}: {suite.variants[variant].label}")
        if len(per_seed) > 1:
            ax.fill_between(epochs, lo, hi, color=colour, alpha=0.12, linewidth=0)
    seeds = sorted({r["seed"] for r in results})
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP (%)")
    ax.set_title(f"mAP per evaluation, mean over seeds {', '.join(map(str, seeds))} (band: min to max)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    # Right: the last evaluation of every run (dots) and the mean over seeds (bar), one row per variant.
    for row, variant in enumerate(reversed(shown)):
        values = [100 * r["final"]["mAP"] for r in results if r["variant"] == variant]
        colour = suite.variants[variant].colour
        dots.barh(row, statistics.fmean(values), color=colour, alpha=0.35, height=0.6)
        dots.plot(values, [row] * len(values), "o", color=colour, markersize=5)
    dots.set_yticks(range(len(shown)), list(reversed(shown)), fontsize=8)
    finals = [100 * r["final"]["mAP"] for r in results]
    dots.set_xlim(max(0.0, min(finals) - 1.0), max(finals) + 0.5)
    dots.set_xlabel("mAP after the last epoch (%)")
    dots.set_title("last evaluation: each seed (dot), mean (bar)", fontsize=9)
    dots.grid(alpha=0.3, axis="x")
    fig.suptitle(suite.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def reproduce_command(args: argparse.Namespace, suite: Suite) -> str:
    parts = ["--suite", suite.name, "--seeds", *map(str, args.seeds)]
    if args.variants != list(suite.variants):
        parts += ["--variants", *args.variants]
    if suite.needs_data:
        parts += ["--data", args.data]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    if args.threads:
        parts += ["--threads", str(args.threads)]
    if args.out != "benchmarks/results":
        parts += ["--out", args.out]
    for item in args.extra_set:
        parts += ["--extra-set", item]
    if args.vit_backbone:
        parts += ["--vit-backbone", args.vit_backbone]
    return "python3 benchmarks/ablation.py " + shlex.join(parts)


def run_environment(started: _dt.datetime) -> dict:
    """Machine, versions, commit and start time, taken when the runs start."""
    return {"hardware": cpu_description(), "torch": torch_version(), "python": platform.python_version(),
            "git_commit": git_commit(REPO), "date": started.strftime("%Y-%m-%d %H:%M UTC")}


def write_report(args: argparse.Namespace, suite: Suite, results: list[dict], previous: dict) -> Path:
    """Write <out>/<result name>.{json,md,png}. `previous` holds the machine, versions, commit and date
    (of this run, or for --report-only of the JSON being re-rendered, with its "command"). A
    '## Notes' section of the existing markdown file is carried over."""
    out = resolve(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, args.variants)
    command = previous.get("command") or reproduce_command(args, suite)
    env = {key: previous[key] for key in ("hardware", "torch", "python", "git_commit", "date")}
    hardware, tv, date = env["hardware"], env["torch"], env["date"]
    payload = {
        "benchmark": suite.result_name, "suite": suite.name, "command": command, "config": suite.config,
        "base_overrides": list(suite.base),
        "variants": {v: list(suite.variants[v].overrides) for v in args.variants},
        "extra_set": args.extra_set, "seeds": args.seeds, "jobs": args.jobs, **env,
        "summary": summary, "runs": results,
    }
    md_path = out / f"{suite.result_name}.md"
    old_md = md_path.read_text() if md_path.exists() else ""
    notes = old_md[old_md.index("\n## Notes"):].strip("\n") if "\n## Notes" in old_md else ""
    (out / f"{suite.result_name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    have_png = plot(results, suite, args.variants, out / f"{suite.result_name}.png")
    variant_lines = [f"- `{v}`, {suite.variants[v].label}: "
                     + (", ".join(f"`{o}`" for o in suite.variants[v].overrides) or "the base as is")
                     for v in args.variants]
    md = [
        f"# {suite.title}",
        "",
        *(line for note in suite.notes for line in (note, "")),
        "Variants (each `--set` on top of the base):",
        "",
        *variant_lines,
        "",
        f"Seeds {', '.join(map(str, args.seeds))} (`run.seed`: initial weights, sampler, augmentations). \"Before\" "
        "is the evaluation of the random initial model, \"last\" the evaluation after the last epoch, \"best\" "
        "the highest mAP over all evaluations (the number the authors' code reports). Values in percent, "
        "mean ± sample standard deviation over seeds; Δ is against the first row. CPU seconds are the "
        "training process's own (user + system), start-up and all evaluations included.",
        "",
        "```bash",
        command,
        "```",
        "",
        summary_table(summary, suite),
        "",
    ]
    if have_png:
        md += [f"![mAP per evaluation]({suite.result_name}.png)", ""]
    md += [
        "Every run:",
        "",
        runs_table(results),
        "",
        f"- Base overrides: {', '.join(f'`{s}`' for s in suite.base) or 'none'}",
        f"- Hardware: {hardware}; {args.jobs} run(s) at a time",
        f"- torch {tv}, Python {env['python']}, commit {env['git_commit']}",
        f"- Date: {date}",
    ]
    if args.extra_set:
        md.append(f"- Extra overrides (every variant): {', '.join(f'`{s}`' for s in args.extra_set)}")
    if notes:
        md += ["", notes]
    md_path.write_text("\n".join(md) + "\n")
    say(f"\nwrote {out / suite.result_name}.json, .md" + (", .png" if have_png else ""))
    return md_path


def mergeable_previous(args: argparse.Namespace, suite: Suite) -> dict:
    """The suite's earlier JSON for --merge; SystemExit, before any training, when its settings differ."""
    path = resolve(args.out) / f"{suite.result_name}.json"
    if not path.exists():
        raise SystemExit(f"--merge: no {path} to add to; run without --merge first")
    previous = json.loads(path.read_text())
    if previous["extra_set"] != args.extra_set or previous["base_overrides"] != list(suite.base) or any(
            previous["variants"].get(v, list(suite.variants[v].overrides)) != list(suite.variants[v].overrides)
            for v in args.variants):
        raise SystemExit(f"--merge: {path} was made with other settings; run every seed again instead")
    return previous


def merge_with_previous(args: argparse.Namespace, suite: Suite, previous: dict, results: list[dict],
                        environment: dict) -> tuple[list[dict], dict]:
    """Add the earlier runs that were not redone; seeds and variants become the union."""
    redone = {(r["variant"], r["seed"]) for r in results}
    kept = [r for r in previous["runs"] if (r["variant"], r["seed"]) not in redone]
    args.seeds = sorted(set(args.seeds) | set(previous["seeds"]))
    args.variants = [v for v in suite.variants if v in set(args.variants) | set(previous["variants"])]
    commits = sorted({previous["git_commit"], environment["git_commit"]})
    dates = f"{previous['date']} and {environment['date']}" if previous["date"] != environment["date"] else previous["date"]
    return kept + results, {**environment, "git_commit": " + ".join(commits), "date": dates}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = SUITES[args.suite]
    if args.report_only:
        previous = json.loads((resolve(args.out) / f"{suite.result_name}.json").read_text())
        args.seeds, args.jobs, args.extra_set = previous["seeds"], previous["jobs"], previous["extra_set"]
        args.variants = list(previous["variants"])
        md_path = write_report(args, suite, previous["runs"], previous)
        print(md_path.read_text())
        return 0
    runs_dir = resolve(args.runs_dir or f"benchmarks/.runs/{suite.name}")
    previous = mergeable_previous(args, suite) if args.merge else None
    environment = run_environment(_dt.datetime.now(_dt.timezone.utc))
    # Seed-major order: load drift on the machine hits every variant alike.
    jobs = [(variant, seed) for seed in args.seeds for variant in args.variants]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, suite, variant, seed, args, runs_dir) for variant, seed in jobs]
        try:
            results = [f.result() for f in futures]
        except RuntimeError as err:
            for f in futures:
                f.cancel()
            raise SystemExit(str(err)) from None
    if previous is not None:
        results, environment = merge_with_previous(args, suite, previous, results, environment)
    results.sort(key=lambda r: (args.variants.index(r["variant"]), r["seed"]))
    md_path = write_report(args, suite, results, environment)
    print()
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

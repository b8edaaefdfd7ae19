"""The quickstart with data.pipeline torchvision and torch-gpu, per seed: same scores, same final state?

    PYTHONPATH=$PWD nice python benchmarks/quickstart_pipelines.py --seeds 0 1 2

Trains configs/quickstart.yaml once per pipeline and seed (`run.seed`), one run at a time, each a
`python -m cacl_dist.train` subprocess with one torch thread (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1) in
its own folder under --runs-dir (an existing folder is removed first, so nothing resumes). On a CPU
the torch-gpu pipeline decodes with torchvision's decoder and draws the torchvision pipeline's
choices, so a seed should train the same model with either. Writes <out>/quickstart_torch_gpu.{md,json}:
per run the mAP before training and after the last epoch, the last rank-1, wall and CPU seconds; per
pipeline the mean ± sample standard deviation and the spread of the last mAP; per seed whether the
final checkpoints (model, both memory banks, pseudo labels) are bit-identical between the pipelines.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/quickstart.yaml"
PIPELINES = ("torch-gpu", "torchvision")
#: The checkpoint entries compared between the pipelines.
COMPARED = ("model", "bank_rgb", "bank_gray", "labels")
RESULT_NAME = "quickstart_torch_gpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="values of run.seed")
    parser.add_argument("--runs-dir", default="benchmarks/.runs/quickstart_pipelines",
                        help="parent folder of the run folders <pipeline>_seed<seed> (relative: from the repository)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the result files")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write the markdown again from <out>/quickstart_torch_gpu.json")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------- pure parts
def run_row(pipeline: str, seed: int, evals: list[dict], wall_s: float, cpu_s: float) -> dict:
    """One run's row from its evaluation rows (fractions, in epoch order): scores in percent."""
    if not evals:
        raise ValueError(f"{pipeline} seed {seed}: no evaluation in the run's metrics.jsonl")
    first, last = evals[0], evals[-1]
    return {"pipeline": pipeline, "seed": seed, "mAP_before": 100 * first["mAP"], "mAP_last": 100 * last["mAP"],
            "rank1_last": 100 * last["rank1"], "epochs": last["epoch"], "wall_s": round(wall_s, 1),
            "cpu_s": round(cpu_s, 1)}


def summarise(runs: list[dict]) -> dict[str, dict]:
    """Per pipeline (in order of first appearance): runs, mean, sample sd (0 for one run), min, max, spread."""
    by_pipeline: dict[str, list[float]] = {}
    for r in runs:
        by_pipeline.setdefault(r["pipeline"], []).append(r["mAP_last"])
    return {p: {"runs": len(v), "mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
                "min": min(v), "max": max(v), "spread": max(v) - min(v)} for p, v in by_pipeline.items()}


def identical(a: Any, b: Any) -> bool:
    """Whether two checkpoint entries (tensors inside dicts, lists, tuples; plain values) are bit-identical."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def compare_states(a: dict, b: dict, keys: tuple[str, ...] = COMPARED) -> dict[str, bool]:
    """Per entry of `keys`: bit-identical in both states (an entry missing from either is not)."""
    return {k: k in a and k in b and identical(a[k], b[k]) for k in keys}


def render_markdown(payload: dict) -> str:
    runs, summary, same = payload["runs"], payload["summary"], payload["final_state_identical"]
    lines = [
        "# Quickstart: torch-gpu pipeline vs torchvision pipeline (on the CPU)", "",
        f"The quickstart recipe (`{CONFIG}`: synthetic set, resnet_tiny at 64x32, 30 epochs x 40 steps, "
        "evaluation every 10 epochs, the released code's choices) with `data.pipeline` "
        f"{' or '.join(summary)} (`data.eval_pipeline` stays the recipe's) and `run.seed` "
        f"{', '.join(str(s) for s in payload['seeds'])}; one run at a time, one torch thread each.", "",
        "```bash", payload["command"], "```", "",
        "Each run:", "", "```bash", payload["run_command"], "```", "",
        "| pipeline | runs | mAP last, mean ± sd (%) | min .. max (spread) |", "|---|---|---|---|",
    ]
    for p, s in summary.items():
        lines.append(f"| {p} | {s['runs']} | {s['mean']:.2f} ± {s['sd']:.2f} | "
                     f"{s['min']:.2f} .. {s['max']:.2f} ({s['spread']:.2f}) |")
    lines += ["", "| pipeline | seed | mAP before | mAP last | rank-1 last | wall s | CPU s |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['pipeline']} | {r['seed']} | {r['mAP_before']:.2f} | {r['mAP_last']:.2f} | "
                     f"{r['rank1_last']:.2f} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} |")
    verdict = ", ".join(f"seed {s}: {'yes' if all(parts.values()) else 'no (' + ', '.join(k for k, v in parts.items() if not v) + ' differ)'}"
                        for s, parts in same.items())
    lines += ["", f"Final checkpoints ({', '.join(COMPARED)}; `last.pt`) bit-identical between the pipelines: "
              f"{verdict or 'not compared (one pipeline only)'}", "",
              "On a CPU the torch-gpu pipeline decodes with torchvision's libjpeg-turbo decoder, which gives PIL's "
              "pixels for these JPEGs, and draws the torchvision pipeline's random choices, so its batches should "
              "equal the torchvision pipeline's (tests/unit/data/test_torch_gpu.py) and a seed should train the same "
              "model with either; the spread to compare a difference against is the seeds' own.", "",
              "Wall seconds depend on the other jobs sharing the machine; CPU seconds are the training process's "
              "own (user + system).", "",
              f"- Hardware: {payload['hardware']}; load average {payload['load_before']} -> {payload['load_after']}",
              f"- torch {payload['torch']}, Python {payload['python']}, commit {payload['commit']}; {payload['date']}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- runs
def train_command(run_dir: Path, pipeline: str, seed: int) -> list[str]:
    return [sys.executable, "-m", "cacl_dist.train", "--config", CONFIG, "--set", f"run.output_dir={run_dir}",
            "--set", "run.progress=false", "--set", f"data.pipeline={pipeline}", "--set", f"run.seed={seed}"]


def train(run_dir: Path, pipeline: str, seed: int) -> dict:
    from cacl_dist.runs.metrics import read_complete

    if run_dir.exists():
        shutil.rmtree(run_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(train_command(run_dir, pipeline, seed), cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"error: {pipeline} seed {seed} failed (exit {result.returncode}): "
                 f"{result.stderr.strip().splitlines()[-1:] or ''}; see {run_dir}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return run_row(pipeline, seed, read_complete(run_dir, "eval"), wall, cpu)


def load_state(run_dir: Path) -> dict:
    import torch

    return torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "benchmarks"))
    from machine import cpu_description, git_commit, load_average

    runs_dir = Path(args.runs_dir) if Path(args.runs_dir).is_absolute() else REPO / args.runs_dir
    out = Path(args.out) if Path(args.out).is_absolute() else REPO / args.out
    if args.report_only:
        payload = json.loads((out / f"{RESULT_NAME}.json").read_text())
        (out / f"{RESULT_NAME}.md").write_text(render_markdown(payload))
        print(f"wrote {out / RESULT_NAME}.md")
        return 0
    load_before = round(load_average() or 0.0, 2)
    runs = []
    for pipeline in PIPELINES:
        for seed in args.seeds:
            row = train(runs_dir / f"{pipeline}_seed{seed}", pipeline, seed)
            print(f"{pipeline} seed {seed}: mAP {row['mAP_before']:.2f} -> {row['mAP_last']:.2f}, rank-1 "
                  f"{row['rank1_last']:.2f}, {row['wall_s']:.0f} s wall, {row['cpu_s']:.0f} CPU s", flush=True)
            runs.append(row)
    same = {str(seed): compare_states(*(load_state(runs_dir / f"{p}_seed{seed}") for p in PIPELINES))
            for seed in args.seeds}
    import torch

    payload = {
        "command": "PYTHONPATH=$PWD nice python benchmarks/quickstart_pipelines.py --seeds "
                   + " ".join(map(str, args.seeds)),
        "run_command": "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 " + shlex.join(
            ["python", *train_command(Path("<runs-dir>/<pipeline>_seed<seed>"), "<pipeline>", 0)[1:-1],
             "run.seed=<seed>"]),
        "seeds": args.seeds, "hardware": cpu_description(), "torch": torch.__version__,
        "python": sys.version.split()[0], "commit": git_commit(REPO),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before, "load_after": round(load_average() or 0.0, 2),
        "runs": runs, "summary": summarise(runs), "final_state_identical": same,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{RESULT_NAME}.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / f"{RESULT_NAME}.md").write_text(render_markdown(payload))
    print(f"wrote {out / RESULT_NAME}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

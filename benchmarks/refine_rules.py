"""Refinement rules on the quickstart's first clustering: what each rule does to the raw clusters.

For every seed, builds the trainer of configs/quickstart.yaml (run.seed = the seed), fills the
memory banks as a run does before epoch 1, and clusters the branch-1 bank once with the dense
reference (Jaccard distance, DBSCAN at eps and eps_tight). Then each refinement rule
(clustering.refine_score: official, paper, paper_all) refines the same raw and tight labels,
and the script counts: raw clusters, those with several and with exactly two sub-clusters,
clusters dissolved (no member kept; overall and among the two-sub-cluster ones) and points
removed. Nothing is trained; it takes seconds per seed.

    python3 benchmarks/refine_rules.py                 # seeds 0 1 2
    python3 benchmarks/refine_rules.py --seeds 0 --set clustering.k1=12

Writes <out>/refine_rules.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from machine import cpu_description, git_commit
from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.jaccard_reference import jaccard_distance_reference
from cacl_dist.clustering.names import REFINE_SCORES
from cacl_dist.clustering.refine import refine_clusters
from cacl_dist.clustering.refine_rules import LabelSets
from cacl_dist.config import load_config

REPO = Path(__file__).resolve().parents[1]

CONFIG = "configs/quickstart.yaml"
RULES = ("official", "paper", "paper_all")
assert set(RULES) == set(REFINE_SCORES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="values of run.seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override (repeatable)")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the result files")
    return parser.parse_args(argv)


def first_bank(seed: int, overrides: list[str]) -> tuple:
    """(bank, config): the branch-1 memory bank a quickstart run with run.seed = ``seed`` clusters first."""
    from cacl_dist.distributed.env import init_distributed, shutdown_distributed
    from cacl_dist.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(str(REPO / CONFIG), [f"run.seed={seed}", f"run.output_dir={run_dir}", "run.device=cpu",
                                               "run.progress=false", *overrides])
        env = init_distributed(cfg.run.device, cfg.dist.backend, cfg.dist.timeout_min)
        try:
            trainer = Trainer(cfg, env)
            trainer.init_memory()
            return trainer.banks.rgb.rows.clone(), cfg
        finally:
            shutdown_distributed()


def rule_counts(raw: np.ndarray, tight: np.ndarray, refined: np.ndarray, removed: int) -> dict:
    """Counts of one rule's refinement of ``raw`` (see the module docstring)."""
    labels = LabelSets.build(torch.from_numpy(raw), torch.from_numpy(tight))
    clusters = sorted(set(raw[raw >= 0].tolist()))
    subs = {c: int(labels.subs_per_raw[int(labels.graw[np.flatnonzero(raw == c)[0]])]) for c in clusters}
    dissolved = [c for c in clusters if not np.any(refined[raw == c] == c)]
    two = [c for c in clusters if subs[c] == 2]
    return {"raw_clusters": len(clusters), "split_clusters": sum(s > 1 for s in subs.values()),
            "two_sub_clusters": len(two), "dissolved": len(dissolved),
            "dissolved_two_sub_clusters": len(set(dissolved) & set(two)), "points_removed": int(removed),
            "clusters_after": len(set(refined[refined >= 0].tolist())), "points": int(raw.size)}


def measure(seed: int, overrides: list[str]) -> dict:
    feats, cfg = first_bank(seed, overrides)
    params = dataclasses.replace(cfg.clustering, backend="sklearn")
    dist = jaccard_distance_reference(feats, params.k1, params.k2)
    raw = dbscan_precomputed(dist, params.eps, params.min_samples)
    tight = dbscan_precomputed(dist, params.eps_tight, params.min_samples)
    out = {"seed": seed}
    for rule in RULES:
        refined, removed = refine_clusters(dist, raw, tight, dataclasses.replace(params, refine_score=rule))
        out[rule] = rule_counts(raw, tight, refined, removed)
    return out


def markdown(results: list[dict], command: str) -> str:
    lines = ["# Refinement rules on the quickstart's first clustering", "",
             f"Command: `{command}`  ", f"Machine: {cpu_description()}; torch {torch.__version__}, "
             f"Python {platform.python_version()}; {_dt.date.today().isoformat()}.", "",
             "Each seed's branch-1 bank before epoch 1 (untrained tiny ResNet, synthetic data), clustered once "
             "(dense reference); every rule refines the same raw (eps) and tight (eps_tight) labels. "
             "'dissolved' = no member kept.", "",
             "| seed | rule | raw clusters | with >= 2 sub-clusters | with exactly 2 | dissolved | "
             "dissolved of the 2-sub-cluster ones | points removed | clusters after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for rule in RULES:
            c = r[rule]
            lines.append(f"| {r['seed']} | {rule} | {c['raw_clusters']} | {c['split_clusters']} | "
                         f"{c['two_sub_clusters']} | {c['dissolved']} | {c['dissolved_two_sub_clusters']} | "
                         f"{c['points_removed']} of {c['points']} | {c['clusters_after']} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot written (pip install matplotlib)", file=sys.stderr)
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.6, 3.8))
    width = 0.8 / len(RULES)
    x = np.arange(len(results))
    for k, rule in enumerate(RULES):
        left.bar(x + k * width, [r[rule]["dissolved"] for r in results], width, label=rule)
        right.bar(x + k * width, [r[rule]["points_removed"] for r in results], width, label=rule)
    left.plot(x + width, [r["paper"]["two_sub_clusters"] for r in results], "k_", markersize=30,
              label="raw clusters with exactly\n2 sub-clusters")
    for ax, title in ((left, "raw clusters dissolved"), (right, "points removed")):
        ax.set_xticks(x + width, [f"seed {r['seed']}" for r in results])
        ax.set_title(title)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.35)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Quickstart, first clustering: what each refinement rule does")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python3", "benchmarks/refine_rules.py", *(argv if argv is not None else sys.argv[1:])])
    results = [measure(seed, args.overrides) for seed in args.seeds]
    report = markdown(results, command)
    print(report)
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": command, "machine": cpu_description(), "torch": torch.__version__, "commit": git_commit(REPO),
            "date": _dt.date.today().isoformat(), "overrides": args.overrides}
    (out / "refine_rules.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (out / "refine_rules.md").write_text(report)
    plot(results, out / "refine_rules.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

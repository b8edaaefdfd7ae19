"""Evaluation benchmark: time and peak memory of plain and re-ranked evaluation versus size.

Each measurement runs in its own subprocess (so peak memory is that run's alone) on synthetic
identity-structured features, D = 2048 by default:

    Q query and G gallery images of (Q + G) / 20 identities, each image its identity's unit
    centre plus a camera offset (norm 0.3, one of 6 cameras) plus Gaussian noise of norm about
    3-4.5 (a per-identity spread), L2-normalised, float32; the queries are the first Q images.
    Fixed seed. Plain mAP is about 30-50%, so re-ranking has something to do.

Sizes: `market` (Q 3,368 + G 15,913, Market-1501), `msmt17` (11,659 + 82,161), `200k`
(20,000 + 180,000), `quick` (500 + 2,500, a smoke test). Methods:

- `plain`: squared Euclidean distances in float64, ranked block by block
  (`evaluation.evaluator.evaluate_features`), never Q x G;
- `plain_matrix`: the whole float32 Q x G matrix (`metrics.pairwise_distance`), then ranked;
- `rerank`: exact sparse k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3), blocks fed to the
  ranking (`evaluate_features(..., rerank=RerankParams())`);
- `rerank_dense`: the dense (Q + G)^2 float64 re-ranking (`tests/helpers/rerank_dense.py`, the tests' oracle),
  where it fits in memory (--max-dense-gb); its metrics are compared with `rerank`'s.

    python3 benchmarks/bench_eval.py                                   # market, msmt17, 200k on the CPU
    python3 benchmarks/bench_eval.py --sizes msmt17 --methods rerank --merge   # add or redo one row
    python3 benchmarks/bench_eval.py --device cuda

Writes <out>/bench_eval.{json,md,png} (with --merge, rows already there for other sizes or
methods are kept).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_description, git_commit, gpu_description

REPO = Path(__file__).resolve().parents[1]

SIZES = {"quick": (500, 2_500), "market": (3_368, 15_913), "msmt17": (11_659, 82_161), "200k": (20_000, 180_000)}
METHODS = ("plain", "plain_matrix", "rerank", "rerank_dense")
METRIC_KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=["market", "msmt17", "200k"], choices=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--max-dense-gb", type=float, default=None,
                        help="skip a whole-matrix method above this estimated peak (default: 60%% of RAM)")
    parser.add_argument("--merge", action="store_true", help="keep the rows of an existing results file")
    parser.add_argument("--replot", action="store_true", help="only rewrite the markdown and plot from the JSON")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement (JSON spec)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ one measurement
def synthetic_problem(num_query: int, num_gallery: int, dim: int, seed: int = 0):
    """(features (Q + G, D) float32, pids, camids): see the module docstring."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num_points = num_query + num_gallery
    num_ids = max(1, num_points // 20)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cameras = rng.standard_normal((6, dim), dtype=np.float32)
    cameras *= 0.3 / np.linalg.norm(cameras, axis=1, keepdims=True)
    spread = rng.uniform(3.0, 4.5, num_ids).astype(np.float32)
    pids = rng.integers(0, num_ids, num_points)
    camids = rng.integers(0, 6, num_points)
    feats = rng.standard_normal((num_points, dim), dtype=np.float32)
    for lo in range(0, num_points, 16384):  # in chunks: no second full-size temporary
        part = slice(lo, lo + 16384)
        feats[part] *= (spread[pids[part]] / np.sqrt(dim))[:, None]
        feats[part] += centres[pids[part]] + cameras[camids[part]]
        feats[part] /= np.linalg.norm(feats[part], axis=1, keepdims=True)
    return feats, pids, camids


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (Linux reports kB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> int:
    """Restart the peak resident memory count (Linux: clear_refs 5); return the current resident memory."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_bytes("VmRSS")


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since the last reset."""
    return _status_bytes("VmHWM")


def dense_rerank_oracle():
    """The dense (Q + G)^2 re-ranking, which lives with the tests as their oracle (no part of the package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tests" / "helpers" / "rerank_dense.py"
    spec = importlib.util.spec_from_file_location("rerank_dense", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.k_reciprocal_rerank


def run_one(spec: dict) -> dict:
    import numpy as np
    import torch

    from cacl_dist.evaluation.evaluator import evaluate_features
    from cacl_dist.evaluation.metrics import evaluate_ranking, pairwise_distance
    k_reciprocal_rerank = dense_rerank_oracle()
    from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker

    num_query, num_gallery = SIZES[spec["size"]]
    feats, pids, cams = synthetic_problem(num_query, num_gallery, spec["dim"])
    ids = (pids[:num_query], pids[num_query:], cams[:num_query], cams[num_query:])
    device = torch.device(spec["device"])
    on_cuda = device.type == "cuda"
    inputs = torch.from_numpy(feats).to(device)
    q, g = inputs[:num_query], inputs[num_query:]
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    prepare = None
    method = spec["method"]
    if method == "plain":
        metrics = evaluate_features(q, g, *ids)
    elif method == "plain_matrix":
        metrics = evaluate_ranking(pairwise_distance(q.cpu(), g.cpu()), *ids)
    elif method == "rerank":
        reranker = SparseReranker(q, g, RerankParams())
        prepare = time.perf_counter() - wall
        metrics = evaluate_ranking(reranker.blocks(), *ids)
    else:
        metrics = evaluate_ranking(k_reciprocal_rerank(q.cpu(), g.cpu()), *ids)
    if on_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = (torch.cuda.max_memory_allocated() if on_cuda else peak_rss_bytes()) - base
    return {"seconds": wall, "cpu_seconds": cpu, "prepare_seconds": prepare, "peak_extra_bytes": int(peak),
            "peak_total_bytes": int(peak_rss_bytes()), "features_bytes": int(feats.nbytes),
            "num_valid_queries": int(metrics["num_valid_queries"]),
            **{key: float(metrics[key]) for key in METRIC_KEYS}, "cmc_top10": np.asarray(metrics["cmc"]).tolist()}


# ------------------------------------------------------------------------------ driver
def total_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def estimated_bytes(method: str, num_query: int, num_gallery: int) -> int:
    """Rough peak of the whole-matrix methods (the others stay near the features' size)."""
    num_points = num_query + num_gallery
    if method == "plain_matrix":
        return 4 * num_query * num_gallery + (1 << 30)
    if method == "rerank_dense":  # (Q+G)^2 float64 original distance, Q x (Q+G) float64 rows, Q x G results
        return int(9 * num_points * num_points + 40 * num_query * num_points)
    return 0


def plan(args) -> list[dict]:
    limit = (args.max_dense_gb * 2**30) if args.max_dense_gb else 0.6 * total_ram_bytes()
    runs = []
    for size in args.sizes:
        num_query, num_gallery = SIZES[size]
        for method in args.methods:
            need = estimated_bytes(method, num_query, num_gallery)
            reason = f"needs ~{need / 2**30:.0f} GiB" if need > limit else None
            device = "cpu" if method in ("plain_matrix", "rerank_dense") else args.device
            runs.append({"size": size, "num_query": num_query, "num_gallery": num_gallery, "method": method,
                         "device": device, "dim": args.dim, "skip": reason})
    return runs


def measure(spec: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {**spec, "error": tail[0]}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def compare(results: list[dict]) -> None:
    """Largest metric difference of the sparse re-ranking from the dense one, where both ran."""
    dense = {r["size"]: r for r in results if r["method"] == "rerank_dense" and "seconds" in r}
    for r in results:
        ref = dense.get(r["size"])
        if r["method"] == "rerank" and ref is not None and "seconds" in r:
            r["max_metric_diff_vs_dense"] = max(abs(r[k] - ref[k]) for k in METRIC_KEYS)


def fmt_bytes(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Evaluation benchmark ({meta['device']})", "",
             f"- Hardware: {meta['hardware']}",
             f"- torch {meta['torch']}, Python {meta['python']}, intra-op threads: {meta['threads']}",
             "- Rows, each with its own command, commit, date and load average (other jobs on the machine "
             "inflate wall times; CPU seconds are less affected):", ""]
    for r in results:
        if r.get("command"):
            lines.append(f"  - {r['size']} {r['method']}: `{r['command']}` (commit {r.get('commit', '?')}, "
                         f"{r.get('date', '?')}, load {r.get('load_before', '?')} -> {r.get('load_after', '?')})")
    lines += ["", "Features: see the docstring of benchmarks/bench_eval.py (D = "
              f"{meta['dim']}). Peak extra memory: peak resident memory of the run's process above what it held "
              "once the float32 features were made (CPU; peak total: with them, the interpreter and torch), or peak allocated CUDA memory (GPU). Re-ranking: k1 20, k2 6, "
              "lambda 0.3.", "",
              "| size | Q + G | method | device | time s | CPU s | peak extra memory | peak total | mAP | rank-1 | mINP "
              "| notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        head = f"| {r['size']} | {r['num_query']:,} + {r['num_gallery']:,} | {r['method']} | {r['device']} "
        if r.get("skip") or "error" in r:
            what = f"skipped: {r['skip']}" if r.get("skip") else f"failed: {r['error']}"
            lines.append(head + f"| {what} | | | | | | | |")
            continue
        notes = []
        if r.get("prepare_seconds") is not None:
            notes.append(f"neighbours + encoding {r['prepare_seconds']:.0f} s")
        if "max_metric_diff_vs_dense" in r:
            notes.append(f"metrics vs dense: max diff {r['max_metric_diff_vs_dense']:.1e}")
        lines.append(head + f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {fmt_bytes(r['peak_extra_bytes'])} "
                     f"| {fmt_bytes(r['peak_total_bytes'])} | {100 * r['mAP']:.2f}% | {100 * r['rank1']:.2f}% | {100 * r['mINP']:.2f}% "
                     f"| {'; '.join(notes)} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for method in METHODS:
        rows = sorted((r for r in results if r["method"] == method and "seconds" in r),
                      key=lambda r: r["num_query"] + r["num_gallery"])
        if not rows:
            continue
        n = [r["num_query"] + r["num_gallery"] for r in rows]
        ax_t.plot(n, [r["cpu_seconds" if device == "cpu" else "seconds"] for r in rows], "o-", label=method)
        ax_m.plot(n, [max(r["peak_extra_bytes"], 1) / 2**20 for r in rows], "o-", label=method)
    timing = "CPU time, both cores (s)" if device == "cpu" else "time (s)"  # wall time follows the load
    for ax, title in ((ax_t, timing), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Q + G (images)")
        ax.set_title(f"{title}, {device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bench_eval.json"
    commit = git_commit(REPO)
    command = "python3 benchmarks/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.replot:
        saved = json.loads(path.read_text())
        path.with_suffix(".md").write_text(markdown(saved["results"], saved["meta"]))
        plot(saved["results"], path.with_suffix(".png"), saved["meta"]["device"])
        return
    new = []
    for spec in plan(args):
        spec.update(command=command, commit=commit, date=_dt.date.today().isoformat(),
                    load_before=round(os.getloadavg()[0], 2))
        result = spec if spec["skip"] else measure(spec)
        result["load_after"] = round(os.getloadavg()[0], 2)
        new.append(result)
        label = f"{spec['size']:>7} {spec['method']:>13} {spec['device']:>4}"
        if spec["skip"]:
            print(f"{label}: skipped ({spec['skip']})", flush=True)
        elif "error" in result:
            print(f"{label}: FAILED {result['error']}", flush=True)
        else:
            print(f"{label}: {result['seconds']:8.1f} s (CPU {result['cpu_seconds']:.1f} s), peak "
                  f"+{fmt_bytes(result['peak_extra_bytes'])}, mAP {100 * result['mAP']:.3f}%", flush=True)
    results = new
    if args.merge and path.exists():
        keep = {(r["size"], r["method"], r["device"]): r for r in json.loads(path.read_text())["results"]}
        keep.update({(r["size"], r["method"], r["device"]): r for r in new})
        order = {name: i for i, name in enumerate(SIZES)}
        results = sorted(keep.values(), key=lambda r: (order[r["size"]], METHODS.index(r["method"]), r["device"]))
    compare(results)
    meta = {"device": args.device, "hardware": cpu_description(with_memory=True)
            + (f"; GPU {gpu_description()}" if args.device == "cuda" else ""),
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "dim": args.dim}
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(results, meta))
    plot(results, path.with_suffix(".png"), args.device)
    print(markdown(results, meta))
    print(f"wrote {path.with_suffix('')}.json, .md and .png")


if __name__ == "__main__":
    main()

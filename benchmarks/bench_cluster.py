"""Clustering benchmark: time and peak memory of pseudo labelling versus N, per backend.

Each measurement runs `clustering.cluster` with the default `ClusterParams` (k-reciprocal
Jaccard k1=30, k2=6 -> DBSCAN eps 0.6, min_samples 4 -> refinement with eps_tight 0.58) on
synthetic clustered features in its own subprocess, so peak memory is that run's alone:

    N images of D=2048 dimensions, N/17 identities (Market-1501 has ~17 images per identity),
    each image its identity's unit centre plus Gaussian noise of a per-identity spread, 5% of
    the images pure noise (outliers), all rows L2-normalised. Fixed seed.

Backends: `sklearn` (the dense reference: N x N float64/float32 matrices, scikit-learn
DBSCAN), `torch` (sparse, exact; CPU or CUDA), `cuml` (sparse graph + cuML DBSCAN; CUDA with
RAPIDS only). The dense reference runs only where its ~11 N^2 bytes fit (--max-dense-gb).
Labels of every backend are compared with the reference's where both ran (adjusted Rand index).

    python3 benchmarks/bench_cluster.py                             # CPU: 10k, 12,936, 33k, 100k
    python3 benchmarks/bench_cluster.py --device cuda --sizes 12936 32621 100000 300000 1000000
    python3 benchmarks/bench_cluster.py --threads 1 --sizes 12936   # one intra-op thread

With `--device-features-from N` runs of N or more images draw the features with torch on the
measuring device instead of numpy (the same recipe, other random numbers; a million rows take
seconds instead of a minute). `--timeout-s` limits each measurement, `--budget-s` the whole run
(measurements that no longer fit are reported as skipped).

Writes <out>/<stem>.{json,md,png}, by default <out>/bench_cluster_<device>.*.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_description, git_commit, gpu_description
from cacl_dist.clustering.names import BACKENDS  # (imports nothing else)

REPO = Path(__file__).resolve().parents[1]

#: How a measurement that the time budget left no room for is reported (skipped, or stopped at the end).
BUDGET_SPENT = "the time budget (--budget-s) was spent"
DENSE_BYTES_PER_PAIR = 11  # measured peak of the reference: ~11 bytes per matrix entry


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="values of N (default: 10000 12936 33000 100000 on cpu; up to 1M on cuda)")
    parser.add_argument("--backends", nargs="+", default=None, choices=BACKENDS,
                        help="default: sklearn and torch (plus cuml on cuda)")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: library default)")
    parser.add_argument("--max-dense-gb", type=float, default=None,
                        help="skip the dense reference above this estimated peak (default: 60%% of RAM)")
    parser.add_argument("--reference-up-to", type=int, default=None, metavar="N",
                        help="run the dense reference only for N up to this (it takes minutes beyond ~15k)")
    parser.add_argument("--max-cpu-n", type=int, default=100_000,
                        help="largest N run on the CPU (time grows as N^2)")
    parser.add_argument("--device-features-from", type=int, default=None, metavar="N",
                        help="draw the features of runs with N or more images with torch on --device")
    parser.add_argument("--timeout-s", type=float, default=None, help="time limit of each measurement")
    parser.add_argument("--budget-s", type=float, default=None, help="start no measurement after this many seconds")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--stem", default=None, help="file name of the results (default bench_cluster_<device>)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one measurement (JSON spec)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ one measurement
def clustered_features(num_points: int, dim: int, seed: int = 0):
    """The benchmark's synthetic features (see the module docstring), float32 (N, D)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num_ids = max(1, num_points // 17)
    centres = rng.standard_normal((num_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.8, 1.4, num_ids).astype(np.float32)
    owner = rng.integers(0, num_ids, num_points)
    feats = rng.standard_normal((num_points, dim), dtype=np.float32)
    noise = rng.random(num_points) < 0.05
    clean = ~noise
    feats[clean] *= (spread[owner[clean]] / np.sqrt(dim))[:, None]
    feats[clean] += centres[owner[clean]]
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats


def clustered_features_torch(num_points: int, dim: int, device: str, seed: int = 0):
    """The same recipe as :func:`clustered_features`, drawn by torch on `device` (other random numbers)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    num_ids = max(1, num_points // 17)
    centres = torch.randn(num_ids, dim, generator=gen, device=device)
    centres /= centres.norm(dim=1, keepdim=True)
    spread = 0.8 + 0.6 * torch.rand(num_ids, generator=gen, device=device)
    owner = torch.randint(0, num_ids, (num_points,), generator=gen, device=device)
    feats = torch.randn(num_points, dim, generator=gen, device=device)
    clean = torch.rand(num_points, generator=gen, device=device) >= 0.05
    chunk = 1 << 16
    for start in range(0, num_points, chunk):  # chunks: no second N x D tensor of centres
        rows = slice(start, start + chunk)
        keep = clean[rows, None]
        scale = torch.where(keep, spread[owner[rows], None] / dim**0.5, torch.ones_like(keep, dtype=feats.dtype))
        feats[rows] = feats[rows] * scale + centres[owner[rows]] * keep
    feats /= feats.norm(dim=1, keepdim=True)
    return feats


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def run_one(spec: dict) -> dict:
    import numpy as np
    import torch

    from cacl_dist.clustering import ClusterParams, cluster

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    on_cuda = device.type == "cuda"
    if spec.get("features_device"):
        feats = clustered_features_torch(spec["n"], spec["dim"], spec["features_device"])
        inputs = feats.cpu().numpy() if spec["backend"] == "sklearn" else feats.to(device)
        del feats
    else:
        feats = clustered_features(spec["n"], spec["dim"])
        inputs = feats if spec["backend"] == "sklearn" else torch.from_numpy(feats).to(device)
        del feats
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = peak_rss_bytes()
    wall, cpu = time.perf_counter(), time.process_time()
    result = cluster(inputs, ClusterParams(backend=spec["backend"]))  # on the device of the inputs
    if on_cuda:
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = (torch.cuda.max_memory_allocated() if on_cuda else peak_rss_bytes()) - base
    np.save(spec["labels_path"], result.labels)
    extra = {}
    if on_cuda and spec["backend"] == "torch":  # the search's candidates are meant to come from TF32 products
        from cacl_dist.clustering.knn import tf32_in_effect

        extra["tf32"] = tf32_in_effect(device)
    return {**extra, "n": spec["n"], "backend": spec["backend"], "device": spec["device"], "seconds": wall,
            "cpu_seconds": cpu, "peak_extra_bytes": int(peak), "num_clusters": result.num_clusters,
            "num_raw_clusters": result.num_raw_clusters, "num_outliers": result.num_outliers,
            "num_refined_away": result.num_refined_away}


# ------------------------------------------------------------------------------ driver
def total_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def plan(args) -> list[dict]:
    sizes = args.sizes or ([10_000, 12_936, 33_000, 100_000] if args.device == "cpu"
                           else [10_000, 12_936, 32_621, 100_000, 300_000, 1_000_000])
    backends = args.backends or (["sklearn", "torch"] + (["cuml"] if args.device == "cuda" else []))
    cuml_ok = "cuml" not in backends or cuml_importable()
    max_dense = (args.max_dense_gb * 2**30) if args.max_dense_gb else 0.6 * total_ram_bytes()
    runs = []
    for n in sizes:
        for backend in backends:
            reason = None
            if backend == "sklearn" and args.reference_up_to is not None and n > args.reference_up_to:
                reason = f"dense reference only up to N={args.reference_up_to:,} (--reference-up-to)"
            elif backend == "sklearn" and DENSE_BYTES_PER_PAIR * n * n > max_dense:
                reason = f"dense reference needs ~{DENSE_BYTES_PER_PAIR * n * n / 2**30:.0f} GiB"
            elif backend == "cuml" and not cuml_ok:
                reason = "RAPIDS cuML is not installed"
            elif backend == "cuml" and 4 * n * n > 0.8 * 80 * 2**30:
                reason = "dense N x N float32 matrix exceeds GPU memory"
            elif args.device == "cpu" and backend != "sklearn" and n > args.max_cpu_n:
                reason = f"N > --max-cpu-n {args.max_cpu_n}"
            on_device = args.device_features_from is not None and n >= args.device_features_from
            runs.append({"n": n, "backend": backend, "device": args.device if backend != "sklearn" else "cpu",
                         "dim": args.dim, "threads": args.threads, "skip": reason,
                         "features_device": args.device if on_device else None})
    return runs


def cuml_importable() -> bool:
    """True when RAPIDS cuML can be imported (looked up without importing it)."""
    import importlib.util

    return importlib.util.find_spec("cuml") is not None


def measure(spec: dict, tmp: Path, timeout: float | None = None) -> dict:
    spec = dict(spec, labels_path=str(tmp / f"labels_{spec['backend']}_{spec['n']}.npy"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    env = dict(os.environ)
    if spec["threads"]:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(spec["threads"])
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {**spec, "error": tail[0]}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def agreement(results: list[dict]) -> None:
    """Adjusted Rand index and exact equality of each backend's labels with the reference's."""
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    reference = {r["n"]: r for r in results if r["backend"] == "sklearn" and "seconds" in r}
    for r in results:
        ref = reference.get(r["n"])
        if r["backend"] == "sklearn" or ref is None or "seconds" not in r:
            continue
        got, want = np.load(r["labels_path"]), np.load(ref["labels_path"])
        r["ari_vs_reference"] = float(adjusted_rand_score(want, got))
        r["labels_equal_reference"] = bool(np.array_equal(got, want))
        r["speedup_vs_reference"] = ref["seconds"] / r["seconds"]
        r["memory_fraction_of_reference"] = r["peak_extra_bytes"] / max(1, ref["peak_extra_bytes"])


def hardware(device: str) -> str:
    gpu = gpu_description() if device == "cuda" else None
    return cpu_description(with_memory=True) + (f"; GPU {gpu}" if gpu else "")


def fmt_bytes(value) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB" if value < 2**30 else f"{value / 2**30:.2f} GiB"


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# Clustering benchmark ({meta['device']})", "",
             f"- Hardware: {meta['hardware']}", f"- torch {meta['torch']}, Python {meta['python']}, "
             f"intra-op threads: {meta['threads']}, commit {meta['commit']}, {meta['date']}",
             f"- Load average before/after: {meta['load_before']} / {meta['load_after']} "
             "(other jobs on the machine inflate wall times)",
             f"- Command: `{meta['command']}`", "",
             "Pipeline per run: Jaccard (k1=30, k2=6) -> DBSCAN (eps 0.6, min_samples 4) -> refinement "
             "(eps_tight 0.58). Features: see the docstring of benchmarks/bench_cluster.py. Peak memory: extra "
             "resident memory of the run's process (CPU) or peak allocated CUDA memory (GPU).", "",
             "| N | backend | device | time s | CPU s | peak extra memory | clusters (raw) | outliers "
             "| refined away | vs reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        drawn = " (torch-drawn features)" if r.get("features_device") else ""
        head = f"| {r['n']:,}{drawn} | {r['backend']} | {r['device']} "
        if r.get("skip"):
            lines.append(head + f"| skipped: {r['skip']} | | | | | | |")
            continue
        if "error" in r:
            lines.append(head + f"| failed: {r['error']} | | | | | | |")
            continue
        vs = "reference"
        if "ari_vs_reference" in r:
            same = "labels identical" if r["labels_equal_reference"] else f"ARI {r['ari_vs_reference']:.6f}"
            vs = (f"{r['speedup_vs_reference']:.1f}x faster, {100 * r['memory_fraction_of_reference']:.0f}% "
                  f"of its memory, {same}")
        elif r["backend"] != "sklearn":
            vs = "reference not run"
        lines.append(head + f"| {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | {fmt_bytes(r['peak_extra_bytes'])} "
                     f"| {r['num_clusters']:,} ({r['num_raw_clusters']:,}) | {r['num_outliers']:,} "
                     f"| {r['num_refined_away']:,} | {vs} |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for backend in sorted(BACKENDS, key=lambda name: name != "sklearn"):  # the reference first
        rows = [r for r in results if r["backend"] == backend and "seconds" in r]
        if not rows:
            continue
        n = [r["n"] for r in rows]
        ax_t.plot(n, [r["seconds"] for r in rows], "o-", label=backend)
        ax_m.plot(n, [max(r["peak_extra_bytes"], 1) / 2**20 for r in rows], "o-", label=backend)
    for ax, title in ((ax_t, "time (s)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (images)")
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
    runs = plan(args)
    load_before = round(os.getloadavg()[0], 2)
    results, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for spec in runs:
            left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
            if not spec["skip"] and left is not None and left < 5:
                spec = dict(spec, skip=BUDGET_SPENT)
            if spec["skip"]:
                print(f"N={spec['n']:>9,} {spec['backend']:>7}: skipped ({spec['skip']})", flush=True)
                results.append(spec)
                continue
            limits = [t for t in (args.timeout_s, left) if t is not None]
            result = measure(spec, Path(tmp), min(limits) if limits else None)
            if "error" in result and result["error"].startswith("did not finish") and left is not None and \
                    (args.timeout_s is None or left <= args.timeout_s):
                result["error"] += f" ({BUDGET_SPENT})"
            results.append(result)
            if "error" in result:
                print(f"N={spec['n']:>9,} {spec['backend']:>7}: FAILED {result['error']}", flush=True)
            else:
                print(f"N={spec['n']:>9,} {spec['backend']:>7}: {result['seconds']:8.1f} s "
                      f"(CPU {result['cpu_seconds']:.1f} s), peak +{fmt_bytes(result['peak_extra_bytes'])}, "
                      f"{result['num_clusters']:,} clusters", flush=True)
        agreement(results)
    for r in results:
        r.pop("labels_path", None)
    meta = {"device": args.device, "hardware": hardware(args.device), "torch": torch.__version__,
            "python": platform.python_version(), "threads": args.threads or torch.get_num_threads(),
            "commit": git_commit(REPO), "date": _dt.date.today().isoformat(),
            "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
            "command": "python3 benchmarks/bench_cluster.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = out / (args.stem or f"bench_cluster_{args.device}")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(results, meta))
    plot(results, stem.with_suffix(".png"), args.device)
    print(markdown(results, meta))
    print(f"wrote {stem}.json, .md and .png")


if __name__ == "__main__":
    main()

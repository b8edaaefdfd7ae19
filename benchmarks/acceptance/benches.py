"""Acceptance parts that run the benchmarks: clustering vs N, full-step throughput, the DALI rate."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .common import Context, failed_because, fmt_gib, result, run

#: Clustering sizes: Market-1501 and MSMT17 training sets (checked against the dense reference), 100k, 1M.
CLUSTER_SIZES = {"gpu": [12_936, 32_621, 100_000, 1_000_000], "dry": [1_000, 2_000]}
REFERENCE_UP_TO = {"gpu": 32_621, "dry": 2_000}


def _bench(ctx: Context, script: str) -> list[str]:
    return [ctx.python, str(Path(ctx.repo) / "benchmarks" / script)]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def part_clustering(ctx: Context) -> dict:
    """Pseudo labelling on the device at each N: time, peak memory, labels equal to the dense reference."""
    mode = "dry" if ctx.dry_run else "gpu"
    stem = f"bench_cluster_{ctx.tag}"
    backends = ["sklearn", "torch"] + (["cuml"] if importlib.util.find_spec("cuml") else [])
    cmd = _bench(ctx, "bench_cluster.py") + [
        "--device", ctx.device, "--sizes", *map(str, CLUSTER_SIZES[mode]), "--backends", *backends,
        "--out", ctx.results, "--stem", stem, "--budget-s", f"{max(10.0, ctx.left() - 20):.0f}"]
    cmd += ["--threads", "2"] if ctx.dry_run else ["--device-features-from", "100000"]
    finished = run(ctx, cmd, margin=10)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if report is None:
        return result("fail", f"no results: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    rows, problems = report["results"], []
    table = ["| N | backend | device | time s | peak memory | clusters | vs dense reference |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skip") or "error" in r:
            reason = r.get("skip") or r["error"]
            table.append(f"| {r['n']:,} | {r['backend']} | {r['device']} | {'skipped' if r.get('skip') else 'FAILED'}: "
                         f"{reason} | | | |")
            expected_skip = r["backend"] == "cuml" or (r["backend"] == "sklearn" and r["n"] > REFERENCE_UP_TO[mode])
            if "error" in r or not expected_skip:
                problems.append(f"N={r['n']:,} {r['backend']}: {reason}")
            continue
        same = r.get("labels_equal_reference")
        vs = "reference" if r["backend"] == "sklearn" else ("labels identical" if same else
                                                             f"DIFFER (ARI {r['ari_vs_reference']:.6f})"
                                                             if same is False else "not compared")
        table.append(f"| {r['n']:,} | {r['backend']} | {r['device']} | {r['seconds']:.1f} | "
                     f"{fmt_gib(r['peak_extra_bytes'])} | {r['num_clusters']:,} | {vs} |")
        if r["backend"] == "torch" and r["n"] <= REFERENCE_UP_TO[mode] and not same:
            problems.append(f"N={r['n']:,}: torch labels {'differ from' if same is False else 'not compared with'} "
                            "the reference")
    if finished.returncode != 0:
        problems.append(f"bench_cluster.py: {failed_because(finished)}")
    torch_rows = {r["n"]: r for r in rows if r["backend"] == "torch" and "seconds" in r}
    summary = ", ".join(f"N={n:,} {r['seconds']:.1f} s / {fmt_gib(r['peak_extra_bytes'])}"
                        for n, r in torch_rows.items())
    summary = (summary + "; labels equal the reference up to N=" + f"{REFERENCE_UP_TO[mode]:,}") if not problems else \
        "; ".join(problems)
    details = [f"Full results: [{stem}.md]({stem}.md). Peak memory: extra CUDA memory allocated during the run "
               "(CPU: resident memory) beyond the features.", "", *table]
    return result("fail" if problems else "pass", summary, details, {"results": rows}, [finished.command],
                  [f"{stem}.{ext}" for ext in ("md", "json", "png")])


def part_throughput(ctx: Context) -> dict:
    """Full CACL step of ResNet-50 x 2 at 256x128, global batch 64: fp32, bf16 + channels-last, + compile."""
    stem = f"bench_train_{ctx.tag}"
    cmd = _bench(ctx, "bench_train.py") + ["--out", ctx.results, "--stem", stem, "--data", ctx.data, "--runs-dir",
                                          str(Path(ctx.work) / "bench_train"),
                                          "--budget-s", f"{max(10.0, ctx.left() - 25):.0f}"]
    if ctx.dry_run:
        cmd += ["--device", "cpu", "--backbone", "resnet_tiny", "--size", "64", "32", "--batches", "16", "--variants",
                "fp32", "bf16+cl", "--steps", "2", "--warmup", "1"]
    else:
        cmd += ["--quick", "--device", "cuda", "--variants", "fp32", "bf16+cl", "bf16+cl+compile"]
    finished = run(ctx, cmd, margin=10)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if report is None:
        return result("fail", f"no results: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    rows, problems, parts = report["results"], [], []
    table = ["| variant | images/s | step ms | MFU | peak memory | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        note = r.get("error", "")
        if "images_per_s" in r:
            memory = f"{r['max_memory_gib']:.1f} GiB" if "max_memory_gib" in r else "-"
            table.append(f"| {r['variant']} | {r['images_per_s']:.0f} | {r['step_ms_median']:.1f} | {mfu} "
                         f"| {memory} | |")
            parts.append(f"{r['variant']} {r['images_per_s']:.0f} img/s" + (f" (MFU {mfu})" if "mfu" in r else ""))
        else:
            table.append(f"| {r['variant']} | - | - | - | - | {note} |")
            optional = "compile" in r["variant"] and ("budget" in note or "did not finish" in note)
            if optional:
                parts.append(f"{r['variant']} not measured (no time left)")
            else:
                problems.append(f"{r['variant']}: {note}")
    if finished.returncode != 0:
        problems.append(f"bench_train.py: {failed_because(finished)}")
    case = rows[0] if rows else {}
    details = [f"{case.get('backbone', '?')} x 2 at {case.get('height', '?')}x{case.get('width', '?')}, global batch "
               f"{case.get('batch', '?')} on {case.get('device', '?')}; full results: [{stem}.md]({stem}.md). MFU: "
               f"{_mfu_reference(report)}.",
               "", *table]
    summary = "; ".join(problems) if problems else ", ".join(parts)
    return result("fail" if problems else "pass", summary, details, {"results": rows}, [finished.command],
                  [f"{stem}.{ext}" for ext in ("md", "json", "png")])


def _mfu_reference(report: dict) -> str:
    """What the MFU column divides by."""
    machine = report["machine"]
    if any(r["device"] == "cuda" for r in report["results"]):
        entry = machine.get("gpu_peak_entry")
        return (f"counted FLOPs/s over the datasheet dense peak of the {entry} (TF32 for fp32, bf16 for bf16)" if entry
                else "none: this GPU's peak is not listed in benchmarks/scaling_model.py")
    return f"counted FLOPs/s over this CPU's measured fp32 matmul rate ({machine['cpu_matmul_gflops']:.0f} GFLOP/s)"


def part_dali(ctx: Context) -> dict:
    """Two-view samples/s of the DALI pipeline on the GPU (dry run: DALI CPU-only), when DALI is importable."""
    if importlib.util.find_spec("nvidia") is None or importlib.util.find_spec("nvidia.dali") is None:
        return result("skip", "DALI is not installed: its two-view rate on the GPU was not measured "
                      "(training uses the torchvision pipeline)")
    stem, pipeline = f"bench_data_{ctx.tag}", "dali-cpu" if ctx.dry_run else "dali-gpu"
    sizes = ["--iters", "3", "--warmup", "1", "--batch-size", "16", "--cores", "2"] if ctx.dry_run else \
        ["--iters", "20", "--warmup", "3", "--batch-size", "64", "--cores", str(min(8, os.cpu_count() or 1))]
    cmd = _bench(ctx, "bench_data.py") + ["--root", ctx.data, "--pipelines", pipeline, "--repeats", "1", *sizes,
                                         "--out", ctx.results, "--stem", stem]
    finished = run(ctx, cmd, margin=5)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if finished.returncode != 0 or report is None or pipeline not in report.get("results", {}):
        return result("fail", f"bench_data.py: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    rate = report["results"][pipeline]["median"]
    height, width = report["meta"]["size"]
    details = [f"- {pipeline}: {rate:.0f} two-view samples/s at {height}x{width}, "
               f"batch {report['meta']['batch_size']}; full results: [{stem}.md]({stem}.md)"]
    return result("pass", f"{pipeline}: {rate:.0f} two-view samples/s", details, {"samples_per_s": rate},
                  [finished.command], [f"{stem}.{ext}" for ext in ("md", "json", "png")])

"""Acceptance parts that run the benchmarks: clustering vs N, full-step throughput, the input pipeline's rate."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from .common import Context, failed_because, fmt_gib, result, run

#: Clustering sizes, the required one first (each runs once): 1M, then the Market-1501 and MSMT17
#: training sets and 100k. The dense reference (CPU, float64, minutes beyond ~15k) runs at Market's size.
CLUSTER_SIZES = {"gpu": [1_000_000, 12_936, 32_621, 100_000], "dry": [2_000, 1_000]}
REFERENCE_UP_TO = {"gpu": 12_936, "dry": 2_000}
#: The torch row that must be measured: a part without it fails.
REQUIRED_N = {"gpu": 1_000_000, "dry": 2_000}
BUDGET_SPENT = "the time budget (--budget-s) was spent"  # bench_cluster.py's words for "no time left"


def _bench(ctx: Context, script: str) -> list[str]:
    return [ctx.python, str(Path(ctx.repo) / "benchmarks" / script)]


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def judge_clustering(rows: list[dict], mode: str) -> tuple[list[str], list[str]]:
    """(problems, rows not measured for lack of time) of bench_cluster.py's rows.

    A problem: a measurement that failed, torch labels that differ from (or were not compared with)
    the reference up to REFERENCE_UP_TO, a torch row on the GPU that ran off CUDA or without TF32,
    or the required torch row not measured. A row the time budget left out is noted, not failed.
    """
    problems, no_time = [], []
    for r in rows:
        name = f"N={r['n']:,} {r['backend']}"
        reason = r.get("skip") or r.get("error")
        if reason:
            if BUDGET_SPENT in reason:
                no_time.append(name)
            elif "error" in r:
                problems.append(f"{name}: {r['error']}")
            continue
        if r["backend"] != "torch":
            continue
        if r["n"] <= REFERENCE_UP_TO[mode] and not r.get("labels_equal_reference"):
            how = "differ from" if r.get("labels_equal_reference") is False else "were not compared with"
            problems.append(f"{name}: labels {how} the dense reference")
        if mode == "gpu" and r.get("device") != "cuda":
            problems.append(f"{name}: ran on {r.get('device')}, not on the GPU")
        elif mode == "gpu" and r.get("tf32") is not True:
            problems.append(f"{name}: the neighbour search's products did not run in TF32 (NVIDIA_TF32_OVERRIDE=0?)")
    required = [r for r in rows if r["backend"] == "torch" and r["n"] == REQUIRED_N[mode] and "seconds" in r]
    if not required:
        problems.append(f"the required N={REQUIRED_N[mode]:,} torch row was not measured")
    return problems, no_time


def part_clustering(ctx: Context) -> dict:
    """Pseudo labelling on the device at each N: time, peak memory, labels equal to the dense reference."""
    mode = "dry" if ctx.dry_run else "gpu"
    stem = f"bench_cluster_{ctx.tag}"
    backends = ["sklearn", "torch"] + (["cuml"] if importlib.util.find_spec("cuml") else [])
    cmd = _bench(ctx, "bench_cluster.py") + [
        "--device", ctx.device, "--sizes", *map(str, CLUSTER_SIZES[mode]), "--backends", *backends,
        "--reference-up-to", str(REFERENCE_UP_TO[mode]), "--out", ctx.results, "--stem", stem,
        "--budget-s", f"{max(10.0, ctx.left() - 20):.0f}"]
    cmd += ["--threads", "2"] if ctx.dry_run else ["--device-features-from", "100000"]
    finished = run(ctx, cmd, margin=10)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if report is None:
        return result("fail", f"no results: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    rows = report["results"]
    problems, no_time = judge_clustering(rows, mode)
    table = ["| N | backend | device | time s | peak memory | clusters | TF32 | vs dense reference |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skip") or "error" in r:
            reason = r.get("skip") or r["error"]
            word = "not measured" if BUDGET_SPENT in reason else "skipped" if r.get("skip") else "FAILED"
            table.append(f"| {r['n']:,} | {r['backend']} | {r['device']} | {word}: {reason} | | | | |")
            continue
        same = r.get("labels_equal_reference")
        vs = "reference" if r["backend"] == "sklearn" else ("labels identical" if same else
                                                             f"DIFFER (ARI {r['ari_vs_reference']:.6f})"
                                                             if same is False else "not compared")
        tf32 = {True: "on", False: "OFF"}.get(r.get("tf32"), "-")
        table.append(f"| {r['n']:,} | {r['backend']} | {r['device']} | {r['seconds']:.1f} | "
                     f"{fmt_gib(r['peak_extra_bytes'])} | {r['num_clusters']:,} | {tf32} | {vs} |")
    if finished.returncode != 0:
        problems.append(f"bench_cluster.py: {failed_because(finished)}")
    torch_rows = {r["n"]: r for r in rows if r["backend"] == "torch" and "seconds" in r}
    summary = ", ".join(f"N={n:,} {r['seconds']:.1f} s / {fmt_gib(r['peak_extra_bytes'])}"
                        for n, r in torch_rows.items())
    summary += f"; labels equal the reference up to N={REFERENCE_UP_TO[mode]:,}"
    if no_time:
        summary += f"; not measured for lack of time: {', '.join(no_time)}"
    if problems:
        summary = "; ".join(problems)
    details = [f"Full results: [{stem}.md]({stem}.md). Peak memory: extra CUDA memory allocated during the run "
               "(CPU: resident memory) beyond the features. TF32: measured inside the run (a product checked "
               "against float64) under the search's setting.", "", *table]
    devices = {r.get("device") for r in torch_rows.values()}
    return result("fail" if problems else "pass", summary, details,
                  {"results": rows, "ran_on": "cuda" if devices == {"cuda"} else ",".join(sorted(map(str, devices)))},
                  [finished.command], [f"{stem}.{ext}" for ext in ("md", "json", "png")])


#: MFU below this share of the GPU's peak is flagged as slow in the summary.
SLOW_MFU = 0.20


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot build kernels here (no C compiler, no Triton on CUDA), or None."""
    import shutil

    compilers = [os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]
    if not any(shutil.which(c) for c in compilers):
        return f"no C compiler ({' / '.join(compilers)}) on PATH"
    if device == "cuda" and importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    return None


def judge_throughput(rows: list[dict], compile_reason: str | None) -> tuple[list[str], list[str], list[str]]:
    """(problems, summary parts, slow variants) of bench_train.py's rows.

    A compile variant that could not build or had no time left is reported as unavailable or not
    measured, never as a failure; a variant whose MFU is under SLOW_MFU of the peak is flagged slow.
    A row fed by an input pipeline names the pipeline and its rate; a fed measurement that failed is a problem.
    """
    problems, parts, slow = [], [], []
    if compile_reason:
        parts.append(f"compile unavailable: {compile_reason}")
    for r in rows:
        note = r.get("error", "")
        if "images_per_s" in r:
            mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else None
            parts.append(f"{r['variant']} {r['images_per_s']:.0f} img/s" + (f" (MFU {mfu})" if mfu else ""))
            if "fed_images_per_s" in r:
                parts.append(f"{r['variant']} fed by {r['fed_by']} {r['fed_images_per_s']:.0f} img/s")
            elif "fed_error" in r:
                problems.append(f"{r['variant']}: {r['fed_error']}")
            if r.get("device") == "cuda" and "mfu" in r and r["mfu"] < SLOW_MFU:
                slow.append(f"{r['variant']} at {mfu} of peak")
        elif "compile" in r["variant"]:
            no_time = "budget" in note or "did not finish" in note
            parts.append(f"{r['variant']} not measured (no time left)" if no_time else
                         f"compile unavailable: {note[:160]}")
        else:
            problems.append(f"{r['variant']}: {note}")
    return problems, parts, slow


def vit_step(ctx: Context) -> tuple[list[dict], list[str], list[str]]:
    """(rows, problems, commands) of a ViT x 2 step: the dry run's tiny test ViT on the CPU, or ViT-S at 256x128,
    global batch 64, bf16 autocast; no rows where timm (the optional extra) is not installed."""
    if importlib.util.find_spec("timm") is None:
        return [], [], []
    stem = f"bench_train_vit_{ctx.tag}"
    cmd = _bench(ctx, "bench_train.py") + ["--out", ctx.results, "--stem", stem, "--data", ctx.data, "--runs-dir",
                                          str(Path(ctx.work) / "bench_train_vit"),
                                          "--budget-s", f"{max(10.0, ctx.left() - 15):.0f}"]
    if ctx.dry_run:
        cmd += ["--device", "cpu", "--backbone", "vit_tiny_test", "--size", "64", "32", "--batches", "16",
                "--variants", "fp32", "--steps", "2", "--warmup", "1"]
    else:
        cmd += ["--device", "cuda", "--backbone", "vit_small", "--size", "256", "128", "--batches", "64",
                "--variants", "bf16", "--steps", "10", "--warmup", "3"]
    finished = run(ctx, cmd, margin=5)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if report is None:
        return [], [f"ViT-S step: no results: {failed_because(finished)}"], [finished.command]
    rows = report["results"]
    problems, _, _ = judge_throughput(rows, None)
    return rows, [f"ViT-S step {p}" for p in problems], [finished.command]


def part_throughput(ctx: Context) -> dict:
    """Full CACL step of ResNet-50 x 2 at 256x128, global batch 64: fp32, bf16 + channels-last, + compile;
    then a ViT-S x 2 step (bf16) when timm is installed."""
    stem = f"bench_train_{ctx.tag}"
    compile_reason = compile_unavailable(ctx.device)
    cmd = _bench(ctx, "bench_train.py") + ["--out", ctx.results, "--stem", stem, "--data", ctx.data, "--runs-dir",
                                          str(Path(ctx.work) / "bench_train"),
                                          "--budget-s", f"{max(10.0, ctx.left() - 25):.0f}"]
    if ctx.dry_run:
        cmd += ["--device", "cpu", "--backbone", "resnet_tiny", "--size", "64", "32", "--batches", "16", "--variants",
                "fp32", "bf16+cl", "--steps", "2", "--warmup", "1", "--fed-by", "torch-gpu"]
    else:  # the bf16+cl case is also fed by the pipeline a run takes here: DALI when it runs, else torch-gpu
        variants = ["fp32", "bf16+cl"] + ([] if compile_reason else ["bf16+cl+compile"])
        cmd += ["--quick", "--device", "cuda", "--variants", *variants, "--fed-by", "auto"]
    finished = run(ctx, cmd, margin=10)
    report = _load(Path(ctx.results) / f"{stem}.json")
    if report is None:
        return result("fail", f"no results: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    rows = report["results"]
    problems, parts, slow = judge_throughput(rows, compile_reason)
    # on the GPU, bench_train.py --quick times the ViT-S x 2 step itself; the dry run's explicit grid does not
    vit_rows, vit_problems, vit_commands = vit_step(ctx) if ctx.dry_run else ([], [], [])
    problems += vit_problems
    parts += [f"{r['backbone']} x 2 {r['variant']} {r['images_per_s']:.0f} img/s" for r in rows + vit_rows
              if r.get("backbone", "").startswith("vit") and "images_per_s" in r]
    if importlib.util.find_spec("timm") is None:
        parts.append("ViT-S step not measured: timm is not installed (pip install cacl_dist[vit])")
    table = ["| backbone | variant | images/s | step ms | MFU | peak memory | fed by an input pipeline | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows + vit_rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        fed = (f"{r['fed_images_per_s']:.0f} img/s ({r['fed_by']})" if "fed_images_per_s" in r
               else r.get("fed_error", "-"))
        if "images_per_s" in r:
            memory = f"{r['max_memory_gib']:.1f} GiB" if "max_memory_gib" in r else "-"
            flag = "slow: under 20% of peak" if r.get("device") == "cuda" and r.get("mfu", 1.0) < SLOW_MFU else ""
            table.append(f"| {r['backbone']} | {r['variant']} | {r['images_per_s']:.0f} | {r['step_ms_median']:.1f} "
                         f"| {mfu} | {memory} | {fed} | {flag} |")
        else:
            table.append(f"| {r['backbone']} | {r['variant']} | - | - | - | - | - | {r.get('error', '')} |")
    if compile_reason:
        table.append(f"| - | bf16+cl+compile | - | - | - | - | - | compile unavailable: {compile_reason} |")
    if finished.returncode != 0:
        problems.append(f"bench_train.py: {failed_because(finished)}")
    case = rows[0] if rows else {}
    fed_by = {r["fed_by"] for r in rows if "fed_by" in r}
    details = [f"{case.get('backbone', '?')} x 2 at {case.get('height', '?')}x{case.get('width', '?')}, global batch "
               f"{case.get('batch', '?')} on {case.get('device', '?')}; full results: [{stem}.md]({stem}.md). MFU: "
               f"{_mfu_reference(report)}. Images/s: inputs already in memory; 'fed by': the same step fed by "
               f"{', '.join(sorted(fed_by)) or 'no'} input pipeline (real JPEGs, decoded and augmented as in training).",
               "", *table]
    summary = "; ".join(problems) if problems else ", ".join(parts)
    if slow and not problems:
        summary += f"; SLOW (MFU under {100 * SLOW_MFU:.0f}% of peak): {', '.join(slow)}"
    devices = {r.get("device") for r in rows if "images_per_s" in r}
    vit_files = [f"bench_train_vit_{ctx.tag}.{ext}" for ext in ("md", "json", "png")] if vit_rows else []
    return result("fail" if problems else "pass", summary, details,
                  {"results": rows, "vit_results": vit_rows, "slow": slow, "compile_unavailable": compile_reason,
                   "fed_by": ",".join(sorted(fed_by)) or None,
                   "ran_on": "cuda" if devices == {"cuda"} else ",".join(sorted(map(str, devices)))},
                  [finished.command, *vit_commands], [f"{stem}.{ext}" for ext in ("md", "json", "png")] + vit_files)


def _mfu_reference(report: dict) -> str:
    """What the MFU column divides by."""
    machine = report["machine"]
    if any(r["device"] == "cuda" for r in report["results"]):
        entry = machine.get("gpu_peak_entry")
        return (f"counted FLOPs/s over the datasheet dense peak of the {entry} (TF32 for fp32, bf16 for bf16)" if entry
                else "none: this GPU's peak is not listed in benchmarks/scaling_model.py")
    return f"counted FLOPs/s over this CPU's measured fp32 matmul rate ({machine['cpu_matmul_gflops']:.0f} GFLOP/s)"


#: Batches of the input pipeline's rate (256x128, both views): GPU, dry run.
PIPELINE_BATCHES = {"gpu": [64, 256], "dry": [8, 16]}


def pipeline_choice(dry_run: bool, dali_installed: bool) -> list[str]:
    """bench_data.py pipelines the part measures: torch-gpu always, DALI as well when it is installed."""
    if dry_run:
        return ["torch-gpu-cpu"] + (["dali-cpu"] if dali_installed else [])
    return ["torch-gpu-cuda"] + (["dali-gpu"] if dali_installed else [])


def part_pipeline(ctx: Context) -> dict:
    """Two-view samples/s of the GPU input pipelines at batch 64 and 256 (torch-gpu; DALI too when installed)."""
    dali_installed = importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None
    mode = "dry" if ctx.dry_run else "gpu"
    stem, pipelines = f"bench_data_{ctx.tag}", pipeline_choice(ctx.dry_run, dali_installed)
    sizes = ["--iters", "3", "--warmup", "1", "--cores", "2"] if ctx.dry_run else \
        ["--iters", "20", "--warmup", "3", "--cores", str(min(8, os.cpu_count() or 1))]
    cmd = _bench(ctx, "bench_data.py") + ["--root", ctx.data, "--pipelines", *pipelines, "--repeats", "1", *sizes,
                                         "--batch-size", *map(str, PIPELINE_BATCHES[mode]), "--out", ctx.results,
                                         "--stem", stem]
    finished = run(ctx, cmd, margin=5)
    report = _load(Path(ctx.results) / f"{stem}.json")
    rows = list((report or {}).get("results", {}).values())
    measured = {(r["pipeline"], r["batch_size"]) for r in rows}
    missing = [f"{p} b{b}" for p in pipelines for b in PIPELINE_BATCHES[mode] if (p, b) not in measured]
    if finished.returncode != 0 or report is None or missing:
        return result("fail", f"bench_data.py: {failed_because(finished)}" + (f"; not measured: {', '.join(missing)}"
                                                                               if missing else ""),
                      [f"```\n{finished.tail()}\n```"], commands=[finished.command])
    height, width = report["meta"]["size"]
    details = [f"Two-view samples/s at {height}x{width} (RGB view + gray view, flip, pad + crop, erasing), DataLoader "
               f"workers / DALI threads: {report['meta']['cores']}; full results: [{stem}.md]({stem}.md).", "",
               "| pipeline | batch | samples/s | pixels vs torchvision (uint8 levels: max / 99.9% / mean) |",
               "|---|---|---|---|"]
    for r in rows:
        px = r.get("pixel_diff_levels")
        px = f"{px['max']:.0f} / {px['p999']:.0f} / {px['mean']:.3f}" if px else "-"
        details.append(f"| {r['pipeline']} | {r['batch_size']} | {r['median']:.0f} | {px} |")
    if not dali_installed:
        details += ["", "NVIDIA DALI is not installed: training here uses torch-gpu (data.pipeline auto)."]
    summary = ", ".join(f"{r['pipeline']} b{r['batch_size']} {r['median']:.0f} samples/s" for r in rows)
    ran_on = "cuda" if all(p.endswith(("-cuda", "-gpu")) for p in pipelines) else "cpu"
    return result("pass", summary, details, {"samples_per_s": {f"{r['pipeline']} b{r['batch_size']}": r["median"]
                                                               for r in rows}, "ran_on": ran_on,
                                             "pixel_diff_levels": {r["pipeline"]: r["pixel_diff_levels"] for r in rows
                                                                   if "pixel_diff_levels" in r}},
                  [finished.command], [f"{stem}.{ext}" for ext in ("md", "json", "png")])

"""Markdown and plot of bench_train.py's results (kept apart from the measuring code)."""

from __future__ import annotations

from pathlib import Path


def fmt(value, spec=".1f", missing="-") -> str:
    return missing if value is None else format(value, spec)


def markdown(report: dict) -> str:
    m = report["machine"]
    devices = {r["device"] for r in report["results"]}
    lines = ["# Training-step throughput of the full CACL step", "",
             f"Date {report['date']}, commit {report['commit']}, torch {m['torch']}, Python {m['python']}.",
             f"Hardware: {m['cpu']}; GPU: {m['gpu'] or 'none (no GPU was available: GPU rows not measured)'}.",
             f"Load average {fmt(m['load_before'], '.1f')} before, {fmt(m['load_after'], '.1f')} after (other "
             "jobs on the machine make CPU numbers lower bounds and noisy).",
             f"Bank size and input-pipeline JPEGs from: {report.get('data', 'market1501-mini')}."]
    if "cpu" in devices:
        lines.append(f"CPU MFU reference: best large fp32 matmul on {report['threads']} threads = "
                     f"{m['cpu_matmul_gflops']:.1f} GFLOP/s (bf16 matmul {m['cpu_matmul_bf16_gflops']:.1f} GFLOP/s; "
                     "where it is far below fp32 the CPU has no bf16 units and bf16 autocast is emulated).")
    if "cuda" in devices:
        entry = m.get("gpu_peak_entry")
        lines.append(f"GPU MFU reference: the datasheet dense peak of the {entry} (TF32 for fp32 rows, bf16 for bf16 "
                     "rows)." if entry else "GPU MFU: this GPU's peak is not listed in scaling_model.GPU_PEAK_TFLOPS, "
                     "so no MFU is given.")
    lines += ["", f"Command: `{report['command']}`", "",
             "## Full step (both branches, losses, backward, Adam, bank + centre update)", "",
             "| device | backbone | input | batch | variant | images/s | step ms | GFLOP/img | MFU | note |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    flops = report["flops_per_image"]
    for r in report["results"]:
        key = f"{r['device']}/{r['backbone']}/{r['height']}x{r['width']}/{r['batch']}"
        gf = flops.get(key)
        lines.append(f"| {r['device']} | {r['backbone']} | {r['height']}x{r['width']} | {r['batch']} | {r['variant']} | "
                     f"{fmt(r.get('images_per_s'))} | {fmt(r.get('step_ms_median'), '.0f')} | {fmt(gf, '.2f')} | "
                     f"{fmt(100 * r['mfu'] if 'mfu' in r else None, '.1f')}{'%' if 'mfu' in r else ''} | "
                     f"{r.get('error', '')} |")
    fed = [r for r in report["results"] if "fed_images_per_s" in r or "fed_error" in r]
    if fed:
        lines += ["", "The same step fed by an input pipeline (real JPEGs of the dataset decoded and augmented as a "
                  "training run does, instead of tensors in memory):", ""]
        for r in fed:
            what = (f"**{r['fed_images_per_s']:.0f} images/s** fed by the {r['fed_by']} pipeline "
                    f"({r['fed_workers']} workers/threads)" if "fed_images_per_s" in r else r["fed_error"])
            lines.append(f"- {r['device']} {r['backbone']} b{r['batch']} {r['variant']}: {what}; "
                         f"{fmt(r.get('images_per_s'), '.0f')} images/s from memory")
    lines += ["", "## Where a step's time goes (ms, phases synchronised one by one)", "",
              "| device | backbone | batch | variant | forward | losses | backward | gather + bank | optimiser |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        bd = r.get("breakdown_ms")
        if bd:
            lines.append(f"| {r['device']} | {r['backbone']} | {r['batch']} | {r['variant']} | {bd['forward']:.0f} | "
                         f"{bd['losses']:.1f} | {bd['backward']:.0f} | {bd['gather+bank']:.1f} | {bd['optimizer']:.1f} |")
    data = report.get("data_pipeline")
    if data:
        lines += ["", f"Input pipeline (torchvision, decode + two augmented views of the dataset's JPEGs at "
                  f"{data['height']}x{data['width']}, one core): **{data['images_per_s_per_core']:.0f} images/s "
                  f"per core**; feeding 3,500 images/s takes about {3500 / data['images_per_s_per_core']:.0f} "
                  "such cores (or the DALI pipeline on the GPU)."]
    lines += estimate_markdown(report.get("estimates", {}))
    return "\n".join(lines) + "\n"


def estimate_markdown(est: dict) -> list[str]:
    if not est:
        return []
    cb = est["comm_bytes_global_batch_64"]
    lines = ["", "## Estimates (modelled, not measured)", "",
             f"ResNet-50 x 2 + predictor: {est['num_params'] / 1e6:.1f} M parameters, D = {est['dim']}, "
             f"{est['flops_per_image'] / 1e9:.1f} GFLOP per image for the full step (counted).", "",
             f"Bytes per step at global batch 64: gradient all-reduce {cb['grad_allreduce'] / 2**20:.0f} MiB "
             f"(fp32 gradients), feature gather {cb['feature_gather'] / 2**20:.1f} MiB, bank-delta all-reduce "
             f"{cb['delta_allreduce'] / 2**20:.1f} MiB (float64): the bank traffic is "
             f"{100 * (cb['feature_gather'] + cb['delta_allreduce']) / cb['grad_allreduce']:.1f}% of the gradients'.",
             "", f"One-GPU rate used: {est['one_gpu_images_per_s']:.0f} images/s ({est['one_gpu_rate_source']}). "
             f"Links: NVLink {est['links_GBps']['nvlink_h100_sxm']:.0f} GB/s per direction inside a node "
             f"(H100 SXM), 400 Gb/s InfiniBand ({est['links_GBps']['ib_ndr_400g']:.0f} GB/s) per GPU between nodes, "
             "80% of link bandwidth achieved, gradient all-reduce hidden behind up to 80% of backward.", ""]
    if not est.get("one_gpu_rate_measured"):
        lines += ["Where the assumed rate comes from: MLPerf-class ResNet-50 training on an H100 runs at roughly "
                  "6-7 thousand 224x224 images/s (about 24.6 GFLOP per image forward + backward), i.e. about 170 "
                  "TFLOP/s or 17% of the bf16 dense peak. Dividing by the counted CACL FLOPs per image gives the "
                  "rate above; the real step (two backbones, last stride 1, a memory-bank update) may run below it.",
                  ""]
    lines += ["The per-image compute rate is assumed to hold at every per-GPU batch, which is optimistic for "
              "8 or fewer images per GPU.", ""]
    for name, rows in est["scaling"].items():
        lines += [f"Estimate, {name}:", "",
                  "| GPUs | nodes | per GPU | global batch | grad all-reduce ms | gather ms | delta ms | exposed comm ms | "
                  "images/s | efficiency |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['gpus']} | {r['nodes']} | {r['per_gpu_batch']} | {r['global_batch']} | {r['grad_allreduce_ms']:.2f} | "
                         f"{r['gather_ms']:.3f} | {r['delta_ms']:.3f} | {r['exposed_comm_ms']:.2f} | "
                         f"{r['images_per_s']:.0f} | {100 * r['efficiency']:.0f}% |")
        lines.append("")
    sm = est["schedule_measured"]
    lines += ["## End-to-end Market-1501 schedule (80 epochs x 400 iterations x 64 images)", "",
              f"Method: total = {sm['trained_images']:,} trained images / step images/s + 80 x clustering time "
              f"+ ({sm['evaluations']} evaluations x 19,281 query/gallery images + 2 x 12,936 bank-initialisation "
              "images) / extraction images/s. Clustering runs on the bank (no re-extraction per epoch).", "",
              (f"Training time alone at the measured one-GPU rate: {fmt(sm['train_s'] / 60, '.1f')} min "
               "(clustering and extraction rates are not measured here, so no total). "
               if est.get("one_gpu_rate_measured") else
               "On one GPU: **not measured** (no GPU was available). ") +
              "Training time alone at assumed step rates:", "",
              "| step images/s | training minutes |", "|---|---|"]
    for rate, sched in est["schedule_if"].items():
        lines.append(f"| {rate} | {sched['train_s'] / 60:.1f} |")
    lines += ["", "So the 20-minute goal holds when the step reaches R images/s and the 80 clusterings plus "
              f"{sm['evaluations']} evaluations fit into the rest: at 3,500 images/s that leaves 10.2 minutes "
              "(about 7 s per epoch for clustering and the share of evaluation); at 2,000 images/s only 2.9 "
              "minutes (about 2 s per epoch). Per-epoch clustering time on a GPU is not measured here."]
    return lines


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ok = [r for r in report["results"] if "images_per_s" in r]
    labels = [f"{r['device']} {r['backbone']}\nb{r['batch']} {r['variant']}" for r in ok]
    axes[0].barh(range(len(ok)), [r["images_per_s"] for r in ok], color="tab:blue")
    axes[0].set_yticks(range(len(ok)), labels, fontsize=7)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("images/s (full CACL step, log scale)")
    axes[0].set_title("throughput (shared machine)")
    with_bd = [r for r in ok if r.get("breakdown_ms")]
    left = [0.0] * len(with_bd)
    for phase, colour in zip(("forward", "losses", "backward", "gather+bank", "optimizer"),
                             ("tab:blue", "tab:purple", "tab:orange", "tab:green", "tab:gray")):
        values = [100 * r["breakdown_ms"][phase] / sum(r["breakdown_ms"].values()) for r in with_bd]
        axes[1].barh(range(len(with_bd)), values, left=left, color=colour, label=phase)
        left = [a + b for a, b in zip(left, values)]
    axes[1].set_yticks(range(len(with_bd)), [f"{r['backbone']} b{r['batch']} {r['variant']}" for r in with_bd],
                       fontsize=7)
    axes[1].set_xlabel("% of step time")
    axes[1].legend(fontsize=7, loc="lower right")
    axes[1].set_title("step breakdown")
    est = report.get("estimates", {})
    for name, rows in est.get("scaling", {}).items():
        axes[2].plot([r["gpus"] for r in rows], [r["images_per_s"] for r in rows], marker="o",
                     label=name.split(" (")[0])
    if est:
        gpus = [r["gpus"] for r in next(iter(est["scaling"].values()))]
        axes[2].plot(gpus, [est["one_gpu_images_per_s"] * g for g in gpus], "k--", lw=0.8, label="linear")
        axes[2].set_xscale("log", base=2)
        axes[2].set_yscale("log")
        axes[2].legend(fontsize=7)
    axes[2].set_xlabel("GPUs (8 per node)")
    axes[2].set_ylabel("images/s")
    axes[2].set_title("ResNet-50 x 2 scaling ESTIMATE (modelled)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True

"""Analytic models used by bench_train.py: communication per step, multi-GPU scaling, schedule time.

Everything here is an estimate from counted bytes, counted FLOPs and stated bandwidths (plus, in
`estimates`, the one-GPU step rate when bench_train measured one). The assumptions are spelled
out next to each number.
"""

from __future__ import annotations

#: Dense peak TFLOP/s from the datasheets (no sparsity), per GPU.
GPU_PEAK_TFLOPS = {
    "H100 SXM": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5},
    "H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}


def gpu_peak_key(device_name: str | None) -> str | None:
    """The GPU_PEAK_TFLOPS entry of a CUDA device name, or None when its peak is not listed.

    torch reports e.g. 'NVIDIA H100 80GB HBM3' (SXM), 'NVIDIA H100 PCIe', 'NVIDIA H200',
    'NVIDIA A100-SXM4-80GB'; the H100 NVL and other parts have other peaks and are not listed.
    """
    if not device_name:
        return None
    name = device_name.upper()
    if "H100" in name:
        if "PCIE" in name:
            return "H100 PCIe"
        return "H100 SXM" if ("SXM" in name or "HBM3" in name) else None
    if "H200" in name:
        return "H200"
    if "A100" in name:
        return "A100"
    return None

#: Link bandwidths used by the scaling model, GB/s per GPU per direction (stated assumptions).
LINKS = {
    "nvlink_h100_sxm": 450.0,   # NVLink 4: 900 GB/s bidirectional per GPU
    "ib_ndr_400g": 50.0,        # one 400 Gb/s InfiniBand NIC per GPU
}
#: Achieved fraction of the link bandwidth by NCCL rings (bus bandwidth / link bandwidth).
LINK_EFFICIENCY = 0.8
#: Per-collective latency (s) within a node and across nodes.
LATENCY_S = {"nvlink": 10e-6, "ib": 25e-6}


def comm_bytes(num_params: int, global_batch: int, dim: int, grad_bytes: int = 4) -> dict[str, int]:
    """Bytes each step moves through collectives (payload sizes, before the ring factors).

    grad_allreduce: DDP's gradient all-reduce (fp32 gradients of both branches and the predictor,
    also under autocast: the parameters stay fp32); feature_gather: the gathered global batch of
    [x | x~] (float32); delta_allreduce: the float64 bank-row deltas of the global batch, both banks.
    """
    return {
        "grad_allreduce": num_params * grad_bytes,
        "feature_gather": global_batch * 2 * dim * 4,
        "delta_allreduce": global_batch * 2 * dim * 8,
    }


def _ring_time(nbytes: float, ranks: int, bandwidth_gbs: float, latency_s: float, allreduce: bool) -> float:
    """Ring collective time: all-reduce moves 2 (n-1)/n of the payload per rank, all-gather (n-1)/n."""
    if ranks <= 1:
        return 0.0
    factor = 2.0 if allreduce else 1.0
    steps = factor * (ranks - 1)
    return factor * (ranks - 1) / ranks * nbytes / (bandwidth_gbs * 1e9 * LINK_EFFICIENCY) + steps * latency_s


def collective_time(nbytes: float, gpus: int, gpus_per_node: int = 8, allreduce: bool = True) -> float:
    """Hierarchical estimate: NVLink inside a node, then one ring per GPU rail across nodes."""
    nodes = max(1, gpus // gpus_per_node)
    inside = min(gpus, gpus_per_node)
    t = _ring_time(nbytes, inside, LINKS["nvlink_h100_sxm"], LATENCY_S["nvlink"], allreduce)
    if nodes > 1:  # each GPU's rail carries 1/inside of the payload between nodes
        t += _ring_time(nbytes / inside, nodes, LINKS["ib_ndr_400g"], LATENCY_S["ib"], allreduce)
    return t


def scaling_estimate(compute_s_per_image: float, backward_fraction: float, num_params: int, dim: int, *,
                     per_gpu_batch: int | None = None, global_batch: int | None = None,
                     gpu_counts=(1, 2, 4, 8, 16, 32, 64), overlap: float = 0.8) -> list[dict]:
    """Step time = compute + exposed communication, for a fixed per-GPU batch (weak scaling) or a
    fixed global batch split over the GPUs (strong scaling; counts that do not divide it are skipped).

    The gradient all-reduce and the feature gather overlap with backward up to ``overlap`` of the
    backward time (DDP buckets; the last 25 MiB bucket is never hidden); the bank-delta all-reduce
    is exposed. ``compute_s_per_image`` is the one-GPU step time per image, assumed to hold at
    every per-GPU batch (optimistic for small per-GPU batches, where a GPU is under-used).
    """
    assert (per_gpu_batch is None) != (global_batch is None)
    rows = []
    for gpus in gpu_counts:
        local = per_gpu_batch if per_gpu_batch is not None else global_batch // gpus
        if local < 1 or (global_batch is not None and global_batch % gpus):
            continue
        compute = compute_s_per_image * local
        backward = compute * backward_fraction
        sizes = comm_bytes(num_params, local * gpus, dim)
        t_grad = collective_time(sizes["grad_allreduce"], gpus)
        t_gather = collective_time(sizes["feature_gather"], gpus, allreduce=False)
        t_delta = collective_time(sizes["delta_allreduce"], gpus)
        last_bucket = collective_time(min(25 * 2**20, sizes["grad_allreduce"]), gpus)
        hidden = min(t_grad + t_gather, overlap * backward)
        exposed = max(t_grad + t_gather - hidden, last_bucket if gpus > 1 else 0.0) + t_delta
        step = compute + exposed
        rows.append({"gpus": gpus, "nodes": max(1, gpus // 8), "per_gpu_batch": local, "global_batch": local * gpus,
                     "grad_allreduce_ms": 1e3 * t_grad, "gather_ms": 1e3 * t_gather, "delta_ms": 1e3 * t_delta,
                     "exposed_comm_ms": 1e3 * exposed, "step_ms": 1e3 * step,
                     "images_per_s": local * gpus / step, "efficiency": compute / step})
    return rows


def schedule_method(images_per_s: float | None, epochs: int = 80, iters: int = 400, batch: int = 64,
                    clustering_s: float | None = None, num_eval_images: int = 19_281, eval_every: int = 5,
                    extract_images_per_s: float | None = None, num_train: int = 12_936) -> dict:
    """End-to-end time of a schedule: training steps + per-epoch clustering + evaluations + bank init.

    Unknown inputs (None) leave the total as None ("not measured").
    """
    images = epochs * iters * batch
    train_s = None if images_per_s is None else images / images_per_s
    cluster_total = None if clustering_s is None else epochs * clustering_s
    evals = epochs // eval_every + 1  # + the evaluation before epoch 1
    extract_s = None if extract_images_per_s is None else \
        (evals * num_eval_images + 2 * num_train) / extract_images_per_s
    parts = (train_s, cluster_total, extract_s)
    total = None if any(p is None for p in parts) else sum(parts)
    return {"trained_images": images, "train_s": train_s, "clustering_s": cluster_total,
            "extraction_s": extract_s, "total_s": total, "evaluations": evals}


#: Sustained bf16 FLOP/s assumed for one GPU when none was measured: MLPerf-class ResNet-50
#: training on one H100 (about 6-7 thousand 224x224 images/s at ~24.6 GFLOP per image).
ASSUMED_GPU_TFLOPS = 170.0


def estimates(results: list[dict]) -> dict:
    """Communication bytes, scaling and schedule estimates for ResNet-50 x 2 from bench_train results.

    Uses the fastest measured GPU case as the one-GPU rate, or ASSUMED_GPU_TFLOPS over the counted
    FLOPs per image when no GPU case ran; {} when no ResNet-50 case gave a FLOP count.
    """
    r50 = next((r for r in results if r["backbone"] == "resnet50" and "flops_per_step" in r), None)
    if r50 is None:
        return {}
    num_params, dim = r50["num_params"], r50["dim"]
    flops_per_image = r50["flops_per_step"] / r50["batch"]
    gpu = [r for r in results if r["device"] == "cuda" and r["backbone"] == "resnet50" and "images_per_s" in r]
    best_gpu = max(gpu, key=lambda r: r["images_per_s"]) if gpu else None
    rate = best_gpu["images_per_s"] if best_gpu else ASSUMED_GPU_TFLOPS * 1e12 / flops_per_image
    breakdown = (best_gpu or r50).get("breakdown_ms") or {}
    bwd_fraction = breakdown["backward"] / max(sum(breakdown.values()), 1e-9) if breakdown else 0.6
    scaling = {
        "paper global batch 64 split over the GPUs (strong scaling)":
            scaling_estimate(1.0 / rate, bwd_fraction, num_params, dim, global_batch=64),
        "64 images per GPU (weak scaling, global batch and lr grow)":
            scaling_estimate(1.0 / rate, bwd_fraction, num_params, dim, per_gpu_batch=64),
    }
    source = (f"measured: {best_gpu['variant']} at batch {best_gpu['batch']}" if best_gpu else
              f"assumed: {ASSUMED_GPU_TFLOPS:.0f} TFLOP/s sustained (MLPerf-class ResNet-50 on one H100) / "
              "counted FLOPs")
    return {
        "num_params": num_params, "dim": dim, "flops_per_image": flops_per_image,
        "comm_bytes_global_batch_64": comm_bytes(num_params, 64, dim),
        "one_gpu_images_per_s": rate, "one_gpu_rate_measured": best_gpu is not None,
        "one_gpu_rate_source": source, "backward_fraction": bwd_fraction, "scaling": scaling, "links_GBps": LINKS,
        "schedule_measured": schedule_method(best_gpu["images_per_s"] if best_gpu else None),
        "schedule_if": {str(r): schedule_method(r) for r in (2000, 3500, 5000)},
    }

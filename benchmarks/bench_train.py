"""Training-step throughput: images/s and model FLOP utilisation of the full CACL step.

The step measured is the trainer's own ``Trainer.train_step``: both branches forward (RGB and
grayscale views), the four losses, backward, the Adam step, the gather of (x, x~) and the
update of both memory banks and the running centres. Inputs are random tensors already in
memory (the input pipeline is measured on its own, on real JPEGs); the banks have the size of
the market1501-mini training split, labels are random over a Market-like number of clusters.

Per device, backbone/resolution and batch, for fp32 / bf16 / bf16 + channels-last / + compile:
  images/s    images (each with both views) per second of the full step
  MFU         counted FLOPs of the step (torch.utils.flop_counter: convolutions and matmuls, forward
              and backward) per second over the device's peak: the datasheet dense peak on a GPU,
              a measured large-matmul rate of this machine on a CPU (stated in the results)
  breakdown   forward / losses / backward / gather + bank update / optimiser, timed phase by phase
              with a synchronisation between phases (so their sum exceeds the overlapped step)
Then estimates (no GPU needed): bytes per step, 1 -> 8 GPUs and multi-node scaling from stated
bandwidths (benchmarks/scaling_model.py), and the end-to-end Market-1501 schedule method.

    python3 benchmarks/bench_train.py            # the CPU set here; with CUDA also the GPU set
    python3 benchmarks/bench_train.py --quick    # fewer steps and cases (smoke run)

Every case runs in its own subprocess (a fresh process per precision/compile setting, with a
time limit). Writes benchmarks/results/bench_train.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

from bench_train_report import fmt, markdown, plot  # noqa: E402
from machine import cpu_description, gpu_description  # noqa: E402
from scaling_model import GPU_PEAK_TFLOPS, LINKS, comm_bytes, scaling_estimate, schedule_method  # noqa: E402

MARKET_MINI = REPO.parent / "shared" / "data" / "market1501-mini"
VARIANTS = {  # name -> (train.precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+compile": ("bf16", True, True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--runs-dir", default="benchmarks/.runs/bench_train")
    p.add_argument("--quick", action="store_true", help="fewer steps and cases")
    p.add_argument("--case-timeout", type=float, default=900.0, help="seconds allowed per case")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per case")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown and plot from the JSON")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON) and print JSON
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- one case
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_trainer(case: dict, runs_dir: Path):
    """A real Trainer on market1501-mini (or synthetic data) with random banks, labels and centres."""
    from cacl_dist.config import load_config
    from cacl_dist.distributed.env import DistEnv
    from cacl_dist.trainer import Trainer

    precision, channels_last, compile_ = VARIANTS[case["variant"]]
    data = (["data.dataset=market1501", f"data.root={MARKET_MINI}"] if MARKET_MINI.is_dir()
            else ["data.dataset=synthetic", f"data.root={runs_dir / 'synthetic'}"])
    overrides = data + [
        f"run.output_dir={runs_dir / 'run'}", "run.progress=false", f"model.backbone={case['backbone']}",
        "model.pretrained=none", f"data.height={case['height']}", f"data.width={case['width']}",
        f"train.batch_size={case['batch']}", f"train.precision={precision}", "eval.precision=fp32",
        f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile_).lower()}",
        "clustering.k1=4", f"run.device={case['device']}"]
    device = torch.device(case["device"])
    trainer = Trainer(load_config(None, overrides), DistEnv(0, 1, 0, device, None))
    num, dim = len(trainer.dataset.train), trainer.model.dim
    gen = torch.Generator().manual_seed(0)
    trainer.bank_rgb.load(torch.randn(num, dim, generator=gen).to(device))
    trainer.bank_gray.load(torch.randn(num, dim, generator=gen).to(device))
    num_clusters = max(1, num // 8)  # Market-1501 runs settle near 8 images per pseudo identity
    trainer.set_pseudo_labels(torch.randperm(num, generator=gen) % num_clusters)
    return trainer


def step_inputs(case: dict, num_train: int, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    shape = (case["batch"], 3, case["height"], case["width"])
    rgb, gray = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    if device.type == "cuda":
        rgb, gray = rgb.pin_memory(), gray.pin_memory()
    indices = torch.randperm(num_train, generator=gen)[: case["batch"]].to(device)
    return rgb, gray, indices, slice(0, case["batch"])


def phase_breakdown(trainer, rgb, gray, indices, mine, steps: int) -> dict:
    """Milliseconds per phase of ``Trainer.train_step``, synchronised after each phase."""
    device = trainer.env.device
    totals = {k: 0.0 for k in ("forward", "losses", "backward", "gather+bank", "optimizer")}
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()

        def lap(name):
            nonlocal t
            _sync(device)
            now = time.perf_counter()
            totals[name] += now - t
            t = now

        trainer.train_step(rgb, gray, indices, mine, 1, phase_done=lap)
    return {k: 1e3 * v / steps for k, v in totals.items()}


def run_case(case: dict, runs_dir: Path) -> dict:
    """Measure one (device, backbone, size, batch, variant) case in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    logging.disable(logging.INFO)
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    trainer = build_trainer(case, runs_dir)
    rgb, gray, indices, mine = step_inputs(case, len(trainer.dataset.train), device)
    out = dict(case)
    if not VARIANTS[case["variant"]][2]:  # FLOPs of the eager step (the compiled one does the same maths)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(rgb, gray, indices, mine, 1)
        out["flops_per_step"] = int(counter.get_total_flops())
    t0 = time.perf_counter()
    for _ in range(case["warmup"]):
        trainer.train_step(rgb, gray, indices, mine, 1)
    _sync(device)
    out["warmup_s"] = time.perf_counter() - t0
    times = []
    for _ in range(case["steps"]):
        t = time.perf_counter()
        trainer.train_step(rgb, gray, indices, mine, 1)
        _sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    out["step_ms_median"] = 1e3 * times[len(times) // 2]
    out["step_ms_min"] = 1e3 * times[0]
    out["images_per_s"] = case["batch"] / times[len(times) // 2]
    if not VARIANTS[case["variant"]][2]:
        out["breakdown_ms"] = phase_breakdown(trainer, rgb, gray, indices, mine, max(1, case["steps"] // 2))
    out["num_params"] = sum(p.numel() for p in trainer.model.parameters())
    out["dim"] = trainer.model.dim
    out["bank_rows"] = len(trainer.dataset.train)
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def run_case_subprocess(case: dict, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(case), "--runs-dir",
           str(Path(args.runs_dir) / f"{case['device']}_{case['backbone']}_{case['batch']}_{case['variant']}")]
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.case_timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"did not finish within {args.case_timeout:.0f} s"}
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- machine
def cpu_matmul_gflops(threads: int, dtype=torch.float32, size: int = 1536, repeats: int = 5) -> float:
    """Best-of rate of a large matmul with `threads` threads: the CPU 'peak' used for MFU here."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def data_pipeline_rate(height: int, width: int, batches: int = 6, batch: int = 32) -> dict | None:
    """Decode + two-view augmentation on real JPEGs in the main process (one core): images/s."""
    if not MARKET_MINI.is_dir():
        return None
    import numpy as np

    from cacl_dist.data.epoch_plan import plan_epoch
    from cacl_dist.data.layouts import load_dataset
    from cacl_dist.data.pipelines import get_pipeline
    from cacl_dist.data.transforms import AugmentParams

    torch.set_num_threads(1)
    ds = load_dataset("market1501", str(MARKET_MINI))
    labels = np.array([r.pid for r in ds.train])
    _, labels = np.unique(labels, return_inverse=True)
    plan = plan_epoch(labels, None, epoch=0, num_iters=batches + 1, batch_size=batch, num_instances=4, seed=0,
                      num_clusters=int(labels.max()) + 1)
    loader = get_pipeline("torchvision").train_loader(ds.train, AugmentParams(height=height, width=width), plan)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    return {"images_per_s_per_core": rate, "height": height, "width": width, "views_per_image": 2}


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------------------- plan
def cases(quick: bool, threads: int) -> list[dict]:
    steps, warmup = (2, 1) if quick else (4, 1)
    out = []
    tiny_batches = (64,) if quick else (64, 128)
    tiny_variants = list(VARIANTS) if not quick else ["fp32", "bf16"]
    for batch in tiny_batches:
        for variant in tiny_variants:
            if variant.endswith("compile") and batch != 64:
                continue
            out.append(dict(device="cpu", backbone="resnet_tiny", height=128, width=64, batch=batch,
                            variant=variant, steps=steps, warmup=warmup + (1 if "compile" in variant else 0),
                            threads=threads))
    for variant in ("fp32",) if quick else ("fp32", "bf16+cl"):
        out.append(dict(device="cpu", backbone="resnet50", height=256, width=128, batch=8, variant=variant,
                        steps=2, warmup=1, threads=threads))
    if torch.cuda.is_available():
        for batch in (64, 128, 256):
            for variant in VARIANTS:
                out.append(dict(device="cuda", backbone="resnet50", height=256, width=128, batch=batch,
                                variant=variant, steps=20, warmup=5 if "compile" not in variant else 10,
                                threads=threads))
    return out



# ----------------------------------------------------------------------------------------- report
def add_mfu(result: dict, flops: dict, cpu_peak_gflops: float, gpu_name: str | None) -> None:
    """MFU = counted step FLOPs x steps/s over the peak (GPU datasheet or the CPU matmul rate)."""
    key = (result["device"], result["backbone"], result["height"], result["width"], result["batch"])
    if "error" in result or key not in flops:
        return
    achieved = flops[key] * result["images_per_s"] / result["batch"] / 1e9
    result["achieved_gflops"] = achieved
    if result["device"] == "cpu":
        result["mfu"] = achieved / cpu_peak_gflops
    elif gpu_name in GPU_PEAK_TFLOPS:
        precision = VARIANTS[result["variant"]][0]
        peak = GPU_PEAK_TFLOPS[gpu_name]["tf32" if precision == "fp32" else precision]
        result["mfu"] = achieved / (peak * 1e3)


def gpu_name() -> str | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for known in GPU_PEAK_TFLOPS:
        if all(part in name for part in known.split()):
            return known
    return name


def estimates(results: list[dict]) -> dict:
    """Communication bytes, scaling and schedule estimates for ResNet-50 x 2 at 256x128."""
    r50 = next((r for r in results if r["backbone"] == "resnet50" and "num_params" in r), None)
    if r50 is None:
        return {}
    num_params, dim = r50["num_params"], r50["dim"]
    flops_per_image = r50["flops_per_step"] / r50["batch"]
    gpu = [r for r in results if r["device"] == "cuda" and r["backbone"] == "resnet50" and "images_per_s" in r]
    best_gpu = max(gpu, key=lambda r: r["images_per_s"]) if gpu else None
    # Assumed one-GPU rate when none is measured: sustained bf16 FLOP/s of MLPerf-class ResNet-50 training.
    assumed_tflops = 170.0
    rate = best_gpu["images_per_s"] if best_gpu else assumed_tflops * 1e12 / flops_per_image
    bd = (best_gpu or r50).get("breakdown_ms", {})
    bwd_fraction = bd.get("backward", 2.0) / max(sum(bd.values()), 1e-9) if bd else 0.6
    scaling = {
        "paper global batch 64 split over the GPUs (strong scaling)":
            scaling_estimate(1.0 / rate, bwd_fraction, num_params, dim, global_batch=64),
        "64 images per GPU (weak scaling, global batch and lr grow)":
            scaling_estimate(1.0 / rate, bwd_fraction, num_params, dim, per_gpu_batch=64),
    }
    return {
        "num_params": num_params, "dim": dim, "flops_per_image": flops_per_image,
        "comm_bytes_global_batch_64": comm_bytes(num_params, 64, dim),
        "one_gpu_images_per_s": rate, "one_gpu_rate_source": "measured" if best_gpu else
        f"assumed: {assumed_tflops:.0f} TFLOP/s sustained (MLPerf-class ResNet-50 on one H100) / counted FLOPs",
        "backward_fraction": bwd_fraction, "scaling": scaling, "links_GBps": LINKS,
        "schedule_measured": schedule_method(best_gpu["images_per_s"] if best_gpu else None),
        "schedule_if": {str(r): schedule_method(r) for r in (2000, 3500, 5000)},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_case(json.loads(args.one), Path(args.runs_dir))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        report = json.loads((out / "bench_train.json").read_text())
        (out / "bench_train.md").write_text(markdown(report))
        plot(report, out / "bench_train.png")
        return 0
    load_before = load_average()
    machine = {"cpu": cpu_description(), "gpu": gpu_description(),
               "torch": torch.__version__, "python": platform.python_version(), "load_before": load_before,
               "cpu_matmul_gflops": cpu_matmul_gflops(args.threads),
               "cpu_matmul_bf16_gflops": cpu_matmul_gflops(args.threads, torch.bfloat16)}
    data = data_pipeline_rate(256, 128)
    results = []
    for case in cases(args.quick, args.threads):
        t = time.perf_counter()
        result = run_case_subprocess(case, args)
        results.append(result)
        print(f"{case['device']:4s} {case['backbone']:11s} {case['height']}x{case['width']} b{case['batch']:<4d} "
              f"{case['variant']:16s} {fmt(result.get('images_per_s'), '8.1f')} img/s  "
              f"{fmt(result.get('step_ms_median'), '8.0f')} ms/step  {result.get('error', '')}"
              f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    flops = {}
    for r in results:
        if "flops_per_step" in r:
            flops[(r["device"], r["backbone"], r["height"], r["width"], r["batch"])] = r["flops_per_step"]
    name = gpu_name()
    for r in results:
        add_mfu(r, flops, machine["cpu_matmul_gflops"], name)
    machine["load_after"] = load_average()
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
              "command": "python3 benchmarks/bench_train.py" + (" --quick" if args.quick else ""),
              "threads": args.threads, "machine": machine, "data_pipeline": data, "results": results,
              "flops_per_image": {f"{k[0]}/{k[1]}/{k[2]}x{k[3]}/{k[4]}": v / k[4] / 1e9 for k, v in flops.items()},
              "estimates": estimates(results)}
    (out / "bench_train.json").write_text(json.dumps(report, indent=1))
    (out / "bench_train.md").write_text(markdown(report))
    plotted = plot(report, out / "bench_train.png")
    print(markdown(report))
    print(f"wrote {out / 'bench_train.json'}, {out / 'bench_train.md'}" + (f", {out / 'bench_train.png'}" if plotted
                                                                            else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

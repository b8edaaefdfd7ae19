"""Training-step throughput: images/s and model FLOP utilisation of the full CACL step.

The step measured is the trainer's own ``Trainer.train_step``: both branches forward (RGB and
grayscale views), the four losses, backward, the Adam step, the gather of (x, x~) and the
update of both memory banks and the running centres. Inputs are random tensors already in
memory (the input pipeline is measured on its own, on real JPEGs); the banks have the size of
the training split of the dataset (`--data`, else a small synthetic set), labels are random over
a Market-like number of clusters.

Per device, backbone/resolution and batch, for fp32 / bf16 / bf16 + channels-last / + compile; the default
sets also time a ViT-S x2 step (both branches ViT-S/16 at 256 x 128; bf16 autocast on CUDA, fp32 on the
CPU) when timm is installed:
  images/s    images (each with both views) per second of the full step
  MFU         counted FLOPs of the step (torch.utils.flop_counter: convolutions and matmuls, forward
              and backward) per second over the device's peak: the datasheet dense peak on a GPU,
              a measured large-matmul rate of this machine on a CPU (stated in the results)
  breakdown   forward / losses / backward / gather + bank update / optimiser, timed phase by phase
              with a synchronisation between phases (so their sum exceeds the overlapped step)
Then estimates (no GPU needed): bytes per step, 1 -> 8 GPUs and multi-node scaling from stated
bandwidths (benchmarks/scaling_model.py), and the end-to-end Market-1501 schedule method.

    python3 benchmarks/bench_train.py --data /data/market1501-mini   # CPU set; with CUDA also the GPU set
    python3 benchmarks/bench_train.py --quick     # smoke run: ~3 min on one GPU (GPU cases only there)
    python3 benchmarks/bench_train.py --device cpu --backbone resnet_tiny --size 64 32 --batches 16 \\
        --variants fp32 bf16+cl --steps 2 --warmup 1                  # one explicit grid

Every case runs in its own subprocess (a fresh process per precision/compile setting, with a
time limit; `--budget-s` stops starting cases when the total time is spent). Writes
<out>/<stem>.{json,md,png} (default benchmarks/results/bench_train.*).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_train_report import fmt, markdown, plot
from fed_steps import data_pipeline_rate, fed_rate
from machine import cpu_description, cpu_matmul_gflops, git_commit, gpu_description, load_average
from scaling_model import GPU_PEAK_TFLOPS, estimates, gpu_peak_key

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {  # name -> (train.precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16", False, False),
    "bf16+cl": ("bf16", True, False),
    "bf16+cl+compile": ("bf16", True, True),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="Market-1501 layout folder (bank size, input-pipeline rate); default: a small "
                                  "synthetic set written under --runs-dir, and no input-pipeline rate")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--stem", default="bench_train", help="file name of the results, without extension")
    p.add_argument("--runs-dir", default="benchmarks/.runs/bench_train")
    p.add_argument("--quick", action="store_true", help="fewer steps and cases (with CUDA: the GPU cases only)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the CPU set, plus the GPU set when CUDA is present (only the GPU set with --quick)")
    p.add_argument("--backbone", help="measure one explicit grid of this backbone (with --size, --batches, ...)")
    p.add_argument("--size", type=int, nargs=2, default=[256, 128], metavar=("H", "W"), help="grid input size")
    p.add_argument("--batches", type=int, nargs="+", default=[64], help="grid global batches")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None, help="grid variants")
    p.add_argument("--steps", type=int, default=None, help="timed steps per grid case")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per grid case")
    p.add_argument("--case-timeout", type=float, default=900.0, help="seconds allowed per case")
    p.add_argument("--budget-s", type=float, default=None, help="start no case after this many seconds in total")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per case")
    p.add_argument("--fed-by", choices=["auto", "dali", "torch-gpu", "torchvision"],
                   help="also time each bf16+cl case fed by this input pipeline (real JPEGs; auto as data.pipeline)")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown and plot from the JSON")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case (JSON) and print JSON
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- one case
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def data_overrides(data: str | None, runs_dir: Path) -> list[str]:
    """Config overrides of the dataset: the Market-layout folder `data`, else the synthetic set in `runs_dir`."""
    if data:
        return ["data.dataset=market1501", f"data.root={data}"]
    return ["data.dataset=synthetic", f"data.root={runs_dir / 'synthetic'}"]


def build_trainer(case: dict, runs_dir: Path):
    """A real Trainer on the case's dataset with random banks, labels and centres."""
    from cacl_dist.config import load_config
    from cacl_dist.distributed.env import DistEnv
    from cacl_dist.training.trainer import Trainer

    precision, channels_last, compile_ = VARIANTS[case["variant"]]
    overrides = case["data_overrides"] + [
        f"run.output_dir={runs_dir / 'run'}", "run.progress=false", f"model.backbone={case['backbone']}",
        "model.pretrained=none", f"data.height={case['height']}", f"data.width={case['width']}",
        f"train.batch_size={case['batch']}", f"train.precision={precision}", "eval.precision=fp32",
        f"train.channels_last={str(channels_last).lower()}", f"train.compile={str(compile_).lower()}",
        "clustering.k1=4", "clustering.k2=4", f"run.device={case['device']}"]
    device = torch.device(case["device"])
    trainer = Trainer(load_config(None, overrides), DistEnv(0, 1, 0, device, None))
    num, dim = len(trainer.dataset.train), trainer.model.dim
    gen = torch.Generator().manual_seed(0)
    trainer.banks.rgb.load(torch.randn(num, dim, generator=gen).to(device))
    trainer.banks.gray.load(torch.randn(num, dim, generator=gen).to(device))
    num_clusters = max(1, num // 8)  # Market-1501 runs settle near 8 images per pseudo identity
    trainer.pseudo.assign(torch.randperm(num, generator=gen) % num_clusters, trainer.banks)
    return trainer


def step_inputs(case: dict, num_train: int, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    shape = (case["batch"], 3, case["height"], case["width"])
    rgb, gray = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    if device.type == "cuda":
        rgb, gray = rgb.pin_memory(), gray.pin_memory()
    if num_train >= case["batch"]:
        indices = torch.randperm(num_train, generator=gen)[: case["batch"]]
    else:  # a bank smaller than the batch (tiny smoke runs): rows repeat
        indices = torch.arange(case["batch"]) % num_train
    return rgb, gray, indices.to(device), slice(0, case["batch"])


def phase_breakdown(trainer, rgb, gray, indices, mine, steps: int) -> dict:
    """Milliseconds per phase of ``Trainer.train_step``, synchronised after each phase.

    The phases are timed from outside the package: for these steps the trainer's own collaborators
    (the grey branch, the optimiser's zero_grad, the precision's backward and step, the memory
    update) are wrapped, on this trainer object only, to mark where each phase ends.
    """
    device = trainer.env.device
    totals = {k: 0.0 for k in ("forward", "losses", "backward", "gather+bank", "optimizer")}
    t = 0.0

    def lap(name):
        nonlocal t
        _sync(device)
        now = time.perf_counter()
        totals[name] += now - t
        t = now

    def ends(phase, fn, before=False):
        def timed(*args, **kwargs):
            if before:  # the phase ended when this call begins
                lap(phase)
                return fn(*args, **kwargs)
            out = fn(*args, **kwargs)
            lap(phase)
            return out
        return timed

    optimizer = trainer.optimiser.optimizer
    marks = [(trainer, "branch_gray", "forward", False), (optimizer, "zero_grad", "losses", True),
             (trainer.precision, "backward", "backward", False), (trainer, "update_memory", "gather+bank", False),
             (trainer.precision, "step", "optimizer", False)]
    own = [(owner, name, vars(owner).get(name)) for owner, name, _, _ in marks]  # attributes set on the object
    for owner, name, phase, before in marks:
        setattr(owner, name, ends(phase, getattr(owner, name), before))
    try:
        for _ in range(steps):
            _sync(device)
            t = time.perf_counter()
            trainer.train_step(rgb, gray, indices, mine, 1)
    finally:
        for owner, name, value in own:
            if value is None:
                delattr(owner, name)  # back to the class's own method
            else:
                setattr(owner, name, value)  # e.g. the grey branch module
    return {k: 1e3 * v / steps for k, v in totals.items()}


def run_case(case: dict, runs_dir: Path) -> dict:
    """Measure one (device, backbone, size, batch, variant) case in this process."""
    from torch.utils.flop_counter import FlopCounterMode

    logging.disable(logging.INFO)
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    trainer = build_trainer(case, runs_dir)
    rgb, gray, indices, mine = step_inputs(case, len(trainer.dataset.train), device)
    rounds = int(torch.bincount(indices.cpu()).max())  # the most repeats of one bank row in the batch
    out = dict(case)
    if not VARIANTS[case["variant"]][2]:  # FLOPs of the eager step (the compiled one does the same maths)
        with FlopCounterMode(display=False) as counter:
            trainer.train_step(rgb, gray, indices, mine, rounds)
        out["flops_per_step"] = int(counter.get_total_flops())
    t0 = time.perf_counter()
    for _ in range(case["warmup"]):
        trainer.train_step(rgb, gray, indices, mine, rounds)
    _sync(device)
    out["warmup_s"] = time.perf_counter() - t0
    times = []
    for _ in range(case["steps"]):
        t = time.perf_counter()
        trainer.train_step(rgb, gray, indices, mine, rounds)
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
    if case.get("fed_by"):
        try:
            out.update(fed_rate(trainer, case))
        except Exception as exc:  # the in-memory figures above stay; the row says why the fed one is missing
            out["fed_error"] = f"fed by {case['fed_by']}: {type(exc).__name__}: {str(exc).strip()[:250]}"
    if device.type == "cuda":
        out["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def run_case_subprocess(case: dict, args, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(case), "--runs-dir",
           str(Path(args.runs_dir) / f"{case['device']}_{case['backbone']}_{case['batch']}_{case['variant']}")]
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]))
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"did not finish within {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**case, "error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------- inputs
def prepare_data(args) -> list[str]:
    """The dataset overrides every case uses; writes the synthetic set once when no --data is given."""
    if args.data:
        if not Path(args.data).is_dir():
            raise SystemExit(f"--data {args.data}: not a folder; give a Market-1501 layout folder or leave it out")
        return data_overrides(str(Path(args.data).resolve()), Path(args.runs_dir))
    from cacl_dist.data.synthetic import generate_synthetic

    generate_synthetic(str(Path(args.runs_dir).resolve() / "synthetic"))
    return data_overrides(None, Path(args.runs_dir).resolve())


# ----------------------------------------------------------------------------------------- plan
def _case(device, backbone, height, width, batch, variant, steps, warmup, threads) -> dict:
    return dict(device=device, backbone=backbone, height=height, width=width, batch=batch, variant=variant,
                steps=steps, warmup=warmup, threads=threads)


def cases(args, cuda: bool) -> list[dict]:
    """The cases to measure: an explicit grid (--backbone), or the default CPU and GPU sets."""
    device = args.device if args.device != "auto" else ("cuda" if cuda else "cpu")
    if args.backbone:
        steps, warmup = args.steps or (4 if args.quick else 10), args.warmup or (1 if args.quick else 3)
        return [_case(device, args.backbone, *args.size, batch, variant, steps, warmup, args.threads)
                for batch in args.batches for variant in (args.variants or list(VARIANTS))]
    out = []
    if args.device in ("auto", "cpu") and not (args.quick and cuda and args.device == "auto"):
        steps, warmup = (2, 1) if args.quick else (4, 1)
        for batch in (64,) if args.quick else (64, 128):
            for variant in (["fp32", "bf16"] if args.quick else list(VARIANTS)):
                if variant.endswith("compile") and batch != 64:
                    continue
                out.append(_case("cpu", "resnet_tiny", 128, 64, batch, variant, steps,
                                 warmup + (1 if "compile" in variant else 0), args.threads))
        for variant in ("fp32",) if args.quick else ("fp32", "bf16+cl"):
            out.append(_case("cpu", "resnet50", 256, 128, 8, variant, 2, 1, args.threads))
        if vit_available():  # both branches ViT-S/16 (the person-pretrained recipes' backbone)
            out.append(_case("cpu", "vit_small", 256, 128, 8, "fp32", 2, 1, args.threads))
    if cuda and args.device in ("auto", "cuda"):
        steps, warmup = (10, 3) if args.quick else (20, 5)
        for batch in (64,) if args.quick else (64, 128, 256):
            for variant in args.variants or list(VARIANTS):
                out.append(_case("cuda", "resnet50", 256, 128, batch, variant, steps,
                                 warmup if "compile" not in variant else 2 * warmup, args.threads))
        if vit_available():  # a ViT-S x2 step (both branches ViT-S/16) under bf16 autocast
            for variant in ("bf16",) if args.quick else ("fp32", "bf16"):
                out.append(_case("cuda", "vit_small", 256, 128, 64, variant, steps, warmup, args.threads))
    return out


def vit_available() -> bool:
    """Whether timm (the ViT backbones' optional extra) is installed; without it the ViT cases are left out."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        print("timm is not installed: the ViT-S step is not measured (pip install cacl_dist[vit])", file=sys.stderr)
        return False
    return True


# ----------------------------------------------------------------------------------------- report
def add_mfu(result: dict, flops: dict, cpu_peak_gflops: float, gpu_key: str | None) -> None:
    """MFU = counted step FLOPs x steps/s over the peak (GPU datasheet or the CPU matmul rate)."""
    key = (result["device"], result["backbone"], result["height"], result["width"], result["batch"])
    if "error" in result or key not in flops:
        return
    achieved = flops[key] * result["images_per_s"] / result["batch"] / 1e9
    result["achieved_gflops"] = achieved
    if result["device"] == "cpu":
        result["mfu"] = achieved / cpu_peak_gflops
    elif gpu_key is not None:
        precision = VARIANTS[result["variant"]][0]
        peak = GPU_PEAK_TFLOPS[gpu_key]["tf32" if precision == "fp32" else precision]
        result["mfu"] = achieved / (peak * 1e3)
        result["peak_tflops"] = peak


def measure_all(args, case_list: list[dict], data: list[str]) -> list[dict]:
    """Run every case in its own subprocess, within --case-timeout each and --budget-s in total."""
    start, results = time.perf_counter(), []
    for case in case_list:
        case = dict(case, data_overrides=data)
        left = None if args.budget_s is None else args.budget_s - (time.perf_counter() - start)
        t = time.perf_counter()
        if left is not None and left < 10:
            result = {**case, "error": "skipped: the time budget (--budget-s) was spent"}
        else:
            limit = args.case_timeout if left is None else min(args.case_timeout, left)
            result = run_case_subprocess(case, args, limit)
        result.pop("data_overrides", None)
        results.append(result)
        print(f"{case['device']:4s} {case['backbone']:11s} {case['height']}x{case['width']} b{case['batch']:<4d} "
              f"{case['variant']:16s} {fmt(result.get('images_per_s'), '8.1f')} img/s  "
              f"{fmt(result.get('step_ms_median'), '8.0f')} ms/step  {result.get('error', '')}"
              + (f" fed by {result['fed_by']}: {result['fed_images_per_s']:.1f} img/s" if "fed_images_per_s" in result
                 else "") + result.get("fed_error", "") + f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return results


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.one:
        print(json.dumps(run_case(json.loads(args.one), Path(args.runs_dir))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / args.stem
    if args.report_only:
        report = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".md").write_text(markdown(report))
        plot(report, stem.with_suffix(".png"))
        return 0
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu or auto")
    load_before = load_average()
    case_list = [dict(c, fed_by=args.fed_by) if args.fed_by and c["variant"] == "bf16+cl" else c
                 for c in cases(args, cuda)]
    on_cpu = any(c["device"] == "cpu" for c in case_list)  # the CPU peak is measured only when it is needed
    machine = {"cpu": cpu_description(), "gpu": gpu_description(),
               "torch": torch.__version__, "python": platform.python_version(), "load_before": load_before,
               "cpu_matmul_gflops": cpu_matmul_gflops(args.threads) if on_cpu else None,
               "cpu_matmul_bf16_gflops": cpu_matmul_gflops(args.threads, torch.bfloat16) if on_cpu else None}
    data = prepare_data(args)
    pipeline = data_pipeline_rate(args.data, 256, 128)
    results = measure_all(args, case_list, data)
    flops = {}
    for r in results:
        if "flops_per_step" in r:
            flops[(r["device"], r["backbone"], r["height"], r["width"], r["batch"])] = r["flops_per_step"]
    gpu_key = gpu_peak_key(machine["gpu"])
    machine["gpu_peak_entry"] = gpu_key
    for r in results:
        add_mfu(r, flops, machine["cpu_matmul_gflops"], gpu_key)
    machine["load_after"] = load_average()
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    report = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(REPO),
              "command": f"python3 benchmarks/bench_train.py {argv_text}".strip(), "stem": args.stem,
              "threads": args.threads, "data": args.data or "synthetic", "machine": machine,
              "data_pipeline": pipeline, "results": results,
              "flops_per_image": {f"{k[0]}/{k[1]}/{k[2]}x{k[3]}/{k[4]}": v / k[4] / 1e9 for k, v in flops.items()},
              "estimates": estimates(results)}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    stem.with_suffix(".md").write_text(markdown(report))
    plotted = plot(report, stem.with_suffix(".png"))
    print(markdown(report))
    print(f"wrote {stem}.json, .md" + (", .png" if plotted else " (no matplotlib: no plot)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

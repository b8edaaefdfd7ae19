"""Acceptance parts that train: two gloo processes on one GPU vs one process; ResNet-50 stop and resume."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .common import Context, failed_because, free_port, result, run, set_args, show, start, stop_group

STOPPED_EXIT_CODE = 3  # cacl_dist.train's exit status after a checkpoint on SIGTERM


def tiny_run(run_dir: Path, data_root: Path, device: str) -> dict:
    """A few-second CACL run on a 96-image synthetic set (resnet_tiny at 64x32), as the recipes normalise:
    BatchNorm in training mode over groups of 16 images (the global batch of 16: one plain group in one
    process, synchronised over both processes in two), deterministic kernels, a small learning rate."""
    return {
        "run.output_dir": run_dir, "run.progress": False, "run.log_every": 1, "run.seed": 3, "run.device": device,
        "data.dataset": "synthetic", "data.root": data_root, "data.height": 64, "data.width": 32,
        "data.num_workers": 0, "data.pipeline": "torchvision",
        "data.synthetic.num_train_ids": 16, "data.synthetic.num_test_ids": 6, "data.synthetic.images_per_id": 6,
        "data.synthetic.num_cameras": 3, "data.synthetic.height": 64, "data.synthetic.width": 32,
        "augment.pad": 4, "model.backbone": "resnet_tiny", "model.pretrained": "none", "model.frozen_bn": False,
        "model.bn_group_size": 16, "optim.lr": 1e-4,
        "clustering.k1": 8, "clustering.k2": 3, "clustering.min_samples": 3,
        "train.epochs": 2, "train.iters_per_epoch": 3, "train.batch_size": 16, "train.num_instances": 4,
        "train.deterministic": True, "eval.at_start": False, "eval.every_epochs": 0, "eval.batch_size": 64,
        "dist.backend": "gloo",
    }


#: What the logs must say: the device each run used, and how it realised the BatchNorm groups of 16.
TWO_PROCESS_LOG = {"one": ("world size 1 on {device}", "plain BatchNorm, one group per process"),
                   "two": ("world size 2 on {device}", "synchronised over 2 consecutive ranks")}


def _max_diff(a, b) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def part_two_process(ctx: Context) -> dict:
    """torchrun of two gloo processes sharing the device (CUDA tensors on a GPU) == one process."""
    import torch

    from cacl_dist.training.checkpoint import load_checkpoint
    from cacl_dist.runs.metrics import read_metrics

    work = Path(ctx.work) / "two_process"
    shutil.rmtree(work, ignore_errors=True)
    data_root = work / "tiny_synthetic"
    # no TF32 (cuBLAS and cuDNN): 1 and 2 processes then differ only in the order of float sums
    env = {"OMP_NUM_THREADS": "1", "NVIDIA_TF32_OVERRIDE": "0", "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    one = run(ctx, [ctx.python, "-m", "cacl_dist.train", *set_args(tiny_run(work / "one", data_root, ctx.device))],
              env_extra=env, margin=10 + 0.5 * max(0.0, ctx.left() - 10))
    if one.returncode != 0:
        return result("fail", f"one-process run: {failed_because(one)}", [f"```\n{one.tail()}\n```"],
                      commands=[one.command])
    two = run(ctx, [ctx.python, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", "-m", "cacl_dist.train",
                    *set_args(tiny_run(work / "two", data_root, ctx.device))], env_extra=env)
    commands = [one.command, two.command]
    if two.returncode != 0:
        return result("fail", f"two-process run: {failed_because(two)}", [f"```\n{two.tail(25)}\n```"],
                      commands=commands)
    losses = [[r["loss"] for r in read_metrics(work / name, "train")] for name in ("one", "two")]
    a, b = (load_checkpoint(work / name / "last.pt") for name in ("one", "two"))
    diffs = {"loss": max((abs(x - y) / max(abs(x), 1.0) for x, y in zip(*losses)), default=float("inf")),
             "bank_rgb": _max_diff(a["bank_rgb"], b["bank_rgb"]),
             "bank_gray": _max_diff(a["bank_gray"], b["bank_gray"]),
             "model": max(_max_diff(a["model"][k], b["model"][k]) for k in a["model"])}
    labels_equal = torch.equal(a["labels"], b["labels"])
    # The runs differ by float32 rounding only: DDP's average of 2 gradients, BatchNorm statistics summed over
    # 2 ranks (against one BatchNorm over 16 images), convolutions over 16 or 8 images. BatchNorm in training
    # mode turns that into gradient differences of a few 1e-6 relative; Adam at optim.lr 1e-4 moves a weight
    # by at most 6e-4 in the 6 steps, and the second epoch's centres come from banks that carry the first
    # epoch's differences. Measured on 2 CPU cores: losses 3.8e-5 relative, banks 4.3e-4, weights 1.6e-4.
    # The limits leave room for other kernels; unsynchronised groups (8 images per process) give 0.48
    # relative on the losses and 0.42 on the banks.
    limits = {"loss": 5e-4, "bank_rgb": 2e-3, "bank_gray": 2e-3, "model": 2e-3}  # loss: relative; others absolute
    problems = []
    for name, finished in (("one", one), ("two", two)):
        for expected in TWO_PROCESS_LOG[name]:
            expected = expected.format(device=ctx.device)
            if expected not in finished.output:
                problems.append(f"the {name}-process run's log does not say '{expected}'")
    if len(losses[0]) != len(losses[1]) or not losses[0]:
        problems.append(f"logged {len(losses[0])} vs {len(losses[1])} training steps")
    if b["world_size"] != 2 or "world size 2" not in two.output:
        problems.append("the torchrun job did not run with world size 2")
    if not labels_equal:
        problems.append(f"pseudo labels differ in {int((a['labels'] != b['labels']).sum())} of {a['labels'].numel()}")
    problems += [f"{k} differs by {v:.2e} (limit {limits[k]:g})" for k, v in diffs.items() if v > limits[k]]
    details = [f"Both runs: `cacl_dist.train` on a 96-image synthetic set, resnet_tiny at 64x32, global batch 16, "
               f"2 epochs x 3 steps, BatchNorm in training mode over groups of 16 (one process: one plain group; two: "
               f"synchronised over both ranks), run.device={ctx.device}, dist.backend=gloo (the two processes share "
               "the one device), train.deterministic, TF32 off, optim.lr 1e-4; the limits and why: "
               "benchmarks/acceptance/training.py.", "",
               "| compared | largest difference |", "|---|---|"]
    details += [f"| {k} | {v:.2e} (limit {limits[k]:g}{', relative' if k == 'loss' else ''}) |"
                for k, v in diffs.items()] + [f"| pseudo labels | "
                                                                   f"{'identical' if labels_equal else 'DIFFER'} |"]
    details += ["", f"- losses, one process: {', '.join(f'{v:.5f}' for v in losses[0])}",
                f"- losses, two processes: {', '.join(f'{v:.5f}' for v in losses[1])}"]
    details += [f"- problem: {p}" for p in problems]
    files = _plot_losses(ctx, "two_process", {"1 process": losses[0], "2 gloo processes": losses[1]}, None)
    summary = (f"2 gloo processes on {ctx.device} == 1 process: losses within {diffs['loss']:.1e} relative, banks "
               f"{max(diffs['bank_rgb'], diffs['bank_gray']):.1e}, model {diffs['model']:.1e}, labels identical"
               if not problems else "; ".join(problems))
    return result("fail" if problems else "pass", summary, details,
                  {"diffs": diffs, "losses": losses, "labels_equal": labels_equal,
                   "ran_on": ctx.device if f"on {ctx.device}" in one.output + two.output else "unknown"},
                  commands, files)


def _plot_losses(ctx: Context, part: str, curves: dict, stop_step: int | None) -> list[str]:
    """A loss-per-step plot next to the part's results (nothing when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, values in curves.items():
        steps = values[0] if isinstance(values, tuple) else range(1, len(values) + 1)
        ax.plot(list(steps), values[1] if isinstance(values, tuple) else values, marker=".", label=label)
    if stop_step is not None:
        ax.axvline(stop_step, color="k", ls="--", lw=0.8, label="SIGTERM checkpoint, resumed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.set_title(f"{part} ({ctx.tag})")
    fig.tight_layout()
    name = f"acceptance_{part}_{ctx.tag}.png"
    fig.savefig(Path(ctx.results) / name, dpi=110)
    plt.close(fig)
    return [name]


def resume_overrides(ctx: Context, run_dir: Path) -> tuple[list[str], dict]:
    """(--config arguments, keys) of the short ResNet-50 schedule (dry run: resnet_tiny at 64x32)."""
    keys = {"run.output_dir": run_dir, "run.progress": False, "run.device": ctx.device,
            "data.dataset": "market1501", "data.root": ctx.data, "data.pipeline": "auto",
            "train.epochs": 2, "eval.at_start": False, "eval.every_epochs": 0, "checkpoint.every_steps": 0,
            "checkpoint.keep_every_epochs": 0, "train.precision": "bf16", "train.channels_last": True}
    if ctx.dry_run:
        keys.update({"model.backbone": "resnet_tiny", "model.pretrained": "none", "data.height": 64, "data.width": 32,
                     "data.num_workers": 0, "train.batch_size": 16, "train.iters_per_epoch": 8, "run.log_every": 2,
                     "clustering.k1": 8, "clustering.k2": 3, "clustering.min_samples": 3, "augment.pad": 4,
                     "eval.batch_size": 64, "model.bn_group_size": 8})  # 2 ghost groups, as the recipe's 4
    else:
        keys.update({"model.pretrained": _imagenet_or_none(), "data.num_workers": min(8, (os.cpu_count() or 2) - 1),
                     "train.iters_per_epoch": 40, "run.log_every": 5, "eval.batch_size": 256})
    return ["--config", "configs/market1501.yaml"], keys


def _imagenet_or_none() -> str:
    """'imagenet' when torchvision's ResNet-50 weights are in the torch hub cache (never downloaded), else 'none'."""
    import torch

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    found = any((folder / name).is_file() for name in ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"))
    return "imagenet" if found else "none"


def _wait_for_training(proc, metrics: Path, timeout: float) -> bool:
    """Wait until the run logged its first training losses; False when it ended or the time ran out first."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if metrics.is_file() and '"kind": "train"' in metrics.read_text():
            return True
        time.sleep(0.1)
    return False


def part_resume(ctx: Context) -> dict:
    """ResNet-50 x 2 in bf16 + channels-last: a short schedule with evaluation, SIGTERM mid-epoch, resume."""
    from cacl_dist.training.checkpoint import load_checkpoint
    from cacl_dist.runs.metrics import read_metrics

    run_dir = Path(ctx.work) / "resume_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config, keys = resume_overrides(ctx, run_dir)
    cmd = [ctx.python, "-m", "cacl_dist.train", *config, *set_args(keys)]
    run_dir.mkdir(parents=True)
    t0 = time.time()
    first = start(ctx, cmd, log=run_dir.parent / "resume_first_run.log")
    wait_s = max(1.0, ctx.left() * 0.6)
    started = _wait_for_training(first, run_dir / "metrics.jsonl", wait_s)
    ended_early = first.poll() is not None
    if started:
        first.send_signal(signal.SIGTERM)
    else:
        stop_group(first)
    try:
        first.wait(timeout=max(1.0, ctx.left() * 0.5))
    except subprocess.TimeoutExpired:
        stop_group(first)
        first.wait()
    first_s = time.time() - t0
    first_log = (run_dir.parent / "resume_first_run.log").read_text()
    print(first_log[-4000:])
    if not started or first.returncode != STOPPED_EXIT_CODE:
        why = (f"it ended (exit status {first.returncode}) before logging a training step" if ended_early else
               f"no training step logged within {wait_s:.0f} s, stopped" if not started else
               f"exit status {first.returncode} after SIGTERM, expected {STOPPED_EXIT_CODE}")
        lines = first_log.strip().splitlines()
        return result("fail", f"first run: {why}: {lines[-1][:200] if lines else '(no output)'}",
                      ["```", *lines[-20:], "```"], commands=[show(cmd)])
    saved = load_checkpoint(run_dir / "last.pt")
    stop = {"epoch": saved["epoch"], "iter_in_epoch": saved["iter_in_epoch"], "global_step": saved["global_step"]}
    second = run(ctx, cmd)
    commands = [show(cmd) + "   # SIGTERM after the first logged step", second.command + "   # the same command again"]
    problems = []
    if not 0 < stop["iter_in_epoch"] < keys["train.iters_per_epoch"]:
        problems.append(f"the checkpoint is not mid-epoch: {stop}")
    for run_log, which in ((first_log, "first"), (second.output, "resumed")):
        if f"on {ctx.device}" not in run_log or "ghost BatchNorm" not in run_log:
            problems.append(f"the {which} run's log does not say it ran on {ctx.device} with ghost BatchNorm groups")
    if second.returncode != 0:
        problems.append(f"resumed run: {failed_because(second)}")
    elif "resumed from" not in second.output:
        problems.append("the second run did not say 'resumed from'")
    train = read_metrics(run_dir, "train")
    evals, clusters = read_metrics(run_dir, "eval"), read_metrics(run_dir, "cluster")
    if second.returncode == 0 and not evals:
        problems.append("no evaluation was recorded")
    rates = [r["images_per_s"] for r in train[1:]] or [r["images_per_s"] for r in train]
    fed_by = sorted(set(re.findall(r"input pipeline (\S+)", first_log + second.output)))
    data = {"stop": stop, "first_run_s": first_s, "second_run_s": second.seconds, "eval": evals[-1] if evals else None,
            "images_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
            "cluster_seconds": [c.get("seconds") for c in clusters],
            "num_clusters": [c.get("num_clusters") for c in clusters],
            "pretrained": keys.get("model.pretrained", "none"), "pipeline": ",".join(fed_by) or "unknown",
            "ran_on": ctx.device if f"world size 1 on {ctx.device}" in first_log + second.output else "unknown"}
    details = [f"- schedule: {keys['train.epochs']} epochs x {keys['train.iters_per_epoch']} steps, global batch "
               f"{keys.get('train.batch_size', 64)}, {keys.get('model.backbone', 'resnet50')} x 2 at "
               f"{keys.get('data.height', 256)}x{keys.get('data.width', 128)}, bf16 autocast + channels-last, "
               f"weights {data['pretrained']}, evaluation after the last epoch; data `{ctx.data}`; input pipeline "
               f"{data['pipeline']} (data.pipeline auto: DALI when it runs here, else torch-gpu on a GPU)",
               f"- first run: SIGTERM after its first logged step; exit status {first.returncode} after "
               f"{first_s:.0f} s, "
               f"checkpoint at epoch {stop['epoch'] + 1} step {stop['iter_in_epoch']}",
               f"- second run (same command): exit status {second.returncode} after {second.seconds:.0f} s"
               + (", resumed" if "resumed from" in second.output else ""),
               f"- steps: median {data['images_per_s_median'] or 0:.0f} images/s between logging steps (input "
               "pipeline included); clustering " + ", ".join(f"{s:.1f} s ({n} clusters)" for s, n in zip(
                   data["cluster_seconds"], data["num_clusters"]) if s is not None)]
    if evals:
        e = evals[-1]
        details.append(f"- evaluation after {e['epoch']} epochs: mAP {100 * e['mAP']:.1f}%, "
                       f"rank-1 {100 * e['rank1']:.1f}%")
    details += [f"- problem: {p}" for p in problems]
    if second.returncode != 0:
        details += ["```", second.tail(20), "```"]
    files = _plot_losses(ctx, "resume", {"loss": ([r["step"] for r in train], [r["loss"] for r in train])},
                         stop["global_step"])
    summary = ("; ".join(problems) if problems else
               f"stopped at epoch {stop['epoch'] + 1} step {stop['iter_in_epoch']} (exit 3), resumed to the end; "
               + (f"mAP {100 * evals[-1]['mAP']:.1f}%, " if evals else "")
               + f"{data['images_per_s_median'] or 0:.0f} images/s fed by {data['pipeline']}")
    return result("fail" if problems else "pass", summary, details, data, commands, files)

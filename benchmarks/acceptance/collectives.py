"""Acceptance part: a one-rank process group through every collective the trainer uses, then DDP.

At world size 1 the functions of cacl_dist.distributed.comm return their input without calling
torch.distributed (``comm.is_distributed()`` is False). To send every call through the real
backend anyway, this part makes ``comm.is_distributed`` report the initialised one-rank group as
distributed while it runs, so each function takes the path it takes on a real job: NCCL needs
CUDA tensors (comm moves CPU inputs to the GPU and back), gloo takes CPU tensors.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path

from .common import Context, result


def _collective_cases(comm, torch, device):
    """(name, call, expected) for each collective and dtype that trainer.py and extract.py use."""
    gen = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32, on=device):
        return torch.randn(*shape, generator=gen, dtype=dtype).to(on)

    flag, deltas = torch.tensor([1.0]), randn(64, 2 * 256)
    sums, counts = randn(50, 256, dtype=torch.float64), torch.randint(0, 9, (50,), generator=gen).to(device)
    stacked, rows, cpu_feats = randn(5), randn(300, 256), randn(40, 256, on=torch.device("cpu"))
    sims, idx = randn(300, 30), torch.randint(0, 300, (300, 30), generator=gen).to(device)
    sims64, batch = randn(300, 30, dtype=torch.float64), randn(32, 2 * 256)
    labels = torch.from_numpy(torch.randint(-1, 20, (300,), generator=gen).numpy())
    stats = {"num_clusters": 20, "backend": "torch", "seconds": 0.5}
    return [
        ("all_reduce_sum float32 (stop flag, CPU)", lambda: comm.all_reduce_sum(flag), flag),
        ("all_reduce_sum float32 (bank-row deltas)", lambda: comm.all_reduce_sum(deltas), deltas),
        ("all_reduce_sum float64 (centre sums)", lambda: comm.all_reduce_sum(sums), sums),
        ("all_reduce_sum int64 (centre counts)", lambda: comm.all_reduce_sum(counts), counts),
        ("all_reduce_mean float32 (logged losses)", lambda: comm.all_reduce_mean(stacked), stacked),
        ("all_gather_cat float32 (bank rows)", lambda: comm.all_gather_cat(rows), rows),
        ("all_gather_cat float32 (extracted features, CPU)", lambda: comm.all_gather_cat(cpu_feats), cpu_feats),
        ("all_gather_cat float32 (neighbour similarities)", lambda: comm.all_gather_cat(sims), sims),
        ("all_gather_cat float64 (similarities)", lambda: comm.all_gather_cat(sims64), sims64),
        ("all_gather_cat int64 (neighbour indices)", lambda: comm.all_gather_cat(idx), idx),
        ("all_gather_start float32, async (batch features)", lambda: comm.all_gather_start(batch).wait(), batch),
        ("broadcast_object int64 (pseudo labels, CPU)",
         lambda: comm.broadcast_object(labels, src=0, what="pseudo labels"), labels),
        ("broadcast_object (clustering statistics)", lambda: comm.broadcast_object(stats, what="statistics"), stats),
        ("barrier", lambda: comm.barrier(), None),
        ("run_on_main, control group (clustering result of rank 0)",
         lambda: comm.run_on_main(lambda: stats, what="clustering"), stats),
        ("any_rank, control group (the stop vote)", lambda: comm.any_rank(True), True),
    ]


def _same(torch, got, want) -> bool:
    if want is None:
        return got is None
    if isinstance(want, (dict, bool)):
        return got == want
    return got.dtype == want.dtype and got.device == want.device and torch.equal(got, want)


def _train_tiny(torch, device, wrap_ddp: bool, settings) -> dict:
    """Four fp16 steps of resnet_tiny's two branches with the package's Adam; optionally DDP-wrapped."""
    from torch.nn.parallel import DistributedDataParallel

    from cacl_dist.models.cacl import build_model
    from cacl_dist.training.optim import build_adam
    from cacl_dist.precision import StepPrecision

    torch.manual_seed(0)
    model = build_model("resnet_tiny", "none", "avg", 1).to(device)
    online, gray = model.online, model.branch_gray
    if wrap_ddp:
        kwargs = dict(device_ids=[device.index] if device.type == "cuda" else None,
                      static_graph=settings.static_graph, gradient_as_bucket_view=settings.ddp_bucket_view)
        online, gray = DistributedDataParallel(online, **kwargs), DistributedDataParallel(gray, **kwargs)
    optimizer = build_adam([p for p in model.parameters() if p.requires_grad], 1e-3, 5e-4, "auto", device)
    precision = StepPrecision("fp16", device)
    gen = torch.Generator().manual_seed(1)
    rgb, views = (torch.randn(8, 3, 64, 32, generator=gen).to(device) for _ in range(2))
    losses = []
    for _ in range(4):
        with precision.autocast():
            x, z = online(rgb)
            x_gray = gray(views)
        loss = -(z * x_gray.detach()).sum(1).mean() - (x * x_gray).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer)
        losses.append(float(loss))
    out = {"losses": losses, "params": [p.detach().clone() for p in model.parameters()],
           "scale": float(precision.scaler.get_scale()), "fused": bool(optimizer.defaults.get("fused")),
           "foreach": bool(optimizer.defaults.get("foreach"))}
    if wrap_ddp:
        out["static_graph"] = bool(getattr(online, "static_graph", False))
        out["bucket_view"] = bool(getattr(online, "gradient_as_bucket_view", False))
    return out


def _ddp_check(torch, device) -> tuple[list[str], list[str], dict]:
    """DDP (static graph + bucket view) on the one-rank group equals the unwrapped branches, step by step."""
    from cacl_dist.distributed.parallelize import ParallelSettings

    settings = ParallelSettings()  # the defaults of a run: bucket view and static graph on
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    plain, ddp = _train_tiny(torch, device, False, settings), _train_tiny(torch, device, True, settings)
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in zip(plain["params"], ddp["params"]))
    loss_diff = max(abs(a - b) for a, b in zip(plain["losses"], ddp["losses"]))
    moved = max(float((a.float() - b.float()).abs().max()) for a, b in zip(
        ddp["params"], _initial_params(torch, device)))
    problems = []
    if not (ddp["static_graph"] and ddp["bucket_view"]):
        problems.append(f"DDP static graph {ddp['static_graph']}, bucket view {ddp['bucket_view']} (both expected)")
    want_kernel = "fused" if device.type == "cuda" else "foreach"
    if not ddp[want_kernel]:
        problems.append(f"Adam did not use the {want_kernel} kernel")
    if loss_diff > 1e-5 or diff > 1e-5:
        problems.append(f"DDP differs from the plain branches: losses by {loss_diff:.2e}, parameters by {diff:.2e}")
    if not all(map(lambda v: v == v and abs(v) < 1e6, ddp["losses"])) or not ddp["scale"] > 0:
        problems.append(f"non-finite losses {ddp['losses']} or scale {ddp['scale']}")
    if moved == 0:
        problems.append("the parameters did not move in 4 steps (every step skipped by the scaler?)")
    kernel = "fused" if ddp["fused"] else "foreach" if ddp["foreach"] else "for-loop"
    lines = [f"- DDP over the one-rank group, static graph {ddp['static_graph']}, gradient as bucket view "
             f"{ddp['bucket_view']}; Adam kernel: {kernel}"
             f"; fp16 autocast with GradScaler (final scale {ddp['scale']:.0f})",
             f"- 4 steps of resnet_tiny's two branches, DDP vs unwrapped: losses differ by {loss_diff:.2e}, "
             f"parameters by {diff:.2e} (limit 1e-5); largest parameter change {moved:.2e}",
             f"- losses: {', '.join(f'{v:.5f}' for v in ddp['losses'])}"]
    return lines, problems, {"loss_diff": loss_diff, "param_diff": diff, "scale": ddp["scale"], "fused": ddp["fused"]}


def _initial_params(torch, device):
    from cacl_dist.models.cacl import build_model

    torch.manual_seed(0)
    return [p.detach() for p in build_model("resnet_tiny", "none", "avg", 1).to(device).parameters()]


def part_collectives(ctx: Context) -> dict:
    """Every collective and dtype of the trainer on a one-rank NCCL group (gloo in a dry run), DDP, Adam, fp16."""
    import torch
    import torch.distributed as dist

    from cacl_dist.distributed import comm

    device = torch.device("cuda", 0) if ctx.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store_path = Path(ctx.work) / "collectives_store"
    store_path.unlink(missing_ok=True)
    dist.init_process_group(ctx.backend, store=dist.FileStore(str(store_path), 1), rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=max(30.0, ctx.left() - 10)))
    control = "the default gloo group"
    if ctx.backend == "nccl":  # as a real job does: control messages over a gloo side group
        comm.set_control_group(dist.new_group(backend="gloo"))
        control = "a gloo side group beside the NCCL group"
    original = comm.is_distributed
    comm.is_distributed = lambda: dist.is_available() and dist.is_initialized()
    rows, problems, timings = ["| collective (dtype, what the trainer sends) | result | ms |", "|---|---|---|"], [], {}
    try:
        for name, call, want in _collective_cases(comm, torch, device):
            t0 = time.perf_counter()
            try:
                got = call()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                ok, note = _same(torch, got, want), ""
            except Exception as exc:  # every case is reported, one failure does not hide the others
                ok, note = False, f"{type(exc).__name__}: {str(exc)[:150]}"
            ms = 1e3 * (time.perf_counter() - t0)
            timings[name] = ms
            verdict = "ok" if ok else "WRONG " + (note or "result differs from the input")
            rows.append(f"| {name} | {verdict} | {ms:.1f} |")
            if not ok:
                problems.append(name)
            print(f"{name}: {'ok' if ok else 'FAILED ' + note} ({ms:.1f} ms)", flush=True)
        comm.is_distributed = original
        try:
            ddp_lines, ddp_problems, ddp_data = _ddp_check(torch, device)
        except Exception as exc:  # reported with the collectives' results instead of losing them
            ddp_lines, ddp_data = [], {"fused": False}
            ddp_problems = [f"DDP / Adam / fp16 check raised {type(exc).__name__}: {str(exc)[:300]}"]
    finally:
        comm.is_distributed = original
        comm.set_control_group(None)
        dist.destroy_process_group()
    problems += ddp_problems
    details = [f"Backend {ctx.backend}, world size 1, device {device}, control messages over {control}; comm's "
               "functions run their multi-process path (see the module docstring of "
               "benchmarks/acceptance/collectives.py).", "", *rows, "", *ddp_lines]
    details += [f"- problem: {p}" for p in ddp_problems]
    summary = (f"{ctx.backend}: {len(timings) - (len(problems) - len(ddp_problems))}/{len(timings)} collectives ok; "
               f"DDP static graph + bucket view == plain, {'fused' if ddp_data['fused'] else 'foreach'} Adam, "
               "fp16 scaler")
    if problems:
        summary = f"{ctx.backend}: failed: {'; '.join(problems)}"
    return result("fail" if problems else "pass", summary, details,
                  {"timings_ms": timings, **ddp_data, "ran_on": device.type})

"""bench_train.py's input-pipeline measurements: the full step fed by a pipeline, and one core's decode rate.

The step figures of bench_train.py feed the trainer tensors already in memory. ``fed_rate`` feeds the same
``Trainer.train_step`` the batches of an input pipeline instead (real JPEGs of the case's dataset, decoded and
augmented as a training run does, a plan from the random pseudo labels the bench assigned), so the images/s
it gives include whatever the pipeline cannot hide behind the step.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch


def fed_workers() -> int:
    """DataLoader workers (or DALI threads) of a fed measurement: the cores but one, at most 8, at least 1."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def fed_rate(trainer, case: dict) -> dict:
    """{'fed_by': pipeline, 'fed_images_per_s': rate, 'fed_workers': n} of ``trainer``'s step fed by ``case['fed_by']``.

    'auto' resolves as data.pipeline 'auto' does on the case's device (DALI when it runs there, else
    torch-gpu on a GPU; see cacl_dist.data.pipelines.resolve_pipeline). ``case['warmup']`` steps (the
    loader's start included) are not timed, then ``case['steps']`` steps are, to a device synchronisation.
    """
    from cacl_dist.data.epoch_plan import plan_epoch
    from cacl_dist.data.factory import augment_params
    from cacl_dist.data.pipelines import get_pipeline, resolve_pipeline

    device = trainer.env.device
    name = resolve_pipeline(case["fed_by"], "--fed-by", device)
    labels = trainer.pseudo.labels.cpu().numpy()
    steps, warmup = case["steps"], max(1, case["warmup"])
    plan = plan_epoch(labels, None, epoch=0, num_iters=warmup + steps, batch_size=case["batch"], num_instances=4,
                      seed=0, num_clusters=int(labels.max()) + 1, device=device)
    cfg = trainer.cfg
    loader = get_pipeline(name).train_loader(trainer.dataset.train, augment_params(cfg.data, cfg.augment), plan, 0,
                                             fed_workers(), device)
    t0 = None
    for it, (rgb, gray, _) in enumerate(loader):
        if it == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        trainer.train_step(rgb, gray, plan.indices_dev[it], plan.local_columns, int(plan.max_repeats[it]))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"fed_by": name, "fed_images_per_s": steps * case["batch"] / (time.perf_counter() - t0),
            "fed_workers": fed_workers()}


def data_pipeline_rate(root: str | None, height: int, width: int, batches: int = 6, batch: int = 32) -> dict | None:
    """Decode + two-view augmentation on the JPEGs of `root` in the main process (one core): images/s."""
    if not root:
        return None
    from cacl_dist.data.epoch_plan import plan_epoch
    from cacl_dist.data.layouts import load_dataset
    from cacl_dist.data.pipelines import get_pipeline
    from cacl_dist.data.transforms import AugmentParams

    torch.set_num_threads(1)
    ds = load_dataset("market1501", str(root))
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


__all__ = ["data_pipeline_rate", "fed_rate", "fed_workers"]

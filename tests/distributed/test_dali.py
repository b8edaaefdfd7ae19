"""The DALI pipeline across gloo processes: each rank loads exactly its slice of every global batch,
with the same views as one process loading the whole batch."""

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali", reason="not applicable here: optional extra NVIDIA DALI (.[dali]) not installed")

from cacl_dist.config import load_config  # noqa: E402
from cacl_dist.data.epoch_plan import EpochPlan  # noqa: E402
from cacl_dist.data.factory import augment_params, camera_ids, training_plan  # noqa: E402
from cacl_dist.data.layouts import load_dataset  # noqa: E402
from cacl_dist.data.pipelines import dali as dp  # noqa: E402
from cacl_dist.data.pipelines import get_pipeline, resolve_pipeline  # noqa: E402
from cacl_dist.data.sampler import IdentitySampler  # noqa: E402
from cacl_dist.data.synthetic import generate_synthetic  # noqa: E402
from cacl_dist.distributed import comm  # noqa: E402
from cacl_dist.distributed.env import DistEnv  # noqa: E402

from tests.helpers.plans import rank_slice  # noqa: E402

from tests.helpers.gloo import run_gloo  # noqa: E402

OVERRIDES = ["data.pipeline=dali", "data.height=32", "data.width=16", "augment.pad=2", "train.batch_size=12",
             "train.num_instances=3", "train.iters_per_epoch=3", "data.num_workers=1", "run.seed=4"]


def _labels(num_images: int) -> np.ndarray:
    return np.arange(num_images) // 4


def _load_epoch(rank, world_size, root):
    cfg = load_config(None, OVERRIDES + [f"data.root={root}"])
    dataset = load_dataset("synthetic", root)
    env = DistEnv(rank, world_size, rank, torch.device("cpu"), "gloo")
    labels = _labels(len(dataset.train))
    plan = training_plan(cfg.train, cfg.run.seed, dataset, labels, epoch=1, num_clusters=int(labels.max()) + 1, rank=env.rank,
                         world_size=env.world_size, device=env.device)
    loader = get_pipeline(resolve_pipeline(cfg.data.pipeline)).train_loader(
        dataset.train, augment_params(cfg.data, cfg.augment), plan, 0, cfg.data.num_workers, env.device)
    assert isinstance(loader, dp.DaliLoader)
    steps = [(rgb, gray, index) for rgb, gray, index in loader]
    gathered = [comm.all_gather_cat(index) for _, _, index in steps]  # the global batch of each step
    return steps, gathered


def test_each_rank_gets_its_slice_and_the_union_is_the_global_batch(tmp_path):
    root = generate_synthetic(str(tmp_path / "data"), num_train_ids=6, num_test_ids=2, images_per_id=4,
                              num_cameras=2, height=32, width=16)
    dataset = load_dataset("synthetic", root)
    cfg = load_config(None, OVERRIDES)
    plan = IdentitySampler(_labels(len(dataset.train)), camera_ids(dataset), 12, 3, 4).plan(1, 3)
    results = run_gloo(_load_epoch, 3, root)
    for rank, (steps, gathered) in enumerate(results):
        assert len(steps) == 3
        expected = rank_slice(plan.indices, rank, 3)
        for it, (rgb, gray, index) in enumerate(steps):
            assert rgb.shape == gray.shape == (4, 3, 32, 16)
            assert index.tolist() == expected[it].tolist()
            assert gathered[it].tolist() == plan.indices[it].tolist()  # union over ranks = global batch
    # A sample's views do not depend on the rank layout: one process loading whole global batches
    # gives every rank's rows.
    whole = list(dp.train_loader(dataset.train, augment_params(cfg.data, cfg.augment), EpochPlan.build(plan, 0, 1), num_workers=1))
    for it, (rgb, gray, index) in enumerate(whole):
        for rank, (steps, _) in enumerate(results):
            rows = slice(4 * rank, 4 * rank + 4)
            assert torch.equal(index[rows], steps[it][2])
            assert torch.equal(rgb[rows], steps[it][0]) and torch.equal(gray[rows], steps[it][1])

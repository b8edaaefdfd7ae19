"""Torch datasets, the plan batch sampler and the torchvision pipeline's loaders."""

import numpy as np
import pytest
import torch
from PIL import Image

from cacl_dist.data.datasets import EvalDataset, TwoViewDataset
from cacl_dist.data.epoch_plan import EpochPlan
from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines import get_pipeline
from cacl_dist.data.pipelines import torchvision as tv_pipeline
from cacl_dist.data.pipelines.torchvision import PlanBatchSampler, eval_loader, train_loader
from cacl_dist.data.sampler import GlobalBatches, IdentitySampler
from cacl_dist.data.transforms import AugmentParams, eval_transform, load_image, two_views

PARAMS = AugmentParams(height=32, width=16)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        path = root / f"{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(path)
        out.append(ImageRecord(str(path), pid=i // 3, camid=i % 2))
    return out


@pytest.fixture(scope="module")
def plan(records):
    labels = np.array([r.pid for r in records])
    cams = np.array([r.camid for r in records])
    return IdentitySampler(labels, cams, batch_size=8, num_instances=2, seed=0).plan(epoch=0, num_iters=5)


def test_two_view_dataset_item(records):
    ds = TwoViewDataset(records, PARAMS)
    assert len(ds) == 12
    view_rgb, view_gray, index = ds[(5, 77)]
    assert index == 5 and view_rgb.shape == view_gray.shape == (3, 32, 16)
    expected = two_views(load_image(records[5].path), PARAMS, 77)
    assert torch.equal(view_rgb, expected[0]) and torch.equal(view_gray, expected[1])


def test_eval_dataset_item(records):
    ds = EvalDataset(records, 32, 16, gray=True)
    img, index = ds[3]
    assert index == 3 and len(ds) == 12
    assert torch.equal(img, eval_transform(load_image(records[3].path), 32, 16, gray=True))


def test_plan_batch_sampler_slices_and_skips(plan):
    sampler = PlanBatchSampler(EpochPlan.build(plan, rank=1, world_size=2), start_iter=3)
    batches = list(sampler)
    assert len(sampler) == len(batches) == 2
    for it, batch in zip(range(3, 5), batches):
        assert batch == list(zip(plan.indices[it, 4:].tolist(), plan.aug_seeds[it, 4:].tolist()))
    assert list(PlanBatchSampler(EpochPlan.build(plan, 0, 1), start_iter=5)) == []
    assert len(list(PlanBatchSampler(EpochPlan.build(plan, 0, 4)))) == 5
    with pytest.raises(ValueError, match="start_iter=6"):
        PlanBatchSampler(EpochPlan.build(plan, 0, 1), start_iter=6)
    with pytest.raises(ValueError, match="not divisible"):
        PlanBatchSampler(EpochPlan.build(plan, 0, 3))


def test_train_loader_batches_match_the_plan(records, plan):
    loader = train_loader(records, PARAMS, EpochPlan.build(plan, rank=0, world_size=2), start_iter=1, num_workers=0)
    batches = list(loader)
    assert len(batches) == 4
    for it, (views_rgb, views_gray, indices) in zip(range(1, 5), batches):
        assert views_rgb.shape == views_gray.shape == (4, 3, 32, 16)
        assert indices.dtype == torch.int64
        assert indices.tolist() == plan.indices[it, :4].tolist()
    first = two_views(load_image(records[int(plan.indices[1, 0])].path), PARAMS, int(plan.aug_seeds[1, 0]))
    assert torch.equal(batches[0][0][0], first[0]) and torch.equal(batches[0][1][0], first[1])


def test_train_loader_is_identical_with_worker_processes(records, plan):
    serial = list(train_loader(records, PARAMS, EpochPlan.build(plan, 1, 2), 3, num_workers=0))
    workers = list(train_loader(records, PARAMS, EpochPlan.build(plan, 1, 2), 3, num_workers=2))
    assert len(serial) == len(workers) == 2
    for a, b in zip(serial, workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_train_loader_rejects_plan_for_other_records(records):
    bad = GlobalBatches(indices=np.array([[0, 12]], dtype=np.int64), aug_seeds=np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="12 training records"):
        train_loader(records, PARAMS, EpochPlan.build(bad, 0, 1), 0, 0)


def test_eval_loader_range_keeps_global_indices(records):
    loader = eval_loader(records, 32, 16, batch_size=4, num_workers=0, start=3, end=9)
    batches = list(loader)
    assert [b[1].tolist() for b in batches] == [[3, 4, 5, 6], [7, 8]]
    assert batches[0][0].shape == (4, 3, 32, 16)
    assert torch.equal(batches[1][0][1], eval_transform(load_image(records[8].path), 32, 16))
    everything = list(eval_loader(records, 32, 16, batch_size=5, num_workers=0, gray=True))
    assert torch.cat([b[1] for b in everything]).tolist() == list(range(12))
    with pytest.raises(ValueError, match="end=13"):
        eval_loader(records, 32, 16, batch_size=4, num_workers=0, start=2, end=13)


def test_torchvision_pipeline_is_in_the_registry():
    assert tv_pipeline.NAME == "torchvision"
    assert get_pipeline("torchvision").train_loader is train_loader
    assert get_pipeline("torchvision").eval_loader is eval_loader


def test_unreadable_image_in_a_worker_is_one_line_naming_it(records):
    """A DataLoader re-raises a worker's error with the worker's traceback as the message; the
    pipeline's loaders keep only the worker's one-line message."""
    broken = list(records)
    broken[2] = ImageRecord(path=records[2].path + ".missing.jpg", pid=0, camid=0)
    with pytest.raises(ValueError) as err:
        list(eval_loader(broken, 32, 16, batch_size=4, num_workers=1))
    message = str(err.value)
    assert broken[2].path in message and len(message.splitlines()) == 1, message

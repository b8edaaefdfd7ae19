"""Unit tests of the fast-step pieces: precision policy, Adam kernels, sync-free bank update, plans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cacl_dist.data.epoch_plan import check_batch_order
from cacl_dist.config import ConfigError, load_config
from cacl_dist.distributed import comm
from cacl_dist.distributed.env import DistEnv
from cacl_dist.distributed.group_bn import GroupBatchNorm
from cacl_dist.distributed.bn_groups import bn_group_layout
from cacl_dist.distributed.parallelize import ParallelSettings, prepare_model
from cacl_dist.losses import cacl_loss
from cacl_dist.memory import ClusterCentres, InstanceBank
from cacl_dist.models.cacl import build_model
from cacl_dist.training.optim import adam_kernel, build_adam
from cacl_dist.precision import StepPrecision, extraction_precision

from tests.helpers.losses import loss_floats

CPU = torch.device("cpu")


def _bank(num_total, dim, start, end, seed):
    bank = InstanceBank(num_total, dim, start, end)
    bank.load(torch.randn(end - start, dim, generator=torch.Generator().manual_seed(seed)))
    return bank


@pytest.mark.parametrize("start, end", [(0, 12), (3, 9), (5, 5)])
def test_sync_free_bank_update_equals_the_checked_update(start, end):
    generator = torch.Generator().manual_seed(4)
    indices = torch.tensor([4, 7, 4, 0, 11, 4, 7, 3, 8, 8])  # 4 three times, 7 and 8 twice
    feats = F.normalize(torch.randn(10, 6, generator=generator), dim=1)
    checked, fast = _bank(12, 6, start, end, 1), _bank(12, 6, start, end, 1)
    delta_checked, owned_checked = checked.update(indices, feats, momentum=0.3)
    delta_fast, owned_fast = fast.update(indices, feats, momentum=0.3, num_rounds=3, validate=False)
    assert torch.equal(checked.rows, fast.rows)
    assert torch.equal(delta_checked, delta_fast) and torch.equal(owned_checked, owned_fast)


def test_too_few_rounds_leave_later_repeats_out():
    indices, feats = torch.tensor([2, 2]), F.normalize(torch.randn(2, 4), dim=1)
    one, two = _bank(4, 4, 0, 4, 2), _bank(4, 4, 0, 4, 2)
    delta_one, _ = one.update(indices, feats, num_rounds=1)
    two.update(indices, feats, num_rounds=2)
    assert not torch.equal(one.rows[2], two.rows[2])
    assert torch.equal(delta_one[1], torch.zeros(4, dtype=torch.float64))


def test_apply_delta_without_validation_ignores_unlabelled_rows_the_same_way():
    sums, counts = torch.randn(3, 4, dtype=torch.float64), torch.tensor([2, 1, 3])
    a, b = ClusterCentres(sums, counts), ClusterCentres(sums, counts)
    labels, deltas = torch.tensor([1, -1, 0, 1, -1]), torch.randn(5, 4, dtype=torch.float64)
    a.apply_delta(labels, deltas)
    b.apply_delta(labels, deltas, validate=False)
    torch.testing.assert_close(a.sums_MD, b.sums_MD, rtol=0, atol=1e-15)
    expected = sums.clone()
    expected[1] += deltas[0] + deltas[3]
    expected[0] += deltas[2]
    torch.testing.assert_close(b.sums_MD, expected, rtol=0, atol=1e-12)


def test_losses_without_validation_give_the_same_values():
    g = torch.Generator().manual_seed(0)
    x, z, xg = (F.normalize(torch.randn(6, 8, generator=g), dim=1) for _ in range(3))
    centres = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    a = cacl_loss(x, z, xg, labels, centres, centres, valid_M=torch.ones(4, dtype=torch.bool))
    b = cacl_loss(x, z, xg, labels, centres, centres, valid_M=torch.ones(4, dtype=torch.bool), validate=False)
    assert loss_floats(a) == loss_floats(b)
    with pytest.raises(ValueError, match="must lie in"):
        cacl_loss(x, z, xg, labels + 1, centres, centres)


def test_bf16_autocast_keeps_features_float32_and_close():
    torch.manual_seed(0)
    model = build_model("resnet_tiny").eval()
    images = torch.randn(4, 3, 32, 16)
    x32, z32, g32 = model(images, images)
    with StepPrecision("bf16", CPU).autocast():
        x16, z16, g16 = model(images, images)
    for low, full in ((x16, x32), (z16, z32), (g16, g32)):
        assert low.dtype == torch.float32
        assert (low * full).sum(1).min() > 0.99  # cosine of bf16 vs fp32 features


def test_fp16_scaler_state_round_trips_and_fp32_has_none():
    assert StepPrecision("fp32", CPU).state_dict() is None
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters())
    policy = StepPrecision("fp16", CPU)
    with policy.autocast():
        loss = model(torch.randn(2, 3)).float().sum()
    policy.backward(loss)
    policy.step(opt)
    state = policy.state_dict()
    fresh = StepPrecision("fp16", CPU)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state and state["scale"] > 0


def test_adam_kernels_resolve_and_agree():
    assert adam_kernel("auto", CPU) == "foreach"
    assert adam_kernel("auto", torch.device("cuda", 0)) == "fused"
    with pytest.raises(ValueError, match="fused"):
        adam_kernel("fused", CPU)
    results = []
    for kernel in ("foreach", "for_loop"):
        torch.manual_seed(0)
        layer = torch.nn.Linear(5, 3)
        opt = build_adam(layer.parameters(), 1e-2, 5e-4, kernel, CPU)
        for _ in range(3):
            opt.zero_grad()
            layer(torch.ones(2, 5)).pow(2).sum().backward()
            opt.step()
        results.append(layer.weight.detach().clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_prepare_model_channels_last_and_sync_bn_on_cpu_synchronises_all_ranks():
    model = prepare_model(build_model("resnet_tiny"), DistEnv(0, 2, 0, CPU, "gloo"), bn_group_layout(0, 32, 2, sync_bn=True),
                          ParallelSettings(channels_last=True))
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers and all(isinstance(m, GroupBatchNorm) and m.reducer.size == 2 for m in layers)
    conv = model.online.branch.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    single = prepare_model(build_model("resnet_tiny"), DistEnv(0, 1, 0, CPU, None), bn_group_layout(0, 32, 1, sync_bn=True),
                           ParallelSettings())
    assert not any(isinstance(m, GroupBatchNorm) for m in single.modules())  # one process: plain BatchNorm


def test_config_keys_for_speed_are_validated():
    cfg = load_config(None, ["train.precision=bf16", "train.channels_last=true", "eval.precision=train"])
    assert extraction_precision(cfg.eval.precision, cfg.train.precision) == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        load_config(None, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="optim.implementation"):
        load_config(None, ["optim.implementation=fused", "run.device=cpu"])
    for path in ("configs/market1501.yaml", "configs/msmt17.yaml", "configs/dukemtmc.yaml"):
        recipe = load_config(path)
        assert recipe.train.precision == "fp32" and recipe.train.channels_last, path  # the released code: fp32
    assert load_config("configs/quickstart.yaml").train.precision == "fp32"


def test_batch_order_check_and_gather_identity():
    check_batch_order(torch.tensor([3, 1]), np.array([3, 1]))
    with pytest.raises(RuntimeError, match="epoch plan"):
        check_batch_order(torch.tensor([1, 3]), np.array([3, 1]))
    feats = torch.randn(3, 2)
    assert torch.equal(comm.all_gather_start(feats).wait(), feats)

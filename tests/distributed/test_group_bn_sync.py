"""Synchronised BatchNorm groups over gloo equal one BatchNorm over each group's concatenated batch.

Four processes hold 4 images each of a 16-image batch. Groups of 8 images are pairs of ranks
(subgroups), groups of 16 (model.sync_bn) are all four: outputs and input gradients equal those of
a plain BatchNorm over the group's images, the per-rank weight and bias gradients add up to the
plain layers' gradients, and rank 0's running statistics are those of the first group, which
broadcast_bn_buffers then copies to every rank. docs/method.md section 1. The same runs with CUDA
tensors over gloo (the processes share one GPU) check the GPU kernels against the float64 reference
computed on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cacl_dist.distributed.bn_groups import bn_group_layout, broadcast_bn_buffers
from cacl_dist.distributed.env import DistEnv
from cacl_dist.distributed.group_bn import GroupBatchNorm
from cacl_dist.distributed.parallelize import ParallelSettings, prepare_model
from tests.helpers.gloo import run_gloo

PER_RANK, CHANNELS = 4, 3
SHAPES = {"2d": (4 * PER_RANK, CHANNELS, 5, 2), "1d": (4 * PER_RANK, CHANNELS)}


def _data(kind: str):
    gen = torch.Generator().manual_seed(7)
    shape = SHAPES[kind]
    x = torch.randn(*shape, generator=gen) * 2 + 5  # a large mean, as after a convolution
    upstream = torch.randn(*shape, generator=gen)
    weight, bias = torch.randn(CHANNELS, generator=gen), torch.randn(CHANNELS, generator=gen)
    return x, upstream, weight, bias


def _plain(kind: str, weight, bias) -> nn.Module:
    layer = (nn.BatchNorm2d if kind == "2d" else nn.BatchNorm1d)(CHANNELS)
    with torch.no_grad():
        layer.weight.copy_(weight), layer.bias.copy_(bias)
    return layer


def _worker(rank, world_size, device_type):
    device = torch.device(device_type, 0) if device_type == "cuda" else torch.device("cpu")
    env = DistEnv(rank, world_size, rank, device, "gloo")
    out = {}
    for name, layout in (("pairs", bn_group_layout(8, 4 * PER_RANK, world_size)),
                         ("all", bn_group_layout(0, 4 * PER_RANK, world_size, sync_bn=True))):
        for kind in ("2d", "1d"):
            x, upstream, weight, bias = _data(kind)
            layer = prepare_model(nn.Sequential(_plain(kind, weight, bias)).to(device), env, layout, ParallelSettings())[0]
            assert isinstance(layer, GroupBatchNorm) and layer.reducer is not None
            assert layer.weight.device.type == device.type
            mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            x_mine = x[mine].to(device).requires_grad_()
            y = layer(x_mine)
            (y * upstream[mine].to(device)).sum().backward()
            stats_before = layer.running_mean.clone()
            broadcast_bn_buffers(layer)
            found = {"y": y.detach(), "grad_x": x_mine.grad, "grad_w": layer.weight.grad, "grad_b": layer.bias.grad,
                     "own_mean": stats_before, "mean": layer.running_mean, "var": layer.running_var}
            assert all(t.device.type == device.type for t in found.values())
            out[name, kind] = {key: t.detach().cpu() for key, t in found.items()}
    return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_synchronised_groups_equal_batchnorm_over_the_concatenated_batch(device):
    results = run_gloo(_worker, 4, device)
    for name, group in (("pairs", 8), ("all", 16)):
        layout = bn_group_layout(group, 4 * PER_RANK, 4)
        assert layout.ranks_per_group == group // PER_RANK
        for kind in ("2d", "1d"):
            x, upstream, weight, bias = (t.double() for t in _data(kind))
            x_ref = x.clone().requires_grad_()
            layers = [_plain(kind, weight, bias).double() for _ in range(16 // group)]
            y_ref = torch.cat([layer(x_ref[i * group:(i + 1) * group]) for i, layer in enumerate(layers)])
            (y_ref * upstream).sum().backward()
            got = [results[rank][name, kind] for rank in range(4)]
            close = dict(atol=1e-5, rtol=1e-5, check_dtype=False)  # float32 results, float64 reference
            torch.testing.assert_close(torch.cat([r["y"] for r in got]), y_ref.detach(), **close)
            torch.testing.assert_close(torch.cat([r["grad_x"] for r in got]), x_ref.grad, **close)
            for key, attr in (("grad_w", "weight"), ("grad_b", "bias")):
                expected = sum(getattr(layer, attr).grad for layer in layers)
                torch.testing.assert_close(sum(r[key] for r in got), expected, **close)
            stats = dict(close, atol=1e-6, rtol=1e-6)
            for r in got:  # every rank ends with group 0's running statistics
                torch.testing.assert_close(r["mean"], layers[0].running_mean, **stats)
                torch.testing.assert_close(r["var"], layers[0].running_var, **stats)
            if name == "pairs":  # before the broadcast, ranks 2 and 3 held the second group's statistics
                torch.testing.assert_close(got[2]["own_mean"], layers[1].running_mean, **stats)
                assert not torch.allclose(got[2]["own_mean"], got[0]["own_mean"])

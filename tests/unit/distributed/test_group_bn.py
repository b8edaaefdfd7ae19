"""Ghost BatchNorm equals one BatchNorm per group; the conversion keeps every tensor; the group layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cacl_dist.distributed.bn_groups import bn_group_layout
from cacl_dist.distributed.group_bn import GroupBatchNorm, convert_to_group_bn
from cacl_dist.models.cacl import build_model


def _pair(num_features: int, groups: int, dims: int, seed: int = 0):
    """A GroupBatchNorm and a plain BatchNorm with the same random affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    plain = (nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d)(num_features)
    with torch.no_grad():
        plain.weight.copy_(torch.randn(num_features, generator=gen))
        plain.bias.copy_(torch.randn(num_features, generator=gen))
    return convert_to_group_bn(_copy(plain), groups, None), plain


def _copy(module: nn.Module) -> nn.Module:
    out = type(module)(module.num_features)
    out.load_state_dict(module.state_dict())
    return out


SHAPES = {"2d": (12, 5, 4, 3), "1d": (12, 7)}


@pytest.mark.parametrize("kind", ["2d", "1d", "channels_last"])
def test_ghost_batchnorm_equals_one_batchnorm_per_group(kind):
    shape = SHAPES["1d" if kind == "1d" else "2d"]
    groups, per_group = 3, shape[0] // 3
    ghost, plain = _pair(shape[1], groups, len(shape) - 2 or 1)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen) * 3 + 2  # an offset mean, as after a convolution
    upstream = torch.randn(*shape, generator=gen)
    x_ghost = x.clone()
    if kind == "channels_last":
        x_ghost = x_ghost.contiguous(memory_format=torch.channels_last)
    x_ghost.requires_grad_()
    y = ghost(x_ghost)
    (y * upstream).sum().backward()

    x_ref = x.clone().requires_grad_()
    layers = [_copy(plain) for _ in range(groups)]
    y_ref = torch.cat([layer(x_ref[i * per_group:(i + 1) * per_group]) for i, layer in enumerate(layers)])
    (y_ref * upstream).sum().backward()

    torch.testing.assert_close(y, y_ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(x_ghost.grad, x_ref.grad, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(ghost.weight.grad, sum(layer.weight.grad for layer in layers), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ghost.bias.grad, sum(layer.bias.grad for layer in layers), atol=1e-5, rtol=1e-5)
    # running statistics follow the first group only (the DataParallel rule)
    torch.testing.assert_close(ghost.running_mean, layers[0].running_mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ghost.running_var, layers[0].running_var, atol=1e-6, rtol=1e-6)
    assert int(ghost.num_batches_tracked) == 1
    if kind == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    # eval mode is plain BatchNorm on the running statistics
    ghost.eval(), layers[0].eval()
    torch.testing.assert_close(ghost(x), layers[0](x))


def test_ghost_batchnorm_in_bfloat16_returns_bfloat16_close_to_float32():
    ghost, _ = _pair(4, 2, 2)
    x = torch.randn(8, 4, 3, 3)
    full = ghost(x)
    half = ghost(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, atol=5e-2, rtol=2e-2)


def test_a_batch_that_does_not_split_into_the_groups_is_an_error():
    ghost, _ = _pair(4, 2, 2)
    with pytest.raises(ValueError, match="model.bn_group_size"):
        ghost(torch.randn(5, 4, 2, 2))


def test_conversion_keeps_parameters_buffers_and_state_dict_keys():
    torch.manual_seed(0)
    model = build_model("resnet_tiny")
    plain_keys = list(model.state_dict())
    params = {name: p for name, p in model.named_parameters()}
    frozen = {name for name, p in params.items() if not p.requires_grad}
    converted = convert_to_group_bn(model, 2, None)
    layers = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert layers and all(isinstance(m, GroupBatchNorm) for m in layers)
    assert list(converted.state_dict()) == plain_keys
    for name, p in converted.named_parameters():
        assert p is params[name]
    assert {name for name, p in converted.named_parameters() if not p.requires_grad} == frozen
    assert "online.branch.neck.bias" in frozen and "online.predictor.bn.bias" in frozen
    fresh = build_model("resnet_tiny")
    fresh.load_state_dict(converted.state_dict())  # checkpoints load into the plain model


@pytest.mark.parametrize("world, mode, groups, ranks", [
    (1, "ghost", 2, 1), (2, "plain", 1, 1), (4, "synced", 1, 2), (8, "synced", 1, 4), (32, "synced", 1, 16)])
def test_layout_of_groups_of_16_in_a_batch_of_32(world, mode, groups, ranks):
    layout = bn_group_layout(16, 32, world)
    assert (layout.mode, layout.groups_per_process, layout.ranks_per_group) == (mode, groups, ranks)
    assert layout.converts == (mode != "plain")
    assert "groups of 16 images" in layout.describe()


def test_layout_without_groups_with_sync_bn_and_group_ranks():
    assert bn_group_layout(0, 32, 2).mode == "per-process" and not bn_group_layout(0, 32, 2).converts
    assert "change with the number of processes" in bn_group_layout(0, 32, 2).describe()
    synced = bn_group_layout(0, 32, 4, sync_bn=True)
    assert (synced.mode, synced.ranks_per_group, synced.group_size) == ("synced", 4, 32)
    assert bn_group_layout(0, 32, 1, sync_bn=True).mode == "plain"
    assert list(bn_group_layout(16, 64, 8).group_ranks(5)) == [4, 5]
    assert list(bn_group_layout(32, 64, 8).group_ranks(5)) == [4, 5, 6, 7]


def test_a_group_that_does_not_fit_the_world_size_is_one_line():
    with pytest.raises(ValueError) as info:
        bn_group_layout(16, 48, 2)  # 24 images per process: neither divides the other
    assert "model.bn_group_size 16" in str(info.value) and "24 images per process" in str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ every device vs float64

def _reference(x, upstream, weight, bias, group: int):
    """Per-group BatchNorm in float64 on the CPU: outputs, input gradient, summed weight and bias gradients."""
    x_ref = x.detach().double().cpu().requires_grad_()
    layers = [nn.BatchNorm2d(x.shape[1]).double() if x.dim() == 4 else nn.BatchNorm1d(x.shape[1]).double()
              for _ in range(x.shape[0] // group)]
    for layer in layers:
        with torch.no_grad():
            layer.weight.copy_(weight), layer.bias.copy_(bias)
    y = torch.cat([layer(x_ref[i * group:(i + 1) * group]) for i, layer in enumerate(layers)])
    (y * upstream.double().cpu()).sum().backward()
    return (y.detach(), x_ref.grad, sum(layer.weight.grad for layer in layers),
            sum(layer.bias.grad for layer in layers), layers[0])


class ThreadSum:
    """A GroupReducer for `size` threads of one process: each all_reduce returns the sum of all threads' tensors."""

    def __init__(self, size: int):
        import threading

        self.size, self.barrier, self.lock, self.parts = size, threading.Barrier(size), threading.Lock(), []

    def all_reduce(self, tensor: torch.Tensor) -> None:
        with self.lock:
            self.parts.append(tensor.clone())
        self.barrier.wait()
        total = sum(self.parts)
        self.barrier.wait()
        with self.lock:
            self.parts.clear()
        tensor.copy_(total)
        self.barrier.wait()


CASES = [("2d", torch.contiguous_format), ("channels_last", torch.channels_last), ("1d", torch.contiguous_format)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind, memory_format", CASES)
def test_ghost_groups_on_every_device_equal_the_float64_reference(device, kind, memory_format):
    """The recipes' layout (groups of 16, here 4 groups of 16 in a 64-image batch) on CPU and CUDA."""
    gen = torch.Generator().manual_seed(3)
    shape = (64, 8, 6, 4) if kind != "1d" else (64, 8)
    x = torch.randn(*shape, generator=gen) * 3 + 4
    upstream = torch.randn(*shape, generator=gen)
    weight, bias = torch.randn(8, generator=gen), torch.randn(8, generator=gen)
    layer = GroupBatchNorm(8, groups_per_process=4).to(device)
    with torch.no_grad():
        layer.weight.copy_(weight), layer.bias.copy_(bias)
    x_dev = x.to(device).contiguous(memory_format=memory_format).requires_grad_()
    y = layer(x_dev)
    (y * upstream.to(device)).sum().backward()
    y_ref, grad_x, grad_w, grad_b, first = _reference(x, upstream, weight, bias, 16)
    close = dict(atol=2e-5, rtol=2e-5, check_dtype=False, check_device=False)
    assert y.device.type == device and x_dev.grad.device.type == device
    torch.testing.assert_close(y.detach().cpu(), y_ref, **close)
    torch.testing.assert_close(x_dev.grad.cpu(), grad_x, **close)
    torch.testing.assert_close(layer.weight.grad.cpu(), grad_w, **dict(close, atol=1e-4))
    torch.testing.assert_close(layer.bias.grad.cpu(), grad_b, **dict(close, atol=1e-4))
    torch.testing.assert_close(layer.running_mean.cpu(), first.running_mean, **close)
    torch.testing.assert_close(layer.running_var.cpu(), first.running_var, **close)
    if memory_format is torch.channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    layer.eval()  # eval mode: the running statistics, as nn.BatchNorm2d in eval mode
    first.eval()
    torch.testing.assert_close(layer(x.to(device)).detach().cpu(), first(x.double()).detach(), **close)


@pytest.mark.parametrize("device", DEVICES)
def test_synchronised_group_on_every_device_equals_the_float64_reference(device):
    """Two 'processes' (threads sharing a reducer) of 8 images each form one group of 16."""
    import threading

    gen = torch.Generator().manual_seed(4)
    x = torch.randn(16, 5, 3, 3, generator=gen) * 2 + 6
    upstream = torch.randn(16, 5, 3, 3, generator=gen)
    weight, bias = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    reducer, found, errors = ThreadSum(2), {}, []

    def rank(r: int) -> None:
        try:
            layer = GroupBatchNorm(5, reducer=reducer).to(device)
            with torch.no_grad():
                layer.weight.copy_(weight), layer.bias.copy_(bias)
            mine = x[8 * r:8 * (r + 1)].to(device).requires_grad_()
            y = layer(mine)
            (y * upstream[8 * r:8 * (r + 1)].to(device)).sum().backward()
            found[r] = (y.detach().cpu(), mine.grad.cpu(), layer.weight.grad.cpu(), layer.bias.grad.cpu())
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)
            reducer.barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    y_ref, grad_x, grad_w, grad_b, _ = _reference(x, upstream, weight, bias, 16)
    close = dict(atol=2e-5, rtol=2e-5, check_dtype=False)
    torch.testing.assert_close(torch.cat([found[0][0], found[1][0]]), y_ref, **close)
    torch.testing.assert_close(torch.cat([found[0][1], found[1][1]]), grad_x, **close)
    torch.testing.assert_close(found[0][2] + found[1][2], grad_w, **dict(close, atol=1e-4))
    torch.testing.assert_close(found[0][3] + found[1][3], grad_b, **dict(close, atol=1e-4))

"""Unit tests for cacl_dist.models: backbones, heads, branches and the two-branch model."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from cacl_dist.models import (
    BNNeck,
    Branch,
    CACLModel,
    GeneralizedMeanPool,
    Predictor,
    build_backbone,
    build_model,
    build_pool,
)
from cacl_dist.models.backbones import IMAGENET_WEIGHT_FILES


@pytest.mark.parametrize(
    "name, channels, size, expected_hw",
    [
        ("resnet_tiny", 128, (128, 64), (8, 4)),
        ("resnet18", 512, (64, 32), (4, 2)),
        ("resnet34", 512, (64, 32), (4, 2)),
        ("resnet50", 2048, (64, 32), (4, 2)),
    ],
)
def test_backbone_output_shape(name, channels, size, expected_hw):
    torch.manual_seed(0)
    body, num_channels = build_backbone(name, last_stride=1)
    assert num_channels == channels
    with torch.no_grad():
        out = body.eval()(torch.randn(2, 3, *size))
    assert out.shape == (2, channels, *expected_hw)


@pytest.mark.parametrize("name", ["resnet_tiny", "resnet18", "resnet50"])
def test_last_stride_one_doubles_map(name):
    images = torch.randn(1, 3, 64, 32)
    maps = {}
    for stride in (1, 2):
        body, _ = build_backbone(name, last_stride=stride)
        with torch.no_grad():
            maps[stride] = body.eval()(images).shape[-2:]
    assert maps[1] == (2 * maps[2][0], 2 * maps[2][1])
    body, _ = build_backbone(name, last_stride=1)
    assert body.layer4[0].downsample[0].stride == (1, 1)


def test_unknown_backbone_lists_names():
    with pytest.raises(ValueError, match="resnet_tiny") as info:
        build_backbone("vgg16")
    assert "vgg16" in str(info.value) and "resnet50" in str(info.value)


def test_bad_last_stride_rejected():
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet_tiny", last_stride=3)


def _fake_checkpoint(body: nn.Module) -> dict[str, torch.Tensor]:
    """A torchvision-style state dict of ``body`` with distinct values and an fc layer."""
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v.clone()
        for k, v in body.state_dict().items()
    }
    state["fc.weight"] = torch.randn(10, 128)
    state["fc.bias"] = torch.randn(10)
    return state


def _assert_state_equal(body: nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = body.state_dict()
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


def test_pretrained_path_round_trip(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    state = _fake_checkpoint(body)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded, _ = build_backbone("resnet_tiny", pretrained=str(path))
    _assert_state_equal(loaded, state)


def test_pretrained_path_wrapped_and_module_prefix(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    state = _fake_checkpoint(body)
    for wrapper_key in ("state_dict", "model"):
        path = tmp_path / f"wrapped_{wrapper_key}.pt"
        torch.save({wrapper_key: {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
        loaded, _ = build_backbone("resnet_tiny", pretrained=str(path))
        _assert_state_equal(loaded, state)


def test_pretrained_few_odd_keys_are_listed_not_fatal(tmp_path, caplog):
    body, _ = build_backbone("resnet_tiny")
    state = _fake_checkpoint(body)
    state["layer9.weight"] = torch.zeros(1)
    del state["layer4.0.conv1.weight"]
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="cacl_dist"):
        loaded, _ = build_backbone("resnet_tiny", pretrained=str(path))
    total = len([k for k in body.state_dict() if not k.endswith("num_batches_tracked")])
    assert f"loaded {total - 1} of {total} tensors" in caplog.text
    assert "layer9.weight" in caplog.text and "layer4.0.conv1.weight" in caplog.text
    assert torch.equal(loaded.state_dict()["layer4.0.bn1.weight"], state["layer4.0.bn1.weight"])


def test_pretrained_fitting_too_little_stops_naming_file_and_keys(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    state = {k: v for k, v in _fake_checkpoint(body).items() if not k.startswith(("layer3", "layer4"))}
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        build_backbone("resnet_tiny", pretrained=str(path))
    message = str(info.value)
    assert str(path) in message and "layer3" in message and "\n" not in message


def test_pretrained_wrong_architecture_is_value_error(tmp_path):
    body18, _ = build_backbone("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(body18.state_dict(), path)
    with pytest.raises(ValueError, match="r18.pth"):
        build_backbone("resnet_tiny", pretrained=str(path))


def test_pretrained_missing_path_rejected(tmp_path):
    with pytest.raises(ValueError, match="nope.pth"):
        build_backbone("resnet_tiny", pretrained=str(tmp_path / "nope.pth"))


def test_imagenet_missing_file_names_expected_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    with pytest.raises(ValueError) as info:
        build_backbone("resnet50", pretrained="imagenet")
    assert str(expected) in str(info.value)


def test_imagenet_loads_cached_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    source, _ = build_backbone("resnet18")
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(1000, 512)
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / IMAGENET_WEIGHT_FILES["resnet18"][0])
    torch.manual_seed(2)
    loaded, _ = build_backbone("resnet18", pretrained="imagenet")
    _assert_state_equal(loaded, state)


def test_tiny_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="resnet_tiny"):
        build_backbone("resnet_tiny", pretrained="imagenet")


def test_pools_and_unknown_pool():
    feature_map = torch.rand(2, 4, 3, 5) + 0.1
    avg = build_pool("avg")(feature_map)
    assert torch.allclose(avg, feature_map.mean(dim=(2, 3)))
    gem = build_pool("gem")
    assert isinstance(gem, GeneralizedMeanPool) and isinstance(gem.p, nn.Parameter)
    expected = feature_map.pow(3).mean(dim=(2, 3)).pow(1 / 3)
    assert torch.allclose(gem(feature_map), expected, atol=1e-6)
    fixed = GeneralizedMeanPool(p=1.0, learnable=False)
    assert "p" not in dict(fixed.named_parameters())
    assert torch.allclose(fixed(feature_map), avg, atol=1e-6)
    with pytest.raises(ValueError, match="max"):
        build_pool("max")


def test_bn_neck_bias_frozen_and_zero():
    neck = BNNeck(8)
    assert not neck.bias.requires_grad and torch.equal(neck.bias, torch.zeros(8))
    assert neck.weight.requires_grad
    neck(torch.randn(4, 8)).sum().backward()
    assert neck.bias.grad is None and neck.weight.grad is not None
    predictor = Predictor(8)
    assert not predictor.bn.bias.requires_grad
    out = predictor(torch.randn(5, 8))
    assert torch.allclose(out.norm(dim=1), torch.ones(5), atol=1e-5)


def test_predictor_init_kaiming_fan_out_with_zero_bias():
    torch.manual_seed(0)
    kaiming = Predictor(512, init="kaiming").linear.requires_grad_(False)
    assert torch.equal(kaiming.bias, torch.zeros(512))
    # Kaiming normal, fan-out, ReLU gain: std sqrt(2 / 512) = 0.0625 (262k draws: 0.3% std error).
    assert abs(float(kaiming.weight.std()) - 0.0625) < 0.002 and abs(float(kaiming.weight.mean())) < 0.001
    torch.manual_seed(0)
    default = Predictor(512).linear.requires_grad_(False)  # PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)): std 0.0255
    assert abs(float(default.weight.std()) - 1 / (512 ** 0.5 * 3 ** 0.5)) < 0.001
    assert bool(default.bias.abs().gt(0).any())
    model = build_model("resnet_tiny", predictor_init="kaiming")
    assert torch.equal(model.online.predictor.linear.bias, torch.zeros(128))
    with pytest.raises(ValueError, match="predictor init"):
        Predictor(8, init="xavier")


def test_branch_outputs_unit_norm_and_pooled():
    torch.manual_seed(0)
    branch = Branch("resnet_tiny", pool="gem")
    pooled, x = branch(torch.randn(4, 3, 64, 32), return_pooled=True)
    assert branch.dim == 128 and pooled.shape == x.shape == (4, 128)
    assert torch.allclose(x.norm(dim=1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(pooled.norm(dim=1), torch.ones(4), atol=1e-3)


def test_predictor_reads_pre_neck_pooled_feature():
    torch.manual_seed(0)
    model = CACLModel("resnet_tiny")
    online = model.online
    seen = {}
    online.branch.pool.register_forward_hook(lambda mod, inp, out: seen.__setitem__("pooled", out))
    online.branch.neck.register_forward_hook(lambda mod, inp, out: seen.__setitem__("neck", out))
    online.predictor.register_forward_pre_hook(lambda mod, inp: seen.__setitem__("pred_in", inp[0]))
    x, z = online(torch.randn(4, 3, 64, 32))
    assert seen["pred_in"] is seen["pooled"]
    assert not torch.allclose(seen["pred_in"], seen["neck"])
    for feats in (x, z):
        assert feats.shape == (4, 128)
        assert torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)


def _storages(module: nn.Module) -> set[int]:
    tensors = list(module.parameters()) + list(module.buffers())
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def test_cacl_model_branches_share_nothing():
    torch.manual_seed(0)
    model = build_model("resnet_tiny", "none", "avg", 1)
    assert model.inference_branch() is model.online.branch
    assert not _storages(model.online) & _storages(model.branch_gray)
    online_params = dict(model.online.branch.named_parameters())
    gray_params = dict(model.branch_gray.named_parameters())
    assert online_params.keys() == gray_params.keys()
    conv = "backbone.conv1.weight"
    assert not torch.equal(online_params[conv], gray_params[conv])
    x, z, x_gray = model(torch.randn(4, 3, 64, 32), torch.randn(4, 3, 64, 32))
    assert x.shape == z.shape == x_gray.shape == (4, 128)


def test_random_init_is_seeded():
    torch.manual_seed(7)
    first = CACLModel("resnet_tiny").state_dict()
    torch.manual_seed(7)
    second = CACLModel("resnet_tiny").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_both_branches_load_same_pretrained_file(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    state = _fake_checkpoint(body)
    path = tmp_path / "shared.pth"
    torch.save(state, path)
    model = CACLModel("resnet_tiny", pretrained=str(path))
    _assert_state_equal(model.online.branch.backbone, state)
    _assert_state_equal(model.branch_gray.backbone, state)
    assert not _storages(model.online) & _storages(model.branch_gray)

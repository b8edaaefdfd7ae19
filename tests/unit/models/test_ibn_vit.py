"""ResNet-50-IBN-a and the ViTs: shapes, key names, both CACL branches, BatchNorm groups, channels-last."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from cacl_dist.config import load_config
from cacl_dist.distributed.group_bn import GroupBatchNorm, convert_to_group_bn
from cacl_dist.errors import UserError
from cacl_dist.models import build_backbone, build_model
from cacl_dist.models.ibn import IBN

pytest.importorskip("timm")


def test_ibn_a_forward_shape_and_key_names():
    body, dim = build_backbone("resnet50_ibn_a", last_stride=1)
    with torch.no_grad():
        out = body.eval()(torch.randn(1, 3, 256, 128))
    assert dim == 2048 and out.shape == (1, 2048, 16, 8)
    keys = set(body.state_dict())
    for stage, blocks, planes in ((1, 3, 64), (2, 4, 128), (3, 6, 256)):
        for b in range(blocks):
            ibn = getattr(body, f"layer{stage}")[b].bn1
            assert isinstance(ibn, IBN) and ibn.IN.num_features == planes // 2 and ibn.BN.num_features == planes // 2
            assert {f"layer{stage}.{b}.bn1.IN.weight", f"layer{stage}.{b}.bn1.BN.running_mean"} <= keys
            assert f"layer{stage}.{b}.bn1.weight" not in keys
    assert all(isinstance(block.bn1, nn.BatchNorm2d) for block in body.layer4)
    assert not any(k.startswith("fc.") for k in keys) and "bn1.weight" in keys


def test_ibn_normalises_halves_apart():
    torch.manual_seed(0)
    ibn = IBN(6).train()
    x = torch.randn(4, 6, 5, 3) * 3 + 1
    out = ibn(x)
    inst = nn.functional.instance_norm(x[:, :3], weight=ibn.IN.weight, bias=ibn.IN.bias)
    batch = nn.functional.batch_norm(x[:, 3:], None, None, ibn.BN.weight, ibn.BN.bias, training=True)
    torch.testing.assert_close(out, torch.cat([inst, batch], dim=1))


@pytest.mark.parametrize("size, stride, grid", [((256, 128), 16, (16, 8)), ((256, 128), 12, (21, 10)),
                                                ((384, 128), 16, (24, 8)), ((384, 128), 12, (31, 10))])
def test_vit_grids_for_person_crops(size, stride, grid):
    body, dim = build_backbone("vit_tiny_test", input_size=size, patch_stride=stride)
    assert tuple(body.patch_embed.grid_size) == grid and body.pos_embed.shape == (1, 1 + grid[0] * grid[1], dim)
    with torch.no_grad():
        assert body.eval()(torch.randn(2, 3, *size)).shape == (2, dim)


def test_vit_small_and_base_widths():
    for name, dim, blocks in (("vit_small", 384, 12), ("vit_base", 768, 12), ("vit_small_convstem", 384, 12)):
        body, got = build_backbone(name, input_size=(256, 128))
        assert got == dim and len(body.blocks) == blocks and body.pos_embed.shape == (1, 129, dim)


def test_conv_stem_takes_no_overlap():
    with pytest.raises(UserError, match="patch_stride"):
        build_backbone("vit_tiny_convstem_test", patch_stride=12)


@pytest.mark.parametrize("name", ["vit_tiny_test", "vit_tiny_convstem_test", "resnet_tiny"])
def test_both_branches_predictor_and_neck_train_with_every_backbone(name):
    torch.manual_seed(0)
    model = build_model(name, input_size=(64, 32), drop_path=0.1 if name.startswith("vit") else 0.0).train()
    x, z, gray = model(torch.randn(8, 3, 64, 32), torch.randn(8, 3, 64, 32))
    for feature in (x, z, gray):
        assert feature.dtype == torch.float32
        torch.testing.assert_close(feature.norm(dim=1), torch.ones(8))
    (x * z).sum().add(gray.sum()).backward()
    stuck = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not stuck, stuck


def test_batchnorm_groups_govern_every_remaining_batchnorm():
    model = build_model("vit_tiny_convstem_test", input_size=(64, 32))
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d)]
    assert any(".patch_embed.conv.1.BN" in n for n in plain) and any(n.endswith("neck") for n in plain)
    converted = convert_to_group_bn(model, 2, None)
    grouped = {n for n, m in converted.named_modules() if isinstance(m, GroupBatchNorm)}
    assert grouped == set(plain)
    assert not any(isinstance(m, nn.LayerNorm) and isinstance(m, GroupBatchNorm) for m in converted.modules())


def test_channels_last_is_harmless_for_vit():
    torch.manual_seed(0)
    model = build_model("vit_tiny_test", input_size=(64, 32)).eval()
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        plain = model.inference_branch()(images)
        model = model.to(memory_format=torch.channels_last)
        nhwc = model.inference_branch()(images.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(plain, nhwc)


def test_without_timm_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.models", None)
    monkeypatch.setitem(sys.modules, "timm.models.vision_transformer", None)
    with pytest.raises(UserError, match=r"pip install cacl_dist\[vit\]"):
        build_backbone("vit_tiny_test")


@pytest.mark.parametrize("overrides, key", [
    (["model.backbone=vit_tiny_test", "model.pool=gem"], "model.pool"),
    (["model.backbone=vit_small", "model.pretrained=imagenet"], "model.pretrained"),
    (["model.backbone=vit_tiny_convstem_test", "model.patch_stride=12"], "model.patch_stride"),
    (["model.patch_stride=17"], "model.patch_stride"),
    (["model.backbone=vgg16"], "model.backbone"),
    (["model.drop_path=1.0"], "model.drop_path"),
])
def test_config_rejects_bad_model_settings(overrides, key):
    with pytest.raises(UserError, match=key):
        load_config("configs/quickstart.yaml", overrides)

"""The pretrained-weights road on files built in each published key layout (random values, the real key
names and shapes; small bodies with the same naming where the real ones would be slow).

Where each layout comes from (public code read for its key names and containers):

* torchvision ImageNet ResNets: a plain ``state_dict()`` of ``torchvision.models.resnet*`` with ``fc.*``.
* IBN-Net ImageNet files (XingangPan/IBN-Net, ``ibnnet/resnet_ibn.py`` and ``ibnnet/modules.py``): a plain
  state dict; ``bn1`` of every stage 1-3 bottleneck is ``IBN`` with ``IN`` (affine InstanceNorm2d over
  ``int(planes * 0.5)`` channels) and ``BN`` (BatchNorm2d over the rest); ``fc.*`` classifier.
* MoCo v1/v2 checkpoints, the layout of LUPerson's self-supervised ResNet-50 (facebookresearch/moco,
  ``main_moco.py`` saves ``{"epoch", "arch", "state_dict", "optimizer"}``; ``main_lincls.py`` keeps the keys
  under ``module.encoder_q.`` except ``module.encoder_q.fc``; the model also holds ``encoder_k`` and ``queue``).
* timm ViTs (timm ``vision_transformer.py``): ``cls_token``, ``pos_embed`` (class token first),
  ``patch_embed.proj``, ``blocks.N.*``, ``norm``, ``head`` classifier; ImageNet files at 224 x 224 (14 x 14).
* DINO training checkpoints, as TransReID-SSL and PASS pretrain (damo-cv/TransReID-SSL ``dino/main_dino.py``,
  ``dino/convert_model_dino.py``; CASIA-IVA-Lab/PASS-reID ``PASS/convert_model_dino.py``):
  ``{"student": {"module.backbone.*", "module.head.*"}, "teacher": {"backbone.*", "head.*"}, "optimizer",
  "epoch", "args": argparse.Namespace, "dino_loss"}``; the conversion keeps the teacher's ``backbone.*``.
* TransReID-SSL person-pretrained ViT-S (``vit_small_cfs_lup.pth``, the converted teacher): plain timm names,
  pretrained on 256 x 128 crops (a 16 x 8 grid), loaded with the grid resized (``cluster-contrast-reid/
  clustercontrast/models/vision_transformer.py``); its ``vit_small_ics`` variant adds the convolutional stem
  ``patch_embed.conv.{0,1,3,4,6,7}`` (IBN ``IN``/``BN`` in 1 and 4, BatchNorm in 7).
* PASS (``PASS_cluster_contrast_reid/clustercontrast/models/vision_transformer.py``): ``cls_pos`` apart from a
  patch-only ``pos_embed``, and ``part_token1..3`` / ``part1_pos..part3_pos``.
"""

from __future__ import annotations

import argparse
import logging

import pytest
import torch
import torch.nn.functional as F

from cacl_dist.errors import UserError
from cacl_dist.models.backbones import build_backbone
from cacl_dist.models.pretrained import infer_grid, load_pretrained, resize_pos_embed

pytest.importorskip("timm")

COUNTER = "num_batches_tracked"


def _random_like(state: dict) -> dict:
    return {k: torch.randn_like(v) if v.is_floating_point() else v.clone() + 7 for k, v in state.items()}


def _assert_landed(body, source: dict, mapping=lambda key: key, skip=()) -> None:
    """Every tensor of ``body`` equals the file's tensor under ``mapping(key)``."""
    for key, value in body.state_dict().items():
        if key in skip:
            continue
        assert torch.equal(value, source[mapping(key)].to(value.dtype)), key


def _counts(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if "loaded" in r.getMessage())


def test_torchvision_imagenet_layout(tmp_path, caplog):
    body, _ = build_backbone("resnet_tiny")
    state = _random_like(body.state_dict())
    state.update({"fc.weight": torch.randn(1000, 128), "fc.bias": torch.randn(1000)})
    torch.save(state, tmp_path / "resnet.pth")
    with caplog.at_level(logging.INFO, logger="cacl_dist"):
        loaded, _ = build_backbone("resnet_tiny", pretrained=str(tmp_path / "resnet.pth"))
    _assert_landed(loaded, state)
    total = len([k for k in state if not k.endswith(COUNTER) and not k.startswith("fc.")])
    assert f"loaded {total} of {total} tensors" in _counts(caplog) and "2 head tensors skipped" in _counts(caplog)


def test_ibn_net_imagenet_layout_real_shapes(tmp_path):
    body, _ = build_backbone("resnet50_ibn_a")
    state = {k: v.half() for k, v in _random_like(body.state_dict()).items()}  # half: a smaller file, same names
    state.update({"fc.weight": torch.randn(1000, 2048).half(), "fc.bias": torch.randn(1000).half()})
    assert "layer3.5.bn1.IN.weight" in state and "layer4.0.bn1.weight" in state
    torch.save(state, tmp_path / "resnet50_ibn_a-d9d0bb7b.pth")
    loaded, _ = build_backbone("resnet50_ibn_a", pretrained=str(tmp_path / "resnet50_ibn_a-d9d0bb7b.pth"))
    _assert_landed(loaded, state)


def test_ibn_file_does_not_fit_a_plain_resnet50(tmp_path):
    ibn, _ = build_backbone("resnet50_ibn_a")
    torch.save({k: v.half() for k, v in ibn.state_dict().items()}, tmp_path / "ibn.pth")
    with pytest.raises(UserError, match="ibn.pth") as info:
        build_backbone("resnet50", pretrained=str(tmp_path / "ibn.pth"))
    assert "\n" not in str(info.value)


def test_moco_luperson_layout(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    online, momentum = _random_like(body.state_dict()), _random_like(body.state_dict())
    state = {f"module.encoder_q.{k}": v for k, v in online.items()}
    state.update({f"module.encoder_k.{k}": v for k, v in momentum.items()})
    state.update({"module.encoder_q.fc.0.weight": torch.randn(128, 128), "module.encoder_q.fc.0.bias": torch.randn(128),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 128), "module.encoder_q.fc.2.bias": torch.randn(128),
                  "module.queue": torch.randn(128, 4096), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}},
               tmp_path / "lup_moco_r50.pth")
    loaded, _ = build_backbone("resnet_tiny", pretrained=str(tmp_path / "lup_moco_r50.pth"))
    _assert_landed(loaded, online)


def _vit_state(name: str, **kwargs) -> tuple[torch.nn.Module, dict]:
    body, _ = build_backbone(name, **kwargs)
    return body, _random_like(body.state_dict())


def test_timm_imagenet_vit_resized_from_square_grid(tmp_path):
    body, state = _vit_state("vit_tiny_test", input_size=(256, 128))
    square = torch.randn(1, 1 + 14 * 14, 32)
    state.update({"pos_embed": square, "head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)})
    torch.save(state, tmp_path / "vit_imagenet.pth")
    loaded, _ = build_backbone("vit_tiny_test", pretrained=str(tmp_path / "vit_imagenet.pth"), input_size=(256, 128))
    _assert_landed(loaded, state, skip=("pos_embed",))
    expected = F.interpolate(square[:, 1:].reshape(1, 14, 14, 32).permute(0, 3, 1, 2), size=(16, 8),
                             mode="bilinear", align_corners=False).permute(0, 2, 3, 1).reshape(1, 128, 32)
    assert torch.equal(loaded.pos_embed[:, :1], square[:, :1])
    torch.testing.assert_close(loaded.pos_embed[:, 1:], expected)


def test_dino_checkpoint_takes_the_teacher_backbone(tmp_path):
    body, teacher = _vit_state("vit_tiny_test", input_size=(64, 32))
    student = _random_like(teacher)
    checkpoint = {
        "student": {**{f"module.backbone.{k}": v for k, v in student.items()},
                    "module.head.mlp.0.weight": torch.randn(64, 32), "module.head.last_layer.weight_g": torch.ones(1, 8)},
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()},
                    "head.mlp.0.weight": torch.randn(64, 32), "head.last_layer.weight_g": torch.ones(1, 8)},
        "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
        "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 8)},
    }
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    loaded, _ = build_backbone("vit_tiny_test", pretrained=str(tmp_path / "checkpoint.pth"), input_size=(64, 32))
    _assert_landed(loaded, teacher)


def test_transreid_ssl_person_vit_resized_to_overlapping_grid(tmp_path, caplog):
    pretrained_body, state = _vit_state("vit_tiny_test", input_size=(256, 128))  # a 16 x 8 person grid
    torch.save(state, tmp_path / "vit_small_cfs_lup.pth")
    with caplog.at_level(logging.INFO, logger="cacl_dist"):
        loaded, _ = build_backbone("vit_tiny_test", pretrained=str(tmp_path / "vit_small_cfs_lup.pth"),
                                   input_size=(256, 128), patch_stride=12)
    assert tuple(loaded.patch_embed.grid_size) == (21, 10) and loaded.pos_embed.shape == (1, 211, 32)
    _assert_landed(loaded, state, skip=("pos_embed",))
    assert torch.equal(loaded.pos_embed, resize_pos_embed(state["pos_embed"], (21, 10)))
    assert "resized from 128 patches to the 21 x 10 grid" in _counts(caplog)


def test_transreid_ssl_conv_stem_layout(tmp_path):
    body, state = _vit_state("vit_tiny_convstem_test", input_size=(64, 32))
    names = set(state)
    assert {"patch_embed.conv.0.weight", "patch_embed.conv.1.IN.weight", "patch_embed.conv.1.BN.running_var",
            "patch_embed.conv.4.BN.weight", "patch_embed.conv.7.running_mean", "patch_embed.proj.weight"} <= names
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "vit_small_ics_cfs_lup.pth")
    loaded, _ = build_backbone("vit_tiny_convstem_test", pretrained=str(tmp_path / "vit_small_ics_cfs_lup.pth"),
                               input_size=(64, 32))
    _assert_landed(loaded, state)


def test_pass_layout_joins_class_position_and_skips_part_tokens(tmp_path):
    body, state = _vit_state("vit_tiny_test", input_size=(64, 32))
    cls_pos, patches = state["pos_embed"][:, :1], state["pos_embed"][:, 1:]
    passed = {k: v for k, v in state.items() if k != "pos_embed"}
    passed.update({"pos_embed": patches, "cls_pos": cls_pos})
    for i in (1, 2, 3):
        passed[f"part_token{i}"] = torch.randn(1, 1, 32)
        passed[f"part{i}_pos"] = torch.randn(1, 1, 32)
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in passed.items()}}, tmp_path / "pass_vit_small.pth")
    loaded, _ = build_backbone("vit_tiny_test", pretrained=str(tmp_path / "pass_vit_small.pth"), input_size=(64, 32))
    _assert_landed(loaded, state)


def test_vit_base_file_does_not_fit_vit_tiny(tmp_path):
    other, state = _vit_state("vit_tiny_convstem_test", input_size=(64, 32))
    state = {k: v for k, v in state.items() if not k.startswith("patch_embed.")}
    state["patch_embed.proj.weight"] = torch.randn(32, 3, 8, 8)
    torch.save(state, tmp_path / "stem.pth")
    with pytest.raises(UserError, match="stem.pth.*shape"):
        build_backbone("vit_tiny_test", pretrained=str(tmp_path / "stem.pth"), input_size=(64, 32))


def test_pos_embed_resize_exact_at_same_grid_and_hand_computed_when_it_grows():
    pos = torch.randn(1, 1 + 16 * 8, 5)
    assert resize_pos_embed(pos, (16, 8)) is pos
    line = torch.tensor([[[9.0], [0.0], [1.0]]])  # class token 9, a 1 x 2 grid [0, 1]
    grown = resize_pos_embed(line, (1, 4))
    # bilinear, half-pixel centres: sources -0.25, 0.25, 0.75, 1.25 clamp to 0, 0.25, 0.75, 1
    assert grown.flatten().tolist() == [9.0, 0.0, 0.25, 0.75, 1.0]


def test_old_grid_follows_the_new_aspect():
    assert infer_grid(196, (21, 10)) == (14, 14)
    assert infer_grid(128, (21, 10)) == (16, 8)
    assert infer_grid(128, (16, 8)) == (16, 8)
    assert infer_grid(192, (24, 8)) == (24, 8)


@pytest.mark.parametrize("content", [b"not a torch file at all\n", b"PK\x03\x04 broken zip"])
def test_foreign_file_is_one_line(tmp_path, content):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    body, _ = build_backbone("resnet_tiny")
    with pytest.raises(UserError, match="weights.pth") as info:
        load_pretrained(body, path)
    assert "\n" not in str(info.value)


def test_truncated_file_is_one_line(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    path = tmp_path / "cut.pth"
    torch.save(body.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cut.pth") as info:
        load_pretrained(body, path)
    assert "\n" not in str(info.value)


def test_pickled_module_is_refused_in_one_line(tmp_path):
    body, _ = build_backbone("resnet_tiny")
    torch.save(body, tmp_path / "module.pth")  # a whole pickled module: weights_only refuses its classes
    with pytest.raises(UserError, match="module.pth") as info:
        load_pretrained(body, tmp_path / "module.pth")
    assert "\n" not in str(info.value)

"""Backbone bodies for the CACL branches, built by name, with offline weight loading.

A ResNet body maps images ``B x 3 x H x W`` to a feature map ``B x C x h x w``. It keeps the
torchvision attribute names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``) so torchvision
ImageNet state dicts load into it directly; the classifier ``fc`` is not part of the body.
ResNet-50-IBN-a (:mod:`cacl_dist.models.ibn`) keeps IBN-Net's names. A ViT body
(:mod:`cacl_dist.models.vit`, timm) maps the images to the class token ``B x D``.

Weights are never downloaded. ``pretrained="imagenet"`` looks for the standard ImageNet
file in the torch hub cache (``torch.hub.get_dir()/checkpoints``); a missing file is a
``ValueError`` that says which file to put where. A path is read by the one loading road,
:func:`cacl_dist.models.pretrained.load_pretrained`, which recognises the published layouts.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from cacl_dist.errors import UserError
from cacl_dist.models.ibn import resnet50_ibn_a_net
from cacl_dist.models.pretrained import load_pretrained
from cacl_dist.models.names import BACKBONE_NAMES, PATCH, VIT_NAMES
from cacl_dist.models.vit import build_vit

#: torchvision ImageNet weight files accepted per backbone, in order of preference.
IMAGENET_WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "resnet18": ("resnet18-f37072fd.pth",),
    "resnet34": ("resnet34-b627a593.pth",),
    "resnet50": ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth"),
    "resnet50_ibn_a": ("resnet50_ibn_a-d9d0bb7b.pth",),
}
#: Where the ImageNet files not published by torchvision come from (IBN-Net's release page).
_IMAGENET_SOURCES = {"resnet50_ibn_a": "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"}

_TORCHVISION_BUILDERS = {
    "resnet18": tv_resnet.resnet18,
    "resnet34": tv_resnet.resnet34,
    "resnet50": tv_resnet.resnet50,
    "resnet50_ibn_a": lambda weights=None: resnet50_ibn_a_net(),
}

_TINY_WIDTHS = (16, 32, 64, 128)


class ResNetBody(nn.Module):
    """ResNet stem and four stages without the global pool and classifier.

    Attribute names follow torchvision so that its state dicts (minus ``fc``) match.
    """

    def __init__(self, stem: dict[str, nn.Module], stages: list[nn.Module], num_channels: int):
        super().__init__()
        assert set(stem) == {"conv1", "bn1", "relu", "maxpool"} and len(stages) == 4
        self.conv1 = stem["conv1"]
        self.bn1 = stem["bn1"]
        self.relu = stem["relu"]
        self.maxpool = stem["maxpool"]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_channels = num_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map ``B x 3 x H x W`` images to a ``B x C x h x w`` feature map."""
        out = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        return self.layer4(out)


def _set_first_block_stride(stage: nn.Sequential, stride: int) -> None:
    """Set the spatial stride of the first block of ``stage``, downsample conv included.

    torchvision puts the stride in ``conv1`` of a BasicBlock and ``conv2`` of a Bottleneck;
    whichever conv currently strides is changed.
    """
    block = stage[0]
    strided = [conv for conv in (block.conv1, block.conv2) if conv.stride != (1, 1)]
    assert len(strided) == 1, "expected exactly one strided conv in the first layer4 block"
    strided[0].stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _torchvision_body(name: str, last_stride: int) -> ResNetBody:
    """Build a randomly initialised torchvision ResNet body with the given last stride."""
    net = _TORCHVISION_BUILDERS[name](weights=None)
    _set_first_block_stride(net.layer4, last_stride)
    stem = {"conv1": net.conv1, "bn1": net.bn1, "relu": net.relu, "maxpool": net.maxpool}
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    return ResNetBody(stem, stages, num_channels=net.fc.in_features)


def _tiny_stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """One BasicBlock stage of the tiny ResNet."""
    downsample = None
    if stride != 1 or in_ch != out_ch:
        downsample = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    return nn.Sequential(tv_resnet.BasicBlock(in_ch, out_ch, stride=stride, downsample=downsample))


def _tiny_body(last_stride: int) -> ResNetBody:
    """A small ResNet: BasicBlocks [1, 1, 1, 1], widths 16/32/64/128, for tests and CPU runs."""
    stem = {
        "conv1": nn.Conv2d(3, _TINY_WIDTHS[0], kernel_size=7, stride=2, padding=3, bias=False),
        "bn1": nn.BatchNorm2d(_TINY_WIDTHS[0]),
        "relu": nn.ReLU(inplace=True),
        "maxpool": nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    }
    strides = (1, 2, 2, last_stride)
    in_ch = _TINY_WIDTHS[0]
    stages = []
    for width, stride in zip(_TINY_WIDTHS, strides):
        stages.append(_tiny_stage(in_ch, width, stride))
        in_ch = width
    body = ResNetBody(stem, stages, num_channels=_TINY_WIDTHS[-1])
    for module in body.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return body


def imagenet_weight_path(name: str) -> Path:
    """Return the cached torchvision ImageNet file for backbone ``name`` (never downloads).

    Raises ValueError naming the expected file and folder when no accepted file is present.
    """
    if name not in IMAGENET_WEIGHT_FILES:
        raise UserError(
            f"backbone {name!r} has no ImageNet weights; use pretrained='none' or pass the "
            f"path of a state dict file (ImageNet weights exist for {sorted(IMAGENET_WEIGHT_FILES)})"
        )
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    for file_name in IMAGENET_WEIGHT_FILES[name]:
        candidate = folder / file_name
        if candidate.is_file():
            return candidate
    wanted = IMAGENET_WEIGHT_FILES[name][0]
    alternatives = IMAGENET_WEIGHT_FILES[name][1:]
    also = f" (or {', '.join(alternatives)})" if alternatives else ""
    raise UserError(
        f"pretrained='imagenet' for {name!r}: ImageNet weights not found at {folder / wanted}{also}. "
        f"Weights are never downloaded: copy {wanted} ({_IMAGENET_SOURCES.get(name, 'https://download.pytorch.org/models/')}{wanted}) "
        f"into {folder} (set TORCH_HOME to change the folder), or pass pretrained=<path to a "
        f".pth state dict>."
    )


def load_backbone_weights(body: nn.Module, path: str | os.PathLike) -> dict[str, int]:
    """Load a pretrained file into ``body`` through the one loading road (:func:`load_pretrained`)."""
    return load_pretrained(body, path)


def build_backbone(name: str, last_stride: int = 1, pretrained: str = "none", input_size: tuple[int, int] = (256, 128),
                   patch_stride: int = PATCH, drop_path: float = 0.0) -> tuple[nn.Module, int]:
    """Build a backbone body by name and return ``(module, feature size)``.

    Args:
        name: one of :data:`BACKBONE_NAMES`.
        last_stride: ResNets: stride of the first block of ``layer4`` (1 doubles the final map size).
        pretrained: ``"none"`` (random init, seeded by ``torch.manual_seed``), ``"imagenet"``
            (ResNets: the ImageNet file from the local torch hub cache), or the path of a weights file
            in one of the layouts :mod:`cacl_dist.models.pretrained` reads.
        input_size: ViTs: the ``(height, width)`` of the crops (fixes the patch grid).
        patch_stride: ViTs: the stride between patches (16: no overlap; 12: TransReID's overlap).
        drop_path: ViTs: stochastic depth rate of the last block.
    """
    if name not in BACKBONE_NAMES:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONE_NAMES)}")
    if last_stride not in (1, 2):
        raise UserError(f"last_stride must be 1 or 2, got {last_stride!r}")
    pretrained_str = str(pretrained)
    mode = pretrained_str.lower()
    weights_path = None
    if mode == "imagenet":
        weights_path = imagenet_weight_path(name)
    elif mode != "none":
        weights_path = Path(pretrained_str).expanduser()
        if not weights_path.is_file():
            raise UserError(
                f"pretrained={pretrained_str!r} is neither 'none', 'imagenet' nor an existing file; "
                f"pass one of those or the path of a .pth/.pt state dict"
            )
    if name in VIT_NAMES:
        body, dim = build_vit(name, tuple(input_size), patch_stride, drop_path)
    else:
        body = _tiny_body(last_stride) if name == "resnet_tiny" else _torchvision_body(name, last_stride)
        dim = body.num_channels
    if weights_path is not None:
        load_pretrained(body, weights_path, what=f"backbone {name}")
    return body, dim

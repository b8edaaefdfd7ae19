"""Instance-batch normalisation (IBN-a) and the ResNet-50-IBN-a body.

IBN-a (Pan et al., "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
ECCV 2018) normalises the first half of the channels after the first 1x1 convolution of every
bottleneck in stages 1-3 with an affine instance norm, and the other half with batch norm. Stage 4
and the stem keep plain batch norm.

Module and state-dict names follow the published IBN-Net ImageNet files: a block's ``bn1`` holds
``IN`` (``InstanceNorm2d``, affine, no running statistics) over ``int(planes * 0.5)`` channels and
``BN`` (``BatchNorm2d``) over the rest, e.g. ``layer1.0.bn1.IN.weight`` and
``layer1.0.bn1.BN.running_mean``; every other name is torchvision's, so those files load directly.
The ``BN`` half is an ordinary ``nn.BatchNorm2d``: BatchNorm groups and SyncBatchNorm convert it like
any other.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet


class IBN(nn.Module):
    """Instance norm on the first ``int(planes * ratio)`` channels, batch norm on the others."""

    def __init__(self, planes: int, ratio: float = 0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``B x planes x H x W``: the two channel groups apart, concatenated back in order."""
        first, second = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        return torch.cat((self.IN(first.contiguous()), self.BN(second.contiguous())), dim=1)


#: Stages (1-based) whose bottlenecks get IBN-a.
IBN_A_STAGES = (1, 2, 3)


def resnet50_ibn_a_net() -> nn.Module:
    """A randomly initialised torchvision ResNet-50 whose stage 1-3 bottlenecks have IBN-a ``bn1``.

    Initialisation as IBN-Net's: convolutions N(0, sqrt(2 / (k * k * out_channels))), norms weight 1, bias 0.
    """
    net = tv_resnet.resnet50(weights=None)
    for index in IBN_A_STAGES:
        for block in getattr(net, f"layer{index}"):
            block.bn1 = IBN(block.bn1.num_features)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


__all__ = ["IBN", "IBN_A_STAGES", "resnet50_ibn_a_net"]

"""The two-branch CACL model: online branch F with predictor G, and gray branch F'.

No weights are shared between the branches. Branch F' is trained only by its half of the
intra-view loss; everything it outputs is used under stop-gradient elsewhere (see losses.py).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from cacl_dist.models.backbones import build_backbone
from cacl_dist.models.heads import BNNeck, Predictor, TokenFeature, build_pool
from cacl_dist.models.names import PATCH, VIT_NAMES

#: BatchNorm layers whose statistics `frozen_bn` keeps in eval mode (a GroupBatchNorm is an nn.BatchNorm2d).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _heads_in_float32(device_type: str) -> contextlib.AbstractContextManager:
    """Switch autocast off for the small heads, so pooled features, BN necks, the predictor and the
    L2 normalisation run in float32 under mixed precision (cheap next to the backbone)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 has no per-device query
        enabled = torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
    if enabled:
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class Branch(nn.Module):
    """Backbone -> global pool (pooled, ``B x D``) -> BN neck -> L2 normalisation (x).

    A ViT's class token is its pooled feature (:class:`TokenFeature`; ``pool`` applies to ResNets).
    ``input_size``, ``patch_stride`` and ``drop_path`` shape ViTs only (see :func:`build_backbone`).

    Attributes:
        dim: feature size D (the backbone's channel count or token width).
    """

    def __init__(self, backbone_name: str, pretrained: str = "none", pool: str = "avg", last_stride: int = 1,
                 input_size: tuple[int, int] = (256, 128), patch_stride: int = PATCH, drop_path: float = 0.0):
        super().__init__()
        self.backbone, self.dim = build_backbone(backbone_name, last_stride=last_stride, pretrained=pretrained,
                                                 input_size=input_size, patch_stride=patch_stride,
                                                 drop_path=drop_path)
        self.pool = TokenFeature() if backbone_name in VIT_NAMES else build_pool(pool)
        self.neck = BNNeck(self.dim)

    def forward(self, images: torch.Tensor, return_pooled: bool = False):
        """Map images ``B x 3 x H x W`` to unit-norm features ``B x D`` (float32, also under autocast).

        With ``return_pooled`` returns ``(pooled_BD, x_BD)``, the pooled feature being the one
        before the BN neck.
        """
        feature_map = self.backbone(images)
        with _heads_in_float32(feature_map.device.type):
            pooled_BD = self.pool(feature_map)
            x_BD = F.normalize(self.neck(pooled_BD), dim=1)
        if return_pooled:
            return pooled_BD, x_BD
        return x_BD


class OnlineNetwork(nn.Module):
    """Branch F plus predictor G, one module so a single DDP wrapper covers both.

    The predictor reads the pooled feature before the BN neck.
    """

    def __init__(self, branch: Branch, predictor_init: str = "default"):
        super().__init__()
        self.branch = branch
        self.predictor = Predictor(branch.dim, predictor_init)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_BD, z_BD)``: the branch feature and the predictor output, both unit norm."""
        pooled_BD, x_BD = self.branch(images, return_pooled=True)
        with _heads_in_float32(pooled_BD.device.type):
            z_BD = self.predictor(pooled_BD)
        return x_BD, z_BD


class CACLModel(nn.Module):
    """Online network (F + G) on the RGB view and gray branch F' on the grayscale view.

    Both branches load the same ``pretrained`` weights; with ``pretrained="none"`` each gets
    its own random initialisation, reproducible from ``torch.manual_seed``.
    """

    def __init__(self, backbone: str = "resnet50", pretrained: str = "none", pool: str = "avg", last_stride: int = 1,
                 predictor_init: str = "default", input_size: tuple[int, int] = (256, 128), patch_stride: int = PATCH,
                 drop_path: float = 0.0):
        super().__init__()
        shape = dict(pool=pool, last_stride=last_stride, input_size=input_size, patch_stride=patch_stride,
                     drop_path=drop_path)
        self.online = OnlineNetwork(Branch(backbone, pretrained=pretrained, **shape), predictor_init)
        self.branch_gray = Branch(backbone, pretrained=pretrained, **shape)

    @property
    def dim(self) -> int:
        """Feature size D of both branches."""
        return self.online.branch.dim

    def train(self, mode: bool = True, frozen_bn: bool = False) -> "CACLModel":
        """Training mode for every layer, except BatchNorm statistics when ``frozen_bn`` (they stay in eval mode)."""
        super().train(mode)
        if mode and frozen_bn:
            for module in self.modules():
                if isinstance(module, BATCH_NORMS):
                    module.eval()
        return self

    def inference_branch(self) -> Branch:
        """Branch F alone: the module used for evaluation and export."""
        return self.online.branch

    def forward(
        self, images_rgb: torch.Tensor, images_gray: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(x_BD, z_BD, x_gray_BD)`` for the RGB and grayscale views of one batch."""
        x_BD, z_BD = self.online(images_rgb)
        return x_BD, z_BD, self.branch_gray(images_gray)


def build_model(
    backbone: str = "resnet50", pretrained: str = "none", pool: str = "avg", last_stride: int = 1,
    predictor_init: str = "default", input_size: tuple[int, int] = (256, 128), patch_stride: int = PATCH,
    drop_path: float = 0.0,
) -> CACLModel:
    """Build the two-branch CACL model (see :class:`CACLModel`; ``predictor_init`` see :class:`Predictor`)."""
    return CACLModel(backbone=backbone, pretrained=pretrained, pool=pool, last_stride=last_stride,
                     predictor_init=predictor_init, input_size=input_size, patch_stride=patch_stride,
                     drop_path=drop_path)


def model_shape(model_cfg, height: int, width: int) -> dict:
    """The keyword arguments of :class:`Branch` / :func:`build_model` that a ``model`` config section and the
    input size fix (everything but the weights and the predictor)."""
    return dict(pool=model_cfg.pool, last_stride=model_cfg.last_stride, input_size=(int(height), int(width)),
                patch_stride=model_cfg.patch_stride, drop_path=model_cfg.drop_path)

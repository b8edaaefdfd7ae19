"""Vision Transformers for person crops, built on timm's ``VisionTransformer`` (optional extra).

timm is imported only when a ViT is built; without it the build stops with one line saying
``pip install cacl_dist[vit]``. A ViT body maps ``B x 3 x H x W`` images to the final-norm class token
``B x D`` (:class:`cacl_dist.models.heads.TokenFeature` passes it to the BN neck unchanged).

The state-dict names are timm's, which are also those of the person-pretrained files (TransReID,
TransReID-SSL, PASS): ``cls_token``, ``pos_embed`` (class token first, then the patch grid row by row),
``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``.

Two patch embeddings replace timm's:

* :class:`OverlapPatchEmbed`: a ``patch x patch`` convolution with its own stride (TransReID's overlapping
  patches: stride 12 on 256 x 128 gives a 21 x 10 grid instead of 16 x 8).
* :class:`ConvStemPatchEmbed`: TransReID-SSL's convolutional stem of the person-pretrained ViT-S
  (``vit_small`` with ``conv_stem``): conv 7x7 stride 2 (3 -> 64) + IBN, conv 3x3 + IBN, conv 3x3 + BN, each
  followed by ReLU (``patch_embed.conv.0`` ... ``patch_embed.conv.8``), then ``patch_embed.proj``, a
  ``patch/2`` convolution with the same stride. Its BatchNorms are ordinary ``BatchNorm2d``.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from torch import nn

from cacl_dist.errors import UserError
from cacl_dist.models.ibn import IBN
from cacl_dist.models.names import PATCH, VIT_NAMES

INSTALL_HINT = "ViT backbones need timm: pip install cacl_dist[vit]"


@dataclasses.dataclass(frozen=True)
class ViTShape:
    """Width, depth and heads of one ViT; ``conv_stem`` selects :class:`ConvStemPatchEmbed`."""

    dim: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0
    conv_stem: bool = False
    stem_width: int = 64


#: The ViTs by backbone name. ``vit_tiny_test`` is a two-block ViT of width 32 for tests and CPU demos.
VIT_SHAPES: dict[str, ViTShape] = {
    "vit_small": ViTShape(384, 12, 6),
    "vit_base": ViTShape(768, 12, 12),
    "vit_small_convstem": ViTShape(384, 12, 6, conv_stem=True),
    "vit_tiny_test": ViTShape(32, 2, 2, mlp_ratio=2.0),
    "vit_tiny_convstem_test": ViTShape(32, 2, 2, mlp_ratio=2.0, conv_stem=True, stem_width=8),
}
assert tuple(VIT_SHAPES) == VIT_NAMES

def patch_grid(input_size: tuple[int, int], stride: int, conv_stem: bool = False) -> tuple[int, int]:
    """Rows and columns of patches for an ``H x W`` input (the conv stem always strides by the patch)."""
    if conv_stem:
        return input_size[0] // PATCH, input_size[1] // PATCH
    return tuple((side - PATCH) // stride + 1 for side in input_size)


class OverlapPatchEmbed(nn.Module):
    """Patches of ``patch_size`` taken every ``stride`` pixels, projected to ``embed_dim``: ``B x N x D``."""

    def __init__(self, img_size=(256, 128), patch_size=PATCH, in_chans=3, embed_dim=768, stride=PATCH,
                 bias=True, **_timm_args):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = patch_grid(self.img_size, stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x N x D``, patches in row-major order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class ConvStemPatchEmbed(nn.Module):
    """TransReID-SSL's convolutional stem (halving the resolution) and a ``patch/2`` projection: ``B x N x D``."""

    def __init__(self, img_size=(256, 128), patch_size=PATCH, in_chans=3, embed_dim=384, stem_width=64,
                 **_timm_args):
        super().__init__()
        self.img_size = tuple(img_size)
        self.patch_size = (patch_size, patch_size)
        self.grid_size = patch_grid(self.img_size, patch_size, conv_stem=True)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        w = stem_width
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, w, kernel_size=7, stride=2, padding=3, bias=False), IBN(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1, bias=False), IBN(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, kernel_size=3, stride=1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(w, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` -> ``B x N x D``."""
        return self.proj(self.conv(images)).flatten(2).transpose(1, 2)


def _timm_vision_transformer():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return VisionTransformer


def build_vit(name: str, input_size: tuple[int, int] = (256, 128), patch_stride: int = PATCH,
              drop_path: float = 0.0) -> tuple[nn.Module, int]:
    """A ViT body by name (:data:`VIT_SHAPES`) for ``input_size`` crops; returns ``(module, dim)``.

    ``patch_stride`` < 16 overlaps the patches (not with a conv stem); ``drop_path`` is the stochastic
    depth rate of the last block (linearly from 0 over the blocks).
    """
    shape = VIT_SHAPES[name]
    if shape.conv_stem and patch_stride != PATCH:
        raise UserError(f"model.patch_stride={patch_stride}: the convolutional stem of {name!r} takes no "
                        f"overlapping patches; use model.patch_stride={PATCH}")
    grid = patch_grid(input_size, patch_stride, shape.conv_stem)
    if min(grid) < 1:
        raise UserError(f"input {input_size[0]} x {input_size[1]} is smaller than one {PATCH} x {PATCH} patch")
    if shape.conv_stem:
        embed = functools.partial(ConvStemPatchEmbed, stem_width=shape.stem_width)
    else:
        embed = functools.partial(OverlapPatchEmbed, stride=patch_stride)
    vit = _timm_vision_transformer()(
        img_size=tuple(input_size), patch_size=PATCH, num_classes=0, global_pool="token", embed_dim=shape.dim,
        depth=shape.depth, num_heads=shape.heads, mlp_ratio=shape.mlp_ratio, qkv_bias=True,
        drop_path_rate=drop_path, embed_layer=embed, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))
    return vit, shape.dim


__all__ = ["ConvStemPatchEmbed", "INSTALL_HINT", "OverlapPatchEmbed", "PATCH", "VIT_SHAPES", "ViTShape", "build_vit",
           "patch_grid"]

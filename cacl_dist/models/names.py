"""Backbone names (importing nothing), so the config can check model.backbone where it is read."""

RESNET_NAMES: tuple[str, ...] = ("resnet50", "resnet18", "resnet34", "resnet50_ibn_a", "resnet_tiny")
"""The ResNet bodies (feature maps ``B x C x h x w``)."""
VIT_NAMES: tuple[str, ...] = ("vit_small", "vit_base", "vit_small_convstem", "vit_tiny_test", "vit_tiny_convstem_test")
"""The ViTs (timm, optional extra): their feature is the class token (see vit.py)."""
CONV_STEM_NAMES: tuple[str, ...] = ("vit_small_convstem", "vit_tiny_convstem_test")
"""The ViTs with TransReID-SSL's convolutional stem (no overlapping patches)."""
BACKBONE_NAMES: tuple[str, ...] = RESNET_NAMES + VIT_NAMES
"""Every name accepted by :func:`cacl_dist.models.backbones.build_backbone`."""
PATCH = 16
"""Patch side of every ViT here (ViT-S/16, ViT-B/16)."""

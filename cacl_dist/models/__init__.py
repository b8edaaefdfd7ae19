"""Backbones, heads and the two-branch CACL model (no distributed code here)."""

from cacl_dist.models.backbones import build_backbone, load_backbone_weights
from cacl_dist.models.cacl import Branch, CACLModel, OnlineNetwork, build_model, model_shape
from cacl_dist.models.heads import BNNeck, GeneralizedMeanPool, Predictor, TokenFeature, build_pool
from cacl_dist.models.names import BACKBONE_NAMES, RESNET_NAMES, VIT_NAMES
from cacl_dist.models.pretrained import load_pretrained

__all__ = [
    "BACKBONE_NAMES",
    "BNNeck",
    "Branch",
    "CACLModel",
    "GeneralizedMeanPool",
    "OnlineNetwork",
    "Predictor",
    "RESNET_NAMES",
    "TokenFeature",
    "VIT_NAMES",
    "build_backbone",
    "build_model",
    "build_pool",
    "load_backbone_weights",
    "load_pretrained",
    "model_shape",
]

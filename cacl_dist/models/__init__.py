"""Backbones, heads and the two-branch CACL model (no distributed code here)."""

from cacl_dist.models.backbones import BACKBONE_NAMES, build_backbone, load_backbone_weights
from cacl_dist.models.cacl import Branch, CACLModel, OnlineNetwork, build_model
from cacl_dist.models.heads import BNNeck, GeneralizedMeanPool, Predictor, build_pool

__all__ = [
    "BACKBONE_NAMES",
    "BNNeck",
    "Branch",
    "CACLModel",
    "GeneralizedMeanPool",
    "OnlineNetwork",
    "Predictor",
    "build_backbone",
    "build_model",
    "build_pool",
    "load_backbone_weights",
]

"""Choice of the clustering implementation behind `clustering.backend`."""

from __future__ import annotations

import logging

import torch

from ..config import ClusteringConfig
from .pseudo_labels import ClusterResult, cluster_features

log = logging.getLogger("cacl_dist")

BACKENDS = ("torch", "sklearn")


def resolve_backend(name: str) -> str:
    """Map 'auto' to the fastest exact backend available here (the sparse torch one)."""
    if name == "auto":
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"clustering.backend '{name}' is not available; choose one of auto, {', '.join(BACKENDS)}")
    return name


def cluster_bank(feats_ND: torch.Tensor, cfg: ClusteringConfig) -> ClusterResult:
    """Pseudo labels for the rows of a memory bank, with the configured method and backend."""
    backend = resolve_backend(cfg.backend)
    if backend == "torch":  # stays on the bank's device (CUDA when the bank lives there)
        feats, device = feats_ND.detach(), feats_ND.device
    else:
        feats, device = feats_ND.float().cpu().numpy(), None
    return cluster_features(feats, device=device, k1=cfg.k1, k2=cfg.k2, eps=cfg.eps,
                            min_samples=cfg.min_samples, eps_tight=cfg.eps_tight, refine=cfg.refine,
                            refine_score=cfg.refine_score, outliers=cfg.outliers, backend=backend)

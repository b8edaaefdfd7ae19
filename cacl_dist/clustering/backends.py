"""Choice of the clustering implementation behind `clustering.backend`."""

from __future__ import annotations

import logging

import torch

from ..config import ClusteringConfig
from .pseudo_labels import ClusterResult, cluster_features

log = logging.getLogger("cacl_dist")

BACKENDS = ("sklearn",)


def resolve_backend(name: str) -> str:
    """Map 'auto' to the fastest exact backend available here."""
    if name == "auto":
        return "sklearn"
    if name not in BACKENDS:
        raise ValueError(f"clustering.backend '{name}' is not available; choose one of auto, {', '.join(BACKENDS)}")
    return name


def cluster_bank(feats_ND: torch.Tensor, cfg: ClusteringConfig) -> ClusterResult:
    """Pseudo labels for the rows of a memory bank, with the configured method and backend."""
    backend = resolve_backend(cfg.backend)
    return cluster_features(feats_ND.float().cpu().numpy(), k1=cfg.k1, k2=cfg.k2, eps=cfg.eps,
                            min_samples=cfg.min_samples, eps_tight=cfg.eps_tight, refine=cfg.refine,
                            refine_score=cfg.refine_score, outliers=cfg.outliers, backend=backend)

"""Choice of the clustering implementation behind `clustering.backend`."""

from __future__ import annotations

import logging

import torch

from ..config import ClusteringConfig
from .pseudo_labels import ClusterResult, cluster_features

log = logging.getLogger("cacl_dist")

BACKENDS = ("torch", "sklearn")


DENSE_LIMIT = 30_000
"""Largest N for which 'auto' uses the dense reference on the CPU (its N x N float64 blocks fit in
a few GB, and on a CPU it is faster than the sparse path at these sizes; see the closing note
of the clustering work). Beyond it, and on CUDA, 'auto' takes the sparse torch path."""


def resolve_backend(name: str, num_points: int = 0, device: torch.device | str = "cpu") -> str:
    """Map 'auto' to the fastest exact backend for N points on `device`."""
    if name == "auto":
        on_cuda = torch.device(device).type == "cuda"
        return "torch" if on_cuda or num_points > DENSE_LIMIT else "sklearn"
    if name not in BACKENDS:
        raise ValueError(f"clustering.backend '{name}' is not available; choose one of auto, {', '.join(BACKENDS)}")
    return name


def cluster_bank(feats_ND: torch.Tensor, cfg: ClusteringConfig) -> ClusterResult:
    """Pseudo labels for the rows of a memory bank, with the configured method and backend."""
    backend = resolve_backend(cfg.backend, feats_ND.shape[0], feats_ND.device)
    if backend == "torch":  # stays on the bank's device (CUDA when the bank lives there)
        feats, device = feats_ND.detach(), feats_ND.device
    else:
        feats, device = feats_ND.float().cpu().numpy(), None
    return cluster_features(feats, device=device, k1=cfg.k1, k2=cfg.k2, eps=cfg.eps,
                            min_samples=cfg.min_samples, eps_tight=cfg.eps_tight, refine=cfg.refine,
                            refine_score=cfg.refine_score, outliers=cfg.outliers, backend=backend)

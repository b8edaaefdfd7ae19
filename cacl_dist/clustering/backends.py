"""Choice of the clustering implementation behind `clustering.backend`."""

from __future__ import annotations

import logging

import torch

from ..config import ClusteringConfig
from .cuml_backend import INSTALL_HINT, cuml_available
from .pseudo_labels import ClusterResult, cluster_features

log = logging.getLogger("cacl_dist")

BACKENDS = ("torch", "sklearn", "cuml")


def resolve_backend(name: str, num_points: int = 0, device: torch.device | str = "cpu") -> str:
    """Map 'auto' to the fastest exact backend for N points on `device`; check explicit names.

    'auto' is the sparse torch path everywhere: exact (scikit-learn's labels, border ties
    included), no N x N matrix, and faster than the dense reference on a CPU (see
    benchmarks/results/bench_cluster.md). cuML is never chosen automatically: its DBSCAN needs
    a dense N x N matrix on the GPU and may break border ties differently.
    """
    if name == "auto":
        return "torch"
    if name not in BACKENDS:
        raise ValueError(f"clustering.backend '{name}' is not available; choose one of auto, {', '.join(BACKENDS)}")
    if name == "cuml" and not cuml_available():
        where = "no CUDA device is visible" if not torch.cuda.is_available() else \
            f"cuML/CuPy are not installed ({INSTALL_HINT})"
        raise ValueError(f"clustering.backend 'cuml' cannot run here: {where}. "
                         "Use clustering.backend=torch (same labels, CPU or CUDA).")
    return name


def cluster_bank(feats_ND: torch.Tensor, cfg: ClusteringConfig, neighbours=None) -> ClusterResult:
    """Pseudo labels for the rows of a memory bank, with the configured method and backend.

    ``neighbours``: precomputed (sims, idx) of the k1 nearest neighbours (sparse backends).
    """
    backend = resolve_backend(cfg.backend, feats_ND.shape[0], feats_ND.device)
    if backend in ("torch", "cuml"):  # stays on the bank's device (CUDA when the bank lives there)
        feats, device = feats_ND.detach(), feats_ND.device
    else:
        feats, device = feats_ND.float().cpu().numpy(), None
    return cluster_features(feats, device=device, k1=cfg.k1, k2=cfg.k2, eps=cfg.eps,
                            min_samples=cfg.min_samples, eps_tight=cfg.eps_tight, refine=cfg.refine,
                            refine_score=cfg.refine_score, outliers=cfg.outliers, backend=backend,
                            neighbours=neighbours)

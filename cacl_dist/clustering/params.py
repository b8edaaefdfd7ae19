"""The parameters of one clustering round, and the choice of the backend that runs it.

:class:`ClusterParams` is built once (from the config, or directly in tests and benchmarks),
checks the choice names then, and is handed whole to every step that reads one of them.
:func:`resolve_backend` is the one place that says what ``auto`` means and whether a backend
can run on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from cacl_dist.clustering.cuml_backend import INSTALL_HINT, cuml_available
from cacl_dist.clustering.names import (AUTO, BACKEND_CHOICES, BACKENDS, OUTLIER_POLICIES, REFINE_SCORES,
                                        SPARSE_BACKENDS, check_choice)
from cacl_dist.errors import UserError

if TYPE_CHECKING:
    from cacl_dist.config import ClusteringConfig


def resolve_backend(name: str) -> str:
    """Map ``auto`` to the backend it stands for and check that ``name`` can run here.

    ``auto`` is the sparse torch path everywhere: exact (scikit-learn's labels, border ties
    included), no N x N matrix, and faster than the dense reference on a CPU (see
    benchmarks/results/bench_cluster.md). cuML is never chosen automatically: its DBSCAN needs
    a dense N x N matrix on the GPU and may break border ties differently.
    """
    check_choice("backend", name, BACKEND_CHOICES)
    if name == AUTO:
        return "torch"
    if name == "cuml" and not cuml_available():
        where = "no CUDA device is visible" if not torch.cuda.is_available() else \
            f"cuML/CuPy are not installed ({INSTALL_HINT})"
        raise UserError(f"clustering.backend 'cuml' cannot run here: {where}. "
                        "Use clustering.backend=torch (same labels, CPU or CUDA).")
    return name


@dataclass(frozen=True)
class ClusterParams:
    """What one clustering round computes (docs/method.md section 4); the defaults are the paper's.

    Raises ValueError for an unknown choice name, for ``eps_tight > eps`` with refinement, or for
    ``ratio_cluster <= 0``.
    ``backend`` is a resolved name (never ``auto``); use :meth:`from_config` to resolve one.
    """

    k1: int = 30
    """k of the k-reciprocal nearest neighbours."""
    k2: int = 6
    """Neighbours averaged by the query expansion (1 switches it off)."""
    eps: float = 0.6
    """DBSCAN radius on the Jaccard distance."""
    min_samples: int = 4
    """DBSCAN minimum neighbourhood size (a point counts itself)."""
    eps_tight: float = 0.58
    """DBSCAN radius of the over-segmentation used by refinement."""
    refine: bool = True
    """Run cluster refinement after DBSCAN."""
    refine_score: str = "paper"
    """Refinement rule, one of :data:`~cacl_dist.clustering.names.REFINE_SCORES`."""
    ratio_cluster: float = 1.0
    """Factor on the ``official`` score before it is compared with the cluster's spread (the released code's 1.0)."""
    outliers: str = "singleton"
    """Outlier policy, one of :data:`~cacl_dist.clustering.names.OUTLIER_POLICIES`."""
    backend: str = "torch"
    """Implementation, one of :data:`~cacl_dist.clustering.names.BACKENDS`."""

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_choice("refine_score", self.refine_score, REFINE_SCORES)
        check_choice("outliers", self.outliers, OUTLIER_POLICIES)
        if not self.ratio_cluster > 0:
            raise UserError(f"clustering.ratio_cluster must be positive, got {self.ratio_cluster}; "
                            "the released code uses 1.0.")
        if self.refine and self.eps_tight > self.eps:
            raise UserError(
                f"clustering.eps_tight={self.eps_tight} is larger than clustering.eps={self.eps}; refinement "
                "over-segments with a tighter radius, so set eps_tight <= eps (the default is eps - 0.02)."
            )

    @classmethod
    def from_config(cls, cfg: ClusteringConfig) -> ClusterParams:
        """The params of the ``clustering`` config section, its backend resolved (see :func:`resolve_backend`)."""
        return cls(k1=cfg.k1, k2=cfg.k2, eps=cfg.eps, min_samples=cfg.min_samples, eps_tight=cfg.eps_tight,
                   refine=cfg.refine, refine_score=cfg.refine_score, ratio_cluster=cfg.ratio_cluster,
                   outliers=cfg.outliers,
                   backend=resolve_backend(cfg.backend))

    @property
    def takes_neighbours(self) -> bool:
        """Whether the backend builds its graph from a k1-nearest-neighbour search that may be precomputed."""
        return self.backend in SPARSE_BACKENDS

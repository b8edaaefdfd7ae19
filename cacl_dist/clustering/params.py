"""The parameters of one clustering round, and the choice of the backend that runs it.

:class:`ClusterParams` is the config's ``clustering`` section (the config composes it, with these
docstrings as the key reference) and what every clustering step reads: defined, documented and
checked here once. It is built once (by the config, or directly in tests and benchmarks) and
handed whole to every step. :func:`resolve_backend` is the one place that says what ``auto``
means and whether a backend can run on this machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from cacl_dist.clustering.cuml_backend import INSTALL_HINT, cuml_available
from cacl_dist.clustering.names import (AUTO, BACKEND_CHOICES, OUTLIER_POLICIES, REFINE_SCORES,
                                        SPARSE_BACKENDS, check_choice)
from cacl_dist.errors import ConfigError, UserError


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


@dataclass
class ClusterParams:
    """What one clustering round computes (docs/method.md section 4); the defaults are the paper's.

    Raises ConfigError (a ValueError) when built with a value it cannot use (:meth:`check`; the config
    calls it again after reading its keys). ``backend`` may be ``auto``: :meth:`resolved` and
    :func:`~cacl_dist.clustering.pseudo_labels.cluster` resolve it.
    """

    k1: int = 30
    """k of the k-reciprocal nearest neighbours."""
    k2: int = 6
    """Neighbours averaged by the query expansion (1 switches it off)."""
    eps: float = 0.6
    """DBSCAN radius on the Jaccard distance."""
    eps_tight: float = 0.58
    """DBSCAN radius of the over-segmentation used by refinement."""
    min_samples: int = 4
    """DBSCAN minimum neighbourhood size (a point counts itself)."""
    refine: bool = True
    """Run cluster refinement after DBSCAN."""
    refine_score: Literal[REFINE_SCORES] = "paper"
    """Refinement rule (docs/method.md section 4.3): 'official' is the authors' released code (SIC.py: a per-point
    score of each tight cluster against the raw cluster's mean distance, point by point); 'paper' keeps a
    sub-cluster iff its mean distance to the rest of the cluster is below the cluster's mean pair distance (a
    cluster of exactly two tight sub-clusters then dissolves whole); 'paper_all' measures a sub-cluster's
    distance to all other members of the cluster, its own included."""
    ratio_cluster: float = 1.0
    """refine_score 'official' only: a point stays when ratio_cluster x score(its tight cluster) <= the raw
    cluster's mean distance (the released code's --ratio_cluster, 1.0); must be positive."""
    outliers: Literal[OUTLIER_POLICIES] = "singleton"
    """Outliers and refined-away points: own singleton clusters (paper) or left out of the epoch."""
    backend: Literal[BACKEND_CHOICES] = "auto"
    """Clustering implementation: 'torch' (sparse and exact, CPU or CUDA), 'sklearn' (the dense
    reference), 'cuml' (sparse graph + RAPIDS cuML DBSCAN on a dense GPU matrix; extra 'cuml');
    'auto' picks the fastest exact one available and the epoch log names it."""
    shard_knn: bool = True
    """With several processes and a sparse backend, every rank searches the nearest neighbours of
    its share of the bank (against all rows) and rank 0 gathers them; false: rank 0 searches alone.
    The labels are the same either way."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """ConfigError naming the first key whose value cannot be used."""
        check_choice("backend", self.backend, BACKEND_CHOICES)
        check_choice("refine_score", self.refine_score, REFINE_SCORES)
        check_choice("outliers", self.outliers, OUTLIER_POLICIES)
        for key in ("k1", "k2", "min_samples", "ratio_cluster"):
            if not getattr(self, key) > 0:
                hint = "; the released code uses 1.0" if key == "ratio_cluster" else ""
                raise ConfigError(f"config key 'clustering.{key}': must be positive, got {getattr(self, key)}{hint}")
        if not 0.0 < self.eps_tight <= self.eps <= 1.0:
            raise ConfigError(
                f"config keys 'clustering.eps_tight' ({self.eps_tight}) and 'clustering.eps' ({self.eps}): need "
                "0 < eps_tight <= eps <= 1 (refinement over-segments with the tighter radius; the default is "
                "eps - 0.02)")
        if self.k2 > self.k1:
            raise ConfigError(f"config keys 'clustering.k2' ({self.k2}) and 'clustering.k1' ({self.k1}): query "
                              "expansion needs k2 <= k1")

    def resolved(self) -> ClusterParams:
        """These params with the backend resolved (never ``auto``; see :func:`resolve_backend`)."""
        return dataclasses.replace(self, backend=resolve_backend(self.backend))

    @property
    def takes_neighbours(self) -> bool:
        """Whether the backend builds its graph from a k1-nearest-neighbour search that may be precomputed."""
        return self.backend == AUTO or self.backend in SPARSE_BACKENDS  # auto is the sparse torch path

"""The names of the clustering choices, defined once for the config and the clustering package.

This module imports nothing but the error classes, so the config can take its allowed values from here without
loading torch. Inside the package the names are checked once, when a
:class:`~cacl_dist.clustering.params.ClusterParams` is built; the functions that act on a
choice read it from those params and do not check it again.
"""

from cacl_dist.errors import ConfigError

REFINE_SCORES = ("paper", "official", "paper_all")
"""Refinement rules, see :mod:`cacl_dist.clustering.refine_rules`."""

OUTLIER_POLICIES = ("singleton", "drop")
"""What becomes of outliers and refined-away points, see :func:`~cacl_dist.clustering.pseudo_labels.assign_labels`."""

BACKENDS = ("torch", "sklearn", "cuml")
"""Clustering implementations: the sparse torch path, the dense reference, the sparse graph with cuML's DBSCAN."""

SPARSE_BACKENDS = ("torch", "cuml")
"""The backends that build the sparse graph from a k-nearest-neighbour search (and accept a precomputed one)."""

AUTO = "auto"
"""The config's backend value that lets :func:`~cacl_dist.clustering.params.resolve_backend` choose."""

BACKEND_CHOICES = (AUTO, *BACKENDS)
"""Every value the config's ``clustering.backend`` accepts."""


def check_choice(key: str, value, allowed: tuple) -> None:
    """Raise ConfigError naming ``clustering.<key>`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"clustering.{key} must be one of {', '.join(allowed)}; got {value!r}.")

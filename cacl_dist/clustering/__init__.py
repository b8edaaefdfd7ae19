"""Pseudo labels for CACL: k-reciprocal Jaccard distance, DBSCAN, refinement, label assignment.

One entry: ``cluster(feats, params, neighbours=None) -> ClusterResult`` (:mod:`.pseudo_labels`),
with ``params`` a :class:`~cacl_dist.clustering.params.ClusterParams` built once: it is the
config's ``clustering`` section (``.resolved()`` resolves its backend), or built directly.

The path that runs by default (``clustering.backend`` auto = torch) is sparse and exact, on
the device of the features (CPU or CUDA), and never builds an N x N matrix:

1. :mod:`.knn` on :mod:`.unit_rows`: the k1 nearest neighbours of every point by a blocked
   search in float32 (TF32 on CUDA) whose candidates are re-scored in float64; a row is
   accepted only when an error bound of the low-precision product proves its top k1, the
   others are recomputed in float64, so the ranks are the float64 ranks.
2. :mod:`.jaccard_sparse`: the k-reciprocal sets with the 2/3 expansion, the softmax encoding
   V' with query expansion, in CSR form; then the Jaccard distance only for pairs that share
   a support column, kept where it is within eps.
3. :mod:`.dbscan_sparse`: DBSCAN on that graph (connected components of core points), equal
   to scikit-learn's labels, border ties included.
4. :mod:`.refine_sparse`: refinement by over-segmentation from the graph (the pairs that are
   not listed have distance exactly 1); the rules themselves (``official``, the released
   code's; ``paper``; ``paper_all``) decide in :mod:`.refine_rules`, for both paths.

:mod:`.torch_backend` chains these steps (``backend="cuml"`` swaps in RAPIDS cuML's DBSCAN,
:mod:`.cuml_backend`). :func:`~cacl_dist.clustering.torch_backend.neighbours_of_rows` searches
the neighbours of a range of rows, so that processes can share step 1 and hand the gathered
result to ``cluster``.

The dense reference (``backend="sklearn"``, :mod:`.reference`: :mod:`.jaccard_reference`,
scikit-learn DBSCAN in :mod:`.dbscan`, :mod:`.refine`) computes the same labels from N x N
matrices; it is the oracle of the tests. The choice names live in :mod:`.names`, which
imports nothing.

Nothing in this package talks to other processes; callers gather and broadcast. The names
below are imported on first use, so importing a submodule (the config reads :mod:`.names`)
does not load the whole pipeline.
"""

import importlib

_EXPORTS = {
    "ClusterParams": "params",
    "resolve_backend": "params",
    "ClusterResult": "pseudo_labels",
    "assign_labels": "pseudo_labels",
    "cluster": "pseudo_labels",
    "neighbours_of_rows": "torch_backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines ``name`` when it is first asked for."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))

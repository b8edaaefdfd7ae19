"""Pseudo labels for CACL: k-reciprocal Jaccard distance, DBSCAN, refinement, assembly.

- ``jaccard_reference``: exact dense k-reciprocal Jaccard distance (the oracle).
- ``dbscan``: DBSCAN on a precomputed distance matrix.
- ``refine``: over-segmentation based cluster refinement (paper and official scores).
- ``pseudo_labels``: the pipeline, label assignment and the ``ClusterResult`` record.

Nothing in this package talks to other processes; callers gather and broadcast.
"""

from cacl_dist.clustering.pseudo_labels import ClusterResult, assign_labels, cluster_features

__all__ = ["ClusterResult", "assign_labels", "cluster_features"]

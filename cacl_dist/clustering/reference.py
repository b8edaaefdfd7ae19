"""The dense reference pipeline: Jaccard matrix -> scikit-learn DBSCAN -> dense refinement.

Written for clarity, not speed: it builds N x N matrices (memory grows as N^2), so it serves as
the oracle the sparse path is tested against, and as ``clustering.backend=sklearn`` on small
data. Each step is the textbook one: :func:`~cacl_dist.clustering.jaccard_reference.jaccard_distance_reference`
(float32 matrix), :func:`~cacl_dist.clustering.dbscan.dbscan_precomputed` at ``eps`` and at
``eps_tight``, :func:`~cacl_dist.clustering.refine.refine_clusters`.
"""

from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.jaccard_reference import jaccard_distance_reference
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.refine import refine_clusters
from cacl_dist.clustering.torch_backend import stage_bar


def cluster_dense(feats, params: ClusterParams, show_progress: bool = False) -> tuple:
    """Return (raw_labels, refined_labels, num_removed) for the rows of ``feats`` (numpy or torch, (N, D)).

    ``raw_labels`` are the DBSCAN labels at ``params.eps`` and ``refined_labels`` those left by
    refinement (equal to ``raw_labels`` when ``params.refine`` is false), both int64 numpy
    arrays with -1 for outliers; ``num_removed`` counts the points refinement took out.
    ``show_progress``: a bar per stage, one step each (the neighbours are part of the dense Jaccard step).
    """
    with stage_bar("Jaccard", show_progress, unit="steps") as bar:
        bar.add_total(1)
        dist = jaccard_distance_reference(feats, k1=params.k1, k2=params.k2)
        bar.update()
    with stage_bar("DBSCAN", show_progress, unit="runs") as bar:
        bar.add_total(2 if params.refine else 1)
        raw = dbscan_precomputed(dist, params.eps, params.min_samples)
        bar.update()
        if not params.refine:
            return raw, raw, 0
        tight = dbscan_precomputed(dist, params.eps_tight, params.min_samples)
        bar.update()
    with stage_bar("refinement", show_progress, unit="steps") as bar:
        bar.add_total(1)
        refined, num_removed = refine_clusters(dist, raw, tight, params)
        bar.update()
    return raw, refined, num_removed

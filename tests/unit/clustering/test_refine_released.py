"""The ``official`` refinement against the released code's rule (SIC.py), written out with loops.

The released code numbers every raw and every tight outlier as a singleton, gives each point i
the partners j that share exactly one of (raw label, tight label) with it, t_i = (sum of d_ij
over the partners) / max(1, number of partners)^2, scores a tight cluster with the sum of its
t_i, and keeps i in its raw cluster C iff ratio_cluster * score(T(i)) <= (sum of d_ab over all
a, b in C) / |C|^2. The features below give identities two modes and put a few points between
identities, so tight clusters split raw clusters and some tight clusters reach into a second
raw cluster through a border point (docs/method.md section 4.3).
"""

import dataclasses

import numpy as np
import pytest
import torch

from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.jaccard_reference import jaccard_distance_reference
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.pseudo_labels import cluster
from cacl_dist.clustering.refine import refine_clusters
from cacl_dist.clustering.refine_sparse import refine_sparse

from .test_sparse import one_torch_thread

__all__ = ["one_torch_thread"]  # the module-wide fixture, shared with test_sparse

# Clustering settings under which these features often put a tight border point into another
# raw cluster than the rest of its tight cluster.
K1, K2, EPS, EPS_TIGHT, MIN_SAMPLES = 8, 4, 0.6, 0.55, 6
SEEDS = range(24)


def two_mode_identities(seed, num_ids=10, per_mode=8, dim=16, mode_gap=0.45, spread=0.6, bridges=8):
    """Unit features: each identity two nearby Gaussian modes; ``bridges`` points between neighbouring identities."""
    rng = np.random.default_rng(seed)
    parts, modes = [], []
    for _ in range(num_ids):
        centre = rng.normal(size=dim)
        centre /= np.linalg.norm(centre)
        direction = rng.normal(size=dim) / np.sqrt(dim)
        for sign in (-1, 1):
            mode = centre + sign * mode_gap / 2 * direction
            modes.append(mode)
            count = per_mode + int(rng.integers(-3, 4))
            parts.append(mode + spread * rng.normal(size=(count, dim)) / np.sqrt(dim))
    for i in range(1, len(modes), 2):  # second mode of an identity -> first mode of the next one
        a, b = modes[i], modes[(i + 1) % len(modes)]
        t = rng.uniform(0.3, 0.7, size=(bridges, 1))
        parts.append(a + t * (b - a) + 0.3 * rng.normal(size=(bridges, dim)) / np.sqrt(dim))
    feats = np.concatenate(parts)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def singletons_numbered(labels):
    """Labels with every -1 given a fresh label of its own, as the released code numbers outliers."""
    out = [int(v) for v in labels]
    fresh = max(out + [-1]) + 1
    for i, v in enumerate(out):
        if v == -1:
            out[i] = fresh
            fresh += 1
    return out


def released_rule(dist, raw, tight, ratio=1.0):
    """The released code's refinement, point by point in a plain loop; (labels with -1, removed)."""
    n = len(raw)
    graw, gtight = np.array(singletons_numbered(raw)), np.array(singletons_numbered(tight))
    dist = np.asarray(dist, dtype=np.float64)
    t = np.zeros(n)
    for i in range(n):
        partners = (graw == graw[i]) != (gtight == gtight[i])
        t[i] = dist[i, partners].sum() / max(1, int(partners.sum())) ** 2
    score = {label: t[gtight == label].sum() for label in set(gtight.tolist())}
    spread = {label: dist[np.ix_(graw == label, graw == label)].sum() / int((graw == label).sum()) ** 2
              for label in set(graw.tolist())}
    refined, removed = [], 0
    for i in range(n):
        keep = ratio * score[gtight[i]] <= spread[graw[i]]
        refined.append(int(raw[i]) if keep else -1)
        removed += int(raw[i] >= 0 and not keep)
    return np.array(refined), removed


def cluster_form(dist, raw, tight):
    """The sub-cluster form of the same score (X_j / |C \\ C_j|^2 against the cluster's |C|^2 mean)."""
    refined = np.array(raw)
    for c in set(raw[raw >= 0].tolist()):
        members = np.flatnonzero(raw == c)
        keys = [("t", tight[i]) if tight[i] >= 0 else ("o", i) for i in members]
        if len(set(keys)) == 1:
            continue
        spread = dist[np.ix_(members, members)].astype(np.float64).sum() / members.size ** 2
        for key in set(keys):
            part = members[[k == key for k in keys]]
            rest = np.setdiff1d(members, part)
            if dist[np.ix_(part, rest)].astype(np.float64).sum() / rest.size ** 2 > spread:
                refined[part] = -1
    return refined


def clustered(seed):
    dist = jaccard_distance_reference(two_mode_identities(seed), K1, K2)
    return dist, dbscan_precomputed(dist, EPS, MIN_SAMPLES), dbscan_precomputed(dist, EPS_TIGHT, MIN_SAMPLES)


def spans_two_raw_clusters(raw, tight):
    """Whether some tight cluster has members in two raw clusters."""
    return any(len(set(raw[tight == t].tolist())) > 1 for t in set(tight[tight >= 0].tolist()))


def sparse_pairs(dist):
    """Every pair i != j with d < 1 (the rest are 1 in the sparse graph), as torch tensors."""
    rows, cols = np.nonzero((dist < 1) & ~np.eye(dist.shape[0], dtype=bool))
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(dist[rows, cols])


@pytest.fixture(scope="module")
def cases():
    return [clustered(seed) for seed in SEEDS]


def test_features_exercise_split_clusters_and_border_points(cases):
    split = [any(len(set(tight[raw == c].tolist())) > 1 for c in set(raw[raw >= 0].tolist()))
             for _, raw, tight in cases]
    spanning = [spans_two_raw_clusters(raw, tight) for _, raw, tight in cases]
    assert sum(split) >= 20 and sum(spanning) >= 8, (sum(split), sum(spanning))
    # Where a tight cluster spans two raw clusters the released rule is not the sub-cluster form.
    assert any(not np.array_equal(released_rule(*case)[0], cluster_form(*case)) for case in cases)


@pytest.mark.parametrize("ratio", [1.0, 0.6])
def test_official_equals_the_released_rule_on_both_backends(cases, ratio):
    params = ClusterParams(refine_score="official", ratio_cluster=ratio)
    removed_somewhere = 0
    for dist, raw, tight in cases:
        expected, expected_removed = released_rule(dist, raw, tight, ratio)
        dense, dense_removed = refine_clusters(dist, raw, tight, params)
        np.testing.assert_array_equal(dense, expected)
        assert dense_removed == expected_removed
        sparse, sparse_removed = refine_sparse(*sparse_pairs(dist), raw, tight, params)
        np.testing.assert_array_equal(sparse, expected)
        assert sparse_removed == expected_removed
        removed_somewhere += expected_removed > 0
    assert removed_somewhere >= 10


@pytest.mark.parametrize("score", ["official", "paper", "paper_all"])
def test_sparse_pipeline_equals_dense_reference_on_split_clusters(score):
    params = ClusterParams(k1=K1, k2=K2, eps=EPS, eps_tight=EPS_TIGHT, min_samples=MIN_SAMPLES, refine_score=score)
    for seed in SEEDS[:8]:
        feats = two_mode_identities(seed)
        ref = cluster(feats, dataclasses.replace(params, backend="sklearn"))
        got = cluster(torch.from_numpy(feats).float(), dataclasses.replace(params, backend="torch"))
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert got.num_refined_away == ref.num_refined_away

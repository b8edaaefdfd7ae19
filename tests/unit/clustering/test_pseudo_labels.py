"""Tests for pseudo-label assembly (docs/method.md section 4.4-4.5)."""

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.jaccard_reference import jaccard_distance_reference
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.pseudo_labels import ClusterResult, assign_labels, cluster
from cacl_dist.clustering.refine import refine_clusters

SINGLETON, DROP = ClusterParams(outliers="singleton"), ClusterParams(outliers="drop")


def reference(**kwargs) -> ClusterParams:
    """Params of the dense reference pipeline."""
    return ClusterParams(backend="sklearn", **kwargs)


def sphere_blobs(num_blobs, per_blob, dim, spread, seed):
    """Well separated Gaussian blobs projected onto the unit sphere, with their blob ids."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_blobs, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = np.repeat(np.arange(num_blobs), per_blob)
    feats = centres[truth] + spread * rng.standard_normal((truth.size, dim)) / np.sqrt(dim)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    order = rng.permutation(truth.size)  # blobs interleaved, not in index order
    return feats[order].astype(np.float32), truth[order]


def test_assign_labels_singleton_policy():
    refined = np.array([5, -1, 2, 5, -1, 2, 7])
    # clusters by first appearance: 5 -> 0, 2 -> 1, 7 -> 2; then -1 at index 1 -> 3, 4 -> 4
    labels = assign_labels(refined, SINGLETON)
    np.testing.assert_array_equal(labels, [0, 3, 1, 0, 4, 1, 2])
    assert labels.dtype == np.int64


def test_assign_labels_drop_policy():
    labels = assign_labels(np.array([5, -1, 2, 5, -1, 2, 7]), DROP)
    np.testing.assert_array_equal(labels, [0, -1, 1, 0, -1, 1, 2])


def test_assign_labels_edge_cases():
    np.testing.assert_array_equal(assign_labels(np.array([-1, -1]), SINGLETON), [0, 1])
    np.testing.assert_array_equal(assign_labels(np.array([-1, -1]), DROP), [-1, -1])
    assert assign_labels(np.array([], dtype=np.int64)).size == 0
    with pytest.raises(ValueError, match="outliers"):
        assign_labels(np.array([0, 1]), ClusterParams(outliers="keep"))
    with pytest.raises(ValueError, match="negative"):
        assign_labels(np.array([0, -3]))


def test_cluster_recovers_separated_blobs():
    feats, truth = sphere_blobs(num_blobs=5, per_blob=40, dim=32, spread=0.3, seed=0)
    result = cluster(feats, reference())  # the paper's defaults
    assert isinstance(result, ClusterResult)
    assert adjusted_rand_score(truth, result.labels) == 1.0
    assert result.num_clusters == 5 and result.num_raw_clusters == 5
    assert result.num_outliers == 0 and result.num_refined_away == 0
    assert result.labels.dtype == np.int64 and result.labels.shape == (200,)
    assert sorted(np.unique(result.labels)) == [0, 1, 2, 3, 4]
    assert result.backend == "sklearn" and result.seconds > 0


def test_cluster_outlier_policies_and_torch_input():
    feats, truth = sphere_blobs(num_blobs=3, per_blob=40, dim=32, spread=0.3, seed=1)
    # A far away group of 6 points: with k2 = 6 their encodings are supported on the group
    # only, so they sit at distance 1 from every blob point. Fewer than min_samples = 8, they
    # are raw outliers.
    rng = np.random.default_rng(101)
    direction = rng.standard_normal(32)
    group = direction / np.linalg.norm(direction) + 0.01 * rng.standard_normal((6, 32))
    group /= np.linalg.norm(group, axis=1, keepdims=True)
    feats = np.concatenate([feats, group.astype(np.float32)])

    singleton = cluster(torch.from_numpy(feats), reference(min_samples=8, outliers="singleton"))
    assert singleton.num_outliers == 6 and singleton.num_raw_clusters == 3
    assert singleton.num_clusters == 9
    np.testing.assert_array_equal(singleton.labels[-6:], [3, 4, 5, 6, 7, 8])
    assert adjusted_rand_score(truth, singleton.labels[:-6]) == 1.0

    dropped = cluster(feats, reference(min_samples=8, outliers="drop"))
    assert dropped.num_clusters == 3
    np.testing.assert_array_equal(dropped.labels[-6:], [-1] * 6)
    np.testing.assert_array_equal(dropped.labels[:-6], singleton.labels[:-6])


@pytest.mark.parametrize("score", ["paper", "official"])
def test_cluster_chains_the_reference_steps(score):
    # Loose blobs with a small k1: refinement removes points here, so this checks the wiring
    # (eps for raw clusters, eps_tight for sub-clusters, the chosen score) step by step.
    feats, _ = sphere_blobs(num_blobs=3, per_blob=40, dim=32, spread=0.3, seed=1)
    dist = jaccard_distance_reference(feats, k1=10, k2=6)
    raw = dbscan_precomputed(dist, 0.6, 4)
    tight = dbscan_precomputed(dist, 0.58, 4)
    refined, removed = refine_clusters(dist, raw, tight, ClusterParams(refine_score=score))
    assert removed > 0
    result = cluster(feats, reference(k1=10, k2=6, refine_score=score))
    np.testing.assert_array_equal(result.labels, assign_labels(refined, SINGLETON))
    assert result.num_refined_away == removed
    assert result.num_raw_clusters == len(set(raw.tolist()) - {-1})
    assert result.num_outliers == int((raw == -1).sum())
    unrefined = cluster(feats, reference(k1=10, k2=6, refine=False))
    np.testing.assert_array_equal(unrefined.labels, assign_labels(raw, SINGLETON))
    assert unrefined.num_refined_away == 0


@pytest.mark.parametrize(
    "kwargs, option",
    [
        ({"backend": "faiss"}, "backend"),
        ({"refine_score": "mean"}, "refine_score"),
        ({"outliers": "ignore"}, "outliers"),
        ({"eps": 0.5, "eps_tight": 0.55}, "eps_tight"),
    ],
)
def test_cluster_rejects_bad_options(kwargs, option):
    feats, _ = sphere_blobs(num_blobs=2, per_blob=20, dim=8, spread=0.3, seed=2)
    with pytest.raises(ValueError, match=option):
        cluster(feats, ClusterParams(k1=5, k2=2, **kwargs))


def test_cluster_result_carries_the_raw_and_refined_labels():
    feats, _ = sphere_blobs(num_blobs=4, per_blob=30, dim=16, spread=0.8, seed=2)
    result = cluster(feats, reference(k1=10, k2=3))
    assert result.num_outliers > 0 and result.num_refined_away > 0
    raw = result.raw_labels
    assert raw.shape == result.labels.shape and raw.dtype == np.int64
    assert np.unique(raw[raw >= 0]).size == result.num_raw_clusters
    assert np.count_nonzero(raw == -1) == result.num_outliers
    refined = result.refined_labels
    assert np.count_nonzero((raw >= 0) & (refined == -1)) == result.num_refined_away
    assert np.array_equal(refined[refined >= 0], raw[refined >= 0])

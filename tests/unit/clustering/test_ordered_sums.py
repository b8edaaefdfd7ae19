"""The atomic-free sums the sparse path takes on CUDA (cacl_dist.ordered_add), forced on the CPU:
the same pairs and distances bit for bit, hence the reference's labels."""

import dataclasses
import os

import numpy as np
import pytest
import torch

from cacl_dist import ordered_add as reduce
from cacl_dist.clustering.jaccard_sparse import jaccard_sparse
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.pseudo_labels import cluster

from .test_sparse import MINI_ROOT, cluster_cases, datasets, market_mini_features, one_torch_thread, sphere_blobs

__all__ = ["one_torch_thread"]  # the module-wide fixture, shared with test_sparse


def force_ordered_sums(monkeypatch) -> list:
    """Make every index-add of the pipeline take the ordered path; returns the list of its calls."""
    calls = []
    original = reduce.ordered_index_add_
    monkeypatch.setattr(reduce, "adds_unordered", lambda device: True)
    monkeypatch.setattr(reduce, "ordered_index_add_", lambda *a: calls.append(1) or original(*a))
    return calls


@pytest.fixture
def ordered_sums(monkeypatch):
    """The ordered path forced for the whole test; the list of its calls."""
    return force_ordered_sums(monkeypatch)


def test_forced_ordered_sums_give_the_same_jaccard_pairs(monkeypatch):
    expected = [jaccard_sparse(feats, 10, 3, max_distance=1.0) for _, feats in datasets()]
    calls = force_ordered_sums(monkeypatch)
    for (name, feats), want in zip(datasets(), expected):
        got = jaccard_sparse(feats, 10, 3, max_distance=1.0)
        for a, b in zip(got, want):
            assert torch.equal(a, b), name
    assert len(calls) >= 3 * len(expected)  # softmax, query expansion, overlaps


@pytest.mark.parametrize("score", ["paper", "official"])
def test_forced_ordered_sums_give_the_reference_labels(ordered_sums, score):
    for feats, k1, k2, refine in cluster_cases():
        params = ClusterParams(k1=k1, k2=k2, refine=refine, refine_score=score)
        ref = cluster(feats, dataclasses.replace(params, backend="sklearn"))
        got = cluster(torch.from_numpy(feats).float(), dataclasses.replace(params, backend="torch"))
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert got.num_refined_away == ref.num_refined_away
    assert ordered_sums


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(MINI_ROOT), reason="market1501-mini is not available")
def test_forced_ordered_sums_on_real_features(ordered_sums):
    feats = market_mini_features()
    params = ClusterParams(k1=20, k2=6, eps=0.6, eps_tight=0.58)
    ref = cluster(feats, dataclasses.replace(params, backend="sklearn"))
    got = cluster(feats, dataclasses.replace(params, backend="torch"))
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert got.num_refined_away == ref.num_refined_away and ordered_sums


@pytest.mark.gpu
def test_cuda_clustering_repeats_bit_for_bit():
    feats = torch.from_numpy(sphere_blobs(3000, 128, 150, 1.1, seed=17)).float().cuda()
    first = jaccard_sparse(feats, 20, 6, max_distance=1.0)
    second = jaccard_sparse(feats, 20, 6, max_distance=1.0)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    assert torch.equal(first[2].view(torch.int64), second[2].view(torch.int64))
    params = ClusterParams(k1=20, k2=6, backend="torch")
    labels = [cluster(feats, params) for _ in range(2)]
    np.testing.assert_array_equal(labels[0].labels, labels[1].labels)
    assert labels[0].num_refined_away == labels[1].num_refined_away
    np.testing.assert_array_equal(labels[0].labels, cluster(feats.cpu().numpy(), dataclasses.replace(
        params, backend="sklearn")).labels)

"""k-reciprocal re-ranking (Zhong et al. 2017): the sparse and dense versions against the standard.

The oracle, tests/helpers/rerank_standard.py, follows the algorithm step by step with dense
matrices and loops (docs/method.md section 7).
"""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cacl_dist.clustering.jaccard_reference import k_nearest_neighbours
from cacl_dist.evaluation.distances import FeatureRows
from cacl_dist.evaluation.evaluator import evaluate_features
from cacl_dist.evaluation.metrics import evaluate_ranking
from cacl_dist.evaluation.neighbours import rank_neighbours, scan_points
from tests.helpers.rerank_dense import k_reciprocal_rerank, original_distance
from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker

from tests.helpers.rerank_standard import standard_rerank

METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")


def protocol(num_query, num_gallery, num_ids, seed):
    """Random pids and cameras with every query's pid present in the gallery."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, num_ids, num_query)
    g_pids = np.concatenate([q_pids, rng.integers(0, num_ids, num_gallery - num_query)])[:num_gallery]
    return q_pids, g_pids, rng.integers(0, 3, num_query), rng.integers(3, 6, num_gallery)


def blobs(num, dim, num_centres, spread, seed):
    """(features, blob ids): Gaussian blobs around random unit centres, not normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_centres, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, num_centres, num)
    return centres[truth] + spread * rng.normal(size=(num, dim)) / np.sqrt(dim), truth


def sparse_matrix(q, g, params, **kwargs):
    """All blocks of the sparse re-ranking stacked (small blocks, to cross block edges)."""
    reranker = SparseReranker(q, g, params, block=kwargs.pop("block", 37))
    return torch.cat([b for _, b in reranker.blocks(block_rows=kwargs.pop("block_rows", 7))]).numpy()


def assert_same_metrics(dist_a, dist_b, ids):
    a, b = evaluate_ranking(dist_a, *ids), evaluate_ranking(dist_b, *ids)
    for key in METRICS:
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    return a


@pytest.mark.parametrize("num_query, num_gallery, dim, k1, k2, lam", [
    (30, 170, 16, 20, 6, 0.3), (25, 140, 8, 10, 3, 0.5), (20, 120, 32, 7, 1, 0.0), (15, 90, 12, 4, 4, 1.0),
])
def test_sparse_and_dense_equal_the_standard_on_random_features(num_query, num_gallery, dim, k1, k2, lam):
    rng = np.random.default_rng(k1 + dim)
    feats = rng.standard_normal((num_query + num_gallery, dim)).astype(np.float32)
    q, g = feats[:num_query], feats[num_query:]
    expected = standard_rerank(q, g, k1, k2, lam)
    dense = k_reciprocal_rerank(q, g, k1, k2, lam)
    sparse = sparse_matrix(q, g, RerankParams(k1, k2, lam))
    np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-12)
    ids = protocol(num_query, num_gallery, 12, k1)
    assert_same_metrics(sparse, expected, ids)
    assert_same_metrics(dense, expected, ids)


def test_clustered_features_stored_pairs_and_metrics():
    feats, truth = blobs(420, 24, 30, 0.9, seed=3)
    q, g = feats[:70], feats[70:]
    ids = (truth[:70], truth[70:], np.zeros(70, dtype=int), np.ones(350, dtype=int))
    expected, expected_jaccard = standard_rerank(q, g, return_jaccard=True)
    reranker = SparseReranker(torch.from_numpy(q), torch.from_numpy(g), block=64)
    sparse = torch.cat([b for _, b in reranker.blocks(block_rows=16)]).numpy()
    np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-12)
    query, gallery, jaccard = (t.numpy() for t in reranker.jaccard_pairs())
    stored = np.zeros(expected_jaccard.shape, dtype=bool)
    stored[query, gallery] = True
    np.testing.assert_allclose(jaccard, expected_jaccard[query, gallery], rtol=0, atol=1e-12)
    assert np.all(expected_jaccard[~stored] == 1.0) and np.all(jaccard < 1.0)
    assert 0 < stored.sum() < stored.size
    reranked = assert_same_metrics(sparse, expected, ids)
    plain = evaluate_ranking(cdist(q, g), *ids)
    assert reranked["mAP"] > plain["mAP"]  # what re-ranking is for: clusters pull their members up


def test_exact_ties_follow_the_same_rule_everywhere():
    # Entries of +-0.25 make every product exact: many equal distances, identical in every version.
    rng = np.random.default_rng(4)
    feats = rng.choice([-0.25, 0.25], size=(150, 8))
    q, g = feats[:25], feats[25:]
    expected = standard_rerank(q, g, 6, 3, 0.3)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g, 6, 3, 0.3), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sparse_matrix(q, g, RerankParams(6, 3, 0.3)), expected, rtol=0, atol=1e-12)
    # The neighbour lists: candidates cut inside a run of equal distances are settled from full rows.
    rows = FeatureRows(q, g)
    reference = k_nearest_neighbours(original_distance(feats), 7)
    for width in (6, 7, 10):
        row_max, cand_dist, cand_index = scan_points(rows, width, block=40)
        np.testing.assert_array_equal(rank_neighbours(rows, row_max, cand_dist, cand_index, 7).numpy(), reference)


def test_lambda_one_ranks_as_the_euclidean_distance():
    feats, truth = blobs(200, 10, 12, 1.5, seed=5)
    q, g = feats[:40], feats[40:]
    ids = (truth[:40], truth[40:], np.zeros(40, dtype=int), np.ones(160, dtype=int))
    squared = cdist(np.concatenate([q, g]), np.concatenate([q, g]), "sqeuclidean")
    out = sparse_matrix(q, g, RerankParams(8, 3, 1.0))
    np.testing.assert_allclose(out, (squared / squared.max(axis=1, keepdims=True))[:40, 40:], atol=1e-12)
    plain = evaluate_features(q, g, *ids)
    reranked = evaluate_features(q, g, *ids, rerank=RerankParams(8, 3, 1.0))
    for key in METRICS:
        assert reranked[key] == plain[key] == evaluate_ranking(cdist(q, g), *ids)[key]


def test_validation():
    feats = np.random.default_rng(6).standard_normal((30, 4))
    with pytest.raises(ValueError, match="k2=7 is larger than k1=5"):
        RerankParams(5, 7)
    with pytest.raises(ValueError, match="lambda_value"):
        RerankParams(lambda_value=1.5)
    with pytest.raises(ValueError, match="k1 must be an integer"):
        RerankParams(k1=0)
    with pytest.raises(ValueError, match="lower k1"):
        SparseReranker(feats[:5], feats[5:], RerankParams(30, 6))
    with pytest.raises(ValueError, match="feature_dim"):
        SparseReranker(feats[:5], feats[5:, :3])
    bad = feats.copy()
    bad[7, 1] = np.inf
    with pytest.raises(ValueError, match="g_feats contains NaN or infinite"):
        SparseReranker(bad[:5], bad[5:])
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(feats[:5], feats[5:], lambda_value=-0.1)

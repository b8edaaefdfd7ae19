"""Tests for k-reciprocal re-ranking (Zhong et al. 2017)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cacl_dist.evaluation.metrics import pairwise_distance
from cacl_dist.evaluation.rerank import k_reciprocal_rerank
from tests.unit.clustering.test_jaccard import brute_force_jaccard


def features(num_query, num_gallery, dim, seed):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((num_query + num_gallery, dim))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    return feats[:num_query], feats[num_query:]


def original_by_definition(query, gallery):
    """Squared Euclidean distance over all Q + G images, each row divided by its maximum."""
    all_feats = np.concatenate([query, gallery])
    squared = cdist(all_feats, all_feats, "sqeuclidean")
    return squared / squared.max(axis=1, keepdims=True)


def test_shape_and_dtype():
    query, gallery = features(7, 33, 12, 0)
    out = k_reciprocal_rerank(query, gallery, k1=6, k2=3, lambda_value=0.3)
    assert out.shape == (7, 33) and out.dtype == np.float32
    assert np.all(np.isfinite(out)) and out.min() >= 0.0


def test_lambda_one_is_the_original_distance():
    query, gallery = features(9, 41, 16, 1)
    out = k_reciprocal_rerank(query, gallery, k1=8, k2=3, lambda_value=1.0)
    np.testing.assert_allclose(out, original_by_definition(query, gallery)[:9, 9:], atol=1e-6)
    # ... which orders every query's gallery as the Euclidean distance does.
    np.testing.assert_array_equal(
        np.argsort(out, axis=1), np.argsort(pairwise_distance(query, gallery), axis=1)
    )


def test_lambda_zero_is_the_jaccard_distance_of_the_original_distance():
    query, gallery = features(6, 30, 10, 2)
    original = original_by_definition(query, gallery)
    expected, _ = brute_force_jaccard(original.tolist(), 5, 2)
    out = k_reciprocal_rerank(query, gallery, k1=5, k2=2, lambda_value=0.0)
    np.testing.assert_allclose(out, expected[:6, 6:], atol=2e-6)
    mixed = k_reciprocal_rerank(query, gallery, k1=5, k2=2, lambda_value=0.3)
    np.testing.assert_allclose(mixed, 0.7 * expected[:6, 6:] + 0.3 * original[:6, 6:], atol=2e-6)


def test_accepts_torch_and_validates():
    query, gallery = features(4, 20, 8, 3)
    from_numpy = k_reciprocal_rerank(query, gallery, k1=5, k2=2)
    from_torch = k_reciprocal_rerank(torch.from_numpy(query), torch.from_numpy(gallery), k1=5, k2=2)
    np.testing.assert_array_equal(from_numpy, from_torch)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(query, gallery, lambda_value=1.5)
    with pytest.raises(ValueError, match="feature_dim"):
        k_reciprocal_rerank(query, gallery[:, :4])
    with pytest.raises(ValueError, match="lower k1"):
        k_reciprocal_rerank(query, gallery, k1=24, k2=2)

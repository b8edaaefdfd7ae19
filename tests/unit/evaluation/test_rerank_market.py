"""Re-ranking on real Market-1501 features (../shared/data/market1501-mini; skipped when absent).

Features of an untrained tiny ResNet on the images of the first identities of the evaluation
split: real image statistics, a few hundred queries, the standard's numbers to compare with.
"""

import numpy as np
import pytest
import torch

from cacl_dist.evaluation.evaluator import evaluate_features
from cacl_dist.evaluation.metrics import evaluate_ranking
from tests.helpers.rerank_dense import k_reciprocal_rerank
from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker

from tests.helpers.rerank_standard import standard_rerank
from tests.helpers.runs import MARKET_MINI

pytestmark = pytest.mark.skipif(not MARKET_MINI.is_dir(), reason=f"{MARKET_MINI} is absent")


@pytest.fixture(scope="module")
def market():
    """(q_feats, g_feats, ids) of the query and gallery images of the first 30 evaluation pids."""
    from cacl_dist.data.layouts import load_dataset
    from cacl_dist.evaluation.extract import ExtractionSettings, extract_shard
    from cacl_dist.models.cacl import Branch

    dataset = load_dataset("market1501", str(MARKET_MINI))
    pids = sorted({r.pid for r in dataset.query})[:30]
    query = [r for r in dataset.query if r.pid in pids]
    gallery = [r for r in dataset.gallery if r.pid in pids]
    torch.manual_seed(0)
    settings = ExtractionSettings(height=64, width=32, batch_size=128)
    feats = extract_shard(Branch("resnet_tiny"), query + gallery, 0, len(query) + len(gallery), settings)
    ids = tuple(np.array([getattr(r, key) for r in records])
                for key, records in (("pid", query), ("pid", gallery), ("camid", query), ("camid", gallery)))
    return feats[:len(query)], feats[len(query):], ids


def test_real_features_equal_the_standard(market):
    q, g, ids = market
    assert 100 < q.shape[0] < 200 and 250 < g.shape[0] < 500
    expected, expected_jaccard = standard_rerank(q.numpy(), g.numpy(), return_jaccard=True)
    reranker = SparseReranker(q, g, block=100)
    sparse = torch.cat([b for _, b in reranker.blocks(block_rows=32)]).numpy()
    np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(k_reciprocal_rerank(q, g), expected, rtol=0, atol=1e-12)
    query, gallery, jaccard = (t.numpy() for t in reranker.jaccard_pairs())
    np.testing.assert_allclose(jaccard, expected_jaccard[query, gallery], rtol=0, atol=1e-12)
    assert (expected_jaccard < 1).sum() == query.size
    got = evaluate_features(q, g, *ids, rerank=RerankParams())
    reference = evaluate_ranking(expected, *ids)
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert got[key] == pytest.approx(reference[key], abs=1e-6), key
    assert got["num_valid_queries"] == reference["num_valid_queries"] > 80

"""Ranking and re-ranking on a CUDA device equal the CPU path (skipped without CUDA)."""

import numpy as np
import pytest
import torch

from cacl_dist.evaluation.evaluator import evaluate_features
from cacl_dist.evaluation.metrics import evaluate_ranking, match_ranks
from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker

pytestmark = pytest.mark.gpu

KEYS = ("mAP", "rank1", "rank5", "rank10", "mINP", "num_valid_queries")


def problem(num_query, num_gallery, dim, seed):
    """Clustered float32 features with their blob ids as pids, and cameras."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_gallery // 8, dim))
    truth = rng.integers(0, centres.shape[0], num_query + num_gallery)
    feats = (centres[truth] + 0.8 * rng.normal(size=(truth.size, dim))).astype(np.float32)
    ids = (truth[:num_query], truth[num_query:], rng.integers(0, 3, num_query), rng.integers(0, 6, num_gallery))
    return torch.from_numpy(feats[:num_query]), torch.from_numpy(feats[num_query:]), ids


def test_match_ranks_on_gpu_equal_cpu_with_ties():
    rng = np.random.default_rng(0)
    dist = torch.from_numpy(rng.integers(0, 4, (64, 500)).astype(np.float64))
    ids = [torch.from_numpy(a) for a in (rng.integers(0, 9, 64), rng.integers(0, 9, 500),
                                         rng.integers(0, 2, 64), rng.integers(0, 2, 500))]
    cpu = match_ranks(dist, *ids)
    gpu = match_ranks(dist.cuda(), *(a.cuda() for a in ids))
    for a, b in zip(cpu, gpu):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=0)


def test_plain_ranking_on_gpu_equals_cpu():
    q, g, ids = problem(300, 4000, 64, 1)
    cpu = evaluate_features(q, g, *ids)
    gpu = evaluate_features(q.cuda(), g.cuda(), *ids)
    for key in KEYS:
        assert gpu[key] == cpu[key], key


def test_sparse_rerank_on_gpu_equals_cpu():
    q, g, ids = problem(300, 3000, 64, 2)
    cpu = SparseReranker(q, g, RerankParams())
    gpu = SparseReranker(q.cuda(), g.cuda(), RerankParams(), block=1024)
    torch.testing.assert_close(gpu.neighbours.cpu(), cpu.neighbours, rtol=0, atol=0)
    cpu_dist = torch.cat([b for _, b in cpu.blocks()])
    gpu_dist = torch.cat([b for _, b in gpu.blocks(block_rows=100)]).cpu()
    torch.testing.assert_close(gpu_dist, cpu_dist, rtol=0, atol=1e-12)
    cpu_metrics = evaluate_ranking(cpu_dist, *ids)
    gpu_metrics = evaluate_features(q.cuda(), g.cuda(), *ids, rerank=RerankParams())
    for key in KEYS:
        assert gpu_metrics[key] == cpu_metrics[key], key

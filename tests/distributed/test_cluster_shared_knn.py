"""Ranks sharing the neighbour search give the single-process neighbours and labels."""

import numpy as np
import torch

from cacl_dist.clustering import ClusterParams, cluster, neighbours_of_rows
from cacl_dist.distributed import comm
from cacl_dist.distributed.sharding import shard_bounds

from tests.helpers.clustering import knn_topk
from tests.helpers.gloo import run_gloo


def blobs(num=300, dim=16, centres=15, seed=21):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    points = c[rng.integers(0, centres, num)] / np.linalg.norm(c, axis=1).mean() + 0.9 * rng.normal(size=(num, dim)) / np.sqrt(dim)
    return torch.from_numpy(points).float()


def _shared_search(rank, world_size, feats):
    torch.set_num_threads(1)
    params = ClusterParams(k1=20, k2=6, backend="torch")
    rows = shard_bounds(feats.shape[0], rank, world_size)
    sims, idx = neighbours_of_rows(feats, params, rows, block_size=64)
    sims, idx = comm.all_gather_cat(sims), comm.all_gather_cat(idx)
    result = cluster(feats, params, neighbours=(sims, idx)) if rank == 0 else None
    return sims, idx, result


def test_three_ranks_sharing_the_search_equal_one_process():
    feats = blobs()
    expected_sims, expected_idx = knn_topk(feats, 20)
    expected = cluster(feats.numpy(), ClusterParams(k1=20, k2=6, backend="sklearn"))
    results = run_gloo(_shared_search, 3, feats)
    for sims, idx, _ in results:
        assert torch.equal(idx, expected_idx)
        torch.testing.assert_close(sims, expected_sims, rtol=0, atol=1e-12)
    labels = results[0][2].labels
    np.testing.assert_array_equal(labels, expected.labels)

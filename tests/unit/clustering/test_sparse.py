"""The sparse "torch" clustering path equals the dense reference (docs/method.md section 4)."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.dbscan_sparse import connected_components, dbscan_sparse
from cacl_dist.clustering.inputs import as_float64_features
from cacl_dist.clustering.jaccard_reference import (
    gram_matrix,
    jaccard_distance_reference,
    jaccard_rows,
    k_nearest_neighbours,
    k_reciprocal_encoding,
    l2_normalise_rows,
)
from cacl_dist.clustering.jaccard_sparse import jaccard_sparse
from cacl_dist.clustering.knn import (
    _low_precision_rank,
    error_bound,
    knn_topk_unit,
)
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.pseudo_labels import cluster
from cacl_dist.clustering.refine import refine_clusters
from cacl_dist.clustering.refine_sparse import refine_sparse
from cacl_dist.clustering.unit_rows import UnitRows

from tests.helpers.clustering import dense_from_pairs, knn_topk

MINI_ROOT = str(Path(__file__).resolve().parents[3].parent / "shared" / "data" / "market1501-mini")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small tensors: one intra-op thread is faster on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sphere_blobs(num, dim, num_centres, spread, seed):
    """Gaussian blobs around random unit centres, projected back onto the unit sphere."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_centres, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = centres[rng.integers(0, num_centres, num)] + spread * rng.normal(size=(num, dim)) / np.sqrt(dim)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


def datasets():
    """(name, features): random, tied (exact dot products) and clustered data."""
    rng = np.random.default_rng(0)
    return [
        ("random", rng.normal(size=(160, 12))),
        ("ties", rng.choice([-0.25, 0.25], size=(160, 16))),  # unit norm, exact products
        ("duplicates", np.repeat(rng.normal(size=(40, 8)), 4, axis=0)),
        ("blobs", sphere_blobs(240, 32, 12, 0.8, seed=1)),
    ]


def reference_dense_float64(feats, k1, k2):
    """The reference Jaccard matrix in float64 (before its float32 storage)."""
    unit = l2_normalise_rows(as_float64_features(feats))
    encoding = k_reciprocal_encoding(2.0 - 2.0 * gram_matrix(unit), k1, k2)
    dist = jaccard_rows(encoding, np.arange(unit.shape[0]))
    np.fill_diagonal(dist, 0.0)
    return dist


def pairs_of(dist):
    """Off-diagonal entries of a dense matrix as torch (rows, cols, dists)."""
    rows, cols = np.nonzero(~np.eye(dist.shape[0], dtype=bool))
    return torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(dist[rows, cols])


@pytest.mark.parametrize("precision", ["float64", "float32", "tfloat32", "bfloat16"])
@pytest.mark.parametrize("block_size", [7, 4096])
def test_knn_order_equals_reference_with_ties(precision, block_size):
    for name, feats in datasets():
        unit = l2_normalise_rows(as_float64_features(feats))
        expected = k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 12)
        sims, idx = knn_topk(torch.from_numpy(feats), 12, block_size=block_size, precision=precision)
        np.testing.assert_array_equal(idx.numpy(), expected, err_msg=name)
        np.testing.assert_allclose(sims.numpy(), np.take_along_axis(unit @ unit.T, expected, 1),
                                   atol=1e-12)


def test_knn_float32_recheck_falls_back_where_candidates_are_not_enough():
    # 40 copies of one point: the float32 candidates (k + margin = 13) cannot prove the rank,
    # so those rows are recomputed in float64 and still match the reference.
    rng = np.random.default_rng(3)
    feats = np.concatenate([np.repeat(rng.normal(size=(1, 8)), 40, axis=0), rng.normal(size=(60, 8))])
    unit = l2_normalise_rows(feats)
    expected = k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 10)
    _, idx = knn_topk(feats, 10, precision="float32", margin=3)
    np.testing.assert_array_equal(idx.numpy(), expected)


def test_knn_low_precision_candidates_fall_back_when_the_bound_cannot_separate():
    # bfloat16 blurs similarities by ~1e-2: with a small margin many rows cannot be proven
    # from their candidates alone, yet every row ends up in the exact float64 order.
    feats = sphere_blobs(300, 24, 6, 0.3, seed=4)
    unit = l2_normalise_rows(feats)
    expected = k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 15)
    units = UnitRows(feats)
    for precision, margin in (("bfloat16", 8), ("float32", 0), ("tfloat32", 2)):
        proven = _low_precision_rank(units, 15, margin, precision, 64)[2]
        if precision != "float32":  # both kinds of rows occur, so both paths are exercised
            assert 0 < int(proven.sum()) < len(feats), precision
        sims, idx = knn_topk(feats, 15, block_size=64, precision=precision, margin=margin)
        np.testing.assert_array_equal(idx.numpy(), expected, err_msg=precision)
        np.testing.assert_allclose(sims.numpy(), np.take_along_axis(unit @ unit.T, expected, 1),
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_knn_row_ranges_concatenate_to_the_whole_search(precision):
    feats = torch.from_numpy(sphere_blobs(230, 24, 10, 0.8, seed=13))
    full_sims, full_idx = knn_topk(feats, 12, block_size=32, precision=precision)
    unit = UnitRows(feats)
    parts = [knn_topk_unit(unit, 12, block_size=32, precision=precision, rows=r)
             for r in ((0, 50), (50, 50), (50, 171), (171, 230))]  # one empty, none block-aligned
    assert torch.equal(torch.cat([p[1] for p in parts]), full_idx)
    # Equal up to float64 rounding: the matrix product may sum in another order for other shapes.
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), full_sims, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="rows"):
        knn_topk_unit(unit, 12, rows=(10, 231))


def test_precomputed_neighbours_are_checked():
    feats = torch.from_numpy(sphere_blobs(100, 8, 5, 0.8, seed=14)).float()
    sims, idx = knn_topk(feats, 10)
    with pytest.raises(ValueError, match=r"\(100, 10\)"):
        cluster(feats, ClusterParams(k1=10, k2=3, backend="torch"), neighbours=(sims[:, :5], idx[:, :5]))
    with pytest.raises(ValueError, match="sparse backends"):
        cluster(feats.numpy(), ClusterParams(k1=10, k2=3, backend="sklearn"), neighbours=(sims, idx))
    got = cluster(feats, ClusterParams(k1=10, k2=3, backend="torch"), neighbours=(sims, idx))
    np.testing.assert_array_equal(got.labels, cluster(feats.numpy(), ClusterParams(k1=10, k2=3, backend="sklearn")).labels)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_error_bound_covers_the_low_precision_products(precision):
    rng = np.random.default_rng(5)
    dim = 512
    base = rng.normal(size=(1, dim))
    # Random rows and nearly parallel rows (large products, where rounding is largest).
    feats = np.concatenate([rng.normal(size=(200, dim)), base + 1e-3 * rng.normal(size=(200, dim))])
    feats = feats.astype(np.float32)  # the banks' dtype
    unit = torch.from_numpy(l2_normalise_rows(feats.astype(np.float64)))  # the reference's rows
    dtype = torch.float32 if precision == "float32" else torch.bfloat16
    low = UnitRows(torch.from_numpy(feats)).low(0, len(feats), dtype)  # as the search makes them
    exact = unit @ unit.T
    error = ((low @ low.T).double() - exact).abs().max().item()
    bound = error_bound(precision, dim)
    assert error <= bound, (error, bound)
    assert bound < (1e-4 if precision == "float32" else 2e-2)
    with pytest.raises(ValueError, match="float64"):
        error_bound("float64", dim)


@pytest.mark.parametrize("tile", [7, 64])
def test_unit_rows_pair_similarity_equals_row_products_for_any_pair_order(tile):
    rng = np.random.default_rng(6)
    feats = rng.normal(size=(50, 16)).astype(np.float32)
    unit = torch.from_numpy(l2_normalise_rows(feats.astype(np.float64)))  # the reference's rows
    units = UnitRows(feats, tile=tile)
    rows = torch.from_numpy(rng.integers(0, 50, 400))
    cols = torch.from_numpy(rng.integers(0, 50, 400))
    rows[10], cols[10] = rows[3], cols[3]  # a repeated pair
    expected = (unit[rows] * unit[cols]).sum(dim=1)
    torch.testing.assert_close(units.pair_similarity(rows, cols), expected, rtol=0, atol=1e-14)
    assert units.pair_similarity(rows[:0], cols[:0]).shape == (0,)
    torch.testing.assert_close(units.similarity_rows(torch.tensor([4, 0, 49])), unit[[4, 0, 49]] @ unit.T,
                               rtol=0, atol=1e-14)
    torch.testing.assert_close(units.float64(3, 9), unit[3:9], rtol=0, atol=1e-15)


def test_unit_rows_keep_the_callers_features_without_a_copy():
    feats = torch.randn(40, 8)
    units = UnitRows(feats)
    assert units.raw.data_ptr() == feats.data_ptr() and units.norms.dtype == torch.float64
    with pytest.raises(ValueError, match="NaN"):
        UnitRows(torch.tensor([[1.0, float("nan")], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="2-D"):
        UnitRows(np.ones(5))


def test_pair_similarity_without_the_sampled_product_kernel(monkeypatch):
    def missing(*args, **kwargs):
        raise NotImplementedError("no sampled_addmm kernel here")

    monkeypatch.setattr(torch.sparse, "sampled_addmm", missing)
    rng = np.random.default_rng(7)
    feats = rng.normal(size=(30, 8))
    unit = torch.from_numpy(l2_normalise_rows(feats))
    rows = torch.from_numpy(rng.integers(0, 30, 100))
    cols = torch.from_numpy(rng.integers(0, 30, 100))
    torch.testing.assert_close(UnitRows(feats, tile=8).pair_similarity(rows, cols),
                               (unit[rows] * unit[cols]).sum(1), rtol=0, atol=1e-14)


@pytest.mark.parametrize("k1,k2,budget", [(20, 6, None), (10, 1, 3000), (7, 3, None), (30, 6, 50000)])
def test_jaccard_sparse_equals_dense_reference(k1, k2, budget):
    for name, feats in datasets():
        expected = reference_dense_float64(feats, k1, k2)
        rows, cols, dists = jaccard_sparse(feats, k1, k2, max_distance=1.0, budget=budget)
        assert bool((rows != cols).all())
        dense = dense_from_pairs(rows, cols, dists, feats.shape[0])
        np.testing.assert_allclose(dense, expected, rtol=0, atol=1e-9, err_msg=name)
        # With a radius: exactly the pairs at or below it (away from the boundary).
        rows, cols, dists = jaccard_sparse(feats, k1, k2, max_distance=0.6)
        got = set(zip(rows.tolist(), cols.tolist()))
        inside = set(zip(*np.nonzero((expected <= 0.6 - 1e-9) & ~np.eye(len(feats), dtype=bool))))
        outside = set(zip(*np.nonzero(expected > 0.6 + 1e-9)))
        assert inside <= got and not (got & outside), name


def test_jaccard_sparse_accepts_torch_and_rejects_bad_input():
    feats = sphere_blobs(80, 8, 4, 0.5, seed=2)
    a = jaccard_sparse(feats, 10, 3)
    b = jaccard_sparse(torch.from_numpy(feats).float(), 10, 3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="k1"):
        jaccard_sparse(feats, 100, 3)
    with pytest.raises(ValueError, match="k2=12"):
        jaccard_sparse(feats, 10, 12)
    bad = feats.copy()
    bad[5] = 0.0
    with pytest.raises(ValueError, match="all-zero"):
        jaccard_sparse(bad, 10, 3)
    with pytest.raises(ValueError, match="precision"):
        knn_topk(feats, 5, precision="half")


@pytest.mark.parametrize("seed", range(4))
def test_dbscan_sparse_equals_sklearn_on_reference_matrix(seed):
    feats = sphere_blobs(400, 16, 8 + 6 * seed, 0.6 + 0.3 * seed, seed=10 + seed)
    dist = jaccard_distance_reference(feats, 15, 4)  # float32, as the pipeline uses it
    rows, cols, dists = pairs_of(dist)
    for eps in (0.4, 0.58, 0.6, 0.75):
        for min_samples in (1, 2, 4, 7):
            expected = dbscan_precomputed(dist, eps, min_samples)
            got = dbscan_sparse(rows, cols, dists, len(feats), eps, min_samples).numpy()
            np.testing.assert_array_equal(got, expected)


def test_dbscan_sparse_border_point_touching_two_clusters_matches_sklearn():
    # Points 0-3 and 5-8 are two cores groups; border point 4 is within eps of both, and of
    # the later cluster's core first in index order (8), yet sklearn gives it cluster 0.
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = 25
        dist = rng.choice([0.2, 0.5, 0.7, 1.0], size=(n, n))
        dist = np.minimum(dist, dist.T).astype(np.float32)
        np.fill_diagonal(dist, 0.0)
        rows, cols, dists = pairs_of(dist)
        for eps, min_samples in ((0.2, 3), (0.5, 5), (0.5, 8)):
            expected = dbscan_precomputed(dist, eps, min_samples)
            got = dbscan_sparse(rows, cols, dists, n, eps, min_samples).numpy()
            np.testing.assert_array_equal(got, expected)


def test_dbscan_sparse_compares_in_the_dtype_of_the_distances():
    # float32(0.6) > 0.6: scikit-learn counts a float32 distance of 0.6 as within eps=0.6.
    rows, cols = torch.tensor([0, 1]), torch.tensor([1, 0])
    d32 = torch.tensor([0.6, 0.6], dtype=torch.float32)
    assert dbscan_sparse(rows, cols, d32, 2, 0.6, 2).tolist() == [0, 0]
    dense = np.array([[0, 0.6], [0.6, 0]], dtype=np.float32)
    assert dbscan_precomputed(dense, 0.6, 2).tolist() == [0, 0]


def test_dbscan_sparse_edge_cases_and_errors():
    empty = torch.empty(0, dtype=torch.int64)
    assert dbscan_sparse(empty, empty, empty.double(), 3, 0.5, 2).tolist() == [-1, -1, -1]
    assert dbscan_sparse(empty, empty, empty.double(), 3, 0.5, 1).tolist() == [0, 1, 2]
    assert connected_components(torch.tensor([4, 1, 3]), torch.tensor([3, 2, 0]), 5).tolist() == [0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="eps"):
        dbscan_sparse(empty, empty, empty.double(), 3, -1.0, 2)
    with pytest.raises(ValueError, match="min_samples"):
        dbscan_sparse(empty, empty, empty.double(), 3, 0.5, 0)
    with pytest.raises(ValueError, match="index"):
        dbscan_sparse(torch.tensor([0]), torch.tensor([5]), torch.tensor([0.1]), 3, 0.5, 1)


@pytest.mark.parametrize("score", ["paper", "official", "paper_all"])
@pytest.mark.parametrize("seed", range(3))
def test_refine_sparse_equals_refine_clusters(score, seed):
    feats = sphere_blobs(500, 16, 10 + 10 * seed, 1.0 + 0.4 * seed, seed=20 + seed)
    dist = jaccard_distance_reference(feats, 20, 6)
    raw = dbscan_precomputed(dist, 0.6, 4)
    tight = dbscan_precomputed(dist, 0.58, 4)
    expected, expected_removed = refine_clusters(dist, raw, tight, ClusterParams(refine_score=score))
    # Only pairs with d < 1 are listed: the rest are 1 by construction of the sparse graph.
    keep = (dist < 1) & ~np.eye(len(feats), dtype=bool)
    rows, cols = np.nonzero(keep)
    got, removed = refine_sparse(torch.from_numpy(rows), torch.from_numpy(cols),
                                 torch.from_numpy(dist[rows, cols]), raw, tight, ClusterParams(refine_score=score))
    np.testing.assert_array_equal(got, expected)
    assert removed == expected_removed
    assert expected_removed > 0 or seed == 0


def test_refine_sparse_rejects_bad_score():
    with pytest.raises(ValueError, match="'best'"):
        refine_sparse(torch.tensor([0]), torch.tensor([1]), torch.tensor([0.1]), [0, 0], [0, 0],
                      ClusterParams(refine_score="best"))


def cluster_cases():
    """(features, k1, k2, refine) of the whole-pipeline comparisons."""
    return [
        (sphere_blobs(500, 32, 25, 1.0, seed=5), 20, 6, True),
        (sphere_blobs(400, 16, 40, 1.4, seed=6), 12, 1, True),
        (np.random.default_rng(7).normal(size=(200, 8)), 10, 3, True),
        (sphere_blobs(300, 24, 15, 0.9, seed=8), 20, 6, False),
    ]


@pytest.mark.parametrize("score", ["paper", "official", "paper_all"])
def test_cluster_torch_equals_sklearn(score):
    for feats, k1, k2, refine in cluster_cases():
        params = ClusterParams(k1=k1, k2=k2, refine=refine, refine_score=score)
        ref = cluster(feats, dataclasses.replace(params, backend="sklearn"))
        got = cluster(torch.from_numpy(feats).float(), dataclasses.replace(params, backend="torch"))
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert (got.num_clusters, got.num_raw_clusters, got.num_outliers, got.num_refined_away) == (
            ref.num_clusters, ref.num_raw_clusters, ref.num_outliers, ref.num_refined_away)
        assert got.backend == "torch"


def test_cluster_runs_the_configured_backend():
    feats = torch.from_numpy(sphere_blobs(200, 16, 8, 0.6, seed=9)).float()
    cfg = ClusterParams(k1=10, k2=3, backend="torch")
    result = cluster(feats, cfg.resolved())
    assert result.backend == "torch"
    ref = cluster(feats.numpy(), ClusterParams(k1=10, k2=3, backend="sklearn"))
    np.testing.assert_array_equal(result.labels, ref.labels)
    auto = cluster(feats, ClusterParams(k1=10, k2=3))  # the config's default backend, resolved by cluster()
    assert auto.backend == "torch" and ClusterParams().takes_neighbours
    np.testing.assert_array_equal(auto.labels, ref.labels)
    with pytest.raises(ValueError, match="'gpu'"):
        cluster(feats, ClusterParams(backend="gpu"))


def market_mini_features():
    """Features of 800 Market-1501-mini training images from an untrained tiny ResNet."""
    from cacl_dist.data.layouts import load_dataset
    from cacl_dist.evaluation.extract import ExtractionSettings, extract_shard
    from cacl_dist.models.cacl import Branch

    torch.manual_seed(0)
    records = load_dataset("market1501", MINI_ROOT).train[:800]
    model = Branch("resnet_tiny")
    with torch.no_grad():
        settings = ExtractionSettings(height=64, width=32, batch_size=200, num_workers=0, device=torch.device("cpu"))
        return extract_shard(model, records, 0, len(records), settings)


@pytest.mark.skipif(not os.path.isdir(MINI_ROOT), reason="market1501-mini is not available")
def test_real_features_market1501_mini():
    feats = market_mini_features()
    for k1, k2, eps in ((20, 6, 0.6),):
        params = ClusterParams(k1=k1, k2=k2, eps=eps, eps_tight=eps - 0.02)
        ref = cluster(feats, dataclasses.replace(params, backend="sklearn"))
        got = cluster(feats, dataclasses.replace(params, backend="torch"))
        np.testing.assert_array_equal(got.labels, ref.labels)
        assert got.num_refined_away == ref.num_refined_away


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["tfloat32", "float32", "bfloat16", "float64"])
def test_knn_on_gpu_equals_reference(precision):
    feats = sphere_blobs(3000, 128, 150, 1.0, seed=15)
    unit = l2_normalise_rows(feats)
    expected = k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 30)
    _, idx = knn_topk(torch.from_numpy(feats).float().cuda(), 30, precision=precision, block_size=512)
    np.testing.assert_array_equal(idx.cpu().numpy(), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("score", ["paper", "official"])
def test_cluster_on_gpu_equals_reference(score):
    feats = sphere_blobs(4000, 256, 230, 1.1, seed=16)
    ref = cluster(feats, ClusterParams(refine_score=score, backend="sklearn"))
    got = cluster(torch.from_numpy(feats).float().cuda(), ClusterParams(refine_score=score, backend="torch"))
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert got.num_refined_away == ref.num_refined_away

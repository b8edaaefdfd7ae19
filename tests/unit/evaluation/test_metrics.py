"""Tests for retrieval metrics (docs/method.md section 7, Market-1501 protocol)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from cacl_dist.evaluation import metrics
from cacl_dist.evaluation.metrics import evaluate_ranking, pairwise_distance


def reference_metrics(dist, q_pids, g_pids, q_camids, g_camids, max_rank):
    """One query at a time, written plainly: the definition of the protocol."""
    aps, inps, cmcs = [], [], []
    for q in range(dist.shape[0]):
        ordered = sorted(range(dist.shape[1]), key=lambda g: dist[q, g])
        ranked = [
            g for g in ordered if not (g_pids[g] == q_pids[q] and g_camids[g] == q_camids[q])
        ]
        hit_positions = [pos + 1 for pos, g in enumerate(ranked) if g_pids[g] == q_pids[q]]
        if not hit_positions:
            continue
        precisions = [found / pos for found, pos in enumerate(hit_positions, start=1)]
        aps.append(sum(precisions) / len(precisions))
        inps.append(len(hit_positions) / hit_positions[-1])
        cmcs.append([1.0 if hit_positions[0] <= k else 0.0 for k in range(1, max_rank + 1)])
    cmc = np.mean(cmcs, axis=0)
    return {
        "mAP": float(np.mean(aps)),
        "mINP": float(np.mean(inps)),
        "cmc": cmc,
        "num_valid_queries": len(aps),
    }


def test_hand_computed_single_query():
    # Query pid 1, camera 0. Gallery by increasing distance:
    #   g0 pid1 cam0 (same pid, same camera: removed)   g5 pid4 cam1 -> rank 5
    #   g1 pid1 cam1 -> rank 1, match                    g6 pid1 cam0 (removed)
    #   g2 pid2 cam0 -> rank 2                           g7 pid1 cam3 -> rank 6, match
    #   g3 pid1 cam2 -> rank 3, match                    g8 pid5 cam2 -> rank 7
    #   g4 pid3 cam0 -> rank 4 (other pid, same camera: kept)
    # AP = (1/1 + 2/3 + 3/6) / 3 = 13/18; INP = 3 matches / last match rank 6 = 0.5.
    pids = np.array([1, 1, 2, 1, 3, 4, 1, 1, 5])
    cams = np.array([0, 1, 0, 2, 0, 1, 0, 3, 2])
    dists = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7])
    shuffle = np.random.default_rng(0).permutation(9)  # gallery order must not matter
    result = evaluate_ranking(
        dists[shuffle][None, :], [1], pids[shuffle], [0], cams[shuffle], max_rank=10
    )
    assert result["mAP"] == pytest.approx(13 / 18)
    assert result["mINP"] == pytest.approx(0.5)
    assert result["rank1"] == 1.0 and result["rank5"] == 1.0 and result["rank10"] == 1.0
    np.testing.assert_array_equal(result["cmc"], np.ones(10))
    assert result["num_valid_queries"] == 1


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_computed_late_first_match_and_tie_order(dtype):
    # Kept gallery: g0 pid2 (0.1), g1 pid7 (0.1), g2 pid7 (0.3), g3 pid2 (0.2); query pid 7.
    # Ties rank the lower gallery index first: order g0, g1, g3, g2 -> matches at ranks 2, 4.
    # AP = (1/2 + 2/4) / 2 = 0.5; INP = 2/4; first match at rank 2.
    result = evaluate_ranking(
        np.array([[0.1, 0.1, 0.3, 0.2]], dtype=dtype), [7], [2, 7, 7, 2], [0], [1, 1, 1, 1],
        max_rank=3,
    )
    assert result["mAP"] == pytest.approx(0.5) and result["mINP"] == pytest.approx(0.5)
    assert result["rank1"] == 0.0 and result["rank5"] == 1.0
    np.testing.assert_array_equal(result["cmc"], [0.0, 1.0, 1.0])


@pytest.mark.parametrize("seed, dtype", [(0, np.float64), (1, np.float32), (2, np.float64)])
def test_matches_plain_reference_on_random_data(seed, dtype, monkeypatch):
    rng = np.random.default_rng(seed)
    num_query, num_gallery = 40, 300
    dist = rng.random((num_query, num_gallery)).astype(dtype)
    assert all(len(np.unique(row)) == num_gallery for row in dist)  # no ties
    q_pids, g_pids = rng.integers(0, 12, num_query), rng.integers(0, 12, num_gallery)
    q_cams, g_cams = rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery)
    # A query whose only gallery matches share its camera is skipped; so is one whose pid
    # is absent from the gallery.
    q_pids[:2], q_cams[0] = [50, 60], 1
    g_pids[:3], g_cams[:3] = 50, 1
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 7 * num_gallery)  # several query blocks
    got = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    expected = reference_metrics(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    assert got["num_valid_queries"] == expected["num_valid_queries"] <= num_query - 2
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert got["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-12)
    assert got["rank1"] == pytest.approx(expected["cmc"][0])
    assert got["rank5"] == pytest.approx(expected["cmc"][4])
    assert got["rank10"] == pytest.approx(expected["cmc"][9])


def test_same_camera_removal_changes_the_result():
    # The only nearer item has the query's pid and camera: removing it makes rank 1 correct.
    dist = np.array([[0.1, 0.2, 0.3]])
    result = evaluate_ranking(dist, [3], [3, 3, 4], [0], [0, 1, 0])
    assert result["mAP"] == 1.0 and result["rank1"] == 1.0
    kept = evaluate_ranking(dist, [3], [3, 3, 4], [0], [2, 1, 0])  # other camera: a match
    assert kept["mAP"] == 1.0
    moved = evaluate_ranking(dist, [3], [4, 3, 3], [0], [0, 1, 0])  # distractor first
    assert moved["rank1"] == 0.0 and moved["mAP"] == pytest.approx(0.5)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="correct match"):
        evaluate_ranking(np.array([[0.1, 0.2]]), [1], [1, 2], [0], [0, 0])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_ranking(np.zeros((1, 3)), [1], [1, 2], [0], [0, 0, 0])


def test_pairwise_distance_matches_cdist_in_blocks(monkeypatch):
    rng = np.random.default_rng(3)
    query, gallery = rng.standard_normal((23, 16)), rng.standard_normal((57, 16))
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 5 * 57)
    got = pairwise_distance(query, gallery)
    assert got.dtype == np.float32 and got.shape == (23, 57)
    np.testing.assert_allclose(got, cdist(query, gallery), rtol=1e-6, atol=1e-6)
    from_torch = pairwise_distance(
        torch.from_numpy(query).float(), torch.from_numpy(gallery).float()
    )
    np.testing.assert_allclose(from_torch, cdist(query, gallery), rtol=1e-4, atol=1e-4)


def test_pairwise_distance_ranks_unit_features_like_cosine():
    rng = np.random.default_rng(4)
    query, gallery = rng.standard_normal((10, 8)), rng.standard_normal((40, 8))
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    np.testing.assert_array_equal(
        np.argsort(pairwise_distance(query, gallery), axis=1),
        np.argsort(-query @ gallery.T, axis=1),
    )
    with pytest.raises(ValueError, match="feature_dim"):
        pairwise_distance(query, gallery[:, :4])


def _random_protocol(seed, num_query=30, num_gallery=200, levels=None):
    """Distances (with many exact ties when ``levels`` is set) and ids of a random protocol."""
    rng = np.random.default_rng(seed)
    if levels:
        dist = rng.integers(0, levels, (num_query, num_gallery)).astype(np.float64)
    else:
        dist = rng.random((num_query, num_gallery))
    ids = (rng.integers(0, 8, num_query), rng.integers(0, 8, num_gallery),
           rng.integers(0, 3, num_query), rng.integers(0, 3, num_gallery))
    return dist, ids


@pytest.mark.parametrize("levels", [None, 3, 6])
def test_heavy_ties_rank_the_lower_gallery_index_first(levels):
    dist, ids = _random_protocol(11, levels=levels)
    got = evaluate_ranking(dist, *ids, max_rank=10)
    expected = reference_metrics(dist, *ids, max_rank=10)  # a stable sort: ties by index
    assert got["num_valid_queries"] == expected["num_valid_queries"]
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert got["mINP"] == pytest.approx(expected["mINP"], abs=1e-12)
    np.testing.assert_allclose(got["cmc"], expected["cmc"], atol=1e-12)


def test_blocks_in_any_order_equal_the_whole_matrix():
    dist, ids = _random_protocol(12, levels=4)
    whole = evaluate_ranking(dist, *ids)
    bounds = [(0, 7), (7, 8), (8, 19), (19, 30)]
    shuffled = [(lo, torch.from_numpy(dist[lo:hi])) for lo, hi in reversed(bounds)]
    blocked = evaluate_ranking(iter(shuffled), *ids)
    for key in ("mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries"):
        assert blocked[key] == whole[key]
    np.testing.assert_array_equal(blocked["cmc"], whole["cmc"])
    as_tensor = evaluate_ranking(torch.from_numpy(dist).float(), *ids)  # float32 ties stay ties
    assert as_tensor["mAP"] == whole["mAP"]


def test_block_errors_name_the_problem():
    dist, ids = _random_protocol(13)
    with pytest.raises(ValueError, match="query row 10"):
        evaluate_ranking([(0, dist[:10]), (20, dist[20:])], *ids)
    with pytest.raises(ValueError, match="repeats rows"):
        evaluate_ranking([(0, dist[:10]), (5, dist[5:])], *ids)
    with pytest.raises(ValueError, match="one column per gallery item"):
        evaluate_ranking([(0, dist[:, :5])], *ids)
    bad = dist.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        evaluate_ranking([(0, bad)], *ids)


def test_match_ranks_equal_the_positions_in_a_stable_sort():
    dist, (q_pids, g_pids, q_cams, g_cams) = _random_protocol(14, levels=5)
    tensors = [torch.from_numpy(a) for a in (dist, q_pids, g_pids, q_cams, g_cams)]
    num_matches, ranks = metrics.match_ranks(*tensors)
    for q in range(dist.shape[0]):
        order = np.argsort(dist[q], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[q] and g_cams[g] == q_cams[q])]
        expected = [pos + 1 for pos, g in enumerate(kept) if g_pids[g] == q_pids[q]]
        assert int(num_matches[q]) == len(expected)
        assert ranks[q, :len(expected)].tolist() == expected
        assert not ranks[q, len(expected):].any()

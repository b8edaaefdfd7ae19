"""Tests for DBSCAN on precomputed distances and for cluster refinement (docs/method.md sections 4.2, 4.3)."""

import numpy as np
import pytest

from cacl_dist.clustering.dbscan import dbscan_precomputed
from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.refine import refine_clusters

PAPER, OFFICIAL = ClusterParams(refine_score="paper"), ClusterParams(refine_score="official")


def line_distances(positions):
    """|p_a - p_b| for points on a line."""
    positions = np.asarray(positions, dtype=np.float64)
    return np.abs(positions[:, None] - positions[None, :])


def grouped_distances(groups, between, size):
    """A distance matrix where d(a, b) = between[(group of a, group of b)], zero diagonal.

    ``groups`` maps a group name to its point indices; ``between`` is keyed by unordered
    pairs of group names (a group paired with itself gives its internal distance).
    """
    group_of = {point: name for name, points in groups.items() for point in points}
    dist = np.zeros((size, size))
    for a in range(size):
        for b in range(size):
            if a != b:
                key = frozenset((group_of[a], group_of[b]))
                dist[a, b] = between[key]
    return dist


# ---------------------------------------------------------------- DBSCAN


def test_dbscan_finds_obvious_blobs_and_an_outlier():
    dist = line_distances([0.0, 0.1, 0.2, 0.3, 5.0, 5.1, 5.2, 5.3, 10.0])
    labels = dbscan_precomputed(dist, eps=0.5, min_samples=3)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, [0, 0, 0, 0, 1, 1, 1, 1, -1])


def test_dbscan_counts_the_point_itself():
    dist = line_distances([0.0, 0.1])
    np.testing.assert_array_equal(dbscan_precomputed(dist, eps=0.2, min_samples=2), [0, 0])
    np.testing.assert_array_equal(dbscan_precomputed(dist, eps=0.2, min_samples=3), [-1, -1])
    # min_samples = 1: an isolated point is a core point of its own cluster.
    np.testing.assert_array_equal(
        dbscan_precomputed(line_distances([0.0, 9.0]), eps=0.2, min_samples=1), [0, 1]
    )


def test_dbscan_border_points_join_but_do_not_extend():
    # Positions in 32nds (exact in binary); eps = 0.15 = 4.8/32, min_samples = 4.
    # 0..3/32 are within 3/32 of each other: core. 7/32 has {3/32, 7/32, 11/32} within eps,
    # only 3 points: a border point, joins the cluster through core point 3/32. 11/32 is
    # within eps of the border point 7/32 only, and borders do not extend clusters: outlier.
    dist = line_distances(np.array([0, 1, 2, 3, 7, 11]) / 32)
    np.testing.assert_array_equal(
        dbscan_precomputed(dist, eps=0.15, min_samples=4), [0, 0, 0, 0, 0, -1]
    )
    np.testing.assert_array_equal(dbscan_precomputed(dist, eps=0.15, min_samples=6), [-1] * 6)


@pytest.mark.parametrize("eps, min_samples", [(0.0, 3), (-1.0, 3), (0.5, 0), (0.5, 2.5)])
def test_dbscan_rejects_bad_parameters(eps, min_samples):
    with pytest.raises(ValueError):
        dbscan_precomputed(line_distances([0.0, 1.0]), eps=eps, min_samples=min_samples)


def test_dbscan_rejects_bad_matrices():
    with pytest.raises(ValueError, match="square"):
        dbscan_precomputed(np.zeros((2, 3)), eps=0.5, min_samples=2)
    with pytest.raises(ValueError, match="negative"):
        dbscan_precomputed(-np.ones((2, 2)), eps=0.5, min_samples=2)


# ---------------------------------------------------------------- refinement


def test_official_score_removes_the_largest_fragment():
    # Raw cluster 2 = A ∪ B with A = {0,1,2,3}, B = {4,5}; inside A and B distance 0.2,
    # across 0.5. Point 6 is a raw outlier. Cluster 0 = {7,8,9} is a single tight cluster.
    # Sum over C: 12*0.2 (A) + 2*0.2 (B) + 2*4*2*0.5 (across) = 2.4 + 0.4 + 8 = 10.8.
    # paper: D(C) = 10.8/30 = 0.36; D(A|C) = D(B|C) = 0.5 >= 0.36 -> both removed.
    # official: D(C) = 10.8/36 = 0.3; score(A) = 0.5*4/2 = 1.0 > 0.3 -> A removed;
    #           score(B) = 0.5*2/4 = 0.25 <= 0.3 -> B kept.
    groups = {"A": [0, 1, 2, 3], "B": [4, 5], "out": [6], "K": [7, 8, 9]}
    between = {
        frozenset(["A"]): 0.2, frozenset(["B"]): 0.2, frozenset(["A", "B"]): 0.5,
        frozenset(["K"]): 0.7,  # cluster 0 is spread out but has one sub-cluster
    }
    for name in ["A", "B", "out", "K"]:
        for other in ["out", "K"]:
            between.setdefault(frozenset([name, other]), 0.9)
    dist = grouped_distances(groups, between, 10)
    raw = np.array([2, 2, 2, 2, 2, 2, -1, 0, 0, 0])
    tight = np.array([0, 0, 0, 0, 1, 1, -1, 3, 3, 3])

    paper, removed_paper = refine_clusters(dist, raw, tight, PAPER)
    np.testing.assert_array_equal(paper, [-1, -1, -1, -1, -1, -1, -1, 0, 0, 0])
    assert removed_paper == 6

    official, removed_official = refine_clusters(dist, raw, tight, OFFICIAL)
    np.testing.assert_array_equal(official, [-1, -1, -1, -1, 2, 2, -1, 0, 0, 0])
    assert removed_official == 4
    assert official.dtype == np.int64


def test_paper_keeps_what_official_removes():
    # C = A ∪ B, A = {0,1}, B = {2,3}; inside 0.5, across 0.4.
    # Sum over C: 2*0.5 + 2*0.5 + 8*0.4 = 5.2.
    # paper: D(C) = 5.2/12 = 0.4333; D(A|C) = D(B|C) = 0.4 < 0.4333 -> both kept.
    # official: D(C) = 5.2/16 = 0.325; score = 0.4*2/2 = 0.4 > 0.325 -> both removed.
    groups = {"A": [0, 1], "B": [2, 3]}
    between = {frozenset(["A"]): 0.5, frozenset(["B"]): 0.5, frozenset(["A", "B"]): 0.4}
    dist = grouped_distances(groups, between, 4)
    raw, tight = np.zeros(4, dtype=int), np.array([0, 0, 1, 1])
    np.testing.assert_array_equal(refine_clusters(dist, raw, tight, PAPER)[0], [0, 0, 0, 0])
    assert refine_clusters(dist, raw, tight, PAPER)[1] == 0
    np.testing.assert_array_equal(refine_clusters(dist, raw, tight, OFFICIAL)[0], [-1] * 4)
    assert refine_clusters(dist, raw, tight, OFFICIAL)[1] == 4


def test_three_sub_clusters_with_a_tight_outlier():
    # C = A ∪ B ∪ {7}: A = {0..3}, B = {4,5,6}, 7 a tight outlier. Inside A, B: 0.5;
    # A-B 0.35; 7 to anything 0.6. Sum over C:
    #   A 12*0.5 = 6, B 6*0.5 = 3, A-B 24*0.35 = 8.4, 7-A 8*0.6 = 4.8, 7-B 6*0.6 = 3.6 -> 25.8
    # paper: D(C) = 25.8/56 = 0.4607
    #   D(A|C) = (12*0.35 + 4*0.6)/16 = 0.4125 keep; D(B|C) = (12*0.35 + 3*0.6)/15 = 0.4 keep;
    #   D(7|C) = 0.6 remove.
    # official: D(C) = 25.8/64 = 0.4031
    #   A: 0.4125*4/4 = 0.4125 remove; B: 0.4*3/5 = 0.24 keep; 7: 0.6*1/7 = 0.086 keep.
    groups = {"A": [0, 1, 2, 3], "B": [4, 5, 6], "o": [7]}
    between = {
        frozenset(["A"]): 0.5, frozenset(["B"]): 0.5, frozenset(["A", "B"]): 0.35,
        frozenset(["A", "o"]): 0.6, frozenset(["B", "o"]): 0.6,
    }
    dist = grouped_distances(groups, between, 8)
    raw = np.full(8, 5)
    tight = np.array([1, 1, 1, 1, 0, 0, 0, -1])
    paper, removed = refine_clusters(dist, raw, tight, PAPER)
    np.testing.assert_array_equal(paper, [5, 5, 5, 5, 5, 5, 5, -1])
    assert removed == 1
    official, removed = refine_clusters(dist, raw, tight, OFFICIAL)
    np.testing.assert_array_equal(official, [-1, -1, -1, -1, 5, 5, 5, 5])
    assert removed == 4


def test_each_tight_outlier_is_its_own_sub_cluster():
    # C = {0,1,2}, all tight outliers: three sub-clusters of one point each.
    # d(0,1) = 0.1, d(0,2) = d(1,2) = 0.9. paper: D(C) = 2*(0.1+0.9+0.9)/6 = 0.6333;
    # D({0}|C) = D({1}|C) = (0.1+0.9)/2 = 0.5 keep; D({2}|C) = 0.9 remove.
    # (Lumping the tight outliers into one sub-cluster would keep C whole.)
    dist = np.array([[0.0, 0.1, 0.9], [0.1, 0.0, 0.9], [0.9, 0.9, 0.0]])
    refined, removed = refine_clusters(dist, [4, 4, 4], [-1, -1, -1], PAPER)
    np.testing.assert_array_equal(refined, [4, 4, -1])
    assert removed == 1


def test_comparison_boundaries_paper_strict_official_inclusive():
    # paper, all distances 0.5 between two sub-clusters: D(C) = 0.5 = D(A|C) -> removed (<).
    flat = np.full((4, 4), 0.5) - 0.5 * np.eye(4)
    refined, _ = refine_clusters(flat, [0, 0, 0, 0], [0, 0, 1, 1], PAPER)
    np.testing.assert_array_equal(refined, [-1] * 4)
    # official: point 0 a tight outlier, B = {1,2}; d(0, B) = 0.5, d(1,2) = 0.125 (exact in
    # binary). D(C) = (2*0.125 + 4*0.5)/9 = 0.25; score({0}) = 0.5*1/2 = 0.25 -> kept (<=);
    # score(B) = 0.5*2/1 = 1.0 -> removed.
    dist = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.125], [0.5, 0.125, 0.0]])
    refined, removed = refine_clusters(dist, [1, 1, 1], [-1, 0, 0], OFFICIAL)
    np.testing.assert_array_equal(refined, [1, -1, -1])
    assert removed == 2


def test_refine_validates_inputs():
    dist = np.zeros((3, 3))
    with pytest.raises(ValueError, match="score"):
        refine_clusters(dist, [0, 0, 0], [0, 0, 0], ClusterParams(refine_score="median"))
    with pytest.raises(ValueError, match="raw_labels"):
        refine_clusters(dist, [0, 0], [0, 0, 0])
    with pytest.raises(ValueError, match="tight_labels"):
        refine_clusters(dist, [0, 0, 0], [0, -2, 0])


def test_paper_all_compares_each_fragment_with_all_other_members():
    # C = A ∪ B, A = {0..3}, B = {4,5}: inside 0.2, across 0.5 (as in the first refinement test,
    # where paper dissolves C). Sum over C: 10.8, D(C) = 10.8/30 = 0.36.
    # paper_all: D(A|C) = (12*0.2 + 8*0.5)/(4*5) = 0.32 < 0.36 keep;
    #            D(B|C) = (2*0.2 + 8*0.5)/(2*5) = 0.44 -> removed.
    groups = {"A": [0, 1, 2, 3], "B": [4, 5]}
    between = {frozenset(["A"]): 0.2, frozenset(["B"]): 0.2, frozenset(["A", "B"]): 0.5}
    dist = grouped_distances(groups, between, 6)
    raw, tight = np.full(6, 3), np.array([0, 0, 0, 0, 1, 1])
    refined, removed = refine_clusters(dist, raw, tight, ClusterParams(refine_score="paper_all"))
    np.testing.assert_array_equal(refined, [3, 3, 3, 3, -1, -1])
    assert removed == 2
    np.testing.assert_array_equal(refine_clusters(dist, raw, tight, PAPER)[0], [-1] * 6)


def test_ratio_cluster_scales_the_official_score():
    # The boundary case above: score({0}) = 0.25 = D(C), score({1,2}) = 1.0.
    dist = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.125], [0.5, 0.125, 0.0]])
    raw, tight = [1, 1, 1], [-1, 0, 0]

    def refined(ratio):
        return refine_clusters(dist, raw, tight, ClusterParams(refine_score="official", ratio_cluster=ratio))[0]

    np.testing.assert_array_equal(refined(1.0), [1, -1, -1])
    np.testing.assert_array_equal(refined(1.5), [-1, -1, -1])  # 0.375 > 0.25
    np.testing.assert_array_equal(refined(0.25), [1, 1, 1])  # 0.25 <= 0.25
    with pytest.raises(ValueError, match="ratio_cluster"):
        ClusterParams(refine_score="official", ratio_cluster=0.0)

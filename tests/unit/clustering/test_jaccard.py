"""Tests for the exact k-reciprocal Jaccard distance (docs/method.md section 4.1)."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from cacl_dist.clustering.jaccard_reference import (
    jaccard_distance_reference,
    k_nearest_neighbours,
)


def brute_force_jaccard(dist, k1, k2):
    """Per-element Jaccard distance from a dense list-of-lists encoding distance.

    Written independently of the library, with Python sets and dicts. Returns the (N, N)
    distance array and the support (set of columns) of every V' row.
    """
    n = len(dist)
    ranked = [sorted(range(n), key=lambda j, i=i: (j != i, dist[i][j], j))[:k1] for i in range(n)]

    def head(i, k):
        return ranked[i][: min(k + 1, k1)]

    def reciprocal(i, k):
        return {j for j in head(i, k) if i in head(j, k)}

    half = int(round(k1 / 2))
    encoding = []
    for i in range(n):
        full = reciprocal(i, k1)
        expanded = set(full)
        for c in full:
            candidate = reciprocal(c, half)
            if len(candidate & full) > Fraction(2, 3) * len(candidate):
                expanded |= candidate
        weights = {j: math.exp(-dist[i][j]) for j in expanded}
        total = sum(weights.values())
        encoding.append({j: w / total for j, w in weights.items()})

    expanded_encoding = []
    for i in range(n):
        row = {}
        for j in ranked[i][:k2]:
            for col, value in encoding[j].items():
                row[col] = row.get(col, 0.0) + value / k2
        expanded_encoding.append(row)

    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            shared = set(expanded_encoding[i]) & set(expanded_encoding[j])
            s = sum(min(expanded_encoding[i][c], expanded_encoding[j][c]) for c in shared)
            out[i, j] = max(1.0 - s / (2.0 - s), 0.0)
    supports = [set(row) for row in expanded_encoding]
    return out, supports


def cosine_encoding_distance(feats):
    """2 - 2 cos(x_i, x_j) computed pair by pair in Python floats."""
    unit = [row / math.sqrt(float(np.dot(row, row))) for row in np.asarray(feats, dtype=np.float64)]
    return [[2.0 - 2.0 * float(np.dot(a, b)) for b in unit] for a in unit]


def random_unit_feats(num, dim, seed):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((num, dim))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def tied_feats(num, seed):
    """Unit vectors with four entries of +-0.5 in 8 dims: every cosine is an exact multiple
    of 1/4, so distances tie a lot, duplicates included, and no rounding can break a tie."""
    rng = np.random.default_rng(seed)
    supports = list(itertools.combinations(range(8), 4))
    feats = np.zeros((num, 8))
    for row in range(num):
        cols = supports[rng.integers(len(supports))]
        feats[row, list(cols)] = 0.5 * rng.choice([-1.0, 1.0], size=4)
    feats[num // 2] = feats[0]  # an exact duplicate
    return feats


@pytest.mark.parametrize(
    "num, dim, k1, k2, seed",
    [(40, 16, 5, 2, 0), (40, 16, 5, 1, 1), (60, 8, 10, 3, 2), (36, 32, 7, 7, 3)],
)
def test_matches_brute_force_on_random_points(num, dim, k1, k2, seed):
    feats = random_unit_feats(num, dim, seed)
    expected, _ = brute_force_jaccard(cosine_encoding_distance(feats), k1, k2)
    got = jaccard_distance_reference(feats.astype(np.float32), k1=k1, k2=k2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("seed", [4, 5])
def test_matches_brute_force_with_exact_ties(seed):
    feats = tied_feats(40, seed)
    expected, _ = brute_force_jaccard(cosine_encoding_distance(feats), 6, 2)
    got = jaccard_distance_reference(feats, k1=6, k2=2)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)


def test_neighbours_put_self_first_and_break_ties_by_index():
    dist = np.array(
        [
            [0.0, 0.5, 0.5, 0.1],
            [0.5, 0.3, 0.0, 0.0],  # row 1: own distance not smallest, 2 and 3 tie at 0
            [0.5, 0.0, 0.0, 0.0],
            [0.1, 0.0, 0.0, 0.0],
        ]
    )
    neighbours = k_nearest_neighbours(dist, 3)
    np.testing.assert_array_equal(neighbours, [[0, 3, 1], [1, 2, 3], [2, 1, 3], [3, 1, 2]])


def test_distance_is_one_exactly_where_supports_do_not_meet():
    # Two far apart groups make many disjoint supports.
    rng = np.random.default_rng(6)
    centres = random_unit_feats(2, 16, 7)
    feats = np.concatenate([c + 0.15 * rng.standard_normal((20, 16)) for c in centres])
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    _, supports = brute_force_jaccard(cosine_encoding_distance(feats), 5, 2)
    got = jaccard_distance_reference(feats, k1=5, k2=2)
    meet = np.array([[bool(a & b) for b in supports] for a in supports])
    assert (~meet).sum() > 0 and meet.sum() > 0
    assert np.all(got[~meet] == 1.0)
    assert np.all(got[meet] < 1.0)


def test_properties_symmetric_zero_diagonal_in_unit_range():
    feats = random_unit_feats(300, 24, 8)
    got = jaccard_distance_reference(feats, k1=20, k2=6)
    assert got.dtype == np.float32 and got.shape == (300, 300)
    np.testing.assert_array_equal(got, got.T)
    np.testing.assert_array_equal(np.diag(got), 0.0)
    assert got.min() >= 0.0 and got.max() <= 1.0
    off_diagonal = got[~np.eye(300, dtype=bool)]
    assert (off_diagonal < 1.0).any() and (off_diagonal == 1.0).any()


def test_deterministic_and_accepts_torch_tensors():
    feats = random_unit_feats(80, 12, 9).astype(np.float32)
    first = jaccard_distance_reference(feats, k1=8, k2=3)
    again = jaccard_distance_reference(feats.copy(), k1=8, k2=3)
    from_torch = jaccard_distance_reference(torch.from_numpy(feats), k1=8, k2=3)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, from_torch)


def test_rows_are_normalised_internally():
    feats = random_unit_feats(50, 10, 10)
    scales = np.linspace(0.5, 3.0, 50)[:, None]
    np.testing.assert_allclose(
        jaccard_distance_reference(feats * scales, k1=6, k2=2),
        jaccard_distance_reference(feats, k1=6, k2=2),
        atol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, num, message",
    [
        ({"k1": 0, "k2": 1}, 10, "k1"),
        ({"k1": 3, "k2": 0}, 10, "k2"),
        ({"k1": 3, "k2": 4}, 10, "k2"),
        ({"k1": 10, "k2": 2}, 10, "lower k1"),
    ],
)
def test_invalid_parameters_raise(kwargs, num, message):
    with pytest.raises(ValueError, match=message):
        jaccard_distance_reference(random_unit_feats(num, 4, 11), **kwargs)


def test_non_finite_or_zero_features_raise():
    feats = random_unit_feats(10, 4, 12)
    feats[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        jaccard_distance_reference(feats, k1=3, k2=1)
    feats[3] = 0.0
    with pytest.raises(ValueError, match="all-zero"):
        jaccard_distance_reference(feats, k1=3, k2=1)
    with pytest.raises(ValueError, match="shape"):
        jaccard_distance_reference(np.ones(5), k1=3, k2=1)

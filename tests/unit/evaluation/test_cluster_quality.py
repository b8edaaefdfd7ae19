"""Pseudo-label quality scores against scikit-learn and against counts done by hand."""

import itertools

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from cacl_dist.evaluation.cluster_quality import (
    adjusted_rand_index,
    cluster_purity,
    cluster_quality,
    normalized_mutual_info,
    outliers_as_singletons,
    pairwise_scores,
)


def brute_pairwise(pred, true):
    """Precision/recall over every unordered pair, the definition written out."""
    together = same = both = 0
    for a, b in itertools.combinations(range(len(pred)), 2):
        p = pred[a] == pred[b] and pred[a] >= 0
        t = true[a] == true[b]
        together += p
        same += t
        both += p and t
    return both / together, both / same


def test_known_labelling_by_hand():
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([5, 5, 7, 7, 7, -1])
    # predicted pairs: (0,1) and (2,3),(2,4),(3,4) -> 4; correct: (0,1),(3,4) -> 2
    # true pairs: 3 of id 0 + 1 of id 1 -> 4
    precision, recall, fscore = pairwise_scores(pred, true)
    assert precision == pytest.approx(0.5) and recall == pytest.approx(0.5) and fscore == pytest.approx(0.5)
    assert (precision, recall) == pytest.approx(brute_pairwise(pred, true))


@pytest.mark.parametrize("seed", range(6))
def test_scores_equal_sklearn_on_random_labellings(seed):
    rng = np.random.default_rng(seed)
    num = int(rng.integers(20, 300))
    true = rng.integers(0, int(rng.integers(2, 30)), size=num)
    noisy = np.where(rng.random(num) < 0.3, rng.integers(0, 40, size=num), true * 3 + 1)
    pred = np.where(rng.random(num) < 0.1, -1, noisy)
    singletons = outliers_as_singletons(pred)
    assert adjusted_rand_index(pred, true) == pytest.approx(adjusted_rand_score(true, singletons), abs=1e-12)
    assert normalized_mutual_info(pred, true) == pytest.approx(normalized_mutual_info_score(true, singletons),
                                                               abs=1e-12)
    assert pairwise_scores(pred, true)[:2] == pytest.approx(brute_pairwise(pred, true), abs=1e-12)


def test_outliers_are_singletons_not_one_cluster():
    true = np.array([0, 1, 2, 3])
    pred = np.array([-1, -1, -1, -1])
    assert list(outliers_as_singletons(pred)) == [0, 1, 2, 3]
    assert cluster_quality(pred, true) == {"precision": 1.0, "recall": 1.0, "fscore": 1.0, "ari": 1.0,
                                           "nmi": pytest.approx(1.0)}


@pytest.mark.parametrize("pred,true", [
    ([0, 0, 0, 0], [1, 1, 1, 1]),   # nothing split on either side
    ([0, 0, 1, 1], [0, 0, 0, 0]),   # prediction splits one identity
    ([0, 0, 0, 0], [0, 1, 2, 3]),   # one cluster of all identities
    ([3, 3, 1, 1, 2], [0, 0, 1, 1, 2]),  # perfect up to renaming
])
def test_edge_cases_agree_with_sklearn(pred, true):
    pred, true = np.array(pred), np.array(true)
    assert adjusted_rand_index(pred, true) == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)
    assert normalized_mutual_info(pred, true) == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)


def test_perfect_and_renamed_labelling_scores_one():
    true = np.repeat(np.arange(10), 4)
    quality = cluster_quality(true * 7 + 3, true)
    assert all(v == pytest.approx(1.0) for v in quality.values())


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ in length"):
        cluster_quality(np.zeros(3, dtype=int), np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="unknown identity"):
        cluster_quality(np.zeros(3, dtype=int), np.array([0, -1, 1]))
    with pytest.raises(ValueError, match="integer"):
        cluster_quality(np.zeros(3), np.zeros(3, dtype=int))


def test_purity():
    assert cluster_purity(np.array([4, 4, 2, 4])) == (4, 0.75)

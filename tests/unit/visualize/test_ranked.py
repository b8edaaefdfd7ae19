"""Ranked lists: order, correctness status and AP per query, query selection."""

import numpy as np
import pytest

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.visualize.ranked import choose_queries, rank_queries


def _records(pids, cams):
    return [ImageRecord(f"/x/{i}.jpg", p, c) for i, (p, c) in enumerate(zip(pids, cams))]


QUERY = _records([1, 2, 3], [0, 0, 0])
GALLERY = _records([1, 1, 2, 4, 2], [0, 1, 1, 1, 0])
DIST = np.array([[0.1, 0.5, 0.2, 0.9, 0.3],    # q1: junk first, then wrong, wrong, correct
                 [0.4, 0.4, 0.1, 0.2, 0.05],   # q2: junk, correct, wrong, tie 0.4 -> lower index first
                 [0.3, 0.2, 0.1, 0.4, 0.5]],   # q3: no match in the gallery
                dtype=np.float32)


def test_order_status_and_ap():
    ranked = rank_queries(DIST, QUERY, GALLERY, [0, 1, 2], topk=4)
    assert ranked[0].gallery == [0, 2, 4, 1]
    assert ranked[0].status == ["junk", "wrong", "wrong", "correct"]
    assert ranked[0].ap == pytest.approx(1 / 3)  # the junk item is not counted: the match is 3rd
    assert ranked[1].gallery == [4, 2, 3, 0] and ranked[1].status == ["junk", "correct", "wrong", "wrong"]
    assert ranked[1].ap == pytest.approx(1.0)
    assert ranked[2].ap is None and set(ranked[2].status) == {"wrong"}
    assert ranked[0].distances == pytest.approx([0.1, 0.2, 0.3, 0.5])


def test_choose_queries():
    assert choose_queries(DIST, QUERY, GALLERY, 2, "spread") == [0, 2]
    assert choose_queries(DIST, QUERY, GALLERY, 5, "worst") == [0, 1]  # no-match queries are left out
    assert choose_queries(DIST, QUERY, GALLERY, 1, "best") == [1]
    with pytest.raises(ValueError, match="--select"):
        choose_queries(DIST, QUERY, GALLERY, 1, "random")

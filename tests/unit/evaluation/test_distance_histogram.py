"""The match / non-match distance counts of an evaluation: exact, the same whatever the blocks."""

import numpy as np
import torch

from cacl_dist.evaluation.distance_histogram import DistanceHistogram
from cacl_dist.evaluation.evaluator import CMC_RANKS, evaluate_features


def test_counts_leave_out_same_camera_images_of_the_identity_and_clip_to_the_range():
    hist = DistanceHistogram(0.0, 1.0, bins=4)
    dist = torch.tensor([[0.1, 0.3, 0.6, 0.9, 1.7], [0.05, 0.55, 0.8, -0.2, 0.3]], dtype=torch.float64)
    q_pids, q_cams = torch.tensor([1, 2]), torch.tensor([0, 0])
    g_pids, g_cams = torch.tensor([1, 1, 2, 3, 2]), torch.tensor([0, 1, 1, 1, 0])
    hist.add(dist, q_pids, g_pids, q_cams, g_cams)
    result = hist.result()
    # query 1: g0 same camera (left out), g1 0.3 match; g2 0.6, g3 0.9, g4 1.7 (clipped) others
    # query 2: g2 0.8 match, g4 same camera; g0 0.05, g1 0.55, g3 -0.2 (clipped) others
    assert result["positive"] == [0, 1, 0, 1]
    assert result["negative"] == [2, 0, 2, 2]
    assert (result["low"], result["high"]) == (0.0, 1.0)


def test_evaluation_details_do_not_depend_on_the_block_size():
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(7, 8, generator=gen), torch.randn(30, 8, generator=gen)
    q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    ids = (np.arange(7) % 3, np.arange(30) % 5, np.zeros(7, dtype=int), np.arange(30) % 2)
    whole = evaluate_features(q, g, *ids, details=True)
    rows = evaluate_features(q, g, *ids, block_rows=2, details=True)
    assert whole["distance_histogram"] == rows["distance_histogram"]
    counts = whole["distance_histogram"]
    same = ids[0][:, None] == ids[1][None, :]
    junk = same & (ids[2][:, None] == ids[3][None, :])
    assert sum(counts["positive"]) == int((same & ~junk).sum()) and sum(counts["negative"]) == int((~same).sum())
    assert len(whole["cmc"]) == CMC_RANKS and whole["cmc"][0] == whole["rank1"]
    assert "distance_histogram" not in evaluate_features(q, g, *ids)

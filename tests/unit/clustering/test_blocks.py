"""Block sizes of the neighbour search come from a memory budget (planned, not allocated)."""

import numpy as np
import pytest
import torch

from cacl_dist.clustering import knn
from cacl_dist.clustering.blocks import (
    DEFAULT_BUDGET,
    TILE,
    BlockPlan,
    plan_blocks,
    search_bytes,
    strip_bytes,
)
from cacl_dist.clustering.jaccard_reference import gram_matrix, k_nearest_neighbours, l2_normalise_rows
from cacl_dist.clustering.unit_rows import UnitRows

from tests.helpers.clustering import knn_topk

MILLION, DIM = 1_000_000, 2048


@pytest.mark.parametrize("precision", ["tfloat32", "float32", "bfloat16"])
def test_a_million_points_on_cuda_stay_within_the_budget(precision):
    budget = DEFAULT_BUDGET["cuda"]
    plan = plan_blocks(MILLION, DIM, "cuda", precision)
    # The float64 strip: the largest number of rows whose temporaries fit, far below the
    # 4,096 rows (32.8 GB of strip alone) that would not fit an 80 GB GPU twice over.
    assert strip_bytes(plan.strip, MILLION, DIM, TILE["cuda"]) <= budget
    assert strip_bytes(plan.strip + 1, MILLION, DIM, TILE["cuda"]) > budget
    assert 8 * plan.strip * MILLION <= budget < 8 * 4096 * MILLION
    assert 100 <= plan.strip <= 512
    assert search_bytes(plan.search, DIM, precision) <= budget
    assert plan.search == 16384  # the cap fits this budget


@pytest.mark.parametrize("budget", [1 << 30, 256 << 20, 16 << 20])
def test_a_smaller_budget_gives_smaller_blocks_that_fit(budget):
    plan = plan_blocks(MILLION, DIM, "cuda", "bfloat16", budget=budget)
    larger = plan_blocks(MILLION, DIM, "cuda", "bfloat16", budget=2 * budget)
    assert plan.strip <= larger.strip and plan.search <= larger.search
    assert plan.strip == 1 or strip_bytes(plan.strip, MILLION, DIM, TILE["cuda"]) <= budget
    assert plan.search == 1 or search_bytes(plan.search, DIM, "bfloat16") <= budget
    assert plan.search % 256 == 0 or plan.search < 256


def test_cpu_plans_and_small_problems():
    cpu = plan_blocks(MILLION, DIM, "cpu", "float32")
    assert cpu == BlockPlan(search=2048, strip=cpu.strip) and 1 <= cpu.strip < 20
    assert strip_bytes(cpu.strip, MILLION, DIM, TILE["cpu"]) <= DEFAULT_BUDGET["cpu"]
    assert plan_blocks(160, 12, "cuda", "tfloat32") == BlockPlan(search=160, strip=160)  # never above N
    assert plan_blocks(MILLION, DIM, "cuda", "float32", budget=1) == BlockPlan(search=1, strip=1)
    assert plan_blocks(5000, 64, "cpu", "float64").search == plan_blocks(5000, 64, "cpu", "float64").strip


def test_the_search_uses_the_planned_strips(monkeypatch):
    # bfloat16 with no margin leaves many rows unproven; they are redone in strips of the
    # planned size (5 rows here), and the order is still the reference's.
    feats = np.random.default_rng(4).normal(size=(200, 24))
    monkeypatch.setattr(knn, "plan_blocks", lambda *args, **kwargs: BlockPlan(search=64, strip=5))
    strips = []
    original = UnitRows.similarity_rows
    monkeypatch.setattr(UnitRows, "similarity_rows",
                        lambda self, index: strips.append(index.numel()) or original(self, index))
    _, idx = knn_topk(torch.from_numpy(feats), 15, precision="bfloat16", margin=0)
    assert len(strips) > 1 and max(strips) == 5
    unit = l2_normalise_rows(feats)
    np.testing.assert_array_equal(idx.numpy(), k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 15))

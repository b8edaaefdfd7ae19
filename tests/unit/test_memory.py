"""Unit tests for cacl_dist.memory: shards, bank updates and exact running centres."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cacl_dist.distributed.sharding import shard_bounds
from cacl_dist.memory import ClusterCentres, InstanceBank


@pytest.mark.parametrize("num_total, world_size", [(10, 1), (10, 3), (7, 4), (3, 5), (0, 2), (1000, 8), (1001, 8)])
def test_shard_bounds_cover_all_rows(num_total, world_size):
    bounds = [shard_bounds(num_total, rank, world_size) for rank in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == num_total
    for (_, end), (start, _) in zip(bounds, bounds[1:]):
        assert end == start
    sizes = [end - start for start, end in bounds]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1


def test_shard_bounds_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(10, 2, 2)
    with pytest.raises(ValueError, match="world_size"):
        shard_bounds(10, 0, 0)


def _bank(num_total: int, dim: int, start: int, end: int, seed: int, device="cpu") -> InstanceBank:
    generator = torch.Generator().manual_seed(seed)
    bank = InstanceBank(num_total, dim, start, end, device=device)
    bank.load(torch.randn(end - start, dim, generator=generator))
    return bank


def test_load_normalises_and_checks_shape():
    bank = _bank(10, 4, 2, 6, seed=0)
    assert torch.allclose(bank.rows.norm(dim=1), torch.ones(4), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(4, 4\)"):
        bank.load(torch.randn(5, 4))


def test_update_matches_formula_and_ownership():
    bank = _bank(10, 4, 3, 7, seed=1)
    before = bank.rows.clone()
    indices = torch.tensor([4, 0, 6, 9])
    feats = F.normalize(torch.randn(4, 4), dim=1)
    delta, owned = bank.update(indices, feats, momentum=0.2)
    assert owned.tolist() == [True, False, True, False]
    for pos, idx in ((0, 4), (2, 6)):
        expected = F.normalize(0.2 * before[idx - 3] + 0.8 * feats[pos], dim=0)
        assert torch.allclose(bank.rows[idx - 3], expected, atol=1e-6)
        assert torch.allclose(delta[pos], (expected - before[idx - 3]).double(), atol=1e-6)
    assert torch.equal(delta[1], torch.zeros(4, dtype=torch.float64)) and torch.equal(delta[3], delta[1])
    assert torch.equal(bank.rows[[0, 2]], before[[0, 2]])
    assert delta.dtype == torch.float64


def test_update_applies_duplicates_in_order():
    bank = _bank(8, 3, 0, 8, seed=2)
    before = bank.rows.clone()
    indices = torch.tensor([5, 1, 5, 5, 1, 2])
    feats = F.normalize(torch.randn(6, 3), dim=1)
    expected = before.clone()
    for pos, idx in enumerate(indices.tolist()):
        expected[idx] = F.normalize(0.3 * expected[idx] + 0.7 * feats[pos], dim=0)
    delta, _ = bank.update(indices, feats, momentum=0.3)
    assert torch.allclose(bank.rows, expected, atol=1e-6)
    for idx in (5, 1, 2):
        steps = delta[indices == idx]
        assert torch.allclose(before[idx].double() + steps.sum(dim=0), bank.rows[idx].double(), atol=1e-12)
    # Each occurrence holds its own step, not the total change.
    first_five = F.normalize(0.3 * before[5] + 0.7 * feats[0], dim=0)
    assert torch.allclose(delta[0], (first_five - before[5]).double(), atol=1e-6)


def test_update_rejects_bad_input():
    bank = _bank(5, 3, 0, 5, seed=0)
    with pytest.raises(ValueError, match="momentum"):
        bank.update(torch.tensor([0]), torch.randn(1, 3), momentum=1.5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        bank.update(torch.tensor([5]), torch.randn(1, 3))
    with pytest.raises(ValueError, match="features"):
        bank.update(torch.tensor([0, 1]), torch.randn(1, 3))


def _brute_force_means(rows: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    means = torch.zeros(num_clusters, rows.shape[1], dtype=torch.float64)
    for cluster in range(num_clusters):
        members = rows[labels == cluster].double()
        if len(members):
            means[cluster] = members.mean(dim=0)
    return means


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_running_centres_equal_bank_means(world_size, seed):
    generator = torch.Generator().manual_seed(seed)
    num_total, dim, num_clusters = 37, 6, 9
    labels = torch.randint(-1, num_clusters - 1, (num_total,), generator=generator)  # cluster 8 stays empty
    banks = [
        _bank(num_total, dim, *shard_bounds(num_total, rank, world_size), seed=seed * 10 + rank)
        for rank in range(world_size)
    ]
    sums, counts = zip(*(ClusterCentres.local_sums(bank, labels, num_clusters) for bank in banks))
    centres = ClusterCentres(sum(sums), sum(counts))  # the all-reduce, simulated
    for _ in range(60):
        batch = torch.randint(0, num_total, (8,), generator=generator)  # duplicates happen
        feats = F.normalize(torch.randn(8, dim, generator=generator), dim=1)
        results = [bank.update(batch, feats, momentum=0.2) for bank in banks]
        owned_total = sum(owned.long() for _, owned in results)
        assert torch.equal(owned_total, torch.ones(8, dtype=torch.long))
        centres.apply_delta(labels[batch], sum(delta for delta, _ in results))
    all_rows = torch.cat([bank.rows for bank in banks])
    expected = _brute_force_means(all_rows, labels, num_clusters)
    assert torch.allclose(centres.centres(torch.float64), expected, atol=1e-5)
    assert (centres.centres(torch.float64) - expected).abs().max() < 1e-12
    assert centres.valid().tolist() == [bool((labels == c).any()) for c in range(num_clusters)]
    assert not centres.valid()[-1] and torch.equal(centres.centres()[-1], torch.zeros(dim))
    assert centres.centres().dtype == torch.float32


def test_local_sums_ignore_unlabelled_and_check_range():
    bank = _bank(6, 2, 0, 6, seed=3)
    labels = torch.tensor([0, -1, 1, 0, -1, 1])
    sums, counts = ClusterCentres.local_sums(bank, labels, 3)
    assert counts.tolist() == [2, 2, 0]
    assert torch.allclose(sums[0], (bank.rows[0] + bank.rows[3]).double())
    with pytest.raises(ValueError, match=r"\[-1, 1\)"):
        ClusterCentres.local_sums(bank, labels, 1)
    with pytest.raises(ValueError, match="one label per dataset index"):
        ClusterCentres.local_sums(bank, labels[:4], 3)


def test_apply_delta_ignores_unlabelled():
    centres = ClusterCentres(torch.zeros(2, 2, dtype=torch.float64), torch.tensor([1, 1]))
    deltas = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    centres.apply_delta(torch.tensor([-1, 1, 1]), deltas)
    assert centres.centres().tolist() == [[0.0, 0.0], [1.0, 2.0]]


def test_state_dict_round_trip():
    bank = _bank(10, 3, 5, 10, seed=4)
    restored = InstanceBank(10, 3, 5, 10)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.rows, bank.rows)
    with pytest.raises(ValueError, match="re-shard"):
        InstanceBank(10, 3, 0, 5).load_state_dict(bank.state_dict())

    labels = torch.tensor([0, 1, 1, 0, 2, 2, 0, 1, -1, 0])
    centres = ClusterCentres(*ClusterCentres.local_sums(bank, labels, 3))
    copy = ClusterCentres(torch.zeros(1, 3), torch.zeros(1))
    copy.load_state_dict(centres.state_dict())
    assert torch.equal(copy.centres(), centres.centres()) and torch.equal(copy.valid(), centres.valid())
    # The saved state is a copy, not a view of live tensors.
    state = centres.state_dict()
    centres.apply_delta(torch.tensor([0]), torch.ones(1, 3, dtype=torch.float64))
    assert not torch.equal(state["sums"], centres.sums_MD)


def _centres_after_steps(world_size: int, seed: int, device="cpu") -> ClusterCentres:
    """Centres built from sharded banks and moved by 30 steps of updates (duplicates included)."""
    generator = torch.Generator().manual_seed(seed)
    num_total, dim, num_clusters = 37, 6, 9
    labels = torch.randint(-1, num_clusters - 1, (num_total,), generator=generator)
    banks = [_bank(num_total, dim, *shard_bounds(num_total, rank, world_size), seed=seed * 10 + rank, device=device)
             for rank in range(world_size)]
    sums, counts = zip(*(ClusterCentres.local_sums(bank, labels.to(device), num_clusters) for bank in banks))
    centres = ClusterCentres(sum(sums), sum(counts))
    for _ in range(30):
        batch = torch.randint(0, num_total, (8,), generator=generator)
        deltas = 10.0 ** torch.randint(-8, 8, (8, dim), generator=generator).double() * torch.randn(
            8, dim, generator=generator, dtype=torch.float64)  # many magnitudes: the order shows
        centres.apply_delta(labels[batch].to(device), deltas.to(device))
    return centres


def test_ordered_sums_and_chunks_give_the_same_centres_bit_for_bit(monkeypatch):
    from cacl_dist import memory
    from cacl_dist import ordered_add as reduce

    expected = _centres_after_steps(2, seed=5)
    calls = []
    original = reduce.ordered_index_add_
    monkeypatch.setattr(reduce, "adds_unordered", lambda device: True)  # the CUDA path, on the CPU
    monkeypatch.setattr(reduce, "ordered_index_add_", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(memory, "SUM_CHUNK_ENTRIES", 20)  # local sums in chunks of 3 rows
    got = _centres_after_steps(2, seed=5)
    assert len(calls) > 30
    assert torch.equal(got.sums_MD.view(torch.int64), expected.sums_MD.view(torch.int64))
    assert torch.equal(got.counts_M, expected.counts_M)


@pytest.mark.gpu
def test_cuda_centres_repeat_bit_for_bit_and_equal_the_cpu():
    expected = _centres_after_steps(3, seed=6)
    first, second = (_centres_after_steps(3, seed=6, device="cuda") for _ in range(2))
    assert torch.equal(first.sums_MD.view(torch.int64), second.sums_MD.view(torch.int64))
    assert torch.equal(first.sums_MD.cpu().view(torch.int64), expected.sums_MD.view(torch.int64))


def test_centres_load_onto_the_requested_device():
    """A resumed run puts the centres on its own device, wherever the placeholder was built."""
    state = ClusterCentres(torch.ones(2, 3, dtype=torch.float64), torch.tensor([1, 2])).state_dict()
    centres = ClusterCentres(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))
    centres.load_state_dict(state, device="meta")
    assert centres.sums_MD.device.type == "meta" and centres.counts_M.device.type == "meta"
    assert centres.sums_MD.shape == (2, 3) and centres.sums_MD.dtype == torch.float64
    centres.load_state_dict(state)  # default: stay where they are
    assert centres.sums_MD.device.type == "meta"

import torch

from cacl_dist.distributed import comm

from tests.helpers.gloo import run_gloo


def test_collectives_are_identity_in_one_process():
    t = torch.arange(6.0).reshape(3, 2)
    assert comm.all_gather_cat(t) is t
    assert comm.all_reduce_sum(t) is t
    assert comm.broadcast_tensor(t) is t
    assert comm.broadcast_object({"a": 1}) == {"a": 1}
    assert comm.world_size() == 1 and comm.rank() == 0


def _collectives(rank, world_size):
    rows = torch.full((rank + 1, 2), float(rank))  # unequal sizes per rank
    gathered = comm.all_gather_cat(rows)
    total = comm.all_reduce_sum(torch.tensor([rank + 1.0]))
    obj = comm.broadcast_object({"labels": [1, 2, 3]} if rank == 0 else None)
    tensor = comm.broadcast_tensor(torch.arange(4) * (rank + 1))
    return gathered, total, obj, tensor


def test_collectives_across_three_gloo_processes():
    results = run_gloo(_collectives, 3)
    expected = torch.cat([torch.full((r + 1, 2), float(r)) for r in range(3)])
    for gathered, total, obj, tensor in results:
        assert torch.equal(gathered, expected)
        assert total.item() == 6.0
        assert obj == {"labels": [1, 2, 3]}
        assert torch.equal(tensor, torch.arange(4))


def _gather_while_computing(rank, world_size):
    pending = comm.all_gather_start(torch.full((2, 3), float(rank)))
    busy = torch.ones(64, 64) @ torch.ones(64, 64)  # work queued while the gather is in flight
    return pending.wait(), busy[0, 0].item()


def test_started_gather_returns_rank_ordered_rows_across_three_processes():
    expected = torch.cat([torch.full((2, 3), float(r)) for r in range(3)])
    for gathered, busy in run_gloo(_gather_while_computing, 3):
        assert torch.equal(gathered, expected) and busy == 64.0


def _rank0_never_sends(rank, world_size):
    import time

    if rank == 0:
        time.sleep(8)  # stands in for a clustering run that died or hangs
        return "rank 0 gave nothing"
    try:
        comm.broadcast_tensor(torch.zeros(5, dtype=torch.int64), src=0, what="pseudo labels")
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def test_waiting_for_labels_fails_loudly_after_the_timeout():
    results = run_gloo(_rank0_never_sends, 2, pg_timeout=2.0)
    assert results[0] == "rank 0 gave nothing"
    assert "rank 1 gave up waiting for pseudo labels from rank 0" in results[1]
    assert "dist.timeout_min" in results[1]

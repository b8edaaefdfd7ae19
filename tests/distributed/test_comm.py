import pytest
import torch

from cacl_dist.distributed import comm

from tests.helpers.gloo import run_gloo


def test_collectives_are_identity_in_one_process():
    t = torch.arange(6.0).reshape(3, 2)
    assert comm.all_gather_cat(t) is t
    assert comm.all_reduce_sum(t) is t
    assert comm.broadcast_object(t) is t
    assert comm.broadcast_object({"a": 1}) == {"a": 1}
    assert comm.world_size() == 1 and comm.rank() == 0


def _collectives(rank, world_size):
    rows = torch.full((rank + 1, 2), float(rank))  # unequal sizes per rank
    gathered = comm.all_gather_cat(rows)
    total = comm.all_reduce_sum(torch.tensor([rank + 1.0]))
    obj = comm.broadcast_object({"labels": [1, 2, 3]} if rank == 0 else None)
    tensor = comm.broadcast_object(torch.arange(4) * (rank + 1))  # e.g. the pseudo labels, on the CPU
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
        comm.run_on_main(lambda: torch.zeros(5, dtype=torch.int64), "pseudo labels")  # as the trainer clusters
    except RuntimeError as exc:
        return str(exc)
    return "no error"


def test_waiting_for_labels_fails_loudly_after_the_timeout():
    results = run_gloo(_rank0_never_sends, 2, pg_timeout=2.0)
    assert results[0] == "rank 0 gave nothing"
    assert "rank 1 gave up waiting for pseudo labels from rank 0" in results[1]
    assert "dist.timeout_min" in results[1]


def test_new_collectives_are_identity_in_one_process():
    t = torch.arange(6.0).reshape(3, 2)
    assert torch.equal(comm.gather_cat(t), t) and comm.gather_cat(t, device="meta").device.type == "meta"
    assert comm.run_on_main(lambda: 7, "seven") == 7
    assert comm.run_everywhere(lambda: "mine", "a phase") == "mine"
    with pytest.raises(KeyError):
        comm.run_on_main(lambda: {}["missing"], "a lookup")


class _ClusteringFailed(ValueError):
    pass


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:
        return type(exc).__name__, str(exc)


def _rank0_only_work(rank, world_size):
    """The rank-0-only helpers in three processes: gather to rank 0, results and failures shared."""
    rows = torch.full((rank + 1, 2), float(rank))  # unequal sizes per rank

    def clustering():
        if rank != 0:
            raise AssertionError("only rank 0 runs fn")
        raise _ClusteringFailed("DBSCAN found no neighbours; lower clustering.eps")

    def reading():
        if rank == 2:
            raise FileNotFoundError(f"rank {rank} cannot read the checkpoint")
        return rank * 10

    return {
        "gathered": comm.gather_cat(rows, dst=0), "all_gathered": comm.all_gather_cat(rows),
        "metrics": comm.run_on_main(lambda: {"mAP": 0.5, "rank": rank}, "evaluation metrics"),
        "own": comm.run_everywhere(lambda: rank, "a phase"),
        "rank0_failed": _outcome(lambda: comm.run_on_main(clustering, "the pseudo labels")),
        "rank2_failed": _outcome(lambda: comm.run_everywhere(reading, "reading the checkpoint")),
    }


@pytest.fixture(scope="module")
def three_ranks():
    """One run of three gloo processes; the process-group timeout is long, so a failure that did not
    travel would show as a hang (the harness gives up long before the timeout)."""
    return run_gloo(_rank0_only_work, 3, timeout=120.0, pg_timeout=600.0)


def test_gather_to_rank0_matches_all_gather_there_and_leaves_the_others_empty(three_ranks):
    assert torch.equal(three_ranks[0]["gathered"], three_ranks[0]["all_gathered"])
    assert three_ranks[1]["gathered"] is None and three_ranks[2]["gathered"] is None


def test_rank0_result_reaches_every_rank_and_each_keeps_its_own(three_ranks):
    assert [r["metrics"] for r in three_ranks] == [{"mAP": 0.5, "rank": 0}] * 3
    assert [r["own"] for r in three_ranks] == [0, 1, 2]


def test_a_failure_on_rank0_reaches_every_rank_with_the_same_message(three_ranks):
    message = "DBSCAN found no neighbours; lower clustering.eps"
    assert [r["rank0_failed"] for r in three_ranks] == [("_ClusteringFailed", message)] * 3


def test_a_failure_on_any_rank_stops_every_rank(three_ranks):
    assert [r["rank2_failed"] for r in three_ranks] == [("FileNotFoundError", "rank 2 cannot read the checkpoint")] * 3


def test_a_failure_whose_class_cannot_travel_arrives_as_a_runtime_error_with_its_message():
    class Local(Exception):
        pass

    assert comm._failure(ValueError("bad eps")) == (ValueError, "bad eps")
    rebuilt = comm._rebuild(*comm._failure(Local("no neighbours")))
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "no neighbours"
    rebuilt = comm._rebuild(*comm._failure(KeyError("labels")))  # str(KeyError) quotes: not the same message
    assert type(rebuilt) is RuntimeError and str(rebuilt) == "'labels'"


def _rank0_hangs(rank, world_size):
    import time

    def fn():
        time.sleep(8)  # stands in for a clustering run that hangs
        return "late"

    try:
        return comm.run_on_main(fn, "the pseudo labels (clustering on rank 0)")
    except RuntimeError as exc:
        return str(exc)


def test_waiting_for_a_hanging_rank0_names_the_phase():
    results = run_gloo(_rank0_hangs, 2, pg_timeout=2.0)
    assert "rank 1 gave up waiting for the pseudo labels (clustering on rank 0) from rank 0" in results[1]
    assert "dist.timeout_min" in results[1] and "\n" not in results[1]

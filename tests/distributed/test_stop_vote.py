"""A stop request that a signal makes while its rank waits in the stop vote is never lost (two gloo processes)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from cacl_dist.training.stopping import AgreedStop, StopSignals

from tests.helpers.gloo import run_gloo


def _signal_during_the_vote(rank, world_size, marker: str):
    """Rank 0 enters the vote at once and gets SIGTERM while it waits there; rank 1 comes to the vote only
    after the signal was sent (it waits for rank 0's marker file), then both vote once more."""
    stop = AgreedStop()
    with StopSignals() as signals:
        signals.attach(stop.request)
        if rank == 0:
            def deliver() -> None:
                time.sleep(0.5)  # rank 0's main thread is blocked in the all-reduce by now (rank 1 waits for us)
                os.kill(os.getpid(), signal.SIGTERM)
                Path(marker).write_text("sent")

            threading.Thread(target=deliver, daemon=True).start()
        else:
            deadline = time.monotonic() + 30
            while not Path(marker).exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # rank 1 is late: rank 0 has been blocked in the vote all along
        first = stop.agreed()
        second = stop.agreed()
        return {"first": first, "second": second, "received": signals.received, "requested": stop.requested}


def test_a_signal_during_the_vote_stops_every_rank_at_the_next_vote(tmp_path):
    results = run_gloo(_signal_during_the_vote, 2, str(tmp_path / "signal_sent"), timeout=90)
    assert results[0]["received"] == signal.SIGTERM and results[1]["received"] is None
    assert results[0]["first"] == results[1]["first"]  # every rank gets the same answer at the same vote
    assert [r["second"] for r in results] == [True, True]  # the request made during the first vote counts
    assert [r["requested"] for r in results] == [True, True]


def test_a_request_is_never_taken_back_by_a_vote():
    stop = AgreedStop()
    assert not stop.agreed() and not stop.requested
    stop.request()
    assert stop.requested and stop.agreed() and stop.agreed()  # once agreed, every later vote agrees

"""A DataLoader worker that the kernel killed (out of memory) is one line naming data.num_workers, not a traceback."""

from __future__ import annotations

import pytest

from cacl_dist.cli.common import user_error_message


@pytest.mark.parametrize("raised, how", [
    ("DataLoader worker (pid 4242) is killed by signal: Killed. ", "(pid 4242) was killed (signal: Killed)"),
    ("DataLoader worker (pid(s) 12, 13) exited unexpectedly", "(pid 12, 13) ended unexpectedly"),
    ("DataLoader worker (pid 7) exited unexpectedly with exit code 1. Details are lost due to multiprocessing.",
     "(pid 7) ended unexpectedly"),
])
def test_a_dead_loader_worker_is_one_line_suggesting_fewer_workers_or_more_memory(raised, how):
    message = user_error_message(RuntimeError(raised))
    assert message is not None and how in message and "\n" not in message
    assert "data.num_workers" in message and "memory" in message and "last checkpoint" in message


def test_other_runtime_errors_stay_bugs():
    assert user_error_message(RuntimeError("DataLoader timed out after 5 seconds")) is None

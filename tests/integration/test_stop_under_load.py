"""SIGTERM to torchrun's agent on a loaded machine, repeated with each pipeline: both workers checkpoint and stop
every time (a request that arrived while a rank waited in the stop vote used to be lost now and then)."""

from __future__ import annotations

import pytest

from tests.helpers.faults import Lab
from tests.integration.fault_hangs import sigterm_torchrun_agent

REPEATS = 2


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["torchvision", "dali"])
def test_sigterm_to_torchrun_under_load_always_checkpoints_and_stops(tmp_path, synthetic_root, pipeline):
    if pipeline == "dali":
        pytest.importorskip("nvidia.dali")
    lab = Lab(tmp_path)
    lab.data = synthetic_root
    results = [sigterm_torchrun_agent(lab, f"{pipeline}_{i}", pipeline, busy=True) for i in range(REPEATS)]
    assert all(ok for ok, _ in results), [observed for _, observed in results]

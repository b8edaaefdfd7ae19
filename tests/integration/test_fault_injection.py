"""The fault-injection script's cases, run as part of the suite (a few minutes)."""

from __future__ import annotations

import pytest

from tests.integration.fault_injection import CASES, run_cases, table


@pytest.mark.slow
def test_every_fault_behaves_as_expected(tmp_path):
    # The torchrun cases are tested in test_stopping.py and test_two_nodes.py.
    names = [case.name for case in CASES if not case.torchrun]
    rows = run_cases(names, tmp_path / "faults")
    assert [case.name for case, _, _ in rows] == names
    assert all(verdict in ("ok", "skipped") for _, _, verdict in rows), "\n" + table(rows)

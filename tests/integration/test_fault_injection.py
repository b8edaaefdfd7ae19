"""The fault-injection script's cases of this branch, run as part of the suite (a few minutes)."""

from __future__ import annotations

import pytest

from tests.integration.fault_injection import CASES, run_cases, table


@pytest.mark.slow
def test_every_fault_handled_here_behaves_as_expected(tmp_path):
    names = [case.name for case in CASES if case.here and not case.torchrun]  # torchrun cases: test_stopping.py
    rows = run_cases(names, tmp_path / "faults")
    assert [case.name for case, _, _ in rows] == names
    assert all(verdict in ("ok", "skipped") for _, _, verdict in rows), "\n" + table(rows)

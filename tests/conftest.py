"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """One shared tiny synthetic dataset (written once per test session)."""
    return tmp_path_factory.mktemp("synthetic")

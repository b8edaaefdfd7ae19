"""Fixtures shared by every test folder."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """One shared tiny synthetic dataset (written once per test session)."""
    return tmp_path_factory.mktemp("synthetic")


#: Why a `gpu` test is skipped on a machine without CUDA. The GPU acceptance counts a skip with this
#: reason, like any other skip of a `gpu` test, as a failure (there the GPU must be exercised) ...
NO_CUDA_REASON = "needs a CUDA device"
#: ... except a skip whose reason starts with this (an optional extra that is not installed, a GPU
#: feature this GPU lacks): those are listed, not failed.
NOT_APPLICABLE = "not applicable here:"


def pytest_collection_modifyitems(config, items):
    """Skip every test marked `gpu` when torch sees no CUDA device: the marker is the one way to need CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)

"""The TF32 switch of the neighbour search on both generations of torch's cuBLAS settings."""

import numpy as np
import pytest
import torch

from cacl_dist.clustering import knn
from cacl_dist.clustering.jaccard_reference import gram_matrix, k_nearest_neighbours, l2_normalise_rows

from tests.helpers.clustering import knn_topk


class LegacyMatmul:
    """torch 2.1-2.8: only ``allow_tf32``."""

    def __init__(self, allow_tf32=False):
        self.allow_tf32 = allow_tf32
        self.allow_bf16_reduced_precision_reduction = True

    def __getattr__(self, name):
        raise AttributeError(name)  # no fp32_precision


class NewMatmul:
    """torch >= 2.9: ``fp32_precision``; reading ``allow_tf32`` raises when the two disagree,
    which they do once a value was set through ``fp32_precision`` only."""

    def __init__(self, precision="none"):
        self.legacy = False
        self.precision = precision
        self.allow_bf16_reduced_precision_reduction = True

    @property
    def fp32_precision(self):
        return self.precision

    @fp32_precision.setter
    def fp32_precision(self, value):
        assert value in ("ieee", "tf32", "none")
        self.precision = value

    @property
    def allow_tf32(self):
        if self.legacy != (self.precision == "tf32"):
            raise RuntimeError("mix of the legacy and new APIs to set the TF32 status for cublas matmul")
        return self.legacy

    @allow_tf32.setter
    def allow_tf32(self, value):
        self.legacy = bool(value)
        self.precision = "tf32" if value else "ieee"


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_new_api_is_used_and_restored(monkeypatch, allow_tf32):
    fake = NewMatmul("tf32")  # set through the new API: the legacy read raises
    monkeypatch.setattr(torch.backends.cuda, "matmul", fake)
    with knn._matmul_precision(allow_tf32):
        assert fake.precision == ("tf32" if allow_tf32 else "ieee")
        assert fake.allow_bf16_reduced_precision_reduction is False
    assert fake.precision == "tf32" and fake.legacy is False  # the legacy flag was never touched
    assert fake.allow_bf16_reduced_precision_reduction is True


@pytest.mark.parametrize("before", [True, False])
def test_legacy_api_is_used_and_restored(monkeypatch, before):
    fake = LegacyMatmul(before)
    monkeypatch.setattr(torch.backends.cuda, "matmul", fake)
    for allow_tf32 in (True, False):
        with knn._matmul_precision(allow_tf32):
            assert fake.allow_tf32 is allow_tf32
            assert fake.allow_bf16_reduced_precision_reduction is False
        assert fake.allow_tf32 is before and fake.allow_bf16_reduced_precision_reduction is True


class DeafMatmul(NewMatmul):
    """A settings object that ignores what is set (as if something reset it): TF32 stays off."""

    @property
    def fp32_precision(self):
        return "ieee"

    @fp32_precision.setter
    def fp32_precision(self, value):
        pass


def test_a_tf32_setting_that_does_not_take_is_an_error(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "matmul", DeafMatmul("ieee"))
    with pytest.raises(RuntimeError, match="asked cuBLAS for TF32"):
        with knn._matmul_precision(True):
            pass
    with knn._matmul_precision(False):  # IEEE was asked for and is what reads back
        pass


def test_tf32_is_never_in_effect_on_a_cpu():
    assert knn.tf32_in_effect("cpu") is False


@pytest.mark.gpu
def test_tf32_is_in_effect_on_a_gpu_that_has_it():
    """The probe measures TF32 on every GPU since Ampere (capability 8.0), and IEEE when TF32 is asked off."""
    if torch.cuda.get_device_capability(0)[0] < 8:
        pytest.skip("not applicable here: a GPU without TF32 (before Ampere)")
    assert knn.tf32_in_effect("cuda") is True


def test_settings_are_restored_when_the_block_raises(monkeypatch):
    fake = NewMatmul("none")
    monkeypatch.setattr(torch.backends.cuda, "matmul", fake)
    with pytest.raises(ZeroDivisionError):
        with knn._matmul_precision(True):
            1 / 0
    assert fake.precision == "none" and fake.allow_bf16_reduced_precision_reduction is True


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="this torch has no fp32_precision setting")
def test_search_runs_after_the_new_api_was_used():
    # The real settings object: once fp32_precision was set, reading allow_tf32 raises on torch >= 2.9.
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    feats = np.random.default_rng(0).normal(size=(80, 8))
    unit = l2_normalise_rows(feats)
    try:
        matmul.fp32_precision = "tf32"
        _, idx = knn_topk(torch.from_numpy(feats).float(), 10, precision="float32")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = saved
    np.testing.assert_array_equal(idx.numpy(), k_nearest_neighbours(2.0 - 2.0 * gram_matrix(unit), 10))

"""The cuML clustering backend: its hand-off logic on CPU (through stand-in modules), its errors,
and the real thing on a GPU when cuML is installed."""

import sys
import types

import numpy as np
import pytest
import torch
from sklearn.cluster import DBSCAN as SklearnDBSCAN

from cacl_dist.clustering import cuml_backend
from cacl_dist.clustering.params import ClusterParams, resolve_backend
from cacl_dist.clustering.pseudo_labels import cluster

from .test_sparse import sphere_blobs


class _StandInDBSCAN:
    """cuML's DBSCAN interface, computed by scikit-learn on a DLPack-imported array."""

    calls = []

    def __init__(self, eps, min_samples, metric, output_type):
        assert metric == "precomputed" and output_type == "cupy"
        self.eps, self.min_samples = eps, min_samples

    def fit_predict(self, matrix):
        dense = np.asarray(matrix)
        self.calls.append(dense.shape)
        assert dense.dtype == np.float32 and np.all(np.diag(dense) == 0)
        return SklearnDBSCAN(eps=self.eps, min_samples=self.min_samples,
                             metric="precomputed").fit_predict(dense).astype(np.int32)


@pytest.fixture
def stand_in_cuml(monkeypatch):
    """Fake `cuml` and `cupy` modules: DLPack to numpy, DBSCAN by scikit-learn."""
    cuml = types.ModuleType("cuml")
    cuml.cluster = types.SimpleNamespace(DBSCAN=_StandInDBSCAN)
    cupy = types.ModuleType("cupy")
    cupy.from_dlpack = np.from_dlpack
    monkeypatch.setitem(sys.modules, "cuml", cuml)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    _StandInDBSCAN.calls.clear()
    return _StandInDBSCAN


@pytest.mark.parametrize("refine", [True, False])
def test_cuml_hand_off_gives_the_reference_labels(stand_in_cuml, refine):
    feats = sphere_blobs(400, 16, 20, 1.0, seed=11)
    ref = cluster(feats, ClusterParams(k1=15, k2=4, refine=refine, backend="sklearn"))
    got = cluster(torch.from_numpy(feats).float(), ClusterParams(k1=15, k2=4, refine=refine, backend="cuml"))
    np.testing.assert_array_equal(got.labels, ref.labels)
    assert (got.num_raw_clusters, got.num_outliers, got.num_refined_away) == (
        ref.num_raw_clusters, ref.num_outliers, ref.num_refined_away)
    assert got.backend == "cuml"
    assert stand_in_cuml.calls == [(400, 400)] * (2 if refine else 1)  # raw (+ tight) DBSCAN


def test_cuml_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuml", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"cacl_dist\[cuml\]"):
        cuml_backend.import_cuml()
    with pytest.raises(ValueError, match="clustering.backend=torch"):
        resolve_backend("cuml")


def test_backend_auto_is_the_sparse_path_and_names_are_checked():
    assert resolve_backend("auto") == "torch"  # whatever the number of points and the device
    assert resolve_backend("sklearn") == "sklearn"  # explicit choice wins
    with pytest.raises(ValueError, match="'faiss'"):
        resolve_backend("faiss")


class FakeGpuMemory:
    """torch.cuda's memory functions on a GPU of ``total`` bytes: freed tensors stay reserved
    (cached by torch, used as far as the driver knows) until ``empty_cache``."""

    def __init__(self, total, allocated, releases=True):
        self.total, self.allocated, self.reserved = total, allocated, allocated
        self.releases, self.emptied = releases, 0

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (self.total - self.reserved, self.total))
        monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: self.reserved)
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: self.allocated)
        monkeypatch.setattr(torch.cuda, "empty_cache", self.empty_cache)
        return self

    def empty_cache(self):
        self.emptied += 1
        if self.releases:
            self.reserved = self.allocated

    def use_and_free(self, nbytes):
        """A tensor of ``nbytes`` allocated and deleted: its memory stays cached."""
        self.reserved = max(self.reserved, self.allocated + nbytes)


GIB = 2 ** 30
CUDA0 = torch.device("cuda", 0)


def test_dense_matrix_that_cannot_fit_is_refused(monkeypatch):
    FakeGpuMemory(80 * GIB, 79 * GIB).install(monkeypatch)
    with pytest.raises(ValueError, match="backend=torch"):
        cuml_backend.check_fits(100_000, CUDA0)  # 37 GiB > 1 GiB free
    cuml_backend.check_fits(10_000, CUDA0)  # 0.4 GiB fits
    assert cuml_backend.dense_bytes(1000) == 4_000_000


@pytest.mark.parametrize("releases", [True, False])
def test_memory_cached_by_the_first_dbscan_counts_as_available(monkeypatch, releases):
    # The raw DBSCAN's 37 GiB matrix, freed but cached by torch, must not make the tight DBSCAN
    # (same N) look too large: the check releases the cache and counts reserved-but-unused bytes.
    memory = FakeGpuMemory(80 * GIB, 10 * GIB, releases=releases).install(monkeypatch)
    num_points = 100_000
    cuml_backend.check_fits(num_points, CUDA0)
    memory.use_and_free(cuml_backend.dense_bytes(num_points))
    assert torch.cuda.mem_get_info(CUDA0)[0] < 35 * GIB  # what the driver alone reports
    cuml_backend.check_fits(num_points, CUDA0)
    assert memory.emptied == 2
    memory.allocated = memory.reserved = 50 * GIB  # live tensors are not available
    with pytest.raises(ValueError, match="30.0 GiB available"):
        cuml_backend.check_fits(num_points, CUDA0)


def test_cache_is_released_on_cuda_only(monkeypatch):
    memory = FakeGpuMemory(80 * GIB, 10 * GIB).install(monkeypatch)
    cuml_backend.release_cache(torch.device("cpu"))
    assert memory.emptied == 0
    cuml_backend.release_cache(CUDA0)
    assert memory.emptied == 1


@pytest.mark.gpu
@pytest.mark.skipif(not cuml_backend.cuml_available(), reason="not applicable here: optional extra RAPIDS cuML (.[cuml]) not installed")
def test_cuml_on_gpu_equals_reference():
    feats = sphere_blobs(2000, 64, 100, 1.0, seed=12)
    ref = cluster(feats, ClusterParams(k1=20, k2=6, backend="sklearn"))
    got = cluster(torch.from_numpy(feats).float().cuda(), ClusterParams(k1=20, k2=6, backend="cuml"))
    from sklearn.metrics import adjusted_rand_score
    # cuML may settle a border point touching two clusters differently; nothing else may differ.
    assert adjusted_rand_score(ref.labels, got.labels) > 0.999
    assert got.num_raw_clusters == ref.num_raw_clusters

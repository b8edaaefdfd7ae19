"""The "cuml" clustering backend: the sparse Jaccard graph on the GPU, DBSCAN by RAPIDS cuML.

cuML's DBSCAN takes a precomputed distance matrix only in dense form, so the sparse pair list
of :func:`~cacl_dist.clustering.jaccard_sparse.jaccard_pairs` is scattered into an N x N
float32 matrix on the GPU (1 where no pair is stored, which is the exact distance there) and
handed to cuML through DLPack, without a copy. Refinement then runs on the sparse graph as in
the torch backend. The dense matrix limits this backend to N where N^2 float32 fits in GPU
memory (about 50k points per 10 GB); the torch backend has no such limit and is the default.

cuML and CuPy are optional (``pip install cacl_dist[cuml]``) and imported only here, when the
backend is used.
"""

from __future__ import annotations

import importlib

import torch

INSTALL_HINT = "pip install 'cacl_dist[cuml]' (RAPIDS cuML and CuPy for CUDA 13)"


def import_cuml() -> tuple:
    """Return the (cuml, cupy) modules, or raise ImportError with the extra to install."""
    try:
        cuml = importlib.import_module("cuml")
        cupy = importlib.import_module("cupy")
    except ImportError as error:
        raise ImportError(f"clustering.backend 'cuml' needs RAPIDS cuML and CuPy ({error}); "
                          f"install them with {INSTALL_HINT}, or use backend 'torch'.") from error
    return cuml, cupy


def cuml_available() -> bool:
    """Whether cuML and CuPy import and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import_cuml()
    except ImportError:
        return False
    return True


def dense_bytes(num_points: int) -> int:
    """Bytes of the dense float32 distance matrix this backend builds."""
    return 4 * num_points * num_points


def release_cache(device: torch.device) -> None:
    """Hand torch's cached but unused GPU memory back to the driver, so that cuML can use it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def available_bytes(device: torch.device) -> int:
    """Bytes a new allocation on the CUDA ``device`` can use: the driver's free memory plus what
    torch holds reserved without using it (blocks :func:`release_cache` could not return)."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return int(free) + max(0, int(cached))


def check_fits(num_points: int, device: torch.device) -> None:
    """Raise ValueError when the dense matrix cannot fit in the available memory of ``device``.

    Releases torch's cache first: without that the N x N matrix of a previous call, freed but
    still cached by torch, would look used to the driver.
    """
    if device.type != "cuda":
        return
    release_cache(device)
    available = available_bytes(device)
    need = dense_bytes(num_points)
    if need > 0.8 * available:
        raise ValueError(
            f"clustering.backend 'cuml' needs a dense {num_points} x {num_points} float32 matrix "
            f"({need / 2**30:.1f} GiB) but {device} has {available / 2**30:.1f} GiB available; use "
            "clustering.backend=torch (sparse, exact, no N x N matrix)."
        )


def dbscan_cuml(rows, cols, dists32, num_points: int, eps: float, min_samples: int) -> torch.Tensor:
    """DBSCAN labels (int64 tensor on the input's device, -1 = outlier) computed by cuML.

    ``rows, cols, dists32`` are the symmetric sparse graph (float32 distances); every pair
    not listed is at distance 1 > eps. cuML receives the dense matrix through DLPack.
    """
    cuml, cupy = import_cuml()
    device = dists32.device
    check_fits(num_points, device)
    dense = torch.ones((num_points, num_points), dtype=torch.float32, device=device)
    dense[rows, cols] = dists32
    dense.fill_diagonal_(0.0)
    model = cuml.cluster.DBSCAN(eps=float(eps), min_samples=int(min_samples), metric="precomputed",
                                output_type="cupy")
    labels = model.fit_predict(cupy.from_dlpack(dense))
    labels = torch.from_dlpack(labels).to(device=device, dtype=torch.int64)
    del dense, model
    release_cache(device)  # the freed N x N matrix must not stay cached for the next call
    return labels

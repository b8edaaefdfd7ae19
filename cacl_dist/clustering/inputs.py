"""The checks every Jaccard path (the dense reference, the sparse fast path, the re-ranking) makes on its inputs."""

import numpy as np
import torch


def as_float64_features(feats, name: str = "feats") -> np.ndarray:
    """Return ``feats`` (numpy array or torch tensor, shape (N, D)) as a float64 numpy array.

    Raises ValueError for a wrong shape, an empty array or non-finite values.
    """
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(feats, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D array of shape (num_images, feature_dim); "
            f"got shape {array.shape}. Pass one feature row per image."
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(array), axis=1)))
        raise ValueError(
            f"{name} contains NaN or infinite values in {bad} row(s); "
            "check the feature extractor output (e.g. a diverged model) before clustering."
        )
    return array


def check_k_parameters(k1: int, k2: int, num_points: int) -> None:
    """Validate k1 and k2 against the number of points; raise ValueError if unusable."""
    if isinstance(k1, bool) or not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise ValueError(f"k1 must be an integer >= 1, got {k1!r}.")
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or k2 < 1:
        raise ValueError(f"k2 must be an integer >= 1, got {k2!r}.")
    if k2 > k1:
        raise ValueError(
            f"k2={k2} is larger than k1={k1}; query expansion averages over the first k2 of "
            "the k1 nearest neighbours, so choose k2 <= k1."
        )
    if num_points <= k1:
        raise ValueError(
            f"k1={k1} needs more than k1 points, but only {num_points} were given; "
            "lower k1 or provide more images."
        )


__all__ = ["as_float64_features", "check_k_parameters"]

"""Clustering shows one progress bar per stage when asked to, and nothing otherwise, with the same labels."""

from __future__ import annotations

import numpy as np
import pytest

from cacl_dist.clustering.params import ClusterParams
from cacl_dist.clustering.pseudo_labels import cluster
from cacl_dist.clustering.torch_backend import STAGES, neighbours_of_rows


def blobs(num_blobs=6, per_blob=8, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_blobs, dim))
    feats = np.repeat(centres, per_blob, axis=0) + 0.15 * rng.normal(size=(num_blobs * per_blob, dim))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_each_stage_has_a_bar_only_when_asked(backend, capsys):
    params = ClusterParams(k1=6, k2=3, min_samples=3, backend=backend)
    feats = blobs()
    quiet = cluster(feats, params)
    assert capsys.readouterr().err == ""
    shown = cluster(feats, params, show_progress=True)
    err = capsys.readouterr().err
    # the dense path computes neighbours inside its Jaccard step; the sparse path shows all four
    expected = STAGES if backend == "torch" else STAGES[1:]
    for number, stage in enumerate(STAGES, start=1):
        assert (f"clustering {number}/4: {stage}" in err) == (stage in expected), (stage, err)
    np.testing.assert_array_equal(shown.labels, quiet.labels)
    assert shown.num_multi_clusters + shown.num_singletons == shown.num_clusters
    assert shown.num_multi_clusters == 6  # the six blobs


def test_shared_neighbour_search_shows_its_bar(capsys):
    params = ClusterParams(k1=6, k2=3, min_samples=3, backend="torch")
    neighbours_of_rows(blobs(), params, (0, 24))
    assert capsys.readouterr().err == ""
    neighbours_of_rows(blobs(), params, (0, 24), show_progress=True)
    assert "clustering 1/4: neighbours" in capsys.readouterr().err

"""Every clustering round kept in the run folder: the pseudo labels, and their quality when identities are known.

Rank 0 calls :func:`record_round` after each clustering. It writes, as int32 arrays in the order
of the training images, ``RUN/pseudo_labels/epoch_EEE.npy`` (the pseudo labels the epoch trains
on, -1 only for points left out by ``clustering.outliers: drop``), ``epoch_EEE_raw.npy`` (the
DBSCAN labels before refinement, -1 for outliers) and ``epoch_EEE_refined.npy`` (after
refinement: the raw id of kept points, -1 for outliers and removed points). When every training
image has a known identity (Market-1501, DukeMTMC-reID, MSMT17, the synthetic set, custom lists
with pids; training never reads them) it returns the pairwise precision/recall/F-score, ARI and
NMI of the pseudo labels and of the raw DBSCAN clusters against the identities
(:mod:`cacl_dist.evaluation.cluster_quality`), which the trainer logs with the round.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from cacl_dist.evaluation.cluster_quality import QUALITY_KEYS, cluster_quality
from cacl_dist.runs.files import atomic_file
from cacl_dist.errors import MissingFileError

LABEL_DIR = "pseudo_labels"
"""Sub-folder of the run folder that holds the labels of every round."""
_NAME = re.compile(r"^epoch_(\d+)\.npy$")


STAGES = ("pseudo", "raw", "refined")
"""What a stored labelling is: the pseudo labels, the raw DBSCAN labels, the refined labels."""


def label_path(run_dir: str | Path, epoch: int, stage: str = "pseudo") -> Path:
    """Where the labels of ``stage`` (one of :data:`STAGES`) of ``epoch`` (1-based) are stored."""
    assert stage in STAGES, stage
    suffix = "" if stage == "pseudo" else f"_{stage}"
    return Path(run_dir) / LABEL_DIR / f"epoch_{epoch:03d}{suffix}.npy"


def true_identities(records: Sequence) -> np.ndarray | None:
    """The pids of the training records, or None when any of them is unknown (-1)."""
    pids = np.array([r.pid for r in records], dtype=np.int64)
    return pids if pids.size and (pids >= 0).all() else None


def quality_stats(labels: np.ndarray, raw_labels: np.ndarray | None, identities: np.ndarray) -> dict[str, float]:
    """``pseudo_<score>`` of the pseudo labels and ``raw_<score>`` of the raw DBSCAN clusters."""
    stats = {f"pseudo_{k}": v for k, v in cluster_quality(labels, identities).items()}
    if raw_labels is not None:
        stats.update({f"raw_{k}": v for k, v in cluster_quality(raw_labels, identities).items()})
    return stats


def _save(path: Path, labels: np.ndarray) -> None:
    """np.save atomically: a reader never sees half a file."""
    with atomic_file(path) as fh:
        np.save(fh, np.asarray(labels, dtype=np.int32))


def record_round(run_dir: str | Path, epoch: int, result, records: Sequence) -> dict[str, float]:
    """Save the round's labels for ``epoch`` (1-based) and return their quality (empty without identities).

    ``result`` is the :class:`~cacl_dist.clustering.ClusterResult` of the round; ``records`` the
    training records, in the order of the labels.
    """
    folder = Path(run_dir) / LABEL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _save(label_path(run_dir, epoch), result.labels)
    for stage in ("raw", "refined"):
        labels = getattr(result, f"{stage}_labels")
        if labels is not None:
            _save(label_path(run_dir, epoch, stage), labels)
    identities = true_identities(records)
    if identities is None or len(identities) != len(result.labels):
        return {}
    return quality_stats(result.labels, result.raw_labels, identities)


def saved_epochs(run_dir: str | Path) -> list[int]:
    """The epochs whose pseudo labels are stored in the run folder, ascending."""
    folder = Path(run_dir) / LABEL_DIR
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(folder)) if m)


def load_round(run_dir: str | Path, epoch: int) -> dict[str, np.ndarray]:
    """The stored labellings of ``epoch`` by stage ('pseudo' always; 'raw', 'refined' when stored), int64."""
    path = label_path(run_dir, epoch)
    if not path.is_file():
        have = saved_epochs(run_dir)
        listed = f"stored epochs: {', '.join(map(str, have))}" if have else "none are stored"
        raise MissingFileError(f"no pseudo labels for epoch {epoch} at {path} ({listed})")
    stages = {}
    for stage in STAGES:
        if label_path(run_dir, epoch, stage).is_file():
            stages[stage] = np.load(label_path(run_dir, epoch, stage)).astype(np.int64)
    return stages


__all__ = ["LABEL_DIR", "QUALITY_KEYS", "STAGES", "label_path", "load_round", "quality_stats", "record_round",
           "saved_epochs", "true_identities"]

"""The PNG plots of the training report (:mod:`cacl_dist.cli.report`), drawn with matplotlib's Agg backend.

Importing this module imports matplotlib; the report catches the ImportError when it is missing.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend choice)
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cacl_dist.runs.metrics import LOSS_KEYS  # noqa: E402
from cacl_dist.runs.report import CLUSTER_KEYS, EVAL_KEYS, QUALITY_KEYS, of_kind  # noqa: E402

DPI = 100
SIZE = (6.4, 3.6)


def _series(rows: list[dict], x_key: str, y_key: str, scale: float = 1.0) -> tuple[list, list]:
    """(x, y) of the rows that carry a number under ``y_key``."""
    xs, ys = [], []
    for row in rows:
        value = row.get(y_key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(row.get(x_key, row["step"]))
            ys.append(value * scale)
    return xs, ys


def _by_epoch(ax) -> None:
    """Whole-number ticks on an epoch axis."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return str(path)


def plot_evaluation(evals: list[dict], path: Path) -> str:
    """mAP, rank-1 and mINP (%) against the epochs trained."""
    fig, ax = plt.subplots(figsize=SIZE)
    for key, label in EVAL_KEYS:
        xs, ys = _series(evals, "epoch", key, 100.0)
        ax.plot(xs, ys, marker="o", label=label)
    _by_epoch(ax)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("%")
    ax.set_title("evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_losses(train: list[dict], path: Path) -> str:
    """Each loss term per logging step (means since the previous logging step)."""
    fig, ax = plt.subplots(figsize=SIZE)
    for key in LOSS_KEYS:
        xs, ys = _series(train, "step", key)
        if xs:  # the camera-proxy losses only in runs that have them
            ax.plot(xs, ys, label=key, linewidth=2.0 if key == "loss" else 1.0)
    ax.set_xlabel("step")
    ax.set_title("losses")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def plot_clustering(cluster: list[dict], path: Path) -> str:
    """Clusters, raw clusters, outliers and refined-away points per epoch."""
    fig, ax = plt.subplots(figsize=SIZE)
    for key, label in CLUSTER_KEYS:
        xs, ys = _series(cluster, "epoch", key)
        ax.plot(xs, ys, marker=".", label=label)
    _by_epoch(ax)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("count")
    ax.set_title("clustering")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_quality(cluster: list[dict], path: Path) -> str:
    """Pairwise F, ARI and NMI of the pseudo labels (solid) and raw DBSCAN clusters (dashed) per epoch."""
    fig, ax = plt.subplots(figsize=(SIZE[0], SIZE[1] + 0.8))
    for index, (key, label) in enumerate(QUALITY_KEYS):
        colour = f"C{index}"
        for prefix, style, name in (("pseudo", "-", "pseudo labels"), ("raw", "--", "raw DBSCAN")):
            xs, ys = _series(cluster, "epoch", f"{prefix}_{key}")
            if xs:
                ax.plot(xs, ys, style, color=colour, marker=".", label=f"{label}, {name}")
    _by_epoch(ax)
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.set_title("pseudo labels vs true identities")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))  # below: lines stay visible
    return _save(fig, path)


def plot_speed(train: list[dict], cluster: list[dict], path: Path) -> str:
    """Training images/s per logging step (left) and clustering seconds per epoch (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(SIZE[0] * 1.5, SIZE[1]))
    left.plot(*_series(train, "step", "images_per_s"), linewidth=1.0)
    left.set_xlabel("step")
    left.set_ylim(bottom=0)
    left.set_title("training images/s")
    left.grid(alpha=0.3)
    right.plot(*_series(cluster, "epoch", "seconds"), marker=".")
    _by_epoch(right)
    right.set_ylim(bottom=0)
    right.set_title("clustering seconds")
    right.grid(alpha=0.3)
    return _save(fig, path)


def write_plots(rows: list[dict], out: Path) -> list[str]:
    """Every plot the rows have data for, as PNGs in ``out``; returns their paths."""
    train, cluster, evals = of_kind(rows, "train"), of_kind(rows, "cluster"), of_kind(rows, "eval")
    written = []
    if evals:
        written.append(plot_evaluation(evals, out / "evaluation.png"))
    if train:
        written.append(plot_losses(train, out / "losses.png"))
    if cluster:
        written.append(plot_clustering(cluster, out / "clustering.png"))
    if any("pseudo_fscore" in r for r in cluster):
        written.append(plot_quality(cluster, out / "pseudo_label_quality.png"))
    if train or cluster:
        written.append(plot_speed(train, cluster, out / "speed.png"))
    return written


__all__ = ["plot_clustering", "plot_evaluation", "plot_losses", "plot_quality", "plot_speed", "write_plots"]

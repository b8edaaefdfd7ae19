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
from cacl_dist.runs.report import CLUSTER_KEYS, EVAL_KEYS, QUALITY_KEYS, best_eval, of_kind  # noqa: E402

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


def _best(evals: list[dict]) -> dict | None:
    """The best evaluation as the report names it (see :func:`~cacl_dist.runs.report.best_eval`)."""
    return best_eval(evals)


def plot_evaluation(evals: list[dict], path: Path) -> str:
    """mAP, rank-1 and mINP (%) against the epochs trained, the best evaluation marked."""
    fig, ax = plt.subplots(figsize=SIZE)
    for key, label in EVAL_KEYS:
        xs, ys = _series(evals, "epoch", key, 100.0)
        ax.plot(xs, ys, marker="o", label=label)
    best = _best(evals)
    if best is not None:
        ax.plot([best["epoch"]], [100 * best["mAP"]], marker="*", markersize=16, color="gold",
                markeredgecolor="black", linestyle="none", label=f"best mAP {100 * best['mAP']:.1f}% "
                f"(epoch {best['epoch']})", zorder=5)
    _by_epoch(ax)
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("%")
    ax.set_title("evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))  # beside: no point hidden
    return _save(fig, path)


def _epoch_spans(train: list[dict]) -> list[tuple[int, int, int]]:
    """(epoch, step before its first step, its last logged step) of every epoch of the train rows, in order."""
    spans: dict[int, list[int]] = {}
    for row in train:
        if isinstance(row.get("epoch"), int):
            start = int(row["step"]) - int(row.get("iter", 0) or 0)  # a row is `iter` steps into its epoch
            spans.setdefault(row["epoch"], []).extend([start, int(row["step"])])
    return [(e, min(spans[e]), max(spans[e])) for e in sorted(spans)]


def plot_losses(train: list[dict], evals: list[dict], path: Path) -> str:
    """One panel per loss term (each on its own scale) and the learning rate, against the step, with the
    epoch boundaries (dotted) and the step of the best evaluation (dashed red)."""
    present = [key for key in LOSS_KEYS if _series(train, "step", key)[0]]  # camera-proxy losses only when on
    panels = [(key, key if key != "loss" else "loss (weighted sum)") for key in present] + [("lr", "learning rate")]
    rows = -(-len(panels) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(SIZE[0] * 1.6, SIZE[1] * 0.75 * rows), sharex=True, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    spans, best = _epoch_spans(train), _best(evals)
    ends = [last for _, _, last in spans[:-1]]
    for ax, (key, title) in zip(axes.flat, panels):
        xs, ys = _series(train, "step", key)
        if key == "lr":  # a row's rate held since the previous row: steps, not slopes
            ax.plot(xs, ys, linewidth=1.2, color="C3", drawstyle="steps-pre")
        else:
            ax.plot(xs, ys, linewidth=1.5 if key == "loss" else 1.0, color="C0")
        for step in ends:
            ax.axvline(step, color="grey", linestyle=":", linewidth=0.8)
        if best is not None and isinstance(best.get("step"), int) and best["step"] > 0:
            ax.axvline(best["step"], color="red", linestyle="--", linewidth=1.0)
        if key == "lr" and ys and min(ys) > 0:
            ax.set_yscale("log")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    labelled = spans if len(spans) <= 12 else spans[::-(-len(spans) // 12)]  # at most 12 epoch numbers
    for epoch, start, last in labelled:  # the epoch numbers, inside the top of the first panel
        axes[0][0].text((start + last) / 2, 0.97, str(epoch), transform=axes[0][0].get_xaxis_transform(),
                        ha="center", va="top", fontsize="x-small", color="grey")
    if spans:
        axes[0][0].set_xlim(left=spans[0][1])
    for ax in axes.flat[max(len(panels) - 3, 0):len(panels)]:  # the lowest panel of each column
        ax.set_xlabel("step")
        ax.xaxis.set_tick_params(labelbottom=True)
    note = "dotted: epoch boundaries, epochs numbered in the first panel" + (f"; dashed red: best mAP (epoch {best['epoch']})" if best is not None
                                         and best.get("step") else "")
    fig.suptitle(f"losses and learning rate per logging step ({note})", fontsize="medium")
    return _save(fig, path)


def plot_clustering(cluster: list[dict], path: Path) -> str:
    """Clusters (all, with 2+ images, singletons), raw clusters, outliers and refined-away points per epoch,
    on a log scale so that small counts stay visible next to large ones."""
    fig, ax = plt.subplots(figsize=SIZE)
    for key, label in CLUSTER_KEYS:
        xs, ys = _series(cluster, "epoch", key)
        if xs:
            style = {"num_clusters": dict(color="black", linestyle="--"), "num_multi_clusters": dict(linewidth=2.5)}
            ax.plot(xs, ys, marker=".", label=label, **style.get(key, {"linewidth": 1.0}))
    _by_epoch(ax)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("count (log scale)")
    ax.set_title("clustering")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_quality(cluster: list[dict], path: Path) -> str:
    """Pairwise precision, recall and F, ARI and NMI per epoch: pseudo labels (left), raw DBSCAN clusters (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(SIZE[0] * 1.6, SIZE[1]), sharey=True)
    for ax, (prefix, name) in zip(axes, (("pseudo", "pseudo labels"), ("raw", "raw DBSCAN clusters"))):
        for index, (key, label) in enumerate(QUALITY_KEYS):
            xs, ys = _series(cluster, "epoch", f"{prefix}_{key}")
            if xs:
                ax.plot(xs, ys, marker=".", color=f"C{index}", label=label)
        _by_epoch(ax)
        ax.set_title(f"{name} vs true identities", fontsize="medium")
        ax.grid(alpha=0.3)
    values = [v for ax in axes for line in ax.get_lines() for v in line.get_ydata() if v > 0]
    if values and min(values) < 0.05:  # scores near 0 next to scores near 1: a log scale keeps each apart
        axes[0].set_yscale("log")  # (shared by both panels)
        axes[0].set_ylim(max(1e-3, min(values) * 0.7), 1.0)
        axes[0].set_ylabel("log scale")
    else:
        axes[0].set_ylim(min(0.0, axes[0].get_ylim()[0]), 1.0)
    axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_cmc(evals: list[dict], path: Path) -> str:
    """The CMC curve (%) of the last evaluation, and of the best one when that is another."""
    fig, ax = plt.subplots(figsize=SIZE)
    last, best = evals[-1], _best(evals)
    shown = [(last, "last")] + ([(best, "best")] if best is not None and best is not last else [])
    for row, name in shown:
        cmc = [100 * float(v) for v in row.get("cmc") or []]
        ax.plot(range(1, len(cmc) + 1), cmc, marker="." if len(cmc) <= 20 else None,
                label=f"{name} (epoch {row.get('epoch', '?')}): rank-1 {cmc[0]:.1f}%" if cmc else name)
    ax.set_xlabel("rank")
    ax.set_ylabel("queries matched within the rank (%)")
    ax.set_ylim(0, 100)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("CMC curve")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def plot_distances(histogram: dict, path: Path) -> str:
    """Distances of correct matches and of other identities at the last evaluation, each as a fraction of its
    pairs per bin (the counts of :mod:`cacl_dist.runs.eval_distances`)."""
    positive, negative = histogram["positive"], histogram["negative"]
    bins = len(positive)
    low, high = float(histogram["low"]), float(histogram["high"])
    edges = [low + (high - low) * i / bins for i in range(bins + 1)]
    fig, ax = plt.subplots(figsize=SIZE)
    for counts, name, colour in ((positive, "correct matches (same identity, other camera)", "C2"),
                                 (negative, "other identities", "C3")):
        total = sum(counts)
        if total:
            ax.stairs([c / total for c in counts], edges, fill=True, alpha=0.35, color=colour,
                      label=f"{name}: {total} pairs")
            ax.stairs([c / total for c in counts], edges, color=colour)
    used = [i for i in range(bins) if positive[i] or negative[i]]
    if used:
        ax.set_xlim(edges[used[0]], edges[used[-1] + 1])
    ax.set_ylim(0, ax.get_ylim()[1] * 1.3)  # room for the legend above the bars
    ax.set_xlabel(histogram.get("kind", "distance"))
    ax.set_ylabel("fraction of pairs")
    ax.set_title(f"query-gallery distances at the last evaluation (epoch {histogram.get('epoch', '?')})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
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


def write_plots(rows: list[dict], out: Path, histogram: dict | None = None) -> list[str]:
    """Every plot the rows (and the last evaluation's distance ``histogram``) have data for, as PNGs in ``out``;
    returns their paths."""
    train, cluster, evals = of_kind(rows, "train"), of_kind(rows, "cluster"), of_kind(rows, "eval")
    written = []
    if evals:
        written.append(plot_evaluation(evals, out / "evaluation.png"))
    if any(r.get("cmc") for r in evals[-1:]):
        written.append(plot_cmc(evals, out / "cmc.png"))
    if histogram is not None:
        written.append(plot_distances(histogram, out / "distances.png"))
    if train:
        written.append(plot_losses(train, evals, out / "losses.png"))
    if cluster:
        written.append(plot_clustering(cluster, out / "clustering.png"))
    if any("pseudo_fscore" in r for r in cluster):
        written.append(plot_quality(cluster, out / "pseudo_label_quality.png"))
    if train or cluster:
        written.append(plot_speed(train, cluster, out / "speed.png"))
    return written


__all__ = ["plot_clustering", "plot_cmc", "plot_distances", "plot_evaluation", "plot_losses", "plot_quality",
           "plot_speed", "write_plots"]

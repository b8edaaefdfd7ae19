"""What a run folder's records say: best and last metrics, wall time by phase, report.md.

:mod:`cacl_dist.cli.report` turns them into a report with the plots of :mod:`cacl_dist.runs.report_plots`.
"""

from __future__ import annotations

from pathlib import Path

from cacl_dist.runs.metrics import CLUSTER_COUNTS, EVAL_SCORES, METRICS_NAME, QUALITY_SCORES, read_metric_rows
from cacl_dist.errors import MissingFileError

EVAL_KEYS = (("mAP", "mAP"), ("rank1", "rank-1"), ("mINP", "mINP"))
"""The plotted scores of the eval rows (of :data:`~cacl_dist.runs.metrics.EVAL_SCORES`) and their labels."""
CLUSTER_KEYS = tuple(zip(CLUSTER_COUNTS, ("pseudo clusters (all)", "raw DBSCAN clusters", "outliers",
                                         "refined away"))) + (("num_multi_clusters", "clusters with 2+ images"),
                                                              ("num_singletons", "singletons"))
"""The plotted counts of the cluster rows and their labels."""
QUALITY_KEYS = (("precision", "pairwise precision"), ("recall", "pairwise recall"), ("fscore", "pairwise F"),
                ("ari", "ARI"), ("nmi", "NMI"))
"""The plotted pseudo-label scores (of :data:`~cacl_dist.runs.metrics.QUALITY_SCORES`) and their labels."""


def read_rows(run_dir: str | Path) -> tuple[list[dict], int]:
    """(rows of metrics.jsonl with the last entry per (kind, step), number of unreadable lines skipped).

    Rows come back in step order. A line that is not JSON (the half-written end of a file that
    a running job is appending to) is skipped and counted.
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        raise MissingFileError(f"'{path}' does not exist; pass a run folder (run.output_dir of a cacl_dist run)")
    latest: dict[tuple[str, int], dict] = {}
    rows, skipped = read_metric_rows(path)
    for row in rows:
        key = (row["kind"], row["step"])
        latest.pop(key, None)  # the re-inserted entry moves to the end: its own order is kept
        latest[key] = row
    rows = sorted(latest.values(), key=lambda r: int(r["step"]))
    return rows, skipped


def of_kind(rows: list[dict], kind: str) -> list[dict]:
    """The rows of one kind ('train', 'cluster', 'eval')."""
    return [r for r in rows if r.get("kind") == kind]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def training_seconds(train_rows: list[dict], batch_size: int | None) -> float | None:
    """Seconds spent in training steps, from each logging row's images/s and the steps it covers.

    A row covers the steps since the previous row of the same epoch (or since the epoch's start),
    so the sum is approximate after a resume from a mid-epoch checkpoint.
    """
    if not batch_size:
        return None
    total, previous = 0.0, None
    for row in train_rows:
        rate = _number(row.get("images_per_s"))
        same_epoch = previous is not None and previous.get("epoch") == row.get("epoch") \
            and int(previous.get("iter", 0)) < int(row.get("iter", 0))
        steps = int(row.get("iter", 0)) - (int(previous.get("iter", 0)) if same_epoch else 0)
        if rate and rate > 0 and steps > 0:
            total += steps * batch_size / rate
        previous = row
    return total


def read_config(run_dir: Path) -> dict:
    """The run's config.yaml as a dict ({} when missing or unreadable: the report then says '?')."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def best_eval(evals: list[dict]) -> dict | None:
    """The evaluation with the highest mAP after training began (epoch >= 1; any when there is none), the
    earliest of equals: the run's own choice of 'best' (its summary line)."""
    trained = [r for r in evals if (_number(r.get("epoch")) or 0) >= 1] or evals
    scored = [r for r in trained if _number(r.get("mAP")) is not None]
    return max(scored, key=lambda r: r["mAP"]) if scored else None


def summarize(rows: list[dict], config: dict) -> dict:
    """The numbers of report.md: best and last evaluation, last clustering, time split, progress."""
    train, cluster, evals = of_kind(rows, "train"), of_kind(rows, "cluster"), of_kind(rows, "eval")
    batch = config.get("train", {}).get("batch_size")
    planned, iters = config.get("train", {}).get("epochs"), config.get("train", {}).get("iters_per_epoch")
    summary: dict = {
        "epochs_planned": planned,
        "finished": bool(train) and train[-1].get("epoch") == planned and train[-1].get("iter") == iters,
        "epochs_trained": max([int(r.get("epoch", 0)) for r in train] + [0]),
        "steps": max([int(r["step"]) for r in rows] + [0]),
        "training_s": training_seconds(train, batch),
        "clustering_s": sum(_number(r.get("seconds")) or 0.0 for r in cluster),
        "evaluation_s": sum(_number(r.get("seconds")) or 0.0 for r in evals),
        "span_s": (max(r["time"] for r in rows) - min(r["time"] for r in rows)) if rows else 0.0,
        "last_eval": evals[-1] if evals else None,
        "best_eval": best_eval(evals),
        "last_cluster": cluster[-1] if cluster else None,
    }
    if train:
        summary["last_loss"] = train[-1].get("loss")
        rates = [_number(r.get("images_per_s")) for r in train]
        rates = [r for r in rates if r]
        summary["median_images_per_s"] = sorted(rates)[len(rates) // 2] if rates else None
    return summary


def _pct(row: dict | None, key: str) -> str:
    value = None if row is None else _number(row.get(key))
    return "-" if value is None else f"{100 * value:.1f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value < 10:
        return f"{value:.1f} s"
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def _epochs(trained: int, planned: int | None) -> str:
    """'2 of 3 epochs'; never more trained than planned (a config.yaml that a later command rewrote)."""
    if planned is not None and trained > planned:
        return f"{trained} epochs (config.yaml now plans {planned})"
    return f"{trained} of {planned if planned is not None else '?'} epochs"


def markdown(run_dir: Path, summary: dict, config: dict, plots: list[str], note: str) -> str:
    """report.md: status, evaluation table, pseudo-label quality, time split and the plots."""
    data, model = config.get("data", {}), config.get("model", {})
    planned = summary["epochs_planned"]
    status = "finished" if summary["finished"] else "in progress or stopped"
    lines = [f"# Training report: {run_dir}", "",
             f"- dataset {data.get('dataset', '?')} at `{data.get('root', '?')}`, backbone "
             f"{model.get('backbone', '?')}, {data.get('height', '?')}x{data.get('width', '?')}",
             f"- {_epochs(summary['epochs_trained'], planned)}, "
             f"{summary['steps']} steps ({status})"]
    if summary.get("last_loss") is not None:
        lines.append(f"- last loss {summary['last_loss']:.4f}, median {summary['median_images_per_s'] or 0:.0f} "
                     "training images/s")
    lines += ["", "## Evaluation", ""]
    best, last = summary["best_eval"], summary["last_eval"]
    if last is None:
        lines.append("No evaluation yet.")
    else:
        lines += ["| | epoch | mAP | rank-1 | rank-5 | rank-10 | mINP |", "|---|---|---|---|---|---|---|"]
        for name, row in (("best (by mAP, after training began)", best), ("last", last)):
            if row is None:
                continue
            lines.append(f"| {name} | {row.get('epoch', '?')} | " + " | ".join(
                _pct(row, k) for k in EVAL_SCORES) + " |")
    cluster = summary["last_cluster"]
    if cluster is not None:
        lines += ["", "## Last clustering", "",
                  f"Epoch {cluster.get('epoch', '?')}: {cluster.get('num_clusters', '?')} pseudo clusters "
                  + (f"({cluster['num_multi_clusters']} with 2+ images, {cluster.get('num_singletons', '?')} "
                     "singletons; " if "num_multi_clusters" in cluster else "(")
                  + f"{cluster.get('num_raw_clusters', '?')} raw), {cluster.get('num_outliers', '?')} outliers, "
                  f"{cluster.get('num_refined_away', '?')} refined away, backend {cluster.get('backend', '?')}."]
        if "pseudo_fscore" in cluster:
            lines += ["", "| labels vs identities | precision | recall | pairwise F | ARI | NMI |",
                      "|---|---|---|---|---|---|"]
            for prefix, name in (("pseudo", "pseudo labels"), ("raw", "raw DBSCAN")):
                if f"{prefix}_fscore" in cluster:
                    lines.append(f"| {name} | " + " | ".join(f"{cluster[f'{prefix}_{k}']:.3f}" for k in
                                                             QUALITY_SCORES) + " |")
    lines += ["", "## Time", "",
              f"- training steps: {_seconds(summary['training_s'])} (from the logged images/s)",
              f"- clustering: {_seconds(summary['clustering_s'])}",
              f"- evaluation: {_seconds(summary['evaluation_s'])}",
              f"- first to last record: {_seconds(summary['span_s'])} (includes memory initialisation, "
              "checkpoints and any pause between a stop and its resume)"]
    if note:
        lines += ["", note]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"

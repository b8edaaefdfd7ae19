"""The rows of ``metrics.jsonl``: their kinds and keys (defined here only), one writer, one tolerant reader.

Every row is one JSON object on one line: ``kind``, ``step`` (the global step), ``time`` (seconds
since the epoch, rounded to ms), then the keys of its kind in the order below.

- ``train`` (:class:`TrainRow`): every ``train.log_every`` steps, the mean losses since the last one.
- ``cluster`` (:class:`ClusterRow`): each clustering round; the pseudo-label quality when the
  training split has identities.
- ``eval`` (:class:`EvalRow`): each evaluation, after ``epoch`` epochs.
- ``summary`` (:class:`SummaryRow`): the first, last and best evaluation, at the end of a run.

:class:`MetricsWriter` writes them (and TensorBoard scalars); :func:`read_metric_rows` and
:func:`read_metrics` read them, skipping what is not a row (a line cut short by a kill, junk).
"""

# No `from __future__ import annotations` here: TypedDict reads NotRequired from the evaluated annotations.

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, NotRequired, TypedDict

from cacl_dist.runs.files import write_atomically
from cacl_dist.runs.logs import get_logger

METRICS_NAME = "metrics.jsonl"
"""The file in the run folder."""


class Row(TypedDict):
    """What every row starts with."""
    kind: str
    step: int
    time: float


class TrainRow(Row):
    epoch: int  # 1-based epoch being trained
    iter: int  # steps done in that epoch
    lr: float
    images_per_s: float
    camera_inter_gray: NotRequired[float]  # the camera-aware proxy losses, when loss.camera_proxy_weight > 0
    camera_inter_rgb: NotRequired[float]
    camera_intra_gray: NotRequired[float]
    camera_intra_rgb: NotRequired[float]
    instance: float  # the loss terms (unweighted) and their weighted sum, in this (sorted) order
    inter: float
    intra_gray: float
    intra_rgb: float
    loss: float


class ClusterRow(Row):
    epoch: int  # the epoch these pseudo labels train
    num_clusters: int
    num_raw_clusters: int
    num_outliers: int
    num_refined_away: int
    backend: str
    seconds: float
    num_multi_clusters: NotRequired[int]  # pseudo clusters of two or more images
    num_singletons: NotRequired[int]  # pseudo clusters of one image
    pseudo_precision: NotRequired[float]  # the pairwise scores against the true identities, when known
    pseudo_recall: NotRequired[float]
    pseudo_fscore: NotRequired[float]
    pseudo_ari: NotRequired[float]
    pseudo_nmi: NotRequired[float]
    raw_precision: NotRequired[float]  # the same of the raw DBSCAN clusters (before refinement)
    raw_recall: NotRequired[float]
    raw_fscore: NotRequired[float]
    raw_ari: NotRequired[float]
    raw_nmi: NotRequired[float]


class EvalRow(Row):
    epoch: int  # epochs trained (0: before training)
    mAP: float
    rank1: float
    rank5: float
    rank10: float
    mINP: float
    num_valid_queries: int
    seconds: float
    cmc: NotRequired[list]  # the CMC curve: fraction of queries matched within rank 1, 2, ... (50 ranks)


class SummaryRow(Row):
    first_mAP: float
    first_rank1: float
    first_epoch: int
    last_mAP: float
    last_rank1: float
    last_epoch: int
    best_mAP: float
    best_rank1: float
    best_epoch: int


ROW_TYPES: dict[str, type] = {"train": TrainRow, "cluster": ClusterRow, "eval": EvalRow, "summary": SummaryRow}
"""Each kind of row and its keys."""


def row_keys(kind: str) -> tuple[str, ...]:
    """Every key a row of `kind` may hold after kind, step and time, in the order it is written."""
    return tuple(k for k in ROW_TYPES[kind].__annotations__ if k not in Row.__annotations__)


def required_keys(kind: str) -> tuple[str, ...]:
    """The keys every row of `kind` holds after kind, step and time, in the order it is written."""
    return tuple(k for k in row_keys(kind) if k in ROW_TYPES[kind].__required_keys__)


LOSS_KEYS = ("loss", "instance", "inter", "intra_rgb", "intra_gray", "camera_intra_rgb", "camera_inter_rgb",
             "camera_intra_gray", "camera_inter_gray")
"""The losses of a train row, their sum first (the camera-proxy ones only in runs that have them)."""
EVAL_SCORES = ("mAP", "rank1", "rank5", "rank10", "mINP")
"""The scores of an eval row (fractions)."""
CLUSTER_COUNTS = ("num_clusters", "num_raw_clusters", "num_outliers", "num_refined_away")
"""The counts of a cluster row."""
QUALITY_SCORES = ("precision", "recall", "fscore", "ari", "nmi")
"""The pseudo-label quality of a cluster row: ``pseudo_<score>`` and ``raw_<score>``."""


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (tensors and numpy numbers become floats/ints)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def make_row(kind: str, step: int, values: dict[str, Any]) -> dict:
    """The row `write` records: kind, step, time, then `values` in their order (checked against the kind).

    ValueError for an unknown kind, a missing key or a key the kind does not have (a bug in the caller)."""
    if kind not in ROW_TYPES:
        raise ValueError(f"unknown metrics row kind {kind!r}; the kinds are {', '.join(ROW_TYPES)}")
    missing = [k for k in required_keys(kind) if k not in values]
    unknown = [k for k in values if k not in row_keys(kind)]
    if missing or unknown:
        raise ValueError(f"a {kind!r} metrics row lacks {missing} or has keys it does not define {unknown}")
    row = {"kind": kind, "step": step, "time": round(time.time(), 3)}
    row.update({k: _plain(v) for k, v in values.items()})
    return row


class MetricsWriter:
    """Append-only JSONL metrics plus TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_NAME
        self._tb = None
        self._tb_dir = Path(run_dir) / "tensorboard"
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                self._open_tensorboard()

    def _open_tensorboard(self, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            get_logger().info("tensorboard is not installed: metrics go to metrics.jsonl only")
        else:
            self._tb = SummaryWriter(log_dir=str(self._tb_dir), purge_step=purge_step)

    def rewind(self, keep: Callable[[dict], bool], next_step: int) -> int:
        """Forget what was recorded after the checkpoint a run resumes from, so nothing is recorded twice.

        Rows of metrics.jsonl that `keep` rejects (and a torn last line) are dropped; TensorBoard
        hides its events from step `next_step` on. Returns the number of rows dropped.
        """
        if not self.enabled or not self.path.exists():
            return 0
        rows, skipped = read_metric_rows(self.path)
        if skipped:
            get_logger().warning("dropping %d unreadable line(s) of %s (each line must be a JSON object with "
                                 "'kind' and 'step')", skipped, self.path)
        kept = [row for row in rows if keep(row)]
        if len(kept) < len(rows) + skipped:
            write_atomically(self.path, "".join(json.dumps(row) + "\n" for row in kept))
        if self._tb is not None:
            self._tb.close()
            self._open_tensorboard(purge_step=next_step)
        return len(rows) + skipped - len(kept)

    def write(self, kind: str, step: int, **values: Any) -> None:
        """Record one row of `kind` (see :data:`ROW_TYPES`) at global step `step`."""
        if not self.enabled:
            return
        row = make_row(kind, step, values)
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("kind", "step", "time") and isinstance(value, (int, float)) \
                        and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metric_rows(path: str | Path) -> tuple[list[dict], int]:
    """(rows, number of lines skipped) of a metrics.jsonl file: the one tolerant reader of the records.

    A row is a JSON object with a string ``kind`` and an integer ``step``, as :class:`MetricsWriter`
    writes it. Any other line (cut short by a kill, not UTF-8, ``null``, a list, binary junk) is
    skipped and counted; blank lines are ignored. A file that is missing or cannot be read has no rows.
    """
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return [], 0
    rows: list[dict] = []
    skipped = 0
    for raw in data.splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            row = None
        step = row.get("step") if isinstance(row, dict) else None
        if not (isinstance(row, dict) and isinstance(row.get("kind"), str) and isinstance(step, int)
                and not isinstance(step, bool)):
            skipped += 1
            continue
        rows.append(row)
    return rows, skipped


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict]:
    """The rows of a run's metrics.jsonl (see :func:`read_metric_rows`; none while the file is missing),
    optionally only those of one kind."""
    rows, _ = read_metric_rows(Path(run_dir) / METRICS_NAME)
    return [r for r in rows if kind is None or r["kind"] == kind]


def read_complete(run_dir: str | Path, kind: str) -> list[dict]:
    """The rows of `kind` (see :data:`ROW_TYPES`) that hold every key their kind requires, for readers that
    index those keys (the SLURM launcher, the ablation runner): a torn or foreign row is left out."""
    need = required_keys(kind)
    return [r for r in read_metrics(run_dir, kind) if all(k in r for k in need)]


__all__ = ["CLUSTER_COUNTS", "EVAL_SCORES", "LOSS_KEYS", "METRICS_NAME", "QUALITY_SCORES", "ROW_TYPES",
           "ClusterRow", "EvalRow", "MetricsWriter", "Row", "SummaryRow", "TrainRow", "make_row",
           "read_complete", "read_metric_rows", "read_metrics", "required_keys", "row_keys"]

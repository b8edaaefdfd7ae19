"""One logger for the whole package, filtered to rank 0, plus the metric sinks.

- `setup_logging(run_dir, rank)`: console (rank 0, or every rank for warnings and errors) and a
  per-rank log file in the run folder.
- `MetricsWriter`: JSON lines in `metrics.jsonl` and TensorBoard events (rank 0 only).
- `progress(...)`: a tqdm bar on rank 0, a plain iterator elsewhere.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

LOGGER_NAME = "cacl_dist"
T = TypeVar("T")


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _RankFilter(logging.Filter):
    """Lets everything through on rank 0, only warnings and errors on other ranks."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= logging.WARNING


class _ConsoleHandler(logging.StreamHandler):
    """A stream handler that prints above an active tqdm progress bar instead of on its line."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm_module = sys.modules.get("tqdm")
        bars = getattr(getattr(tqdm_module, "tqdm", None), "_instances", None)
        if not bars:
            super().emit(record)
            return
        try:
            tqdm_module.tqdm.write(self.format(record), file=self.stream)
        except Exception:
            self.handleError(record)


_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(message)s"
_DATE_FORMAT = "%H:%M:%S"


def setup_logging(run_dir: str | Path | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the package logger (idempotent: earlier handlers are replaced)."""
    logger = get_logger()
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(_FORMAT, _DATE_FORMAT)
    console = _ConsoleHandler(sys.stdout)
    console.addFilter(_RankFilter(rank))
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(run_dir) / f"log_rank{rank}.txt")
        file.addFilter(lambda record: setattr(record, "rank", rank) or True)
        file.setFormatter(fmt)
        logger.addHandler(file)
    return logger


def log_to_run_file(run_dir: Path, rank: int, message: str) -> None:
    """Append `message` as an ERROR line to the rank's log file in `run_dir` (not to the console).

    Goes through the package logger's file handler when it writes that file, else appends in the same format.
    """
    target = (Path(run_dir) / f"log_rank{rank}.txt").resolve()
    record = logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 0, message, None, None)
    record.rank = rank
    for handler in get_logger().handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() == target:
            handler.emit(record)
            handler.flush()
            return
    with target.open("a") as fh:
        fh.write(logging.Formatter(_FORMAT, _DATE_FORMAT).format(record) + "\n")


def _plain(value: Any) -> Any:
    """JSON-friendly scalars (tensors and numpy numbers become floats/ints)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsWriter:
    """Append-only JSONL metrics plus TensorBoard scalars; a no-op off rank 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
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
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, self.path)
        if self._tb is not None:
            self._tb.close()
            self._open_tensorboard(purge_step=next_step)
        return len(rows) + skipped - len(kept)

    def write(self, kind: str, step: int, **values: Any) -> None:
        """Record one event of `kind` ('train', 'cluster', 'eval', ...) at global step `step`."""
        if not self.enabled:
            return
        row = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in values.items()})
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
    skipped and counted; blank lines are ignored.
    """
    rows: list[dict] = []
    skipped = 0
    for raw in Path(path).read_bytes().splitlines():
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
    """The rows of a run's metrics.jsonl (see :func:`read_metric_rows`), optionally only those of one kind."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows, _ = read_metric_rows(path)
    return [r for r in rows if kind is None or r["kind"] == kind]


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             enabled: bool = True) -> Iterator[T]:
    """A progress bar when enabled (rank 0 with run.progress), else the iterable itself."""
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr))

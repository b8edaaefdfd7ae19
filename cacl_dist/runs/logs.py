"""One logger for the whole package, filtered to rank 0, and progress bars.

- `setup_logging(run_dir, rank)`: console (rank 0, or every rank for warnings and errors) and a
  per-rank log file in the run folder.
- `progress(...)`: a tqdm bar on rank 0, a plain iterator elsewhere.
- `StageBar(...)`: a bar advanced by hand, for work done in blocks whose number grows as it goes
  (the clustering stages); silent when disabled.

The metric rows (``metrics.jsonl``, TensorBoard) are :mod:`cacl_dist.runs.metrics`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

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


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             enabled: bool = True) -> Iterator[T]:
    """A progress bar when enabled (rank 0 with run.progress), else the iterable itself."""
    if not enabled:
        return iter(iterable)
    from tqdm import tqdm

    return iter(tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr))


class StageBar:
    """A progress bar of one stage, advanced by hand: ``add_total(n)`` when more work is known,
    ``update(n)`` when work is done; a context manager that closes it. Silent when not ``enabled``."""

    def __init__(self, desc: str, enabled: bool = True, unit: str = "blocks") -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=0, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)

    def add_total(self, amount: int) -> None:
        if self._bar is not None and amount:
            self._bar.total += int(amount)
            self._bar.refresh()

    def update(self, amount: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(int(amount))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "StageBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

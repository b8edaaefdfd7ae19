"""A fresh start in a used run folder keeps the earlier run's records apart instead of mixing them.

A run folder without ``last.pt`` starts from scratch (deleting or moving ``last.pt`` is how one
starts over, and what a corrupt checkpoint's error suggests). Records an earlier run left there, such as ``metrics.jsonl``, the pseudo
labels, ``config.yaml``, logs, TensorBoard events, kept checkpoints and the report, would
otherwise mix with the new run's (``report`` would plot two runs as one). Before the new run
writes anything, :func:`set_aside_previous_run` moves them into ``previous_runs/<time>/`` inside
the run folder. Only names a run writes are moved; any other file stays where it is.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Callable

PREVIOUS_RUNS = "previous_runs"
"""Sub-folder of the run folder that keeps the records of earlier runs, one folder per fresh start."""

RECORD_NAMES = ("metrics.jsonl", "config.yaml", "tensorboard", "pseudo_labels", "eval_distances", "report", "clusters",
                "ranked")
"""What a run (and the tools that write into its folder by default) leaves in the run folder, besides the
logs and kept checkpoints (:data:`RECORD_PATTERN`)."""
RECORD_PATTERN = re.compile(r"^(log_rank\d+\.txt|epoch_\d+\.pt)$")


def earlier_records(run_dir: str | Path) -> list[str]:
    """The names of earlier runs' records in ``run_dir`` (sorted; empty when there are none or no folder)."""
    try:
        names = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if n in RECORD_NAMES or RECORD_PATTERN.match(n))


def set_aside_previous_run(run_dir: str | Path) -> Path | None:
    """Move the earlier run's records out of the way of a fresh start; the folder they went to, or None.

    Call it only for a fresh start (no ``last.pt``), before the new run writes anything.
    """
    run_dir = Path(run_dir)
    names = earlier_records(run_dir)
    if not names:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / PREVIOUS_RUNS / stamp
    count = 1
    while target.exists():  # two fresh starts within a second
        count += 1
        target = run_dir / PREVIOUS_RUNS / f"{stamp}-{count}"
    target.mkdir(parents=True)
    for name in names:
        os.rename(run_dir / name, target / name)
    return target


def set_aside_if_fresh(run_dir: str | Path, find_resume: Callable[[Path], Path | None]) -> str | None:
    """For a fresh start (`find_resume` finds no checkpoint in ``run_dir``, i.e. no ``last.pt``)
    :func:`set_aside_previous_run`; where the records went, or None (resuming, or nothing to set aside).
    Rank 0 calls it before the run writes anything; the checkpointer passes its ``find_resume``."""
    if find_resume(Path(run_dir)) is not None:
        return None  # resuming: the records continue
    moved = set_aside_previous_run(run_dir)
    return None if moved is None else str(moved)


__all__ = ["PREVIOUS_RUNS", "earlier_records", "set_aside_if_fresh", "set_aside_previous_run"]

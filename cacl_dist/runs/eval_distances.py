"""The distance histograms of a run's evaluations, one small JSON file per evaluation.

``RUN/eval_distances/epoch_EEE.json`` holds the counts of the query-gallery distances of true
matches and of other identities after ``EEE`` epochs
(:class:`~cacl_dist.evaluation.distance_histogram.DistanceHistogram`), a few hundred numbers,
never the distances themselves; the report draws the last one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from cacl_dist.runs.files import write_atomically

FOLDER = "eval_distances"
_NAME = re.compile(r"^epoch_(\d+)\.json$")


def histogram_path(run_dir: str | Path, epoch: int) -> Path:
    return Path(run_dir) / FOLDER / f"epoch_{epoch:03d}.json"


def save_histogram(run_dir: str | Path, epoch: int, histogram: dict) -> Path:
    """Write the histogram of the evaluation after ``epoch`` epochs (replacing an earlier one)."""
    path = histogram_path(run_dir, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({"epoch": epoch, **histogram}) + "\n")
    return path


def last_histogram(run_dir: str | Path) -> dict | None:
    """The histogram of the latest evaluation stored (None when there is none or it cannot be read)."""
    folder = Path(run_dir) / FOLDER
    if not folder.is_dir():
        return None
    epochs = sorted(int(m.group(1)) for m in (_NAME.match(p.name) for p in folder.iterdir()) if m)
    for epoch in reversed(epochs):
        try:
            loaded = json.loads(histogram_path(run_dir, epoch).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(loaded, dict) and isinstance(loaded.get("positive"), list) \
                and isinstance(loaded.get("negative"), list) and len(loaded["positive"]) == len(loaded["negative"]):
            return loaded
    return None


__all__ = ["FOLDER", "histogram_path", "last_histogram", "save_histogram"]

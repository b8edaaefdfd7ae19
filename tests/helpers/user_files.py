"""A user's files in the way of a command, and their bytes, to check afterwards that nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tree_bytes(root: str | Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes)."""
    found = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, root)] = handle.read()
    return found


def market_like(root: Path) -> dict[str, bytes]:
    """A user's real dataset in Market-1501 layout (random bytes as images, and a file of their own); its bytes."""
    rng = np.random.default_rng(1)
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (root / sub).mkdir(parents=True)
        for i in range(4):
            (root / sub / f"{i + 1:04d}_c{i % 2 + 1}s1_00000{i}_00.jpg").write_bytes(rng.bytes(200))
    (root / "readme.txt").write_text("Market-1501 v15.09.15")
    return tree_bytes(root)

"""Plain-number views of the CACL loss parts."""

from __future__ import annotations

from cacl_dist.losses import LossParts

PART_NAMES = ("total", "instance", "inter", "intra_rgb", "intra_gray")


def loss_floats(parts: LossParts) -> dict[str, float]:
    """Detached Python floats of every part of `parts`."""
    return {name: float(getattr(parts, name).detach()) for name in PART_NAMES}

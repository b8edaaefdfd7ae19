"""Histograms of the query-gallery distances of true matches and of other identities, block by block.

What a researcher looks at to see how well the features separate people: the distances of the
correct matches (same identity, another camera) against those of other identities, counted in
fixed bins where each distance block lies (CPU or GPU), so only the counts are ever kept. Items
of the query's identity and camera are left out, as the evaluation protocol leaves them out.
"""

from __future__ import annotations

import torch


class DistanceHistogram:
    """Counts of match and non-match distances in ``bins`` equal bins over [``low``, ``high``].

    Distances outside the range count in the first or the last bin. ``kind`` names the distance
    ('squared Euclidean', 're-ranked') for whoever draws the counts.
    """

    def __init__(self, low: float, high: float, bins: int = 80, kind: str = "distance") -> None:
        if not high > low or bins < 1:
            raise ValueError(f"a distance histogram needs low < high and bins >= 1, got {low}, {high}, {bins}.")
        self.low, self.high, self.bins, self.kind = float(low), float(high), int(bins), kind
        self.positive = torch.zeros(self.bins, dtype=torch.int64)
        self.negative = torch.zeros(self.bins, dtype=torch.int64)

    def _counts(self, values: torch.Tensor) -> torch.Tensor:
        scaled = (values.double() - self.low) / (self.high - self.low) * self.bins
        index = scaled.floor().clamp(0, self.bins - 1).long()
        return torch.bincount(index, minlength=self.bins).cpu()

    def add(self, dist_BG: torch.Tensor, q_pids_B: torch.Tensor, g_pids_G: torch.Tensor,
            q_cams_B: torch.Tensor, g_cams_G: torch.Tensor) -> None:
        """Count the distances of one block of queries (all tensors on the block's device)."""
        same_pid = q_pids_B[:, None] == g_pids_G[None, :]
        junk = same_pid & (q_cams_B[:, None] == g_cams_G[None, :])
        self.positive += self._counts(dist_BG[same_pid & ~junk])
        self.negative += self._counts(dist_BG[~same_pid])

    def result(self) -> dict:
        """Plain numbers: ``kind``, ``low``, ``high``, ``positive`` and ``negative`` counts per bin."""
        return {"kind": self.kind, "low": self.low, "high": self.high,
                "positive": self.positive.tolist(), "negative": self.negative.tolist()}


__all__ = ["DistanceHistogram"]

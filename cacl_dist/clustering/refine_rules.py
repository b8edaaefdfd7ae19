"""The refinement rules (docs/method.md section 4.3), decided from per-point distance sums.

The dense refinement (:mod:`cacl_dist.clustering.refine`) and the sparse one
(:mod:`cacl_dist.clustering.refine_sparse`) only differ in how they compute, for every point i,
three sums of distances d_ik over other points k; both hand them to :func:`decide`, so the two
take their decisions with the same float64 operations in the same order.

Labels are made *global* first: every raw outlier, and every tight outlier, is numbered as a
singleton of its own. With C(i) the raw cluster and T(i) the tight cluster of i, and the
sub-cluster of i being C(i) ∩ T(i):

- ``cluster``: k in C(i);
- ``cross``: k in C(i) but not in T(i) (the rest of the raw cluster, outside i's sub-cluster);
- ``partner``: k shares exactly one of (raw label, tight label) with i.

Each sum is split into the sum of the entries that are not exactly 1, added one after the
other in increasing k, and the number of those entries; :func:`decide` adds 1 for each of the
remaining pairs, whose number follows from the label counts. A sparse graph that lists every
pair with d < 1 therefore gives bit for bit the sums of the dense matrix.

Rules (``ClusterParams.refine_score``):

- ``official`` (the authors' released code, SIC.py): t_i = (partner sum) / max(1, #partners)^2,
  score(T) = sum of t_i over T, and i stays in C(i) iff
  ``ratio_cluster * score(T(i)) <= (sum of d_ab over a, b in C(i)) / |C(i)|^2``.
- ``paper``: D(C) = mean over the ordered pairs a != b of C; D(C_j | C) = mean distance from
  C_j to C \\ C_j; keep C_j iff D(C_j | C) < D(C).
- ``paper_all``: as ``paper``, with D(C_j | C) the mean distance from the members of C_j to
  every other member of C (their own sub-cluster included).

For the paper rules a raw cluster made of one sub-cluster is kept whole. Removed points and raw
outliers get -1; kept points keep their raw cluster id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cacl_dist.clustering.params import ClusterParams
from cacl_dist.ordered_add import index_add_

SUMS = ("cluster", "cross", "partner")
"""The per-point sums, see the module docstring."""


def global_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` with every -1 replaced by a label of its own (max + 1, max + 2, ... in index order)."""
    out = labels.clone()
    loose = labels < 0
    first = int(labels.max()) + 1 if labels.numel() else 0
    out[loose] = max(first, 0) + torch.arange(int(loose.sum()), device=labels.device)
    return out


@dataclass
class LabelSets:
    """Global raw and tight labels of N points, their sub-clusters and the sizes of all three."""

    raw: torch.Tensor
    """(N,) raw labels as given, -1 for outliers."""
    graw: torch.Tensor
    """(N,) global raw labels."""
    gtight: torch.Tensor
    """(N,) global tight labels."""
    sub: torch.Tensor
    """(N,) sub-cluster id: equal iff same global raw and same global tight label."""
    raw_size: torch.Tensor
    """Size of every global raw label (int64)."""
    tight_size: torch.Tensor
    """Size of every global tight label (int64)."""
    sub_size: torch.Tensor
    """Size of every sub-cluster (int64)."""
    subs_per_raw: torch.Tensor
    """Number of sub-clusters of every global raw label (int64)."""

    @classmethod
    def build(cls, raw: torch.Tensor, tight: torch.Tensor) -> LabelSets:
        """The label sets of int64 label vectors ``raw`` and ``tight`` (same device, -1 = outlier)."""
        graw, gtight = global_labels(raw), global_labels(tight)
        span = int(gtight.max()) + 1 if gtight.numel() else 1
        unique_keys, sub = torch.unique(graw * span + gtight, return_inverse=True)
        num_raw = int(graw.max()) + 1 if graw.numel() else 0
        return cls(raw=raw, graw=graw, gtight=gtight, sub=sub,
                   raw_size=torch.bincount(graw, minlength=num_raw),
                   tight_size=torch.bincount(gtight, minlength=span),
                   sub_size=torch.bincount(sub, minlength=unique_keys.numel()),
                   subs_per_raw=torch.bincount(unique_keys // span, minlength=num_raw))

    def counts(self) -> dict:
        """Per point, the number of other points each sum of :data:`SUMS` runs over (int64)."""
        n_raw, n_tight, n_sub = self.raw_size[self.graw], self.tight_size[self.gtight], self.sub_size[self.sub]
        return {"cluster": n_raw - 1, "cross": n_raw - n_sub, "partner": (n_raw - n_sub) + (n_tight - n_sub)}


def pair_selections(labels: LabelSets, rows: torch.Tensor, cols: torch.Tensor) -> dict:
    """For pairs (rows[e], cols[e]) with rows != cols: which of the sums of :data:`SUMS` each enters."""
    same_raw = labels.graw[rows] == labels.graw[cols]
    same_tight = labels.gtight[rows] == labels.gtight[cols]
    return {"cluster": same_raw, "cross": same_raw & ~same_tight, "partner": same_raw ^ same_tight}


def _components(labels: LabelSets) -> torch.Tensor:
    """Per point, the smallest global raw label of its component: raw labels joined by shared tight labels."""
    num_raw = labels.raw_size.numel()
    left, right = labels.graw, num_raw + labels.gtight
    comp = torch.arange(num_raw + labels.tight_size.numel(), device=left.device)
    while True:  # minimum-label propagation; a few rounds (raw clusters chained through tight ones)
        low = torch.minimum(comp[left], comp[right])
        new = comp.scatter_reduce(0, left, low, "amin").scatter_reduce(0, right, low, "amin")
        new = new[new]
        if torch.equal(new, comp):
            return comp[left]
        comp = new


def refine_groups(raw: torch.Tensor, tight: torch.Tensor, params: ClusterParams = ClusterParams()) -> torch.Tensor:
    """Per point, a group id when its decision depends on distances, else -1 (int64, ``raw``'s device).

    Every distance a decision reads lies between two points of one group, so a sparse graph
    needs only the pairs inside the groups. Paper rules: the raw clusters with several
    sub-clusters. ``official``: the components of raw clusters joined by tight clusters that
    hold more than one sub-cluster; elsewhere every point has no partner, so its score is 0 and
    it stays.
    """
    labels = LabelSets.build(raw.long(), tight.long())
    if params.refine_score == "official":
        comp = _components(labels)
        comp_of_sub = torch.zeros(labels.sub_size.numel(), dtype=torch.int64, device=raw.device)
        comp_of_sub[labels.sub] = comp  # a sub-cluster lies in one component
        subs_per_comp = torch.bincount(comp_of_sub, minlength=labels.raw_size.numel())
        return torch.where(subs_per_comp[comp] > 1, comp, torch.full_like(comp, -1))
    mixed = (labels.raw >= 0) & (labels.subs_per_raw[labels.graw] > 1)
    return torch.where(mixed, labels.graw, torch.full_like(labels.graw, -1))


def decide(raw: torch.Tensor, tight: torch.Tensor, sums: dict, params: ClusterParams) -> tuple:
    """Refined labels from the per-point sums; see the module docstring.

    Args:
        raw, tight: (N,) int64 labels on one device, -1 for outliers.
        sums: for each name of :data:`SUMS`, ``(values, listed)``: (N,) float64 tensors with the
            sum over the listed entries (those that are not exactly 1) and their number. Only
            the points of :func:`refine_groups` are read.
        params: ``refine_score`` and ``ratio_cluster``.

    Returns:
        (refined_labels, num_removed): int64 numpy labels (removed points and raw outliers at
        -1) and the number of points taken out of raw clusters.
    """
    labels = LabelSets.build(raw, tight)
    device = raw.device
    counts = labels.counts()
    full = {name: sums[name][0] + (counts[name].to(torch.float64) - sums[name][1]) for name in sums}
    raw_size = labels.raw_size.to(torch.float64)
    cluster_total = index_add_(torch.zeros(raw_size.numel(), dtype=torch.float64, device=device), labels.graw,
                               full["cluster"])
    if params.refine_score == "official":
        partners = counts["partner"].clamp(min=1).to(torch.float64)
        per_point = full["partner"] / (partners * partners)
        score = index_add_(torch.zeros(labels.tight_size.numel(), dtype=torch.float64, device=device),
                           labels.gtight, per_point)
        spread = cluster_total / (raw_size * raw_size)
        keep = params.ratio_cluster * score[labels.gtight] <= spread[labels.graw]
    else:
        spread = cluster_total / (raw_size * (raw_size - 1)).clamp(min=1)
        sub_size = labels.sub_size.to(torch.float64)[labels.sub]
        if params.refine_score == "paper":
            pairs, name = sub_size * (raw_size[labels.graw] - sub_size), "cross"
        else:  # paper_all
            pairs, name = sub_size * (raw_size[labels.graw] - 1), "cluster"
        sub_total = index_add_(torch.zeros(labels.sub_size.numel(), dtype=torch.float64, device=device),
                               labels.sub, full[name])
        separation = sub_total[labels.sub] / pairs.clamp(min=1)
        keep = (separation < spread[labels.graw]) | (labels.subs_per_raw[labels.graw] == 1)
    keep |= refine_groups(raw, tight, params) < 0
    removed = (raw >= 0) & ~keep
    refined = torch.where(removed, torch.full_like(raw, -1), raw)
    return refined.cpu().numpy().astype(np.int64), int(removed.sum())

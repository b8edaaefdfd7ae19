"""One ranking for evaluation, ``visualize ranked`` and ``search``.

The distances are those :func:`~cacl_dist.evaluation.evaluator.evaluate_features` ranks by, from the
same blocks: squared Euclidean in float64 (:func:`~cacl_dist.evaluation.distances.plain_blocks`) or
the exact sparse k-reciprocal re-ranking (:class:`~cacl_dist.evaluation.rerank_sparse.SparseReranker`).
The order is the metrics' (stable: ties by gallery index); what is shown is the Euclidean distance
(the square root) or the re-ranked distance itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cacl_dist.errors import UserError
from cacl_dist.evaluation.distances import FeatureRows, plain_blocks
from cacl_dist.evaluation.metrics import stable_argsort_rows
from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker


@dataclass
class Ranking:
    """Query-gallery distances: ``ranked_by`` orders (what the metrics sort), ``shown`` is printed."""

    ranked_by: np.ndarray
    """(Q, G) float64: squared Euclidean, or the re-ranked distance."""
    shown: np.ndarray
    """(Q, G) float64: Euclidean, or the re-ranked distance."""
    reranked: bool

    def top(self, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices, shown distances), each (Q, topk): the nearest gallery rows of every query, nearest first."""
        order = stable_argsort_rows(self.ranked_by)[:, :topk]
        return order, np.take_along_axis(self.shown, order, axis=1)


def rank(q_feats, g_feats, rerank: RerankParams | None = None, device=None) -> Ranking:
    """The :class:`Ranking` of query rows against gallery rows (numpy or torch, (num, D))."""
    if len(g_feats) == 0:
        raise UserError("the gallery is empty")
    if rerank is None:
        blocks = plain_blocks(FeatureRows(q_feats, g_feats, device))
    else:
        blocks = SparseReranker(q_feats, g_feats, rerank, device).blocks()
    ranked_by = np.concatenate([block.to(torch.float64).cpu().numpy() for _, block in blocks])
    return Ranking(ranked_by, ranked_by if rerank is not None else np.sqrt(ranked_by), rerank is not None)


__all__ = ["Ranking", "rank"]

"""Re-ID evaluation of a feature extractor on a dataset's query and gallery splits."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
from torch import nn

from cacl_dist.data.layouts import ReidDataset
from cacl_dist.evaluation.distance_histogram import DistanceHistogram
from cacl_dist.evaluation.distances import FeatureRows, plain_blocks
from cacl_dist.evaluation.extract import ExtractionSettings, extract_all
from cacl_dist.evaluation.metrics import evaluate_ranking
from cacl_dist.evaluation.rerank_sparse import RerankParams, SparseReranker
from cacl_dist.errors import UserError

CMC_RANKS = 50
"""Length of the CMC curve a training evaluation records."""


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What an evaluation does besides extracting: flip averaging and re-ranking."""

    flip: bool = False
    """Average the features of every image and its mirror image (see ExtractionSettings.flip)."""
    rerank: RerankParams | None = None
    """k-reciprocal re-ranking parameters; None ranks by the Euclidean distance."""

    @classmethod
    def from_config(cls, eval_cfg) -> EvalOptions:
        """The options of ``eval.flip`` and ``eval.rerank*``."""
        return cls(flip=eval_cfg.flip, rerank=RerankParams.from_config(eval_cfg))


def evaluate_features(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids, *,
                      rerank: RerankParams | None = None, device=None, block_rows: int | None = None,
                      details: bool = False) -> dict:
    """Market-1501 protocol metrics of query and gallery features, ranked block by block.

    Distances are squared Euclidean in float64 (the Euclidean order) or, with ``rerank``, the
    k-reciprocal re-ranked distance (:class:`~cacl_dist.evaluation.rerank_sparse.SparseReranker`).
    They are computed and ranked on ``device`` (default: the query tensor's device) one block
    of ``block_rows`` queries at a time; no Q x G matrix is stored. Returns the dict of
    :func:`~cacl_dist.evaluation.metrics.evaluate_ranking`; ``details`` makes its ``cmc``
    :data:`CMC_RANKS` long and adds ``distance_histogram``, the counts of the match and
    non-match distances (squared Euclidean over [0, 4], the range of unit features, or the
    re-ranked distance over [0, 1]).
    """
    if rerank is None:
        blocks = plain_blocks(FeatureRows(q_feats, g_feats, device), block_rows)
        histogram = DistanceHistogram(0.0, 4.0, kind="squared Euclidean distance") if details else None
    else:
        blocks = SparseReranker(q_feats, g_feats, rerank, device).blocks(block_rows)
        histogram = DistanceHistogram(0.0, 1.0, kind="re-ranked distance") if details else None
    return evaluate_ranking(blocks, q_pids, g_pids, q_camids, g_camids, max_rank=CMC_RANKS if details else 10,
                            histogram=histogram)


def evaluate(model: nn.Module, dataset: ReidDataset, settings: ExtractionSettings, *, rank: int, world_size: int,
             options: EvalOptions | None = None) -> dict | None:
    """mAP, CMC rank-1/5/10 and mINP of `model` (images -> features) on rank 0; None on the other ranks.

    Also ``cmc`` (the first :data:`CMC_RANKS` ranks) and ``distance_histogram`` (see
    :func:`evaluate_features`), which callers keep apart from the scores.

    Every rank extracts its shard of the query and gallery images with ``settings`` (a collective
    call; ``options.flip`` switches flip averaging on); rank 0 ranks the gathered features on
    ``settings.device`` (the GPU when the model is there), re-ranked when ``options.rerank`` is
    set. Callers that need the metrics on every rank broadcast them.
    """
    options = options or EvalOptions()
    if not dataset.has_eval:
        raise UserError(f"dataset '{dataset.name}' at '{dataset.root}' has no query/gallery split to evaluate on")
    t0 = time.perf_counter()
    records = list(dataset.query) + list(dataset.gallery)
    settings = dataclasses.replace(settings, flip=options.flip)
    feats = extract_all(model, records, settings, rank=rank, world_size=world_size, desc="evaluate")
    result: dict | None = None
    if rank == 0:
        num_query = len(dataset.query)
        device = settings.device
        q, g = feats[:num_query].to(device), feats[num_query:].to(device)
        q_pids = np.array([r.pid for r in dataset.query])
        g_pids = np.array([r.pid for r in dataset.gallery])
        q_cams = np.array([r.camid for r in dataset.query])
        g_cams = np.array([r.camid for r in dataset.gallery])
        metrics = evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, rerank=options.rerank, device=device,
                                    details=True)
        result = {k: float(metrics[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
        result["num_valid_queries"] = int(metrics["num_valid_queries"])
        result["cmc"] = [round(float(v), 6) for v in metrics["cmc"]]
        result["distance_histogram"] = metrics["distance_histogram"]
        result["seconds"] = time.perf_counter() - t0
    return result


__all__ = ["CMC_RANKS", "EvalOptions", "evaluate", "evaluate_features"]

"""Re-ID evaluation of a feature extractor on a dataset's query and gallery splits."""

from __future__ import annotations

import time

import numpy as np
from torch import nn

from ..data.layouts import ReidDataset
from .extract import ExtractionSettings, extract_all
from .metrics import evaluate_ranking, pairwise_distance
from .rerank import k_reciprocal_rerank


def evaluate(model: nn.Module, dataset: ReidDataset, settings: ExtractionSettings, *, rank: int, world_size: int,
             rerank: bool = False) -> dict | None:
    """mAP, CMC rank-1/5/10 and mINP of `model` (images -> features) on rank 0; None on the other ranks.

    Every rank extracts its shard of the query and gallery images with ``settings`` (a collective
    call); rank 0 ranks the gathered features. Callers that need the metrics on every rank
    broadcast them.
    """
    if not dataset.has_eval:
        raise ValueError(f"dataset '{dataset.name}' at '{dataset.root}' has no query/gallery split to evaluate on")
    t0 = time.perf_counter()
    records = list(dataset.query) + list(dataset.gallery)
    feats = extract_all(model, records, settings, rank=rank, world_size=world_size, desc="evaluate")
    result: dict | None = None
    if rank == 0:
        num_query = len(dataset.query)
        q, g = feats[:num_query].numpy(), feats[num_query:].numpy()
        dist = k_reciprocal_rerank(q, g) if rerank else pairwise_distance(q, g)
        q_pids = np.array([r.pid for r in dataset.query])
        g_pids = np.array([r.pid for r in dataset.gallery])
        q_cams = np.array([r.camid for r in dataset.query])
        g_cams = np.array([r.camid for r in dataset.gallery])
        metrics = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
        result = {k: float(metrics[k]) for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}
        result["num_valid_queries"] = int(metrics["num_valid_queries"])
        result["seconds"] = time.perf_counter() - t0
    return result

"""Ranked lists of a trained model: each query with its top-K gallery images, framed by correctness.

Frames follow the evaluation protocol (docs/method.md section 7): green for a gallery image of
the query's identity from another camera (a correct match), red for another identity, grey for
an image of the same identity and the same camera, which the protocol removes from the ranking
(shown, since the distance ranks it there, but not counted). The query's own image file is never
listed (where the gallery holds it too). When no correct match reaches the top-K, the picture
adds the first one, set apart at the end, and says where it lies and how many there are.
``index.html`` lists every picture with the query's average precision; ``ranked.json`` holds the
same numbers for programs.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.evaluation.metrics import evaluate_ranking, stable_argsort_rows
from cacl_dist.runs.logs import progress
from cacl_dist.visualize import draw
from cacl_dist.errors import UserError

SELECTIONS = ("spread", "worst", "best")
"""Which queries to show: evenly spread over the query list, or those with the lowest/highest AP."""
STATUS_COLOUR = {"correct": draw.CORRECT, "wrong": draw.WRONG, "junk": draw.JUNK}


@dataclass
class RankedQuery:
    """The top of one query's ranking."""

    query: int
    """Index of the query in the query split."""
    gallery: list[int]
    """Indices of the top-K gallery images, nearest first (ties: lower index first)."""
    distances: list[float]
    """Their distances to the query."""
    status: list[str]
    """'correct', 'wrong' or 'junk' (same identity and camera: ignored by the protocol) per image."""
    ap: float | None
    """Average precision of the query under the protocol; None when it has no correct match."""
    num_matches: int = 0
    """Correct matches (same identity, another camera) in the whole gallery."""
    first_match: int | None = None
    """1-based position of the first correct match in the list as drawn (ignored images counted), None without one."""
    first_match_rank: int | None = None
    """Its rank as the evaluation counts it (same-identity same-camera images left out): 1 is a rank-1 hit."""
    first_match_gallery: int | None = None
    """Gallery index of the first correct match."""
    first_match_distance: float | None = None
    """Its distance to the query."""


def match_status(q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> list[str]:
    """'junk' for same pid and camera, 'correct' for same pid from another camera, else 'wrong'."""
    same = g_pids == q_pid
    junk = same & (g_cams == q_cam)
    return ["junk" if j else "correct" if s else "wrong" for s, j in zip(same.tolist(), junk.tolist())]


def query_ap(dist_row: np.ndarray, q_pid: int, q_cam: int, g_pids: np.ndarray, g_cams: np.ndarray) -> float | None:
    """AP of one query (the evaluation's own computation on a 1-row matrix); None without a match."""
    try:
        return float(evaluate_ranking(dist_row[None, :], [q_pid], g_pids, [q_cam], g_cams)["mAP"])
    except ValueError:
        return None


def rank_queries(dist: np.ndarray, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord],
                 chosen: Sequence[int], topk: int, shown: np.ndarray | None = None) -> list[RankedQuery]:
    """The top-``topk`` gallery images of every query index in ``chosen`` under the (Q, G) ``dist``.

    ``shown`` (default ``dist``) gives the distances listed, when they are not those ranked by (the Euclidean
    distance of a squared-distance ranking).
    """
    shown = dist if shown is None else shown
    g_pids = np.array([r.pid for r in gallery], dtype=np.int64)
    g_cams = np.array([r.camid for r in gallery], dtype=np.int64)
    rows = np.asarray(chosen, dtype=np.int64)
    order = stable_argsort_rows(np.ascontiguousarray(dist[rows]))
    files = gallery_files([r.path for r in gallery])
    ranked = []
    for row, q in enumerate(rows.tolist()):
        rec = query[q]
        full = order[row]
        full = full[not_own_file(full, rec.path, files)]  # the query's own file is no result
        top = full[:topk]
        item = RankedQuery(query=q, gallery=top.tolist(), distances=[float(d) for d in shown[q, top]],
                           status=match_status(rec.pid, rec.camid, g_pids[top], g_cams[top]),
                           ap=query_ap(dist[q], rec.pid, rec.camid, g_pids, g_cams))
        same = g_pids[full] == rec.pid
        correct = same & (g_cams[full] != rec.camid)
        item.num_matches = int(correct.sum())
        if item.num_matches:
            at = int(np.argmax(correct))
            item.first_match, item.first_match_gallery = at + 1, int(full[at])
            item.first_match_rank = at + 1 - int((same[:at] & ~correct[:at]).sum())
            item.first_match_distance = float(shown[q, full[at]])
        ranked.append(item)
    return ranked


def gallery_files(paths: Sequence[str]) -> dict[str, list[int]]:
    """The gallery indices of every image file (resolved path, so links count as the file), to find a query's
    own file."""
    files: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        files.setdefault(os.path.realpath(path), []).append(index)
    return files


def own_file_indices(query_path: str, files: dict[str, list[int]]) -> list[int]:
    """The gallery indices of ``query_path``'s own file (``files`` from :func:`gallery_files`), often none."""
    return files.get(os.path.realpath(query_path), [])


def not_own_file(order: np.ndarray, query_path: str, files: dict[str, list[int]]) -> np.ndarray:
    """Boolean mask over the gallery indices ``order``: False where the entry is the query's own file."""
    return ~np.isin(order, own_file_indices(query_path, files))


def where_first_match(ranked: RankedQuery) -> str:
    """What a picture says about the correct matches: how many, and where the first lies when not shown."""
    if ranked.num_matches == 0:
        return "no correct match in the gallery"
    many = f"{ranked.num_matches} correct match{'es' if ranked.num_matches != 1 else ''} in the gallery"
    if ranked.first_match is not None and ranked.first_match <= len(ranked.gallery):
        return many
    return (f"no correct match in the top {len(ranked.gallery)}: the first is at {ranked.first_match} "
            f"(rank {ranked.first_match_rank} by the protocol), {many}")


def choose_queries(dist: np.ndarray, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord], num: int,
                   selection: str = "spread", show_progress: bool = False) -> list[int]:
    """``num`` query indices: evenly spread over the list, or the worst / best by AP (no-match queries last)."""
    if selection not in SELECTIONS:
        raise UserError(f"--select '{selection}' is not one of {', '.join(SELECTIONS)}")
    total = len(query)
    num = min(num, total)
    if selection == "spread":
        return sorted(set(np.linspace(0, total - 1, num).round().astype(int).tolist()))
    g_pids = np.array([r.pid for r in gallery], dtype=np.int64)
    g_cams = np.array([r.camid for r in gallery], dtype=np.int64)
    aps = [query_ap(dist[q], r.pid, r.camid, g_pids, g_cams)
           for q, r in progress(enumerate(query), total=total, desc="AP per query", enabled=show_progress)]
    scored = [q for q in range(total) if aps[q] is not None]
    scored.sort(key=lambda q: (aps[q], q) if selection == "worst" else (-aps[q], q))
    return scored[:num]


def _camera(camid: int) -> str:
    return f"c{camid + 1}" if camid >= 0 else "c?"


def render(ranked: RankedQuery, query: Sequence[ImageRecord], gallery: Sequence[ImageRecord],
           topk: int | None = None):
    """The picture of one query: (PIL image, :class:`~cacl_dist.visualize.draw.RowLayout`).

    Tile 0 is the query (blue frame); tile 1 + i is the i-th nearest gallery image.
    """
    rec = query[ranked.query]
    ap = "" if ranked.ap is None else f"AP {ranked.ap:.3f}; "
    tiles = [draw.Tile(rec.path, draw.QUERY, ["query", f"id {rec.pid} {_camera(rec.camid)}"])]
    for pos, (g, d, status) in enumerate(zip(ranked.gallery, ranked.distances, ranked.status), start=1):
        g_rec = gallery[g]
        tiles.append(draw.Tile(g_rec.path, STATUS_COLOUR[status],
                               [f"{pos}: {d:.3f}", f"id {g_rec.pid} {_camera(g_rec.camid)}"]))
    beyond = ranked.first_match is not None and ranked.first_match > len(ranked.gallery)
    if beyond:  # the first correct match, set apart after the list
        g_rec = gallery[ranked.first_match_gallery]
        tiles.append(draw.Tile(g_rec.path, draw.CORRECT, [f"{ranked.first_match}: {ranked.first_match_distance:.3f}",
                                                          f"id {g_rec.pid} {_camera(g_rec.camid)}", "first match"]))
    header = f"query {ranked.query}: {Path(rec.path).name}   {ap}{where_first_match(ranked)}"
    return draw.draw_row(tiles, header=header, separator=True, min_tiles=1 + (topk or len(ranked.gallery)),
                         last_apart=beyond)


def picture_name(ranked: RankedQuery) -> str:
    """File name of a query's picture inside the output folder."""
    return f"query_{ranked.query:05d}.png"


def write_pictures(out_dir: str | Path, ranked: Sequence[RankedQuery], query: Sequence[ImageRecord],
                   gallery: Sequence[ImageRecord], title: str, topk: int, show_progress: bool = False) -> Path:
    """One PNG per query, ``ranked.json`` and ``index.html`` in ``out_dir``; returns the index path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in progress(ranked, total=len(ranked), desc="pictures", enabled=show_progress):
        image, _ = render(item, query, gallery, topk)
        draw.save_png(image, out_dir / picture_name(item))
    rows = [{**asdict(item), "picture": picture_name(item), "query_path": query[item.query].path,
             "gallery_paths": [gallery[g].path for g in item.gallery],
             "first_match_path": None if item.first_match_gallery is None else gallery[item.first_match_gallery].path}
            for item in ranked]
    (out_dir / "ranked.json").write_text(json.dumps({"title": title, "topk": topk, "queries": rows}, indent=1))
    index = out_dir / "index.html"
    index.write_text(_html(ranked, query, title))
    return index


def _swatch(colour: tuple[int, int, int], text: str) -> str:
    r, g, b = colour
    return f'<span style="border:4px solid rgb({r},{g},{b});padding:0 4px">{html.escape(text)}</span>'


def _html(ranked: Sequence[RankedQuery], query: Sequence[ImageRecord], title: str) -> str:
    legend = " ".join([_swatch(draw.QUERY, "query"), _swatch(draw.CORRECT, "same identity, other camera"),
                       _swatch(draw.WRONG, "other identity"),
                       _swatch(draw.JUNK, "same identity and camera (ignored by the protocol)")])
    items = []
    for item in ranked:
        ap = "" if item.ap is None else f"AP {item.ap:.3f}; "
        name = html.escape(Path(query[item.query].path).name)
        items.append(f'<h3>query {item.query}: {name} &mdash; {ap}{html.escape(where_first_match(item))}</h3>\n<img src="{picture_name(item)}" '
                     f'alt="ranked list of query {item.query}">')
    aps = [i.ap for i in ranked if i.ap is not None]
    mean = f"mean AP of these {len(aps)} queries: {np.mean(aps):.3f}" if aps else ""
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ranked lists</title></head>\n"
            f"<body style=\"font-family:sans-serif\">\n<h2>{html.escape(title)}</h2>\n<p>{legend}</p>\n"
            f"<p>{mean}</p>\n" + "\n".join(items) + "\n</body></html>\n")


__all__ = ["RankedQuery", "SELECTIONS", "choose_queries", "match_status", "picture_name", "query_ap",
           "rank_queries", "render", "where_first_match", "write_pictures"]

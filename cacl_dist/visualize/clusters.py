"""A montage of one clustering round: sample pseudo clusters and the points refinement removed.

Reads the labels the trainer saved (``RUN/pseudo_labels/epoch_EEE.npy``, ``..._raw.npy`` and
``..._refined.npy``, :mod:`cacl_dist.runs.pseudo_labels`) and the training images of the run's dataset. Sections: the
largest clusters, the smallest clusters of two or more images (among equal sizes those spanning
the most cameras first: a cross-camera pair is what the model must learn to join, a same-camera
pair is easy), the most impure clusters (when the identities are known), and points that
refinement took out of their DBSCAN cluster. A cluster appears in one section only, the first
that picks it; each header says how many of its images are shown ("12 of 524"). With
known identities a frame is green when the image shows the majority identity of its (raw)
cluster and red otherwise; without them all frames are dark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.evaluation.cluster_quality import cluster_purity, cluster_quality
from cacl_dist.visualize import draw


@dataclass
class Section:
    """One row of the montage: a header and the training indices it shows."""

    header: str
    indices: list[int]
    reference: int | None
    """The identity that frames green (majority of the cluster), or None when unknown."""
    captions: list[list[str]]


def clusters_of(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Members (training indices) of every label >= 0."""
    order = np.argsort(labels, kind="stable")
    ids, starts = np.unique(labels[order], return_index=True)
    groups = np.split(order, starts[1:])
    return {int(i): g for i, g in zip(ids, groups) if i >= 0}


def refined_away(raw: np.ndarray, refined: np.ndarray) -> np.ndarray:
    """Indices that were in a DBSCAN cluster and that refinement removed from it."""
    return np.flatnonzero((raw >= 0) & (refined < 0))


def _spread(indices: np.ndarray, count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spaced (all of them when there are few)."""
    if len(indices) <= count:
        return [int(i) for i in indices]
    return [int(indices[i]) for i in np.linspace(0, len(indices) - 1, count).round().astype(int)]


def _describe(cluster: int, members: np.ndarray, pids: np.ndarray | None, cams: np.ndarray,
              shown: int) -> tuple[str, int | None]:
    size = f"{len(members)} images" if shown >= len(members) else f"{shown} of {len(members)} images shown"
    cameras = np.unique(cams[members]).size
    text = f"cluster {cluster}: {size}, from {cameras} camera{'s' if cameras != 1 else ''}"
    if pids is None:
        return text, None
    majority, purity = cluster_purity(pids[members])
    identities = np.unique(pids[members]).size
    ids = f"{identities} identit{'ies' if identities != 1 else 'y'}"
    return f"{text}, {ids}, purity {purity:.2f} (majority id {majority})", majority


def sections(labels: np.ndarray, raw: np.ndarray | None, refined: np.ndarray | None, pids: np.ndarray | None,
             cams: np.ndarray, per_section: int = 3, per_row: int = 12) -> list[Section]:
    """The rows of the montage (see the module docstring)."""
    groups = {c: m for c, m in clusters_of(labels).items() if len(m) >= 2}
    cameras = {c: np.unique(cams[m]).size for c, m in groups.items()}
    purity = {c: cluster_purity(pids[groups[c]])[1] for c in groups} if pids is not None else {}
    used: set[int] = set()

    def take(order: list[int]) -> list[int]:  # each cluster in the first section that picks it
        picked = [c for c in order if c not in used][:per_section]
        used.update(picked)
        return picked

    chosen = [("largest", take(sorted(groups, key=lambda c: (-len(groups[c]), c)))),
              ("smallest", take(sorted(groups, key=lambda c: (len(groups[c]), -cameras[c], purity.get(c, 1.0), c))))]
    if pids is not None:
        impure = [c for c in sorted(groups, key=lambda c: (purity[c], -len(groups[c]), c)) if purity[c] < 1.0]
        chosen.append(("most impure", take(impure)))

    def caption(i: int) -> list[str]:
        pid = "id ?" if pids is None else f"id {pids[i]}"
        return [pid, f"c{cams[i] + 1}" if cams[i] >= 0 else "c?"]

    rows = []
    for kind, clusters in chosen:
        for rank, c in enumerate(clusters, start=1):
            members = groups[c]
            if pids is not None:  # majority first, then the others: impurity is visible at a glance
                members = members[np.argsort(pids[members] != cluster_purity(pids[members])[0], kind="stable")]
            shown = _spread(members, per_row)
            text, majority = _describe(c, members, pids, cams, len(shown))
            rows.append(Section(f"{kind} #{rank}: {text}", shown, majority, [caption(i) for i in shown]))
    if raw is not None and refined is not None:
        away = refined_away(raw, refined)
        shown = _spread(away, 2 * per_row)
        for start in range(0, len(shown), per_row):
            part = shown[start:start + per_row]
            caps = [[f"raw {raw[i]}"] + caption(i) for i in part]
            header = (f"removed by refinement: {len(shown)} of {len(away)} points shown; under each its raw cluster"
                      + ("; green: its raw cluster's majority identity (a loss), red: another one (a good removal)"
                         if pids is not None else ""))
            rows.append(Section(header if start == 0 else "removed by refinement (cont.)", part, None, caps))
    return rows


def _frame(i: int, section: Section, raw: np.ndarray | None, pids: np.ndarray | None) -> tuple[int, int, int]:
    if pids is None:
        return draw.NEUTRAL
    reference = section.reference
    if reference is None and raw is not None and raw[i] >= 0:  # a removed point: its raw cluster's majority
        reference = cluster_purity(pids[raw == raw[i]])[0]
    return draw.CORRECT if pids[i] == reference else draw.WRONG


def montage(records: Sequence[ImageRecord], stages: dict[str, np.ndarray], title: str, per_section: int = 3,
            per_row: int = 12):
    """The montage image of one round (PIL), with a title block and one row per :class:`Section`.

    ``stages``: the labellings of the round by stage, as :func:`cacl_dist.runs.pseudo_labels.load_round`
    returns them ('pseudo', and 'raw' + 'refined' for the refinement section).
    """
    labels, raw = stages["pseudo"], stages.get("raw")
    pids = np.array([r.pid for r in records], dtype=np.int64)
    cams = np.array([r.camid for r in records], dtype=np.int64)
    known = pids if pids.size and (pids >= 0).all() else None
    groups = clusters_of(labels)
    sizes = np.array([len(m) for m in groups.values()])
    multi = int((sizes >= 2).sum())
    lines = [title, f"{len(labels)} images in {len(groups)} pseudo clusters: {multi} with two or "
                    f"more images, {int((sizes == 1).sum())} singletons"
                    + (f", {int((labels < 0).sum())} left out" if (labels < 0).any() else ""),
             f"below: up to {per_section} largest, smallest (cross-camera first) and"
             + (" most impure" if known is not None else "") + f" of the {multi} clusters with 2+ images, "
             f"each once, up to {per_row} images of each"]
    if known is not None:
        q = cluster_quality(labels, known)
        lines.append(f"pseudo labels vs identities: pairwise F {q['fscore']:.3f} (P {q['precision']:.3f} "
                     f"R {q['recall']:.3f}), ARI {q['ari']:.3f}, NMI {q['nmi']:.3f}")
        lines.append("frames: green = the cluster's majority identity, red = another identity")
    rows = []
    for section in sections(labels, raw, stages.get("refined"), known, cams, per_section, per_row):
        tiles = [draw.Tile(records[i].path, _frame(i, section, raw, known), cap)
                 for i, cap in zip(section.indices, section.captions)]
        rows.append(draw.draw_row(tiles, header=section.header, min_tiles=per_row)[0])
    width = max([r.width for r in rows] + [600])
    return draw.stack([draw.text_block(lines, width)] + rows)


__all__ = ["Section", "clusters_of", "montage", "refined_away", "sections"]

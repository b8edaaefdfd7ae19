"""Cluster montage sections and the row geometry of the drawings."""

import numpy as np
from PIL import Image

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.visualize import draw
from cacl_dist.visualize.clusters import clusters_of, montage, refined_away, sections


def test_sections_pick_largest_smallest_impure_and_removed():
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 3, 4])
    pids = np.array([7, 7, 7, 8, 5, 5, 6, 6, 6, 9, 9])
    raw = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, -1])
    refined = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, -1, -1])
    assert list(refined_away(raw, refined)) == [9]
    assert sorted(clusters_of(labels)) == [0, 1, 2, 3, 4]
    rows = sections(labels, raw, refined, pids, np.zeros(11, dtype=int), per_section=1, per_row=12)
    headers = [r.header for r in rows]
    assert headers[0].startswith("largest #1: cluster 0: 4 images, from 1 camera, 2 identities, purity 0.75 "
                                 "(majority id 7)")
    assert rows[0].indices == [0, 1, 2, 3]  # the majority identity first
    assert headers[1].startswith("smallest #1: cluster 1: 2 images")
    # cluster 0, the most impure, is already shown as the largest: no other impure cluster is left
    assert headers[2].startswith("removed by refinement: 1 of 1 points shown") and rows[2].indices == [9]
    assert len(rows) == 3


def test_row_layout_places_frames_where_they_are_drawn(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (20, 40), (0, 0, 255)).save(path)
    tiles = [draw.Tile(str(path), colour, ["x"]) for colour in (draw.QUERY, draw.CORRECT, draw.WRONG, draw.JUNK)]
    image, layout = draw.draw_row(tiles, header="h", separator=True)
    assert image.size == layout.size
    for index, tile in enumerate(tiles):
        left, top, right, bottom = layout.frame_box(index)
        assert image.getpixel((left, top)) == tile.colour
        assert image.getpixel((right - 1, bottom - 1)) == tile.colour
        assert image.getpixel((left + draw.BORDER + draw.TILE_W // 2, top + draw.BORDER + draw.TILE_H // 2)) == \
            (0, 0, 255)


def test_montage_without_identities_uses_neutral_frames(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 16), (9, 9, 9)).save(path)
    records = [ImageRecord(str(path), -1, -1)] * 6
    stages = {"pseudo": np.array([0, 0, 0, 1, 1, 2]), "raw": np.array([0, 0, 0, 0, 0, -1]),
              "refined": np.array([0, 0, 0, -1, -1, -1])}
    image = montage(records, stages, "title")
    assert image.width >= 600 and image.height > 3 * draw.TILE_H


def test_headers_say_how_many_images_are_shown_and_no_cluster_appears_twice():
    # cluster 0: 30 images (mixed identities); 1..3: pairs, 2 of them spanning two cameras; 4: 5 images, impure
    labels = np.array([0] * 30 + [1, 1, 2, 2, 3, 3] + [4] * 5)
    pids = np.array([1] * 20 + [2] * 10 + [3, 3, 4, 4, 5, 6] + [7, 7, 7, 8, 8])
    cams = np.array([i % 4 for i in range(30)] + [0, 0, 0, 1, 2, 3] + [0] * 5)
    rows = sections(labels, None, None, pids, cams, per_section=3, per_row=12)
    headers = [r.header for r in rows]
    assert headers[0].startswith("largest #1: cluster 0: 12 of 30 images shown, from 4 cameras, 2 identities")
    assert len(rows[0].indices) == 12
    picked = [int(h.split("cluster ")[1].split(":")[0]) for h in headers]
    assert sorted(picked) == sorted(set(picked)) == [0, 1, 2, 3, 4]  # each cluster once
    assert headers[1].startswith("largest #2: cluster 4: 5 images, from 1 camera")
    assert headers[2].startswith("largest #3: cluster 1")
    # the smallest left: the two cross-camera pairs (the same-camera one went to largest #3), the impure one first
    assert headers[3].startswith("smallest #1: cluster 3: 2 images, from 2 cameras, 2 identities, purity 0.50")
    assert headers[4].startswith("smallest #2: cluster 2: 2 images, from 2 cameras, 1 identity,")
    assert len(rows) == 5  # no impure cluster is left for its own section

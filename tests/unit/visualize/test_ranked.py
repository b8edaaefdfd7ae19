"""Ranked lists: order, correctness status and AP per query, query selection."""

import numpy as np
import pytest

from cacl_dist.data.layouts import ImageRecord
from cacl_dist.visualize.ranked import choose_queries, rank_queries


def _records(pids, cams, folder="x"):
    return [ImageRecord(f"/{folder}/{i}.jpg", p, c) for i, (p, c) in enumerate(zip(pids, cams))]


QUERY = _records([1, 2, 3], [0, 0, 0], "query")
GALLERY = _records([1, 1, 2, 4, 2], [0, 1, 1, 1, 0], "gallery")
DIST = np.array([[0.1, 0.5, 0.2, 0.9, 0.3],    # q1: junk first, then wrong, wrong, correct
                 [0.4, 0.4, 0.1, 0.2, 0.05],   # q2: junk, correct, wrong, tie 0.4 -> lower index first
                 [0.3, 0.2, 0.1, 0.4, 0.5]],   # q3: no match in the gallery
                dtype=np.float32)


def test_order_status_and_ap():
    ranked = rank_queries(DIST, QUERY, GALLERY, [0, 1, 2], topk=4)
    assert ranked[0].gallery == [0, 2, 4, 1]
    assert ranked[0].status == ["junk", "wrong", "wrong", "correct"]
    assert ranked[0].ap == pytest.approx(1 / 3)  # the junk item is not counted: the match is 3rd
    assert ranked[1].gallery == [4, 2, 3, 0] and ranked[1].status == ["junk", "correct", "wrong", "wrong"]
    assert ranked[1].ap == pytest.approx(1.0)
    assert ranked[2].ap is None and set(ranked[2].status) == {"wrong"}
    assert ranked[0].distances == pytest.approx([0.1, 0.2, 0.3, 0.5])


def test_choose_queries():
    assert choose_queries(DIST, QUERY, GALLERY, 2, "spread") == [0, 2]
    assert choose_queries(DIST, QUERY, GALLERY, 5, "worst") == [0, 1]  # no-match queries are left out
    assert choose_queries(DIST, QUERY, GALLERY, 1, "best") == [1]
    with pytest.raises(ValueError, match="--select"):
        choose_queries(DIST, QUERY, GALLERY, 1, "random")


def _image_files(tmp_path, count, folder):
    from PIL import Image

    (tmp_path / folder).mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        path = tmp_path / folder / f"{i}.png"
        Image.new("RGB", (16, 32), (10 * i, 80, 160)).save(path)
        paths.append(str(path))
    return paths


def test_a_query_without_a_match_in_the_top_k_says_where_the_first_is(tmp_path):
    import json

    from cacl_dist.visualize import draw
    from cacl_dist.visualize.ranked import render, write_pictures

    query = [ImageRecord(p, r.pid, r.camid) for p, r in zip(_image_files(tmp_path, 3, "q"), QUERY)]
    gallery = [ImageRecord(p, r.pid, r.camid) for p, r in zip(_image_files(tmp_path, 5, "g"), GALLERY)]
    ranked = rank_queries(DIST, query, gallery, [0, 1, 2], topk=2)
    # q1 ranks junk (g0), wrong (g2), wrong (g4), then its one match g1: 4th as drawn, 3rd by the protocol
    assert ranked[0].gallery == [0, 2] and "correct" not in ranked[0].status
    assert (ranked[0].num_matches, ranked[0].first_match, ranked[0].first_match_rank) == (1, 4, 3)
    assert ranked[0].first_match_gallery == 1 and ranked[0].first_match_distance == pytest.approx(0.5)
    assert (ranked[1].num_matches, ranked[1].first_match, ranked[1].first_match_rank) == (1, 2, 1)
    assert (ranked[2].num_matches, ranked[2].first_match) == (0, None)
    write_pictures(tmp_path / "out", ranked, query, gallery, "t", topk=2)
    rows = json.loads((tmp_path / "out" / "ranked.json").read_text())["queries"]
    assert {k: rows[0][k] for k in ("num_matches", "first_match", "first_match_rank", "first_match_path")} == \
        {"num_matches": 1, "first_match": 4, "first_match_rank": 3, "first_match_path": gallery[1].path}
    assert rows[2]["first_match"] is None and rows[2]["num_matches"] == 0
    html = (tmp_path / "out" / "index.html").read_text()
    assert "no correct match in the top 2: the first is at 4 (rank 3 by the protocol), 1 correct match" in html
    assert "no correct match in the gallery" in html
    image, layout = render(ranked[0], query, gallery, topk=2)
    assert layout.num_tiles == 4 and layout.last_apart  # query, the top 2, then the first match set apart
    left, top, _, _ = layout.frame_box(3)
    assert image.getpixel((left, top)) == draw.CORRECT
    assert left - layout.frame_box(2)[2] > draw.GAP
    assert render(ranked[1], query, gallery, topk=2)[1].num_tiles == 3  # its match is in the list


def test_the_query_itself_is_never_returned(tmp_path):
    import os

    query_paths = _image_files(tmp_path, 1, "q")
    query = [ImageRecord(query_paths[0], 1, 0)]
    link = tmp_path / "link.png"
    os.symlink(query_paths[0], link)
    other = _image_files(tmp_path, 3, "g")
    gallery = [ImageRecord(query_paths[0], 1, 0), ImageRecord(other[0], 1, 1), ImageRecord(str(link), 1, 0),
               ImageRecord(other[1], 2, 1), ImageRecord(other[2], 1, 0)]
    dist = np.array([[0.0, 0.3, 0.0, 0.2, 0.1]])
    [item] = rank_queries(dist, query, gallery, [0], topk=5)
    assert item.gallery == [4, 3, 1]  # neither the file itself nor a link to it; other same-camera images stay
    assert item.status == ["junk", "wrong", "correct"] and item.first_match_rank == 2
    assert item.ap == pytest.approx(0.5)


def test_captions_use_a_readable_font():
    from cacl_dist.visualize import draw

    left, top, right, bottom = draw.font().getbbox("Ag")
    assert bottom - top >= 12 and draw.LINE_H >= bottom - top
    assert draw.text_width("id 1234 c3") <= draw.TILE_W + 2 * draw.BORDER  # a caption fits under its tile

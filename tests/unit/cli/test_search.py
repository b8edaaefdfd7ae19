"""`python -m cacl_dist.search --features F.npz`: a damaged or inconsistent .npz is one line naming it."""

import numpy as np
import pytest
from PIL import Image

from cacl_dist.cli.search import main
from cacl_dist.inference.feature_files import load_gallery


def _npz(path, names=2, paths=2, rows=2, dims=4):
    np.savez(path, names=np.array([f"n{i}.jpg" for i in range(names)]),
             paths=np.array([f"/x/n{i}.jpg" for i in range(paths)]), features=np.ones((rows, dims), np.float32))
    return path


def test_a_consistent_file_loads(tmp_path):
    gallery = load_gallery(_npz(tmp_path / "g.npz"))
    assert gallery["features"].shape == (2, 4)


@pytest.mark.parametrize("cut", [10, 0.5, -30])
def test_a_truncated_file_is_one_line_naming_it(tmp_path, capsys, cut):
    data = _npz(tmp_path / "g.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:int(cut * len(data)) if isinstance(cut, float) else cut])
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(query)
    assert main(["--features", str(tmp_path / "cut.npz"), "--query", str(query)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cut.npz" in err[0] and "not a readable .npz" in err[0]


@pytest.mark.parametrize("counts, needle", [
    (dict(names=3), "3 names and 2 paths for 2 feature rows"),
    (dict(paths=1), "2 names and 1 paths for 2 feature rows"),
    (dict(names=0, paths=0, rows=0), "features of shape (0, 4)"),
])
def test_names_that_do_not_match_the_feature_rows_are_refused(tmp_path, counts, needle):
    with pytest.raises(ValueError) as info:
        load_gallery(_npz(tmp_path / "g.npz", **counts))
    assert needle in str(info.value) and "g.npz" in str(info.value)


def test_image_lists_and_folders_of_extract_and_search_name_what_is_not_utf8(tmp_path):
    import os

    from cacl_dist.inference.feature_files import image_records

    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xef\xbb\xbfa.png\n# caf\xe9\n")
    with pytest.raises(ValueError, match=r"list.txt line 2 is not UTF-8 text \(byte 0xe9\)"):
        image_records(listing)
    listing.write_bytes(b"\xef\xbb\xbfa.png\n")  # a byte-order mark does not hide the first name
    assert image_records(listing)[0] == ["a.png"]
    Image.fromarray(np.zeros((8, 4, 3), np.uint8)).save(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.png"))
    with pytest.raises(ValueError, match=r"caf\\xe9.png is not UTF-8 text"):
        image_records(tmp_path)


def test_the_query_own_file_is_left_out_and_the_next_results_move_up(tmp_path):
    from cacl_dist.cli.search import without_the_query

    files = [tmp_path / f"g{i}.jpg" for i in range(4)]
    for f in files:
        f.write_bytes(b"x")
    link = tmp_path / "link.jpg"
    link.symlink_to(files[2])
    order = np.array([[2, 0, 1], [1, 3, 0]])
    dist = np.array([[0.0, 0.5, 0.7], [0.1, 0.2, 0.3]])
    kept, kept_dist = without_the_query(order, dist, [str(link), str(tmp_path / "other.jpg")],
                                        [str(f) for f in files], topk=2)
    assert kept == [[0, 1], [1, 3]]  # query 0 is g2 through a link: g2 left out
    assert kept_dist == [[0.5, 0.7], [0.1, 0.2]]

    # a gallery that lists the query's file twice (once through the link): both entries left out
    kept, _ = without_the_query(np.array([[4, 2, 0, 1]]), np.array([[0.0, 0.0, 0.5, 0.7]]), [str(files[2])],
                                [*map(str, files), str(link)], topk=2)
    assert kept == [[0, 1]]

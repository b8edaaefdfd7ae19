"""Fault-injection cases of odd input files (issue-style probes of a careless new user), run by
tests/integration/fault_injection.py and printed in its table: configs and lists that YAML or Python
would read silently or with a codec error, images the pipelines would decode differently, damaged
records and feature files."""

from __future__ import annotations

import os
import shutil

import numpy as np

from tests.helpers.faults import Case, Lab, one_line_error
from tests.helpers.runs import run_cli


def case_duplicate_key(lab: Lab):
    config = lab.folder("twice").with_suffix(".yaml")
    config.write_text("train:\n  epochs: 1\n  epochs: 50\n")
    return one_line_error(run_cli("cacl_dist.train", ["--config", str(config), *lab.args(lab.folder("twice_run"))]),
                          str(config), "'epochs' appears twice")


def case_seed(lab: Lab):
    run_dir = lab.folder("seed")
    ok, observed = one_line_error(run_cli("cacl_dist.train", lab.args(run_dir, **{"run.seed": -1})), "run.seed")
    return ok and not run_dir.exists(), observed


def case_query_in_gallery(lab: Lab):
    lists = lab.folder("lists")
    lists.mkdir()
    images = sorted((lab.data / "bounding_box_test").glob("*.jpg"))
    train = sorted((lab.data / "bounding_box_train").glob("*.jpg"))
    (lists / "train.txt").write_text("".join(f"{p} -1 0\n" for p in train))
    (lists / "query.txt").write_text("".join(f"{p} 1 0\n" for p in images[:2]))
    (lists / "gallery.txt").write_text("".join(f"{p} 1 1\n" for p in images))
    result = run_cli("cacl_dist.train", lab.args(lab.folder("lists_run"), **{"data.dataset": "custom",
                                                                              "data.root": str(lists)}))
    return one_line_error(result, "query.txt are also in", "gallery.txt")


def case_non_utf8_name(lab: Lab):
    crops = lab.folder("latin1_names")
    shutil.copytree(lab.data / "bounding_box_train", crops)
    first = sorted(crops.glob("*.jpg"))[0]
    os.rename(first, os.fsdecode(os.fsencode(crops) + b"/caf\xe9.jpg"))
    run_dir = lab.folder("latin1_run")
    ok, observed = one_line_error(run_cli("cacl_dist.train", lab.args(run_dir, **{"data.dataset": "folder",
                                                                                   "data.root": str(crops)})),
                                  "caf\\xe9.jpg is not UTF-8")
    left = sorted(p.name for p in run_dir.iterdir()) if run_dir.exists() else []
    return ok and not left, observed + (f"; left in the run folder: {', '.join(left)}" if left else "; no run folder left")


def case_sixteen_bit_png(lab: Lab):
    from PIL import Image

    crops = lab.folder("deep_png")
    shutil.copytree(lab.data / "bounding_box_train", crops)
    deep = crops / "deep.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 2**16, (64, 32), dtype=np.uint16)).save(deep)
    result = run_cli("cacl_dist.train", lab.args(lab.folder("deep_run"), **{"data.dataset": "folder",
                                                                             "data.root": str(crops)}))
    return one_line_error(result, str(deep), "16 bits per sample")


def case_metrics_junk(lab: Lab):
    run_dir = lab.copy_of_base("metrics_junk")
    with open(run_dir / "metrics.jsonl", "ab") as fh:
        fh.write(b"null\n[1, 2]\n\xff\xfe\x00junk\n")
    result = run_cli("cacl_dist.report", [str(run_dir)])
    warned = f"skipped 3 unreadable line(s) of {run_dir / 'metrics.jsonl'}" in result.stderr
    return result.returncode == 0 and warned, f"exit {result.returncode}: {result.stderr.strip()[-150:]}"


def case_truncated_npz(lab: Lab):
    npz = lab.folder("cut").with_suffix(".npz")
    np.savez(npz, names=np.array(["a.jpg"]), paths=np.array(["/a.jpg"]), features=np.ones((1, 8), np.float32))
    npz.write_bytes(npz.read_bytes()[:200])
    query = sorted((lab.data / "query").glob("*.jpg"))[0]
    return one_line_error(run_cli("cacl_dist.search", ["--features", str(npz), "--query", str(query)]),
                          str(npz), "not a readable .npz")


INPUT_CASES = [
    Case("duplicate_key", "a key twice in a config file: one line naming key and file, exit 2", case_duplicate_key),
    Case("seed", "run.seed=-1: one line naming run.seed before any work, exit 2", case_seed),
    Case("query_in_gallery", "custom query images also in the gallery: one line, exit 2", case_query_in_gallery),
    Case("non_utf8_name", "a Latin-1 file name in the data: one line naming it, exit 2, no run folder left behind",
         case_non_utf8_name),
    Case("sixteen_bit_png", "a 16-bit PNG among the training images: one line naming it, exit 2",
         case_sixteen_bit_png),
    Case("metrics_junk", "null, a list and binary junk appended to metrics.jsonl: report skips them, names the "
         "file, exit 0", case_metrics_junk),
    Case("truncated_npz", "search on a truncated .npz: one line naming it, exit 2", case_truncated_npz),
]

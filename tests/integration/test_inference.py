"""The inference entries on a tiny trained model: one ranking, every format, no code run from a file."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from cacl_dist.cli.evaluate import main as evaluate
from cacl_dist.cli.export import main as export
from cacl_dist.cli.extract import main as extract
from cacl_dist.cli.search import main as search
from cacl_dist.cli.visualize import main as visualize
from cacl_dist.training.checkpoint import FORMAT

from tests.helpers.runs import export_gives_the_checkpoint_features, fit

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

EVAL = {"eval.flip": "true", "eval.rerank": "true", "eval.rerank_k1": 6, "eval.rerank_k2": 3}


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_root):
    """A tiny model trained one epoch whose config evaluates with flip averaging and re-ranking."""
    run_dir = tmp_path_factory.mktemp("inference") / "run"
    trainer = fit(run_dir, synthetic_root, **{"train.epochs": 1}, **EVAL)
    return run_dir, trainer.dataset


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def _search_lists(printed: list[str]) -> dict[str, list[str]]:
    lists, current = {}, None
    for line in printed:
        if line.startswith("query "):
            current = lists.setdefault(line.split(" ", 1)[1], [])
        elif current is not None and line.startswith("  "):
            current.append(line.split()[2])
    return lists


def test_visualize_extract_search_and_evaluate_rank_alike(run, tmp_path, synthetic_root, capsys):
    run_dir, dataset = run
    ckpt = str(run_dir / "last.pt")
    num_q, num_g = len(dataset.query), len(dataset.gallery)
    assert visualize(["ranked", "--checkpoint", ckpt, "--num-queries", str(num_q), "--topk", str(num_g),
                      "--output", str(tmp_path / "ranked")]) == 0
    shown = json.loads((tmp_path / "ranked" / "ranked.json").read_text())
    assert "re-ranked" in shown["title"] and len(shown["queries"]) == num_q

    gallery_dir, query_dir = synthetic_root / "bounding_box_test", synthetic_root / "query"
    assert extract(["--checkpoint", ckpt, "--images", str(gallery_dir), "--output", str(tmp_path / "g.npz")]) == 0
    assert extract(["--checkpoint", ckpt, "--images", str(gallery_dir), "--output", str(tmp_path / "g_noflip.npz"),
                    "--set", "eval.flip=false"]) == 0
    flipped, plain = np.load(tmp_path / "g.npz")["features"], np.load(tmp_path / "g_noflip.npz")["features"]
    assert np.abs(flipped - plain).max() > 1e-3  # eval.flip is honoured
    capsys.readouterr()
    assert search(["--features", str(tmp_path / "g.npz"), "--query", str(query_dir), "--topk", str(num_g),
                   "--checkpoint", ckpt]) == 0
    found = _search_lists(capsys.readouterr().out.splitlines())
    names = {r.path: r.path.rsplit("/", 1)[1] for r in dataset.gallery}
    assert len(found) == num_q
    for item in shown["queries"]:
        query_name = item["query_path"].rsplit("/", 1)[1]
        assert found[query_name] == [names[p] for p in item["gallery_paths"]], query_name

    assert evaluate(["--checkpoint", ckpt, "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    aps = [item["ap"] for item in shown["queries"] if item["ap"] is not None]
    assert len(aps) == metrics["num_valid_queries"]
    assert np.mean(aps) == pytest.approx(metrics["mAP"], abs=1e-12)
    first = [next(s for s in item["status"] if s != "junk") == "correct" for item in shown["queries"]
             if item["ap"] is not None]
    assert np.mean(first) == pytest.approx(metrics["rank1"], abs=1e-12)


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _entries(path, tmp_path, synthetic_root) -> list[tuple[str, object, list[str]]]:
    images = str(synthetic_root / "query")
    return [("evaluate", evaluate, ["--checkpoint", path]),
            ("export", export, ["--checkpoint", path, "--format", "state_dict", "--output", str(tmp_path / "o.pt")]),
            ("extract", extract, ["--checkpoint", path, "--images", images, "--output", str(tmp_path / "o.npz")]),
            ("search", search, ["--checkpoint", path, "--gallery", images, "--query", images]),
            ("visualize", visualize, ["ranked", "--checkpoint", path, "--output", str(tmp_path / "o")])]


@pytest.mark.parametrize("tagged", [True, False], ids=["checkpoint", "state_dict_export"])
def test_a_file_that_would_run_code_runs_none_in_any_entry(tmp_path, synthetic_root, capsys, tagged):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pt"
    payload = ({"format": FORMAT, "format_version": 2, "epoch": 1, "x": _Payload(marker)} if tagged else
               {"state_dict": {}, "meta": {"format": "cacl_dist.branch"}, "x": _Payload(marker)})
    torch.save(payload, crafted)
    for name, entry, args in _entries(str(crafted), tmp_path, synthetic_root):
        assert entry(args) == 2, name
        err = _one_line(capsys)
        assert "could run code" in err and "crafted.pt" in err, (name, err)
        assert not marker.exists(), name


def test_a_program_that_calls_python_runs_none_in_any_entry(run, tmp_path, synthetic_root, capsys):
    run_dir, _ = run
    good = tmp_path / "branch.pt2"
    assert export(["--checkpoint", str(run_dir / "last.pt"), "--format", "export", "--output", str(good)]) == 0
    assert "Expect archive file" not in capsys.readouterr().err
    crafted = tmp_path / "crafted.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(crafted, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("models/model.json"):
                text = data.decode()
                assert '"torch.ops.aten.relu_.default"' in text
                data = text.replace('"torch.ops.aten.relu_.default"', '"torch.serialization.os.system"', 1).encode()
            dst.writestr(info, data)
    for name, entry, args in _entries(str(crafted), tmp_path, synthetic_root):
        if name == "export":
            continue  # export reads checkpoints only (refused above)
        assert entry(args + ["--config", str(run_dir / "config.yaml")]) == 2, name
        err = _one_line(capsys)
        assert "could run code" in err and "torch.serialization.os.system" in err, (name, err)


@pytest.mark.parametrize("fmt", ["export", "torchscript", "state_dict"])
def test_every_export_format_is_read_by_extract_search_and_evaluate(run, tmp_path, synthetic_root, capsys, fmt):
    run_dir, dataset = run
    ckpt, config = str(run_dir / "last.pt"), str(run_dir / "config.yaml")
    query = str(synthetic_root / "query")
    out = export_gives_the_checkpoint_features(run_dir, synthetic_root / "query", tmp_path, fmt)  # ref.npz: ckpt
    capsys.readouterr()
    assert search(["--checkpoint", str(out), "--config", config, "--gallery", query,
                   "--query", dataset.query[0].path, "--topk", "1"]) == 0
    ref = np.load(tmp_path / "ref.npz")  # the query is in that gallery: its own file is left out, the nearest other comes
    own = [str(p) for p in ref["paths"]].index(dataset.query[0].path)
    gaps = np.linalg.norm(ref["features"] - ref["features"][own], axis=1)
    gaps[own] = np.inf
    assert capsys.readouterr().out.split()[-1] == str(ref["paths"][int(np.argmin(gaps))]).rsplit("/", 1)[1]
    assert evaluate(["--checkpoint", ckpt, "--json"]) == 0
    expected = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluate(["--checkpoint", str(out), "--config", config, "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["mAP"] == pytest.approx(expected["mAP"], abs=1e-4)
    assert evaluate(["--checkpoint", str(out)]) == 2
    assert "--config" in _one_line(capsys)  # an export stores no config (TorchScript not even its size)

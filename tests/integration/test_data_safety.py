"""Nothing a user owns is destroyed: a real dataset, another set's images, the inputs of a tool, the current
folder and an earlier run's records, each checked byte for byte after the command that used to destroy it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from cacl_dist.runs.metrics import read_metrics

from tests.helpers.runs import REPO, fit, run_cli, set_args
from tests.helpers.user_files import market_like, tree_bytes

QUICK = {"train.epochs": 1, "eval.at_start": False, "eval.every_epochs": 0}


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root):
    """last.pt of a finished 1-epoch tiny synthetic run."""
    run_dir = tmp_path_factory.mktemp("safety") / "run"
    fit(run_dir, synthetic_root, **QUICK)
    return run_dir / "last.pt"


# ------------------------------------------------------------------------ item 1: a real dataset in data.root
def test_train_with_the_default_recipe_on_a_real_dataset_is_refused_and_deletes_nothing(tmp_path):
    data = tmp_path / "Market-1501"
    before = market_like(data)
    result = run_cli("cacl_dist.train", ["--set", f"data.root={data}", f"run.output_dir={tmp_path / 'run'}",
                                         "run.progress=false"])  # forgot --config configs/market1501.yaml
    line = one_line(result.stderr)
    assert result.returncode == 2 and str(data) in line and "--config configs/market1501.yaml" in line
    assert tree_bytes(data) == before


@pytest.mark.parametrize("entry", ["evaluate", "visualize"])
def test_evaluate_and_visualize_of_a_synthetic_run_on_a_real_dataset_are_refused(entry, checkpoint, tmp_path, capsys):
    from cacl_dist.cli.evaluate import main as evaluate
    from cacl_dist.cli.visualize import main as visualize

    data = tmp_path / "Market-1501"
    before = market_like(data)
    args = ["--checkpoint", str(checkpoint), "--set", f"data.root={data}"]
    code = evaluate(args) if entry == "evaluate" else visualize(["ranked", *args, "--output", str(tmp_path / "v")])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and str(data) in line and "--config configs/market1501.yaml" in line
    assert tree_bytes(data) == before


# ------------------------------------------------------------------------ item 2: other synthetic settings
def test_other_synthetic_settings_never_rewrite_a_set_in_place(tmp_path):
    from cacl_dist.data.synthetic import generate_synthetic

    data = tmp_path / "shared"
    generate_synthetic(str(data), num_train_ids=12, num_test_ids=4, images_per_id=5, num_cameras=2, height=64,
                       width=32, seed=9)  # another user's set, in use
    before = tree_bytes(data)
    trainer = fit(tmp_path / "run", data, **QUICK)
    assert trainer.dataset.root.startswith(str(data / "set-"))
    assert {k: v for k, v in tree_bytes(data).items() if not k.startswith("set-")} == before


# ------------------------------------------------------------------------ item 3: a tool's output over its input
def test_extract_never_writes_over_the_checkpoint_or_an_image(checkpoint, synthetic_root, tmp_path, capsys):
    from cacl_dist.cli.extract import main as extract

    images = synthetic_root / "query"
    first_image = sorted(images.iterdir())[0]
    link = tmp_path / "link.npz"
    link.symlink_to(checkpoint)
    kept = {p: p.read_bytes() for p in (checkpoint, first_image)}
    for output, needle in ((checkpoint, "--checkpoint"), (link, "--checkpoint"), (first_image, "an image of")):
        assert extract(["--checkpoint", str(checkpoint), "--images", str(images), "--output", str(output)]) == 2
        line = one_line(capsys.readouterr().err)
        assert needle in line and "--output" in line
    assert {p: p.read_bytes() for p in kept} == kept
    assert link.is_symlink() and os.readlink(link) == str(checkpoint)


def test_an_output_folder_is_refused_before_any_work(checkpoint, synthetic_root, tmp_path, capsys, monkeypatch):
    from cacl_dist.cli import extract as extract_module
    from cacl_dist.cli import search as search_module
    from cacl_dist.inference import loader

    def no_work(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(loader, "load_feature_model", no_work)  # the one loader both entries use
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's file")
    query = str(sorted((synthetic_root / "query").iterdir())[0])
    for entry, args in ((extract_module.main, ["--images", str(synthetic_root / "query")]),
                        (search_module.main, ["--gallery", str(synthetic_root / "query"), "--query", query])):
        code = entry(["--checkpoint", str(checkpoint), *args, "--output", str(folder)])
        line = one_line(capsys.readouterr().err)
        assert code == 2 and "is a folder" in line and str(folder) in line
    assert tree_bytes(folder) == {"mine.txt": b"a user's file"}


def test_search_never_draws_over_a_query_or_gallery_image(checkpoint, synthetic_root, tmp_path, capsys):
    from cacl_dist.cli.extract import main as extract
    from cacl_dist.cli.search import main as search

    images = tmp_path / "images"
    shutil.copytree(synthetic_root / "bounding_box_test", images)
    assert extract(["--checkpoint", str(checkpoint), "--images", str(images), "--output",
                    str(tmp_path / "g.npz")]) == 0
    query, gallery_image = sorted(images.iterdir())[:2]
    before = tree_bytes(images)
    capsys.readouterr()
    for output, needle in ((query, "--query"), (gallery_image, "a gallery image"),
                           (tmp_path / "g.npz", "--features"), (checkpoint, "the model the features")):
        assert search(["--features", str(tmp_path / "g.npz"), "--query", str(query), "--output", str(output)]) == 2
        assert needle in one_line(capsys.readouterr().err)
    assert tree_bytes(images) == before


def test_export_never_writes_over_its_checkpoint_or_config(checkpoint, tmp_path, capsys):
    from cacl_dist.cli.export import main as export

    hard_link = tmp_path / "model.pt"
    os.link(checkpoint, hard_link)
    config = tmp_path / "recipe.yaml"
    config.write_text("train:\n  epochs: 1\n")
    kept = (checkpoint.read_bytes(), config.read_bytes())
    for output, needle in ((hard_link, "--checkpoint"), (config, "--config")):
        assert export(["--checkpoint", str(checkpoint), "--config", str(config), "--format", "state_dict",
                       "--output", str(output)]) == 2
        assert needle in one_line(capsys.readouterr().err)
    assert (checkpoint.read_bytes(), config.read_bytes()) == kept


# ------------------------------------------------------------------------ item 4: where the run folder may be
def test_an_empty_output_dir_is_refused_and_the_current_folder_kept(tmp_path, synthetic_root):
    cwd = tmp_path / "here"
    cwd.mkdir()
    (cwd / "config.yaml").write_text("my own config\n")
    args = set_args(tmp_path / "unused", synthetic_root, **QUICK)
    args[args.index(f"--set=run.output_dir={tmp_path / 'unused'}")] = "--set=run.output_dir="  # an unset $RUN_DIR
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "cacl_dist.train", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=600)
    line = one_line(result.stderr)
    assert result.returncode == 2 and "run.output_dir" in line and "empty" in line
    assert tree_bytes(cwd) == {"config.yaml": b"my own config\n"}


def test_an_output_dir_inside_data_root_is_refused(tmp_path):
    data = tmp_path / "Market-1501"
    before = market_like(data)
    result = run_cli("cacl_dist.train", ["--config", "configs/market1501.yaml", "--set", f"data.root={data}",
                                         f"run.output_dir={data / 'runs' / 'a'}"])
    line = one_line(result.stderr)
    assert result.returncode == 2 and "run.output_dir" in line and "inside data.root" in line
    assert tree_bytes(data) == before


# ------------------------------------------------------------------------ item 5: a used run folder
def test_a_fresh_start_in_a_used_folder_keeps_the_earlier_records_apart(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    fit(run_dir, synthetic_root, **QUICK)
    (run_dir / "notes.txt").write_text("a user's notes")
    (run_dir / "last.pt").unlink()  # "delete or move last.pt to start from scratch"
    earlier = {k: v for k, v in tree_bytes(run_dir).items()
               if k not in ("notes.txt", "status.txt", ".lock", "images_checked.json")}  # (a cache of the data)
    assert "metrics.jsonl" in earlier and any(k.startswith("pseudo_labels") for k in earlier)
    fit(run_dir, synthetic_root, **{**QUICK, "train.iters_per_epoch": 2})
    [kept] = list((run_dir / "previous_runs").iterdir())
    assert {k: v for k, v in tree_bytes(kept).items() if k in earlier} == earlier  # byte for byte
    assert (run_dir / "notes.txt").read_text() == "a user's notes"
    assert [r["step"] for r in read_metrics(run_dir, "train")] == [1, 2]  # the new run only
    assert "moved to" in (run_dir / "log_rank0.txt").read_text().splitlines()[0]


def test_resuming_a_finished_run_with_fewer_epochs_is_refused_and_changes_no_record(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    fit(run_dir, synthetic_root, **{**QUICK, "train.epochs": 2})
    before = {k: v for k, v in tree_bytes(run_dir).items() if not k.startswith("log_rank")}
    result = run_cli("cacl_dist.train", set_args(run_dir, synthetic_root, **{**QUICK, "train.epochs": 1}))
    line = one_line(result.stderr)
    assert result.returncode == 2 and "train.epochs=1" in line and "run.output_dir" in line
    after = tree_bytes(run_dir)
    assert {k: after.get(k) for k in before if k not in ("status.txt", ".lock")} == {
        k: v for k, v in before.items() if k not in ("status.txt", ".lock")}  # config.yaml, metrics, ... as they were


def test_resume_from_last_pt_keeps_the_records(tmp_path, synthetic_root):
    run_dir = tmp_path / "run"
    fit(run_dir, synthetic_root, **QUICK)
    fit(run_dir, synthetic_root, **{**QUICK, "train.epochs": 2})
    assert not (run_dir / "previous_runs").exists()
    assert [r["epoch"] for r in read_metrics(run_dir, "train")] == [1, 1, 1, 2, 2, 2]


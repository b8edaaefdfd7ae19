"""One-line messages that name the real fix: the config key data.root, a checkpoint file inside a folder, and
Ctrl-C outside training without talk of resuming."""

from __future__ import annotations

import pytest

from cacl_dist.cli import evaluate, export
from cacl_dist.cli.common import run_main
from cacl_dist.data.layouts import load_dataset
from cacl_dist.errors import UserError


@pytest.mark.parametrize("name", ["market1501", "msmt17", "folder"])
def test_layout_messages_name_the_data_root_key_not_a_flag(tmp_path, name):
    with pytest.raises(UserError) as err:
        load_dataset(name, str(tmp_path))  # an empty folder: no splits, no list files, no images
    message = str(err.value)
    assert "data.root" in message and "--root" not in message


def test_a_missing_data_root_names_the_override_that_fixes_it(tmp_path):
    with pytest.raises(UserError) as err:
        load_dataset("market1501", str(tmp_path / "nowhere"))
    assert "--set data.root=" in str(err.value)


def test_ctrl_c_outside_training_says_interrupted_and_nothing_about_resuming(capsys):
    def body():
        raise KeyboardInterrupt

    assert run_main(body) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert run_main(body, interrupted="interrupted; start the same command again to resume") == 130
    assert "resume" in capsys.readouterr().err


def test_evaluate_interrupted_does_not_talk_about_resuming(tmp_path, monkeypatch, capsys):
    import cacl_dist.cli.model_args as model_args

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_args, "model_on_its_dataset", interrupted)
    assert evaluate.main(["--checkpoint", str(tmp_path / "last.pt")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "interrupted" and "resum" not in err


@pytest.mark.parametrize("main, extra", [(evaluate.main, []),
                                         (export.main, ["--format", "export", "--output", "out.pt2"])])
def test_a_run_folder_as_checkpoint_names_the_files_in_it(tmp_path, capsys, main, extra):
    run = tmp_path / "run"
    run.mkdir()
    assert main(["--checkpoint", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert "is a folder, not a checkpoint file" in err and "holds no checkpoint" in err
    (run / "epoch_020.pt").write_bytes(b"")
    (run / "last.pt").write_bytes(b"")
    assert main(["--checkpoint", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert f"e.g. {run / 'last.pt'}" in err and "does not exist" not in err and err.count("\n") == 1

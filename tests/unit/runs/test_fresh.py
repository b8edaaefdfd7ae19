"""--fresh renames a run folder (never deletes), refuses a folder in use; a failed start removes only its own
empty folder; restarts of a job are recognised."""

from __future__ import annotations

import pytest

from cacl_dist.errors import RunFolderBusy, UserError
from cacl_dist.runs.folder import RunFolderLock
from cacl_dist.runs.fresh import remove_unused, rename_aside, restarted_attempt


def test_rename_aside_keeps_everything_under_a_new_name(tmp_path):
    run = tmp_path / "run"
    (run / "pseudo_labels").mkdir(parents=True)
    (run / "last.pt").write_bytes(b"state")
    (run / "notes.txt").write_text("mine")
    moved = rename_aside(run)
    assert moved.parent == tmp_path and moved.name.startswith("run.old-") and not run.exists()
    assert (moved / "last.pt").read_bytes() == b"state" and (moved / "notes.txt").read_text() == "mine"
    run.mkdir()
    again = rename_aside(run)  # a second one within the same second gets its own name
    assert again != moved and again.is_dir() and moved.is_dir()
    assert rename_aside(tmp_path / "missing") is None


def test_rename_aside_refuses_a_folder_in_use_or_holding_the_data(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    with pytest.raises(UserError, match="data.root"):
        rename_aside(run, keep_outside=[run / "data"])
    monkeypatch.chdir(run / "data")
    with pytest.raises(UserError, match="current folder"):
        rename_aside(run)
    monkeypatch.chdir(tmp_path)
    with RunFolderLock(run):
        with pytest.raises(RunFolderBusy):
            rename_aside(run)
    assert run.is_dir() and (run / "data").is_dir()


def test_remove_unused_takes_only_what_a_failed_start_wrote(tmp_path):
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    for name in (".lock", "status.txt", "log_rank0.txt", "log_rank1.txt"):
        (run / name).write_text("x")
    assert remove_unused(run) and not run.exists()

    (run / "tensorboard").mkdir(parents=True)
    (run / "status.txt").write_text("2 error: ...")
    (run / "tensorboard" / "mine.txt").write_text("keep")
    assert not remove_unused(run) and (run / "tensorboard" / "mine.txt").read_text() == "keep"
    (run / "tensorboard" / "mine.txt").unlink()
    (run / "last.pt").write_bytes(b"state")
    assert not remove_unused(run) and (run / "last.pt").is_file()


@pytest.mark.parametrize("environ, restart", [({}, None), ({"SLURM_RESTART_COUNT": "0"}, None),
                                              ({"SLURM_RESTART_COUNT": "2"}, "SLURM_RESTART_COUNT=2"),
                                              ({"TORCHELASTIC_RESTART_COUNT": "1"}, "TORCHELASTIC_RESTART_COUNT=1"),
                                              ({"TORCHELASTIC_RESTART_COUNT": "x"}, None)])
def test_a_restart_of_the_same_job_is_recognised(environ, restart):
    assert restarted_attempt(environ) == restart

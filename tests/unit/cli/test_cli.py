"""The shared command line: --set parsing and one-line user errors."""

from __future__ import annotations

import argparse
import errno

import pytest

from cacl_dist.cli.common import add_config_args, run_main, user_error_message
from cacl_dist.errors import ConfigError, MissingFileError, NonFiniteError, UserError


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    return parser.parse_args(list(argv))


def test_set_takes_several_pairs_and_repeats():
    args = _parse("--set", "a.b=1", "c.d=2", "--config", "x.yaml", "--set", "e.f=3", "--set=g.h=4")
    assert args.overrides == ["a.b=1", "c.d=2", "e.f=3", "g.h=4"] and args.config == "x.yaml"
    assert _parse().overrides == []


@pytest.mark.parametrize("module", ["cacl_dist.cli.train", "cacl_dist.cli.evaluate", "cacl_dist.cli.export", "launch.slurm"])
def test_every_entry_point_accepts_several_pairs_after_one_set(module):
    import importlib

    parser = importlib.import_module(module).build_parser()
    extra = ["--checkpoint", "x.pt"] if module != "cacl_dist.cli.train" and module != "launch.slurm" else []
    extra += ["--format", "state_dict", "--output", "o.pt"] if module == "cacl_dist.cli.export" else []
    args = parser.parse_args([*extra, "--set", "train.epochs=2", "optim.lr=1e-3"])
    assert args.overrides == ["train.epochs=2", "optim.lr=1e-3"]


@pytest.mark.parametrize("exc, needles", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/market"), ["'/data/market'", "Permission denied",
                                                                           "permissions"]),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl"), ["metrics.jsonl",
                                                                                 "free disk space"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/x"), ["'/runs/x'", "folder, not a file"]),
    (NonFiniteError("non-finite loss at step 3; lower optim.lr"), ["non-finite loss", "optim.lr"]),
    (MissingFileError("checkpoint 'x.pt' does not exist"), ["checkpoint 'x.pt' does not exist"]),
    (ConfigError("config key 'train.epochs': must be positive, got 0"), ["train.epochs"]),
    (UserError("dataset root /data/x does not exist"), ["/data/x"]),
])
def test_user_errors_become_one_line(exc, needles):
    message = user_error_message(exc)
    assert message is not None and "\n" not in message
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("exc", [
    ValueError("too many values to unpack (expected 2)"),  # a bug in our code, or a library's
    FloatingPointError("overflow encountered in exp"),
    FileNotFoundError("no file"),  # without an errno: not the operating system's, not one of ours
    KeyError("epoch"),
])
def test_other_errors_are_bugs_and_keep_their_traceback(exc):
    assert user_error_message(exc) is None


def test_user_errors_stay_value_errors():
    """Code that catches ValueError around a check keeps working."""
    for cls in (UserError, ConfigError, MissingFileError, NonFiniteError):
        assert issubclass(cls, ValueError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(NonFiniteError, FloatingPointError)


def test_full_disk_hidden_under_a_runtime_error_is_found():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 768 vs 662")
    except RuntimeError as exc:
        assert "No space left on device" in user_error_message(exc)
    try:
        try:
            raise OSError(errno.ENOENT, "No such file or directory")
        except OSError:
            raise RuntimeError("a bug while handling it")
    except RuntimeError as exc:
        assert user_error_message(exc) is None  # a bug keeps its traceback


def test_run_main_prints_one_line_hands_it_over_and_exits_2(capsys):
    seen = []

    def body():
        raise PermissionError(errno.EACCES, "Permission denied", "/data/x")

    assert run_main(body, on_error=seen.append) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and seen == [err.strip()]
    with pytest.raises(KeyError):
        run_main(lambda: {}["bug"])


@pytest.mark.parametrize("raised, bug", [(ValueError("not enough values to unpack"), True),
                                         (UserError("dataset root /nowhere does not exist"), False)])
def test_train_keeps_the_traceback_of_a_bug_and_one_line_for_a_user_error(tmp_path, monkeypatch, capsys, raised, bug):
    """A plain ValueError is a bug: it propagates (traceback) and the run folder says 'crashed'; a UserError is
    one line on stderr, exit status 2, and the status file says 'error'."""
    import cacl_dist.training.trainer as trainer_module
    from cacl_dist.cli import train

    class Failing:
        def __init__(self, *args, **kwargs):
            raise raised

    monkeypatch.setattr(trainer_module, "Trainer", Failing)
    argv = ["--set", f"run.output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}", "run.device=cpu"]
    status = tmp_path / "run" / "status.txt"
    if bug:
        with pytest.raises(ValueError, match="not enough values to unpack"):
            train.main(argv)
        assert status.read_text().startswith("1 crashed: ValueError: not enough values to unpack")
    else:
        assert train.main(argv) == 2
        err = capsys.readouterr().err
        assert err.strip() == "error: dataset root /nowhere does not exist" and err.count("\n") == 1
        assert not (tmp_path / "run").exists()  # created by this start, which failed before any work: removed
        (tmp_path / "run").mkdir()  # a folder that was there before keeps the outcome in its status file
        assert train.main(argv) == 2
        assert status.read_text().startswith("2 error: dataset root /nowhere does not exist")

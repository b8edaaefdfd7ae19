import os

import pytest
import torch

from cacl_dist import checkpoint as ckpt


def test_atomic_save_and_load(tmp_path):
    path = tmp_path / "run" / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 3, "weights": torch.arange(5.0)})
    state = ckpt.load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind


def test_failed_save_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ckpt.save_checkpoint(path, {"epoch": 2, "bad": Unpicklable()})
    assert ckpt.load_checkpoint(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"weights": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ckpt.load_checkpoint(path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not written by cacl_dist"):
        ckpt.load_checkpoint(path)


def test_find_resume(tmp_path):
    assert ckpt.find_resume(tmp_path) is None
    ckpt.save_checkpoint(tmp_path / ckpt.LAST, {})
    assert ckpt.find_resume(tmp_path) == tmp_path / ckpt.LAST


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    first = torch.rand(3)
    ckpt.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_full_disk_is_reported_as_such_with_the_path(tmp_path, monkeypatch):
    """torch.save reports a full disk as a zip-writer RuntimeError; the save names ENOSPC and the file."""
    import errno

    from cacl_dist.cli import user_error_message

    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})
    real_fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, *args, **kwargs)

    monkeypatch.setattr(ckpt.os, "fdopen", full_disk)
    with pytest.raises(OSError) as info:
        ckpt.save_checkpoint(path, {"epoch": 2, "weights": torch.zeros(100_000)})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    message = user_error_message(info.value)
    assert str(path) in message and "No space left on device" in message and "free disk space" in message
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)["epoch"] == 1 and sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = ckpt.save_checkpoint(tmp_path / "last.pt", {"epoch": 1})
        assert path.stat().st_mode & 0o777 == 0o644  # like any other file, not mkstemp's 0600
        os.umask(0o077)
        assert ckpt.save_checkpoint(tmp_path / "last.pt", {"epoch": 2}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)

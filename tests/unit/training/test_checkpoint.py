import os

import pytest
import torch

from cacl_dist.training import checkpoint as ckpt


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


def test_rng_state_of_python_and_numpy_round_trips_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    ckpt.save_checkpoint(tmp_path / "last.pt", {"rng": ckpt.rng_state()})
    expected = (random.random(), np.random.rand(), torch.rand(1))
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "last.pt")["rng"])  # weights_only: plain values
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def test_version_1_checkpoint_with_numpy_random_state_still_loads(tmp_path):
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"format": ckpt.FORMAT, "format_version": 1, "rng": state}, tmp_path / "old.pt")
    expected = np.random.rand()
    ckpt.set_rng_state(ckpt.load_checkpoint(tmp_path / "old.pt")["rng"])
    assert np.random.rand() == expected


class _Payload:
    """Unpickling it would create a file: what a checkpoint from elsewhere could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"format": ckpt.FORMAT, "format_version": 1, "model": {}, "x": _Payload(marker)}, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="could run code") as err:
        ckpt.load_checkpoint(tmp_path / "last.pt")
    assert len(str(err.value).splitlines()) == 1 and "last.pt" in str(err.value)
    assert not marker.exists()


def test_garbage_file_is_corrupt_not_unsafe(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        ckpt.load_checkpoint(tmp_path / "last.pt")
    assert len(str(err.value).splitlines()) == 1


def test_nonfinite_parts_names_the_groups_with_nan_or_inf():
    parts = {"model": [torch.ones(3), torch.arange(4)], "bank_rgb": [torch.tensor([1.0, float("inf")])],
             "centres_rgb": [torch.zeros(2, dtype=torch.float64), torch.tensor([float("nan")], dtype=torch.float64)]}
    assert ckpt.nonfinite_parts(parts) == ["bank_rgb", "centres_rgb"]
    assert ckpt.nonfinite_parts({"model": [torch.ones(2)]}) == []


def test_checkpoint_with_nan_is_refused(tmp_path):
    optimizer_state = {"state": {0: {"exp_avg": torch.tensor([float("nan")])}}, "param_groups": []}
    ckpt.save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "optimizer": optimizer_state})
    with pytest.raises(ValueError, match=r"NaN or infinite values \(optimizer\)") as err:
        ckpt.load_checkpoint(tmp_path / "last.pt")
    assert isinstance(err.value, ckpt.NonFiniteError)
    assert ckpt.load_checkpoint(tmp_path / "last.pt", check_finite=False)["model"]["w"].sum() == 2


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    keep = ["last.pt", "epoch_002.pt", ".notes.tmp", "last.pt.tmp", ".other.pt.abc.tmp", "x.last.pt.a1.tmp"]
    stale = [".last.pt.k3_9zq.tmp", ".epoch_002.pt.abcdef12.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    removed = ckpt.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    assert ckpt.remove_stale_temporaries(tmp_path / "missing") == []


@pytest.mark.gpu
def test_nonfinite_parts_over_cuda_and_cpu_tensors_agree_with_the_cpu():
    parts = {"model": [torch.ones(3, device="cuda"), torch.tensor([float("nan")], device="cuda")],
             "optimizer": [torch.ones(2, device="cuda"), torch.tensor(3.0)],  # step counters stay on the CPU
             "bank_rgb": [torch.tensor([float("-inf")])], "centres_rgb": [torch.zeros(2, device="cuda")]}
    on_cpu = {name: [t.cpu() for t in tensors] for name, tensors in parts.items()}
    assert ckpt.nonfinite_parts(parts) == ckpt.nonfinite_parts(on_cpu) == ["model", "bank_rgb"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fake a full disk")
def test_full_disk_is_reported_as_such_with_the_path(tmp_path, monkeypatch):
    """torch.save reports a full disk as a zip-writer RuntimeError; the save names ENOSPC and the file."""
    import errno

    from cacl_dist.cli.common import user_error_message

    path = tmp_path / "last.pt"
    ckpt.save_checkpoint(path, {"epoch": 1})
    real_fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):
        os.close(fd)
        return real_fdopen(os.open("/dev/full", os.O_WRONLY), mode, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", full_disk)  # the atomic write opens its temporary through os.fdopen
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

"""A fresh start in a used run folder: the earlier run's records move to previous_runs/, nothing else moves."""

from cacl_dist.runs.previous import earlier_records, set_aside_if_fresh, set_aside_previous_run
from cacl_dist.training.checkpoint import find_resume

from tests.helpers.user_files import tree_bytes


def _used_folder(run_dir):
    (run_dir / "pseudo_labels").mkdir(parents=True)
    (run_dir / "pseudo_labels" / "epoch_001.npy").write_bytes(b"labels")
    for name in ("metrics.jsonl", "config.yaml", "log_rank0.txt", "log_rank1.txt", "epoch_002.pt"):
        (run_dir / name).write_text(f"earlier {name}")
    for name in ("notes.txt", "status.txt", ".lock", "images_checked.json", "epoch_2.ptx"):
        (run_dir / name).write_text(f"kept {name}")


def test_records_move_byte_for_byte_and_other_files_stay(tmp_path):
    _used_folder(tmp_path)
    before = tree_bytes(tmp_path)
    moved = set_aside_previous_run(tmp_path)
    assert moved.parent == tmp_path / "previous_runs"
    assert sorted(tree_bytes(moved)) == ["config.yaml", "epoch_002.pt", "log_rank0.txt", "log_rank1.txt",
                                         "metrics.jsonl", "pseudo_labels/epoch_001.npy"]
    assert tree_bytes(tmp_path) == {**{k: v for k, v in before.items() if k not in tree_bytes(moved)},
                                    **{f"previous_runs/{moved.name}/{k}": v for k, v in tree_bytes(moved).items()}}
    assert earlier_records(tmp_path) == []
    assert set_aside_previous_run(tmp_path) is None  # nothing left to set aside


def test_two_fresh_starts_keep_both_earlier_runs(tmp_path):
    _used_folder(tmp_path)
    first = set_aside_previous_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("second run")
    second = set_aside_previous_run(tmp_path)
    assert first != second and (second / "metrics.jsonl").read_text() == "second run"
    assert (first / "metrics.jsonl").read_text() == "earlier metrics.jsonl"


def test_a_folder_with_last_pt_resumes_and_keeps_its_records(tmp_path):
    _used_folder(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"checkpoint")
    before = tree_bytes(tmp_path)
    assert set_aside_if_fresh(tmp_path, find_resume) is None
    assert tree_bytes(tmp_path) == before
    assert set_aside_if_fresh(tmp_path / "missing", find_resume) is None

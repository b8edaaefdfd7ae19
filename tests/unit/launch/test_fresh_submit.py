"""launch.slurm --fresh renames the run folder once, before submitting; the jobs never get --fresh."""

from __future__ import annotations

from pathlib import Path

from launch import slurm

REPO = Path(__file__).resolve().parents[3]


def test_fresh_renames_before_submitting_and_the_tasks_resume(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"earlier run")
    submitted = []
    monkeypatch.setattr(slurm, "make_executor", lambda *args: None)
    monkeypatch.setattr(slurm, "_run_local", lambda executor, tasks, runs, shape: submitted.extend(tasks) or 0)
    argv = ["--config", str(REPO / "configs" / "quickstart.yaml"), "--local", "--gpus-per-node", "0",
            "--set", f"run.output_dir={run_dir}", f"data.root={tmp_path / 'data'}"]
    assert slurm.main([*argv, "--fresh"]) == 0
    [old] = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (old / "last.pt").read_bytes() == b"earlier run"
    assert len(submitted) == 1 and "--fresh" not in submitted[0].argv  # a requeue of the job resumes
    run_dir.mkdir(exist_ok=True)
    (run_dir / "last.pt").write_bytes(b"this run")
    assert slurm.main(argv) == 0  # without --fresh nothing is renamed
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]) == 1
    assert (run_dir / "last.pt").read_bytes() == b"this run"

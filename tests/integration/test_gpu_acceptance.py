"""The GPU acceptance harness: its dry run on the CPU passes every part, and a hung part is stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from benchmarks.acceptance.report import screen
from benchmarks.gpu_acceptance import PARTS, Part, plan_timeout, run_isolated

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_dry_run_passes_every_part_and_writes_the_files(tmp_path):
    """`bash scripts/gpu_acceptance.sh --dry-run` runs every part on the CPU and writes its results."""
    env = dict(os.environ, PYTHON=sys.executable)
    out, ret = tmp_path / "out", tmp_path / "returned"
    proc = subprocess.run(["bash", "scripts/gpu_acceptance.sh", "--dry-run", "--out", str(out), "--bundle",
                           str(ret / "gpu_acceptance.tar.gz")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "gpu_acceptance_dry_run_cpu.json").read_text())
    statuses = {p["name"]: p["status"] for p in summary["parts"]}
    assert set(statuses) == {p.name for p in PARTS}
    assert all(s in ("pass", "skip") for s in statuses.values()), statuses
    for name in ("env", "collectives", "two_process", "resume", "clustering", "throughput", "pipeline"):
        assert statuses[name] == "pass", name
        assert (out / f"acceptance_{name}_dry_run_cpu.md").is_file()
    for bench in ("bench_cluster", "bench_train", "bench_data"):
        assert (out / f"{bench}_dry_run_cpu.json").is_file()
    assert "passed" in proc.stdout and "PASS" in (out / "gpu_acceptance_dry_run_cpu.md").read_text()
    # runs and checkpoints stay outside the results; what returns is the summary and one archive
    assert not list(out.rglob("*.pt")) and list((tmp_path / "out_work").rglob("last.pt"))
    assert sorted(p.name for p in ret.iterdir()) == ["gpu_acceptance.tar.gz", "gpu_acceptance_dry_run_cpu.md"]
    assert (ret / "gpu_acceptance.tar.gz").stat().st_size <= 16 * 2**20
    with tarfile.open(ret / "gpu_acceptance.tar.gz") as tar:
        names = tar.getnames()
    assert "out/gpu_acceptance_dry_run_cpu.json" in names and "logs/resume.log" in names
    assert not (REPO / "benchmarks" / "results" / "gpu_acceptance_dry_run_cpu.md").exists()


def test_a_hung_command_is_stopped_with_everything_it_started(tmp_path):
    """A part that hangs, and the processes it started, are killed when its time is up."""
    marker = tmp_path / "child_pid"
    script = ("import subprocess, sys, time; "
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
              f"open({str(marker)!r}, 'w').write(str(child.pid)); time.sleep(120)")
    t0 = time.time()
    code, timed_out, seconds = run_isolated([sys.executable, "-c", script], 3.0, tmp_path / "log.txt")
    assert timed_out and code is None and time.time() - t0 < 60
    child = int(marker.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "zombie" in Path(f"/proc/{child}/status").read_text().lower()


def test_time_limits_keep_the_minimum_of_the_later_parts():
    """A part's limit shrinks so the parts after it can still start; the summary names every part."""
    first = Part("a", "first", "x:y", limit_s=100, dry_limit_s=100, minimum_s=5)
    later = [Part("b", "second", "x:y", 100, 100, 30), Part("c", "third", "x:y", 100, 100, 20)]
    assert plan_timeout(first, later, False, time.time() + 1000) == pytest.approx(100, abs=1)
    assert plan_timeout(first, later, False, time.time() + 100) == pytest.approx(100 - 50 - 5, abs=1)
    rows = [{"name": "a", "status": "pass", "summary": "ok", "seconds": 1, "limit": 2},
            {"name": "b", "status": "fail", "summary": "x" * 400, "seconds": 3, "limit": 4}]
    text = screen(rows, "header", 4, 10, Path("summary.md"))
    assert "1 passed, 1 failed, 0 skipped" in text and len(text.splitlines()) == 5
    assert max(len(line) for line in text.splitlines()) < 200


def _harness(*args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)  # as scripts/gpu_acceptance.sh runs it


def test_a_failed_data_part_stops_the_parts_that_read_data(tmp_path):
    """A wrong --data fails the data part, and the parts that read data say so in one line instead of running."""
    proc = _harness("--dry-run", "--data", str(tmp_path / "no_such_folder"), "--parts", "resume",
                    "--out", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = json.loads((tmp_path / "out" / "gpu_acceptance_dry_run_cpu.json").read_text())
    rows = {p["name"]: p for p in summary["parts"]}
    assert rows["data"]["status"] == "fail" and "not a folder" in rows["data"]["summary"]
    assert rows["resume"]["status"] == "fail"
    assert rows["resume"]["summary"] == "not run: no data folder (the data part failed)"
    assert not (tmp_path / "out_work" / "resume_run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_and_without_dry_run_the_acceptance_fails_at_once(tmp_path):
    proc = _harness("--out", str(tmp_path / "out"), "--bundle", str(tmp_path / "ret" / "acceptance.tar.gz"))
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "out" / "gpu_acceptance_no_gpu.json").read_text())
    rows = {p["name"]: p for p in summary["parts"]}
    assert "torch sees no CUDA device" in rows["env"]["summary"]
    assert all(r["status"] == "fail" and r["seconds"] == 0 for name, r in rows.items() if name != "env")
    assert summary["total_s"] < 120
    assert sorted(p.name for p in (tmp_path / "ret").iterdir()) == ["acceptance.tar.gz", "gpu_acceptance_no_gpu.md"]


def test_a_work_folder_inside_the_results_is_refused(tmp_path):
    proc = _harness("--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "work"))
    assert proc.returncode == 2 and "lies inside --out" in proc.stderr and "\n" not in proc.stderr.strip()

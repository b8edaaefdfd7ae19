"""The GPU acceptance's rules, checked on the CPU: what passes, what fails, what is only noted.

These rules are what makes the acceptance impossible to pass without the GPU: the tests part wants
every gpu test collected and passed, every GPU part must show its work ran on CUDA, the required
clustering row must be measured with TF32 on, and the returned archive fits the machine's limit.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks.acceptance.benches import (
    BUDGET_SPENT,
    compile_unavailable,
    judge_clustering,
    judge_throughput,
    pipeline_choice,
)
from benchmarks.acceptance.system import NO_CUDA_REASON, NOT_APPLICABLE, gpu_test_files, judge_tests
from benchmarks.gpu_acceptance import PARTS, check_ran_on_gpu, write_bundle

REPO = Path(__file__).resolve().parents[2]


def _case(outcome: str, reason: str = "", name: str = "t") -> dict:
    return {"test": name, "outcome": outcome, "reason": reason, "seconds": 0.1}


# ------------------------------------------------------------------------------------------ tests part
def test_gpu_tests_pass_only_when_every_collected_one_passed():
    assert judge_tests([_case("passed"), _case("passed")], dry_run=False) == []
    assert judge_tests([], dry_run=False) == ["no gpu test was collected"]
    assert judge_tests([], dry_run=True) == ["no gpu test was collected"]
    assert "1 failed" in judge_tests([_case("passed"), _case("failed", name="x")], dry_run=False)[0]
    no_cuda = judge_tests([_case("passed"), _case("skipped", NO_CUDA_REASON)], dry_run=False)
    assert no_cuda == ["1 skipped for lack of CUDA"]
    other = judge_tests([_case("skipped", "market1501-mini is absent", name="y")], dry_run=False)
    assert other and "y" in other[0]


def test_skips_that_do_not_apply_here_are_listed_not_failed_and_a_dry_run_allows_no_cuda():
    extra = _case("skipped", f"{NOT_APPLICABLE} optional extra NVIDIA DALI (.[dali]) not installed")
    assert judge_tests([_case("passed"), extra], dry_run=False) == []
    assert judge_tests([_case("skipped", NO_CUDA_REASON)] * 3, dry_run=True) == []


def test_the_selection_is_the_gpu_marker_and_holds_the_cuda_tests():
    files = gpu_test_files(REPO)
    assert "tests/unit/distributed/test_group_bn.py" in files and "tests/distributed/test_group_bn_sync.py" in files
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-m",
                           "gpu and not slurm", *files], cwd=REPO, capture_output=True, text=True, timeout=300)
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    assert any("test_ghost_groups_on_every_device" in i and "cuda" in i for i in ids), proc.stdout[-2000:]
    assert any("test_synchronised_groups_equal_batchnorm" in i and "cuda" in i for i in ids)
    assert not any("[cpu" in i or "-cpu]" in i for i in ids), [i for i in ids if "cpu" in i]
    assert not any("test_a_million_points_on_cuda" in i for i in ids)  # "cuda" in a name selects nothing


def test_no_test_gates_cuda_other_than_by_the_gpu_marker():
    """A skipif on torch.cuda.is_available() next to the marker would hide tests from a GPU-less CI's
    view of what the marker selects; the conftest skips marked tests without CUDA instead."""
    found = []
    for path in (REPO / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "skipif" and node.args:
                text = ast.unparse(node.args[0])
                if text.startswith("not ") and "cuda.is_available" in text:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, found


# ------------------------------------------------------------------------------- GPU evidence, parts
def _row(status="pass", **data) -> dict:
    return {"status": status, "summary": "ok", "data": data}


def test_a_gpu_part_that_ran_on_the_cpu_fails_outside_a_dry_run():
    part = next(p for p in PARTS if p.name == "resume")
    row = _row(ran_on="cpu")
    check_ran_on_gpu(part, row, dry_run=False)
    assert row["status"] == "fail" and row["summary"].startswith("ran on cpu, not on the GPU")
    row = _row()
    check_ran_on_gpu(part, row, dry_run=False)
    assert row["status"] == "fail" and "unknown device" in row["summary"]
    for row, dry in ((_row(ran_on="cuda"), False), (_row(ran_on="cpu"), True)):
        check_ran_on_gpu(part, row, dry_run=dry)
        assert row["status"] == "pass"
    data_part = next(p for p in PARTS if p.name == "data")
    row = _row()
    check_ran_on_gpu(data_part, row, dry_run=False)  # the data part reads files: no GPU needed
    assert row["status"] == "pass"


def _cluster_row(n, backend, **more) -> dict:
    return {"n": n, "backend": backend, "device": "cuda" if backend == "torch" else "cpu", "seconds": 1.0,
            "peak_extra_bytes": 1, "num_clusters": 3, **more}


def test_clustering_requires_the_million_row_with_tf32_and_notes_rows_without_time():
    good = [_cluster_row(1_000_000, "torch", tf32=True), _cluster_row(12_936, "sklearn"),
            _cluster_row(12_936, "torch", tf32=True, labels_equal_reference=True),
            {"n": 100_000, "backend": "torch", "device": "cuda", "skip": BUDGET_SPENT},
            {"n": 32_621, "backend": "torch", "device": "cuda", "error": f"did not finish within 9 s ({BUDGET_SPENT})"}]
    problems, no_time = judge_clustering(good, "gpu")
    assert problems == [] and no_time == ["N=100,000 torch", "N=32,621 torch"]
    without_million = [r for r in good if r["n"] != 1_000_000]
    assert "the required N=1,000,000 torch row was not measured" in judge_clustering(without_million, "gpu")[0]
    million_late = [{"n": 1_000_000, "backend": "torch", "device": "cuda", "skip": BUDGET_SPENT}, *good[1:]]
    assert "the required N=1,000,000 torch row was not measured" in judge_clustering(million_late, "gpu")[0]
    no_tf32 = [_cluster_row(1_000_000, "torch", tf32=False), *good[1:]]
    assert any("TF32" in p for p in judge_clustering(no_tf32, "gpu")[0])
    on_cpu = [dict(good[0], device="cpu"), *good[1:]]
    assert any("not on the GPU" in p for p in judge_clustering(on_cpu, "gpu")[0])
    differ = [*good[:2], dict(good[2], labels_equal_reference=False)]
    assert any("differ from the dense reference" in p for p in judge_clustering(differ, "gpu")[0])
    crashed = [*good, {"n": 12_936, "backend": "cuml", "device": "cuda", "error": "ImportError: x"}]
    assert any("ImportError" in p for p in judge_clustering(crashed, "gpu")[0])


def test_throughput_reports_compile_as_unavailable_and_flags_slow_variants():
    rows = [{"variant": "fp32", "device": "cuda", "images_per_s": 900.0, "mfu": 0.35},
            {"variant": "bf16+cl", "device": "cuda", "images_per_s": 1200.0, "mfu": 0.12},
            {"variant": "bf16+cl+compile", "device": "cuda", "error": "BackendCompilerFailed: no working C compiler"}]
    problems, parts, slow = judge_throughput(rows, None)
    assert problems == [] and slow == ["bf16+cl at 12.0% of peak"]
    assert any(p.startswith("compile unavailable: BackendCompilerFailed") for p in parts)
    problems, parts, _ = judge_throughput(rows[:2], "no C compiler (cc) on PATH")
    assert problems == [] and parts[0] == "compile unavailable: no C compiler (cc) on PATH"
    problems, _, _ = judge_throughput([{"variant": "fp32", "device": "cuda", "error": "CUDA out of memory"}], None)
    assert problems == ["fp32: CUDA out of memory"]


def test_throughput_names_the_pipeline_that_fed_the_step_and_fails_a_broken_feed():
    rows = [{"variant": "fp32", "device": "cuda", "images_per_s": 900.0},
            {"variant": "bf16+cl", "device": "cuda", "images_per_s": 1500.0, "fed_by": "torch-gpu",
             "fed_images_per_s": 1400.0}]
    problems, parts, _ = judge_throughput(rows, None)
    assert problems == [] and "bf16+cl fed by torch-gpu 1400 img/s" in parts
    rows[1] = {"variant": "bf16+cl", "device": "cuda", "images_per_s": 1500.0,
               "fed_error": "fed by auto: RuntimeError: nvJPEG failed"}
    problems, _, _ = judge_throughput(rows, None)
    assert problems == ["bf16+cl: fed by auto: RuntimeError: nvJPEG failed"]


def test_the_pipeline_part_measures_torch_gpu_with_or_without_dali():
    assert pipeline_choice(dry_run=False, dali_installed=False) == ["torch-gpu-cuda"]
    assert pipeline_choice(dry_run=False, dali_installed=True) == ["torch-gpu-cuda", "dali-gpu"]
    assert pipeline_choice(dry_run=True, dali_installed=False) == ["torch-gpu-cpu"]
    part = next(p for p in PARTS if p.name == "pipeline")
    row = _row(ran_on="cpu")
    check_ran_on_gpu(part, row, dry_run=False)
    assert row["status"] == "fail"


def test_a_missing_compiler_is_found_before_compiling(monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc-for-this-test")
    assert compile_unavailable("cpu") == "no C compiler (/nonexistent/cc-for-this-test) on PATH"


# ------------------------------------------------------------------------------------------ bundle
def test_the_bundle_stays_under_the_limit_and_says_what_it_left_out(tmp_path):
    results, logs = tmp_path / "results", tmp_path / "work" / "logs"
    results.mkdir()
    logs.mkdir(parents=True)
    (results / "summary.md").write_text("all parts\n")
    (logs / "small.log").write_text("a line\n" * 100)
    for name, size in (("big.log", 3_000_000), ("huge.log", 5_000_000)):
        (logs / name).write_bytes(__import__("os").urandom(size))  # incompressible
    bundle = tmp_path / "out" / "bundle.tar.gz"
    left_out = write_bundle(bundle, [results, logs], limit=4_000_000)
    assert bundle.stat().st_size <= 4_000_000
    assert len(left_out) == 1 and "huge.log" in left_out[0]
    with tarfile.open(bundle) as tar:
        names = set(tar.getnames())
        assert {"results/summary.md", "logs/small.log", "logs/big.log", "LEFT_OUT.txt"} <= names
        assert "huge.log" in tar.extractfile("LEFT_OUT.txt").read().decode()
    assert write_bundle(tmp_path / "all.tar.gz", [results, logs], limit=16 * 2**20) == []


@pytest.mark.parametrize("part", PARTS, ids=lambda p: p.name)
def test_every_part_has_a_limit_above_its_minimum(part):
    assert 0 < part.minimum_s <= part.limit_s and part.minimum_s <= part.dry_limit_s

"""Acceptance parts about the machine itself: versions and GPU, the data folder, the GPU tests."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from .common import Context, failed_because, result, run

#: Modules reported by the env part: (import name, distribution name or None to read __version__).
MODULES = [("torchvision", "torchvision"), ("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
           ("yaml", "PyYAML"), ("tqdm", "tqdm"), ("tensorboard", "tensorboard"), ("matplotlib", "matplotlib"),
           ("PIL", "pillow"), ("cupy", None), ("nvidia.dali", None), ("cuml", None), ("submitit", "submitit"),
           ("pytest", "pytest")]

#: The synthetic set used when no --data is given: the quickstart's default size (dry run: a tiny one).
SYNTHETIC = {"gpu": {}, "dry": dict(num_train_ids=16, num_test_ids=6, images_per_id=6, num_cameras=3,
                                     height=64, width=32)}


def module_version(module: str, dist: str | None) -> str:
    """Installed version of `module`, 'not installed', or why it would not import."""
    try:
        if importlib.util.find_spec(module) is None:
            return "not installed"
    except (ImportError, ValueError):
        return "not installed"
    if dist:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    prefix = {"cupy": "cupy", "nvidia.dali": "nvidia-dali", "cuml": "cuml"}.get(module)
    for found in importlib.metadata.distributions() if prefix else []:
        name = (found.metadata["Name"] or "").lower()
        if name == prefix or name.startswith(prefix + "-"):
            return f"{found.version} ({name})"
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception as exc:  # a broken optional install is reported, not fatal
        return f"installed, import fails: {type(exc).__name__}: {str(exc)[:120]}"


def nvidia_smi() -> dict:
    """Driver version, name and memory from nvidia-smi, or the reason it could not be asked."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"driver": f"unknown (nvidia-smi: {type(exc).__name__})"}
    if out.returncode != 0 or not out.stdout.strip():
        return {"driver": f"unknown (nvidia-smi exit {out.returncode})"}
    driver, name, memory = [part.strip() for part in out.stdout.strip().splitlines()[0].split(",")[:3]]
    return {"driver": driver, "smi_name": name, "smi_memory": memory}


def part_env(ctx: Context) -> dict:
    """Versions of Python, torch (CUDA, cuDNN, NCCL) and the libraries, the GPU, its memory and driver."""
    import torch

    from benchmarks.machine import cpu_description, git_commit

    import cacl_dist

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torch CUDA": torch.version.cuda or "none (CPU build)",
                "cuDNN": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else "none"}
    try:
        nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else "-"
        versions["NCCL"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    except (AttributeError, RuntimeError, TypeError):
        versions["NCCL"] = "unknown"
    versions.update({module: module_version(module, dist) for module, dist in MODULES})
    source = Path(cacl_dist.__file__).resolve()
    machine = {"cpu": cpu_description(with_memory=True), "os": platform.platform(),
               "commit": git_commit(Path(ctx.repo)),
               "cacl_dist": f"{getattr(cacl_dist, '__version__', '?')} from {source.parent}"}
    problems = []
    if Path(ctx.repo).resolve() not in source.parents:
        problems.append(f"cacl_dist is imported from {source.parent}, not from the source tree {ctx.repo}")
    gpu = {"cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu.update(name=props.name, memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                   multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported(), **nvidia_smi())
        a = torch.randn(256, 256, dtype=torch.float64)
        on_gpu = (a.cuda() @ a.cuda()).cpu()
        if not torch.allclose(on_gpu, a @ a, rtol=1e-10, atol=1e-10):
            problems.append("a float64 matmul on the GPU differs from the CPU's")
        if not gpu["bf16"]:
            problems.append("this GPU has no bf16 support (the recipes train in bf16)")
    elif not ctx.dry_run:
        problems.append("torch sees no CUDA device (torch.cuda.is_available() is False)")
    details = ["| what | value |", "|---|---|"]
    details += [f"| {k} | {v} |" for k, v in {**machine, **versions}.items()]
    details += [f"| GPU {k} | {v:.1f} |" if isinstance(v, float) else f"| GPU {k} | {v} |" for k, v in gpu.items()]
    details += [f"- problem: {p}" for p in problems]
    name = gpu.get("name", "no GPU")
    summary = (f"{name}, {gpu['memory_gib']:.1f} GiB, driver {gpu['driver']}; " if "memory_gib" in gpu else
               f"{name}; ") + f"torch {torch.__version__} (CUDA {versions['torch CUDA']})"
    if problems:
        summary += "; " + "; ".join(problems)
    return result("fail" if problems else "pass", summary, details,
                  {"versions": versions, "machine": machine, "gpu": gpu})


def part_data(ctx: Context) -> dict:
    """The data folder: counts of the given Market-layout folder, or the synthetic set written for the run."""
    from cacl_dist.data.layouts import load_dataset

    if ctx.data_given:
        root = Path(ctx.data)
        if not root.is_dir():
            return result("fail", f"--data {root}: not a folder", data={"root": str(root)})
        origin = "given with --data"
    else:
        from cacl_dist.data.synthetic import generate_synthetic

        root = Path(ctx.work) / "synthetic"
        generate_synthetic(str(root), **SYNTHETIC["dry" if ctx.dry_run else "gpu"])
        origin = "synthetic set written for this run (no --data given)"
    dataset = load_dataset("market1501", str(root))
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    counts = {"train": len(dataset.train), "query": len(dataset.query), "gallery": len(dataset.gallery),
              "train_ids": len({r.pid for r in dataset.train}), "megabytes": size / 2**20}
    details = [f"- folder: `{root}` ({origin})",
               f"- training images {counts['train']:,} of {counts['train_ids']} identities, query "
               f"{counts['query']:,}, gallery {counts['gallery']:,}; {counts['megabytes']:.1f} MB on disk"]
    return result("pass", f"{root.name}: {counts['train']:,} training / {counts['query']:,} query / "
                  f"{counts['gallery']:,} gallery images ({origin.split(' (')[0]})", details,
                  {"root": str(root), **counts})


#: The test selection: every test carrying the `gpu` marker (the marker is the one way a test needs CUDA).
TEST_SELECTION = "gpu and not slurm"
#: Skip reasons (tests/conftest.py): without CUDA, and for what does not apply on this machine.
NO_CUDA_REASON = "needs a CUDA device"
NOT_APPLICABLE = "not applicable here:"


def gpu_test_files(repo: Path) -> list[str]:
    """Test files that use the gpu marker (collecting only these keeps the part short)."""
    return [str(path.relative_to(repo)) for path in sorted((repo / "tests").rglob("test_*.py"))
            if "mark.gpu" in path.read_text(errors="replace")]


def read_junit(xml: Path) -> list[dict]:
    """One dict per test case of a pytest JUnit report: test, outcome, reason, seconds."""
    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = child.get("message") or ""
                reason = message.splitlines()[0][:160] if message else ""
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        cases.append({"test": name, "outcome": outcome, "reason": reason, "seconds": float(case.get("time") or 0)})
    return cases


def judge_tests(cases: list[dict], dry_run: bool) -> list[str]:
    """Why the GPU tests do not pass: none collected, a failure or error, or (outside a dry run) any
    skip but those that do not apply here (an optional extra, a feature this GPU lacks)."""
    problems = []
    if not cases:
        problems.append("no gpu test was collected")
    bad = [c["test"] for c in cases if c["outcome"] in ("failed", "error")]
    if bad:
        problems.append(f"{len(bad)} failed: {', '.join(bad[:5])}")
    if not dry_run:
        skipped = [c for c in cases if c["outcome"] == "skipped" and NOT_APPLICABLE not in c["reason"]]
        no_cuda = [c for c in skipped if NO_CUDA_REASON in c["reason"]]
        if no_cuda:
            problems.append(f"{len(no_cuda)} skipped for lack of CUDA")
        if len(skipped) > len(no_cuda):
            other = [c for c in skipped if c not in no_cuda]
            problems.append(f"{len(other)} skipped: {other[0]['test']} ({other[0]['reason']})")
    return problems


def part_tests(ctx: Context) -> dict:
    """The tests marked `gpu`: every one collected must pass (on a CPU, in a dry run, they are skipped)."""
    if importlib.util.find_spec("pytest") is None:
        return result("fail", "pytest is not installed: the GPU tests cannot run (python3 -m pip install pytest)")
    xml = Path(ctx.work) / "gpu_tests.xml"
    xml.unlink(missing_ok=True)
    cmd = [ctx.python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", TEST_SELECTION,
           f"--junitxml={xml}", *gpu_test_files(Path(ctx.repo))]
    finished = run(ctx, cmd, env_extra={"OMP_NUM_THREADS": str(min(8, os.cpu_count() or 1))})
    if not xml.is_file():
        return result("fail", f"pytest wrote no report: {failed_because(finished)}", [f"```\n{finished.tail()}\n```"],
                      commands=[finished.command])
    cases = read_junit(xml)
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    details = ["| test | outcome | s | note |", "|---|---|---|---|"]
    details += [f"| {c['test']} | {c['outcome']} | {c['seconds']:.1f} | {c['reason']} |" for c in cases]
    problems = judge_tests(cases, ctx.dry_run)
    if finished.timed_out or finished.returncode not in (0, 1):
        problems.append(f"pytest: {failed_because(finished)}")
    details += [f"- problem: {p}" for p in problems]
    summary = (f"{counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed, "
               f"{counts['error']} errors of {len(cases)} tests marked gpu")
    if problems:
        summary += "; " + "; ".join(problems)
    return result("fail" if problems else "pass", summary, details,
                  {"counts": counts, "cases": cases, "ran_on": "cuda" if counts["passed"] and not ctx.dry_run else
                   "cpu"}, [finished.command])

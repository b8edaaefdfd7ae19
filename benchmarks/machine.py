"""What machine a benchmark ran on, for the results files."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_description(with_memory: bool = False) -> str:
    """'<CPU model>, <N> cores' (plus total RAM), read from /proc/cpuinfo where it exists."""
    model = platform.processor() or platform.machine() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{model}, {os.cpu_count()} cores"
    if with_memory:
        text += f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    return text


def gpu_description() -> str | None:
    """Name of the first CUDA device, or None."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def load_average() -> float | None:
    """1-minute load average, or None where the system does not report one."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def git_commit(repo: Path) -> str:
    """Short commit hash of the checkout at `repo` ('unknown' outside git)."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"


def cpu_matmul_gflops(threads: int, dtype=None, size: int = 1536, repeats: int = 5) -> float:
    """Best-of rate of a large matmul on `threads` CPU threads (float32 unless `dtype`): a CPU 'peak'."""
    import time

    import torch

    torch.set_num_threads(threads)
    dtype = dtype or torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def file_tag(name: str) -> str:
    """`name` (e.g. a GPU's) as a file-name part: lower case, runs of other characters as '_'."""
    tag = "".join(c if c.isalnum() else "_" for c in name.lower())
    return "_".join(part for part in tag.split("_") if part) or "unknown"

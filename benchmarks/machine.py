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

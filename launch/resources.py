"""What a SLURM cluster offers (from `sinfo`) and whether a request fits, checked before submitting.

Everything here is pure parsing and arithmetic on text, so it is tested without a cluster;
`query_nodes` is the one function that runs `sinfo`.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass

from cacl_dist.errors import UserError

SINFO_FORMAT = "%N|%P|%c|%m|%G|%a|%l"
"""One line per node and partition: name, partition (default marked '*'), CPUs, memory in MB,
generic resources, partition availability, partition time limit."""


@dataclass(frozen=True)
class Node:
    """One node as one partition sees it."""

    name: str
    partition: str
    is_default: bool
    cpus: int
    memory_mb: int
    gpus: int
    available: bool
    time_limit_min: float | None  # None: no limit


@dataclass(frozen=True)
class Request:
    """The per-node shape of a job: `nodes` nodes, each running `tasks_per_node` tasks."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float | None
    time_min: float


def parse_time_minutes(text: str) -> float:
    """SLURM time formats (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS) to minutes."""
    raw = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", raw)
    if not match:
        raise UserError(f"--time '{text}' is not a SLURM time (e.g. 90, 24:00:00 or 2-00:00:00)")
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
    elif len(parts) == 1:
        total = parts[0]
    elif len(parts) == 2:  # MM:SS
        total = parts[0] + parts[1] / 60
    else:
        total = parts[0] * 60 + parts[1] + parts[2] / 60
    if total <= 0:
        raise UserError(f"--time '{text}' must be longer than zero")
    return total


def _parse_limit(text: str) -> float | None:
    text = text.strip()
    if text in ("infinite", "UNLIMITED", "n/a", ""):
        return None
    try:
        return parse_time_minutes(text)
    except ValueError:
        return None


def _count_gpus(gres: str) -> int:
    """GPUs in a gres string such as 'gpu:8', 'gpu:a100:4(S:0-1),nvme:1' or '(null)'."""
    total = 0
    for item in re.sub(r"\([^)]*\)", "", gres).split(","):
        fields = item.strip().split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _leading_int(text: str) -> int:
    match = re.match(r"\d+", text.strip())
    return int(match.group()) if match else 0


def parse_sinfo(text: str) -> list[Node]:
    """Parse `sinfo -h -N -o SINFO_FORMAT` output."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) < 7:
            continue
        name, partition, cpus, memory, gres, avail, limit = fields[:7]
        nodes.append(Node(name=name, partition=partition.rstrip("*"), is_default=partition.endswith("*"),
                          cpus=_leading_int(cpus), memory_mb=_leading_int(memory), gpus=_count_gpus(gres),
                          available=avail.strip() == "up", time_limit_min=_parse_limit(limit)))
    return nodes


def query_nodes() -> list[Node]:
    """The cluster's nodes from `sinfo`; a ValueError when SLURM is not reachable from here."""
    if shutil.which("sinfo") is None:
        raise UserError("SLURM's 'sinfo' is not on PATH: run this on a SLURM login node, or pass --local "
                        "to run on this machine")
    try:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", SINFO_FORMAT], capture_output=True, text=True,
                                timeout=60)
    except subprocess.TimeoutExpired:
        raise UserError("'sinfo' did not answer within 60 s; is the SLURM controller up?") from None
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"'sinfo' failed ({detail}); is the SLURM controller up?")
    return parse_sinfo(result.stdout)


def _describe_partitions(nodes: list[Node]) -> str:
    names = []
    for node in nodes:
        label = node.partition + ("*" if node.is_default else "")
        if label not in names:
            names.append(label)
    return ", ".join(names) or "none"


def check_request(nodes: list[Node], request: Request, partition: str | None) -> str:
    """Return the partition the job goes to, or raise a one-line ValueError saying why it cannot run."""
    if not nodes:
        raise UserError("sinfo lists no nodes: this SLURM cluster has nothing to run on")
    if partition is None:
        defaults = {n.partition for n in nodes if n.is_default}
        if not defaults:
            raise UserError(f"the cluster has no default partition; pass --partition "
                            f"(partitions: {_describe_partitions(nodes)})")
        partition = sorted(defaults)[0]
    members = [n for n in nodes if n.partition == partition]
    if not members:
        raise UserError(f"partition '{partition}' does not exist on this cluster "
                        f"(partitions: {_describe_partitions(nodes)}); pass one of them with --partition")
    if not any(n.available for n in members):
        raise UserError(f"partition '{partition}' is down; pick another with --partition "
                        f"(partitions: {_describe_partitions(nodes)})")
    cpus_needed = request.tasks_per_node * request.cpus_per_task
    wants = [("GPUs", request.gpus_per_node, max(n.gpus for n in members), "--gpus-per-node"),
             ("CPUs", cpus_needed, max(n.cpus for n in members), "--cpus-per-task x tasks per node")]
    if request.mem_gb is not None:
        wants.append(("MB of memory", math.ceil(request.mem_gb * 1024), max(n.memory_mb for n in members),
                      "--mem-gb"))
    for what, need, most, flag in wants:
        if need > most:
            raise UserError(f"impossible request: {need} {what} per node ({flag}) but no node of partition "
                            f"'{partition}' has more than {most}")
    fitting = sorted({n.name for n in members if n.gpus >= request.gpus_per_node and n.cpus >= cpus_needed
                      and (request.mem_gb is None or n.memory_mb >= request.mem_gb * 1024)})
    if len(fitting) < request.nodes:
        raise UserError(f"impossible request: {request.nodes} nodes with {request.gpus_per_node} GPUs and "
                        f"{cpus_needed} CPUs each, but partition '{partition}' has only {len(fitting)} such "
                        f"node{'s' if len(fitting) != 1 else ''}; lower --nodes")
    limits = [n.time_limit_min for n in members if n.time_limit_min is not None]
    if limits and len(limits) == len(members) and request.time_min > max(limits):
        raise UserError(f"--time of {request.time_min:.0f} min exceeds the time limit of partition "
                        f"'{partition}' ({max(limits):.0f} min); ask for less, the run resumes in the next job")
    return partition

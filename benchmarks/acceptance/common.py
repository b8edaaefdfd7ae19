"""What every acceptance part shares: the run context, commands under a deadline, result dicts."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


@dataclasses.dataclass
class Context:
    """Where a part runs and what it may use; written to JSON by the harness, read by the part's process."""

    dry_run: bool          # CPU rehearsal: tiny sizes, gloo instead of NCCL
    repo: str              # repository root (also PYTHONPATH of every command)
    python: str            # interpreter of every command
    work: str              # scratch folder: runs, generated data, logs
    results: str           # where the result files go
    tag: str               # file-name tag of the machine (the GPU's name)
    data: str | None       # Market-1501 layout folder (given, or the generated synthetic set)
    data_given: bool       # True when the user passed --data
    deadline: float        # time.time() at which the harness stops this part
    harness_command: str   # the command line that started the harness

    @property
    def device(self) -> str:
        """'cuda' on the GPU machine, 'cpu' in a dry run."""
        return "cpu" if self.dry_run else "cuda"

    @property
    def backend(self) -> str:
        """Collective backend of a one-process-per-GPU job: NCCL, or gloo in a dry run."""
        return "gloo" if self.dry_run else "nccl"

    def left(self) -> float:
        """Seconds until the harness stops this part."""
        return self.deadline - time.time()

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Context:
        return cls(**json.loads(Path(path).read_text()))


def result(status: str, summary: str, details: list[str] | None = None, data: dict | None = None,
           commands: list[str] | None = None, files: list[str] | None = None) -> dict:
    """A part's outcome: status 'pass' | 'fail' | 'skip', one summary line, markdown details, numbers."""
    assert status in ("pass", "fail", "skip"), status
    return {"status": status, "summary": summary, "details": details or [], "data": data or {},
            "commands": commands or [], "files": files or []}


def child_env(ctx: Context, **extra: str) -> dict:
    """Environment of a command: the source tree first on PYTHONPATH, unbuffered output."""
    env = dict(os.environ)
    paths = [ctx.repo] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclasses.dataclass
class Finished:
    """A finished (or stopped) command: exit status, output, seconds, and whether its time ran out."""

    command: str
    returncode: int | None
    output: str
    seconds: float
    timed_out: bool

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output.strip().splitlines()[-lines:])

    def last_line(self) -> str:
        lines = [line for line in self.output.strip().splitlines() if line.strip()]
        return lines[-1][:300] if lines else "(no output)"


def show(cmd: list[str]) -> str:
    """A command as one shell line, paths inside the repository relative to it."""
    return shlex.join(cmd)


def start(ctx: Context, cmd: list[str], env_extra: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    """Start `cmd` in its own process group (so a time-out can stop it with all its children)."""
    print(f"$ {show(cmd)}", flush=True)
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 (closed by the caller through the process)
    return subprocess.Popen(cmd, cwd=ctx.repo, env=child_env(ctx, **(env_extra or {})), stdout=out,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=os.setpgrp)


def stop_group(proc: subprocess.Popen) -> None:
    """Kill the process group of `proc` (the command and whatever it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(ctx: Context, cmd: list[str], timeout: float | None = None, env_extra: dict | None = None,
        margin: float = 5.0) -> Finished:
    """Run `cmd` to the end, within `timeout` and `margin` seconds before the part's deadline.

    Its output is echoed line by line (into the part's log, so a part stopped from outside still
    shows where it was) and kept for the caller.
    """
    limit = ctx.left() - margin if timeout is None else min(timeout, ctx.left() - margin)
    t0 = time.time()
    if limit <= 0:
        return Finished(show(cmd), None, "not started: no time left", 0.0, True)
    proc = start(ctx, cmd, env_extra)
    lines: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            lines.append(line)
            sys.stdout.write(line)
            sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limit)
        timed_out = False
    except subprocess.TimeoutExpired:
        stop_group(proc)
        proc.wait()
        timed_out = True
    reader.join(timeout=10)
    finished = Finished(show(cmd), proc.returncode, "".join(lines), time.time() - t0, timed_out)
    print(f"[exit {finished.returncode}{', timed out' if timed_out else ''}, {finished.seconds:.1f} s]", flush=True)
    return finished


def failed_because(finished: Finished) -> str:
    """One line saying why a command did not succeed."""
    if finished.timed_out:
        return f"did not finish within its {finished.seconds:.0f} s ({finished.last_line()})"
    return f"exit status {finished.returncode}: {finished.last_line()}"


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_args(overrides: dict) -> list[str]:
    """`--set=key=value` arguments of cacl_dist.train for a dict of config keys."""
    return [f"--set={key}={str(value).lower() if isinstance(value, bool) else value}"
            for key, value in overrides.items()]


def fmt_gib(num_bytes: float | None) -> str:
    return "-" if num_bytes is None else f"{num_bytes / 2**30:.2f} GiB"

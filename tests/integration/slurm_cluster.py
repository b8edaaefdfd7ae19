"""A throw-away single-node SLURM cluster on localhost for the integration tests.

Debian's `slurm-wlm` and `munge` run as root without cgroups: a generated slurm.conf with
proctrack/linuxproc and task/none, its own munge key and socket, free ports, and every state,
spool and log file under one temporary folder. The daemons run in the foreground as children
of this process and are stopped by pid. Anything that prevents the cluster from starting
(not root, no apt-get, a daemon that dies) raises `ClusterUnavailable` with the reason, so the
tests can skip with it.

    python -m tests.integration.slurm_cluster             # start one, print how to use it; Ctrl-C stops it
    python -m tests.integration.slurm_cluster --nodes 2   # two nodes in network namespaces (slurm_netns.py)

Subclasses place the daemons elsewhere through four hooks: `_hosts` (the controller's and the
nodes' names and addresses), `_wrap` (the command line that starts one daemon), `_setup` and
`_teardown` (what exists around the daemons, before they start and after they stopped).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot be started on this machine; the message says why."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_packages(install: bool = True) -> None:
    """Make sure the SLURM and munge daemons exist, installing them with apt-get when allowed."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if not missing:
        return
    if not install:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed (apt-get install {' '.join(PACKAGES)})")
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and not root, so cannot apt-get install them")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and apt-get is not available")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "install", "-y", "-q", *PACKAGES], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", *PACKAGES]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if cmd[1] == "install" and result.returncode == 0:
            return
    tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
    raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {tail[0]}")


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


class LocalSlurm:
    """munged + slurmctld + slurmd on localhost, configured under `root`.

    `env` is the environment the SLURM clients (sbatch, squeue, scontrol) need: it points
    SLURM_CONF at the generated slurm.conf.
    """

    def __init__(self, root: Path, cpus: int | None = None) -> None:
        self.root = Path(root)
        self.node = socket.gethostname().split(".")[0]
        self.cpus = max(2, cpus or os.cpu_count() or 2)
        self.memory_mb = _memory_mb()
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ------------------------------------------------------------------ hooks
    def _hosts(self) -> tuple[tuple[str, str], list[tuple[str, str]]]:
        """(controller name, address) and the nodes' (name, address)."""
        return (self.node, "127.0.0.1"), [(self.node, "127.0.0.1")]

    def _wrap(self, name: str, cmd: list[str]) -> list[str]:
        """The command line that starts daemon `name` (munged, slurmctld or slurmd-<node>)."""
        return cmd

    def _setup(self) -> None:
        """Prepare what the daemons need besides their files (nothing on localhost)."""

    def _teardown(self) -> None:
        """Remove what `_setup` made; called after the daemons stopped, also after a failed start."""

    # ------------------------------------------------------------------ configuration
    def _write_files(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.munge_socket = self.root / "munge" / "munge.socket"
        ctl_port, node_port = _free_port(), _free_port()
        (controller, controller_addr), nodes = self._hosts()
        for name, _ in nodes:
            (self.root / "spool" / name).mkdir(exist_ok=True)
        lines = [
            "ClusterName=cacltest",
            f"SlurmctldHost={controller}({controller_addr})",
            f"SlurmctldPort={ctl_port}",
            f"SlurmdPort={node_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",  # %n: the node's name, one folder per slurmd
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd-%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SwitchType=switch/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "KillWait=30",
            "MinJobAge=600",
            "JobRequeue=1",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
        ]
        lines += [f"NodeName={name} NodeAddr={addr} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
                  for name, addr in nodes]
        lines.append(f"PartitionName={PARTITION} Nodes={','.join(name for name, _ in nodes)} Default=YES "
                     "MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------------ daemons
    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.procs[name] = subprocess.Popen(self._wrap(name, cmd), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        log.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise ClusterUnavailable(f"{name} exited with status {proc.returncode} on start: {self._log_tail(name)}")

    def _log_tail(self, name: str) -> str:
        texts = []
        for path in (self.root / "log" / f"{name}.out", self.root / "log" / f"{name}.log"):
            if path.is_file():
                texts += [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in texts if "error" in line.lower() or "fatal" in line.lower()]
        return (errors or texts or ["no log"])[-1][-300:]

    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        """Start munged, slurmctld and one slurmd per node, and wait until every node accepts jobs."""
        if os.geteuid() != 0:
            raise ClusterUnavailable("the localhost SLURM cluster needs root (slurmd runs jobs as root here)")
        ensure_packages()
        try:
            self._setup()
            self._write_files()
            self._spawn("munged", ["munged", "-F", "--force", f"--socket={self.munge_socket}",
                                   f"--key-file={self.root / 'munge' / 'munge.key'}",
                                   f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                                   f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                                   f"--log-file={self.root / 'log' / 'munged.log'}"])
            self._wait(lambda: self.munge_socket.exists(), 15, "munged did not create its socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait(lambda: self._run(["scontrol", "ping"]).returncode == 0, timeout, "slurmctld does not answer")
            for name, _ in self._hosts()[1]:
                self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-f", str(self.conf), "-N", name])
            self._wait(self._node_ready, timeout, "the nodes did not become idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=30)

    def _node_ready(self) -> bool:
        out = self._run(["sinfo", "-h", "-N", "-o", "%t"]).stdout.split()
        return len(out) == len(self._hosts()[1]) and all(state.rstrip("*") in ("idle", "mix", "alloc") for state in out)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_alive()
            try:
                if ready():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(0.3)
        last = list(self.procs)[-1]
        raise ClusterUnavailable(f"{what} within {timeout:.0f} s: {self._log_tail(last)}")

    def cancel_all(self, timeout: float = 60.0) -> None:
        """Cancel every job of this private cluster and wait until none is left running."""
        if "slurmctld" not in self.procs or self.procs["slurmctld"].poll() is not None:
            return
        try:
            self._run(["scancel", "--user", "root"])
            deadline = time.time() + timeout
            while time.time() < deadline and self._run(["squeue", "-h", "-o", "%i"]).stdout.strip():
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass

    def stop(self) -> None:
        """Cancel the jobs, stop the daemons (by pid, newest first), wait for them, then tear down."""
        self.cancel_all()
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self.procs.clear()
        self._teardown()

    def __enter__(self) -> "LocalSlurm":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def usage(cluster: LocalSlurm) -> str:
    """How to use a running cluster, for the console."""
    return (f"SLURM is up: export SLURM_CONF={cluster.conf}  (partition '{PARTITION}', node {cluster.node}, "
            f"{cluster.cpus} CPUs)")


def main(argv: list[str] | None = None) -> int:
    """Start a cluster, print how to use it, and keep it up until Ctrl-C or SIGTERM."""
    import signal
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m tests.integration.slurm_cluster",
                                     description="Start a throw-away SLURM cluster on this machine (root).")
    parser.add_argument("--nodes", type=int, default=1,
                        help="1: one slurmd on localhost (default); more: one network namespace per node")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error(f"--nodes must be at least 1, got {args.nodes}")

    def _interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` stops the cluster cleanly too
    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        if args.nodes == 1:
            cluster, describe = LocalSlurm(Path(tmp)), usage
        else:
            from .slurm_netns import NetnsSlurm, usage as describe

            cluster = NetnsSlurm(Path(tmp), nodes=args.nodes)
        try:
            cluster.start()
        except ClusterUnavailable as exc:
            print(f"SLURM cannot start: {exc}")
            return 1
        try:
            print(f"{describe(cluster)}\nCtrl-C or kill {os.getpid()} stops it", flush=True)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            cluster.stop()
    return 0


if __name__ == "__main__":
    import sys

    from tests.integration.slurm_cluster import main as _main  # the importable module, not __main__

    sys.exit(_main())

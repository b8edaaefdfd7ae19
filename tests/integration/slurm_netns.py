"""A throw-away multi-node SLURM cluster on one machine: one Linux network namespace per host.

    python -m tests.integration.slurm_cluster --nodes 2

Layout (all under one tag, `cacl<pid in hex><letter>`, unique among the live processes):
- a bridge `<tag>br` in the root namespace with address 10.213.K.254/24: this machine is the
  cluster's login node, where sbatch, squeue and `python -m launch.slurm` run;
- namespace `<tag>-head` (10.213.K.250) runs munged and slurmctld under the host name `head`;
- namespace `<tag>-node<i>` (10.213.K.<i+1>) runs one slurmd under the host name `node<i>`.
Each namespace is joined to the bridge by a veth pair (`<tag>h<k>` here, `eth0` inside).

Names resolve without touching /etc: every daemon starts inside its own mount and UTS namespace
(`unshare --mount --uts`), where the generated `hosts` file of the temporary folder is bind-mounted
over /etc/hosts and the host name is set to the node's name. Jobs inherit both from slurmd, so a
task on node1 resolves `node0` (the master address launch/task.py takes from the node list) to
node 0's address, and gloo binds to the node's own address. From the root namespace the node
names do not resolve; nothing there needs them.

Outside the temporary folder the cluster creates only the bridge, the veth pairs and the
namespaces (`ip netns add` keeps a handle in /run/netns); `stop` kills what still runs in the
namespaces and deletes all of them, also after a failed start. Leftovers of a run whose process
died are removed by the next start (`remove_stale`). Munge's socket is a path in the temporary
folder, which every namespace sees.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from itertools import count
from pathlib import Path

from .slurm_cluster import PARTITION, ClusterUnavailable, LocalSlurm

PREFIX = "cacl"
TAG = re.compile(rf"^{PREFIX}([0-9a-f]+)[g-z]")
"""Names this module creates start with the tag; its hex number is the pid of the process that owns them."""
SUBNET = "10.213"
HEAD, LOGIN = 250, 254  # last address bytes of the controller and of the bridge (this machine)
NETNS_DIR = "/var/run/netns"  # where `ip netns add` keeps its handles (iproute2's default)
TOOLS = ("ip", "nsenter", "unshare", "mount", "hostname")
_instances = count()

# In the new mount and UTS namespace: the private hosts file ($0) over /etc/hosts, the host name ($1), the daemon.
_ENTER = 'mount --bind "$0" /etc/hosts && hostname "$1" && shift && exec "$@"'


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ClusterUnavailable(f"'ip {' '.join(args)}' failed: {detail[0]}")
    return result


def _owner_alive(name: str) -> bool:
    match = TAG.match(name)
    if match is None:
        return True  # not ours: never touched
    try:
        os.kill(int(match.group(1), 16), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]


def _links() -> list[str]:
    names = []
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        fields = line.split(":", 2)
        if len(fields) > 2:
            names.append(fields[1].strip().split("@")[0])
    return names


def _kill_inside(namespace: str) -> None:
    """SIGKILL every process in the namespace (daemons and job steps of this harness) and wait for them."""
    deadline = time.time() + 10
    while time.time() < deadline:
        pids = [int(p) for p in _ip("netns", "pids", namespace, check=False).stdout.split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)


def remove_stale() -> list[str]:
    """Delete the namespaces and links of clusters whose owning process is gone; returns their names."""
    removed = []
    for namespace in _namespaces():
        if TAG.match(namespace) and not _owner_alive(namespace):
            _kill_inside(namespace)
            _ip("netns", "del", namespace, check=False)
            removed.append(namespace)
    for link in _links():
        if TAG.match(link) and not _owner_alive(link):
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


def _free_subnet(seed: int) -> str:
    """A 10.213.K prefix that no address or route of this machine uses yet."""
    used = _ip("-4", "-o", "addr", "show", check=False).stdout + _ip("-4", "route", "show", check=False).stdout
    for step in range(256):
        prefix = f"{SUBNET}.{(seed + step) % 256}"
        if f" {prefix}." not in f" {used}".replace("\n", " ").replace("/", " "):
            return prefix
    raise ClusterUnavailable(f"every {SUBNET}.K.0/24 subnet is in use on this machine")


class NetnsSlurm(LocalSlurm):
    """munged + slurmctld on a `head` namespace and one slurmd per `node<i>` namespace, joined by a bridge.

    `addresses` maps the host names (head, node0, ...) to their addresses; `namespaces` maps them
    to the namespace names (for `ip netns exec`; the private hosts file applies only to the daemons
    and their jobs). `env` is the clients' environment, as for `LocalSlurm`.
    """

    def __init__(self, root: Path, nodes: int = 2, cpus: int | None = None) -> None:
        if not 1 <= nodes <= 200:
            raise ValueError(f"nodes must be between 1 and 200, got {nodes}")
        super().__init__(root, cpus)
        self.tag = f"{PREFIX}{os.getpid():x}{'ghijklmnopqrstuvwxyz'[next(_instances) % 20]}"
        self.nodes = [f"node{i}" for i in range(nodes)]
        self.node = self.nodes[0]
        self.bridge = f"{self.tag}br"
        self.namespaces = {name: f"{self.tag}-{name}" for name in ["head", *self.nodes]}
        self.addresses: dict[str, str] = {}
        self.login_address = ""
        self.hosts_file = self.root / "hosts"
        self._made: list[tuple[str, str]] = []  # ("netns" | "link", name), in creation order

    def _hosts(self) -> tuple[tuple[str, str], list[tuple[str, str]]]:
        return ("head", self.addresses["head"]), [(name, self.addresses[name]) for name in self.nodes]

    def _wrap(self, name: str, cmd: list[str]) -> list[str]:
        host = name.split("-", 1)[1] if name.startswith("slurmd-") else "head"
        # nsenter, not `ip netns exec`: that mounts a fresh /sys without the cgroup tree slurmd needs
        return ["nsenter", f"--net={NETNS_DIR}/{self.namespaces[host]}", "unshare", "--mount", "--uts", "--propagation",
                "private", "sh", "-c", _ENTER, str(self.hosts_file), host, *cmd]

    def _setup(self) -> None:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise ClusterUnavailable(f"{', '.join(missing)} not found; the multi-node cluster needs iproute2 and "
                                     "util-linux")
        remove_stale()
        prefix = _free_subnet(os.getpid())
        self.login_address = f"{prefix}.{LOGIN}"
        self.addresses = {"head": f"{prefix}.{HEAD}", **{name: f"{prefix}.{i + 1}" for i, name in
                                                         enumerate(self.nodes)}}
        self._made.append(("link", self.bridge))
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.login_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for k, (host, namespace) in enumerate(self.namespaces.items()):
            outside, inside = f"{self.tag}h{k}", f"{self.tag}p{k}"
            self._made.append(("netns", namespace))
            _ip("netns", "add", namespace)
            self._made.append(("link", outside))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("-n", namespace, "link", "set", inside, "name", "eth0")
            _ip("-n", namespace, "addr", "add", f"{self.addresses[host]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("link", "set", outside, "master", self.bridge)
            _ip("link", "set", outside, "up")
        self.root.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost", f"{self.login_address} login"]
        lines += [f"{address} {host}" for host, address in self.addresses.items()]
        self.hosts_file.write_text("\n".join(lines) + "\n")

    def _teardown(self) -> None:
        for kind, name in reversed(self._made):
            if kind == "netns":
                _kill_inside(name)
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made.clear()


def usage(cluster: NetnsSlurm) -> str:
    """How to use a running multi-node cluster, for the console."""
    nodes = ", ".join(f"{name} {cluster.addresses[name]}" for name in cluster.nodes)
    n = len(cluster.nodes)
    return "\n".join([
        f"SLURM is up with {n} nodes in network namespaces: {nodes}; controller head {cluster.addresses['head']}; "
        f"this machine is {cluster.login_address} on bridge {cluster.bridge}",
        f"  export SLURM_CONF={cluster.conf}   (partition '{PARTITION}', {cluster.cpus} CPUs per node)",
        f"  srun -N {n} hostname                       # one task per node; srun -w node0 ... picks a node",
        f"  PYTHONPATH=$PWD python -m launch.slurm --config configs/quickstart.yaml --nodes {n} --gpus-per-node 0 "
        "--tasks-per-node 1 --time 30 --set train.epochs=1 --wait",
        f"  node names resolve inside jobs only ({cluster.hosts_file} is their /etc/hosts); "
        f"a plain shell in node0's network: ip netns exec {cluster.namespaces['node0']} bash",
        f"  logs: {cluster.root / 'log'}",
    ])

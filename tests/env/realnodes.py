"""Real nodes on this host: per node a kubelet, its own containerd, CNI bridge and subnet; kube-proxy and CoreDNS.

What a cluster gives pods, this gives them too: the project image built from
``docker/Dockerfile`` runs in real containers (runc) with the pod's securityContext, resource
limits, hostPath/hostNetwork/hostPID and probes enforced by a real kubelet; Services route
through kube-proxy's iptables rules; ``<svc>.<ns>.svc.cluster.local`` resolves through CoreDNS;
``kubectl logs``, ``exec`` and ``port-forward`` reach the kubelets through the API server.

Layout of the host network (all local, nothing routed off the machine)::

    lo               10.244.0.1/32   the API server, InfluxDB and CoreDNS listen here: pods reach
                                      it through their gateway (their own loopback is their own)
    obsbr1 (bridge)  10.244.1.1/24   node-1's IP; its pods get 10.244.1.2-254
    obsbr2 ...       10.244.2.1/24   node-2
    Services 10.96.0.0/16 (kube-proxy, iptables mode); cluster DNS 10.96.0.10 → 10.244.0.1:53

Pod traffic stays on this machine: the CNI bridge does not masquerade, and a chain of ours drops
anything forwarded from the pod network to an address outside it, anything the host network
namespace sends to a Service address that kube-proxy has not routed (yet), and anything the
image's user (hostNetwork pods) sends off the machine.

One real bed runs on a machine at a time (kube-proxy's chains and the service range are
host-wide): ``HostNetwork`` holds a lock (``/run/happy-observatory/realnodes.lock``) for the
bed's life and clears what a crashed bed left before it starts. Teardown removes every pod
sandbox (through CRI, so CNI releases its veths and network namespaces), shim, mount, bridge,
iptables rule and process the bed made, then ``audit()`` compares the host with what it was
before and names anything left behind.

Each node's containerd keeps its image store in the cache (``nodes/<node>/containerd``), so a
warm bed imports an image only when podman built a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.env import build, images
from tests.env.controlplane import ControlPlane, issue_cert, write_kubeconfig
from tests.env.kube import ApiError, Kube
from tests.env.nodesim import POOL_LABEL, ZONE_LABEL, default_nodes
from tests.env.procs import Process, free_port, wait_for

log = logging.getLogger("happy-observatory.realnodes")

BED_IP = "10.244.0.1"
BED_DEVICE = "lo"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
BRIDGE_PREFIX = "obsbr"
EGRESS_CHAIN = "OBS-BED-EGRESS"
POD_UID = 65532
"""The image's user (docker/Dockerfile): what a hostNetwork pod of ours runs as in the host's network namespace."""
HOST_EGRESS = (
    ("-d", SERVICE_CIDR, "-j", EGRESS_CHAIN),
    ("!", "-o", "lo", "-m", "owner", "--uid-owner", str(POD_UID), "-j", EGRESS_CHAIN),
)
"""OUTPUT rules into the egress guard: host traffic to a Service address kube-proxy did not route, and
anything a hostNetwork pod sends off the machine."""
HOST_EGRESS_V6 = ("!", "-o", "lo", "-m", "owner", "--uid-owner", str(POD_UID), "-j", "DROP")
"""The same for IPv6 (the bed's networks are IPv4 only, but the machine's interface has an IPv6 address)."""
KUBELET_CHAINS = ("KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT")
RUN_DIR = Path("/run/happy-observatory")
LOCK_FILE = RUN_DIR / "realnodes.lock"
CNI_BIN_DIR = Path("/usr/lib/cni")
REQUIRED_TOOLS = ("containerd", "runc", "ctr", "iptables", "ip", "podman", "mmdebstrap", "conntrack")


class BedError(RuntimeError):
    """The real-node bed cannot start here; the message says what is missing or what failed."""


def unavailable_reason() -> str | None:
    """Why real nodes cannot run on this machine (None when they can)."""
    if os.geteuid() != 0:
        return "not root: kubelets and containerd need root"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None and shutil.which(t, path="/usr/sbin:/sbin") is None]
    if missing:
        return f"missing {', '.join(missing)}: `make env` installs them (Debian packages)"
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_BIN_DIR / plugin).is_file():
            return f"missing CNI plugin {CNI_BIN_DIR / plugin}: `make env` installs containernetworking-plugins"
    return None


def _run(*cmd: str | Path, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise BedError(f"{' '.join(str(c) for c in cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def _quiet(*cmd: str | Path) -> None:
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        _run(*cmd, check=False, timeout=30)


# --- the host's state, for setting up, cleaning up and auditing ------------------------------


def _links() -> set[str]:
    out = _run("ip", "-o", "link", "show").stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line}


def _has_bed_address() -> bool:
    return f" {BED_IP}/32 " in _run("ip", "-o", "addr", "show", "dev", BED_DEVICE).stdout


def _netns() -> set[str]:
    path = Path("/run/netns")
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


def _shim_sockets() -> set[str]:
    # containerd 1.6 puts every shim's socket here, whatever its own state dir; a shim removes it on exit.
    path = Path("/run/containerd/s")
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


_BUILTIN_CHAINS = frozenset({"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"})


def _iptables_lines() -> set[str]:
    lines: set[str] = set()
    for tool in ("iptables-save", "ip6tables-save"):
        proc = _run(tool, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith(("#", ":", "*", "COMMIT")):
                # Chain declarations without rules still count: a chain left behind is a leftover.
                chain = line.split()[0][1:] if line.startswith(":") else ""
                if chain and chain not in _BUILTIN_CHAINS:
                    lines.add(f"{tool} chain {chain}")
                continue
            lines.add(f"{tool} {line}")
    return lines


def _mounts_under(roots: Iterable[Path]) -> list[str]:
    prefixes = [str(r).rstrip("/") + "/" for r in roots]
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4].replace("\\040", " ")
        if any((target + "/").startswith(p) for p in prefixes):
            found.append(target)
    return found


def _root_mount_source(proc: Path) -> str:
    """The options of the filesystem mounted at a process's "/": for a container, its overlay's layer paths."""
    with contextlib.suppress(OSError):
        for line in (proc / "mountinfo").read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == "/":
                return line
    return ""


def processes_under(roots: Iterable[Path], names: Iterable[str] = ()) -> dict[int, str]:
    """Processes whose command line, cwd or root filesystem lies under ``roots`` (or whose exe is one of ``names``).

    A container's process shows ``/`` as its root from here; its root *mount* (an overlay whose layers
    live in a node's image store) is what names the node it belongs to.
    """
    prefixes = [str(r).rstrip("/") + "/" for r in roots]
    exe_names = set(names)
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        exe = ""
        where = [cmdline]
        for link in ("cwd", "exe"):
            with contextlib.suppress(OSError):
                where.append(os.readlink(entry / link))
                exe = Path(where[-1]).name if link == "exe" else exe
        if prefixes:
            where.append(_root_mount_source(entry))
        if any(p in w + "/" for w in where for p in prefixes) or (exe_names and exe in exe_names):
            found[int(entry.name)] = cmdline or exe
    return found


def _unmount_all(roots: Iterable[Path]) -> None:
    # Deepest first; lazy, because a mount a dying process still holds must not block teardown.
    for target in sorted(_mounts_under(roots), key=lambda t: t.count("/"), reverse=True):
        _quiet("umount", "-l", target)


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass
class HostSnapshot:
    """What the host looked like before the bed: the audit compares against it."""

    links: set[str]
    netns: set[str]
    shim_sockets: set[str]
    iptables: set[str]
    ip_forward: str
    root_propagation: str

    @classmethod
    def take(cls) -> HostSnapshot:
        return cls(
            links=_links(),
            netns=_netns(),
            shim_sockets=_shim_sockets(),
            iptables=_iptables_lines(),
            ip_forward=Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            root_propagation=_root_propagation(),
        )


def _root_propagation() -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            optional = fields[6 : fields.index("-")]
            return "shared" if any(o.startswith("shared:") for o in optional) else "private"
    return "private"


class HostNetwork:
    """The bed's share of the host: its lock, its address, forwarding, mount propagation, the egress guard."""

    def __init__(self, state_file: Path | None = None) -> None:
        self.state_file = state_file or RUN_DIR / "realnodes.json"
        self._lock_fd: int | None = None
        self.before: HostSnapshot | None = None
        self.roots: list[Path] = []
        """Directories of this bed whose mounts and processes the audit looks for."""

    def acquire(self, timeout: float = 600.0) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    print(f"  waiting for another real-node bed (pid {holder or '?'}) to finish", flush=True)
                    announced = True
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise BedError(f"another real-node bed holds {LOCK_FILE} (pid {holder})") from None
                time.sleep(1.0)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def clear_stale(self, node_roots: Iterable[Path]) -> list[str]:
        """Remove what a bed that died without teardown left (we hold the lock: nobody else owns it)."""
        cleared: list[str] = []
        stale = {}
        if self.state_file.is_file():
            with contextlib.suppress(ValueError, OSError):
                stale = json.loads(self.state_file.read_text())
        roots = [Path(p) for p in stale.get("roots", [])] + list(node_roots)
        procs = processes_under(roots)
        if procs:
            cleared.append(f"{len(procs)} processes")
            _kill(procs)
            time.sleep(0.5)
        mounts = _mounts_under(roots)
        if mounts:
            cleared.append(f"{len(mounts)} mounts")
            _unmount_all(roots)
        for link in sorted(_links()):
            if link.startswith(BRIDGE_PREFIX):
                cleared.append(f"link {link}")
                _quiet("ip", "link", "delete", link)
        if _has_bed_address():
            cleared.append(f"address {BED_IP}")
            _quiet("ip", "addr", "del", f"{BED_IP}/32", "dev", BED_DEVICE)
        for ns in stale.get("netns", []):
            if ns in _netns():
                cleared.append(f"netns {ns}")
                _quiet("ip", "netns", "delete", ns)
        if any(EGRESS_CHAIN in line or "KUBE-" in line for line in _iptables_lines()):
            cleared.append("iptables rules")
            self._remove_iptables()
            kube_proxy = build.binary("kubernetes", "kube-proxy")
            if kube_proxy.is_file():
                _quiet(kube_proxy, "--cleanup")
        if stale.get("ip_forward") and stale["ip_forward"] != Path("/proc/sys/net/ipv4/ip_forward").read_text().strip():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(stale["ip_forward"])
        if stale.get("root_propagation") == "private" and _root_propagation() == "shared":
            _quiet("mount", "--make-private", "/")
        self.state_file.unlink(missing_ok=True)
        return cleared

    def up(self, roots: list[Path]) -> None:
        self.before = HostSnapshot.take()
        self.roots = roots
        self._save_state()
        # On loopback: this kernel has no dummy interfaces, and a local address is a local address.
        _run("ip", "addr", "add", f"{BED_IP}/32", "dev", BED_DEVICE)
        # Pods on different nodes talk through the host, which routes between the bridges.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
        # hostPath "/" with HostToContainer propagation needs "/" shared (systemd hosts have that already).
        if self.before.root_propagation != "shared":
            _run("mount", "--make-shared", "/")
        _run("iptables", "-N", EGRESS_CHAIN)
        _run("iptables", "-A", EGRESS_CHAIN, "-d", CLUSTER_CIDR, "-j", "RETURN")
        _run("iptables", "-A", EGRESS_CHAIN, "-j", "DROP")
        _run("iptables", "-I", "FORWARD", "1", "-s", CLUSTER_CIDR, "-j", EGRESS_CHAIN)
        # From the host network namespace: a Service address that kube-proxy has not DNAT-ed yet (a Service
        # seconds old) would follow the default route off the machine, where a proxy answers every connection;
        # and a hostNetwork pod is a pod. DNAT-ed packets carry the pod's address here and pass.
        for rule in HOST_EGRESS:
            _run("iptables", "-I", "OUTPUT", "1", *rule)
        _run("ip6tables", "-I", "OUTPUT", "1", *HOST_EGRESS_V6)  # the bed has no IPv6: none of it leaves

    def note_netns(self, names: Iterable[str]) -> None:
        """Network namespaces created while the bed ran (recorded so a crashed bed's can be cleared)."""
        self._save_state(netns=sorted(names))

    def _save_state(self, netns: list[str] | None = None) -> None:
        assert self.before is not None
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "roots": [str(r) for r in self.roots],
                    "ip_forward": self.before.ip_forward,
                    "root_propagation": self.before.root_propagation,
                    "netns": netns or [],
                }
            )
        )

    @staticmethod
    def _remove_iptables() -> None:
        while _run("iptables", "-D", "FORWARD", "-s", CLUSTER_CIDR, "-j", EGRESS_CHAIN, check=False).returncode == 0:
            pass
        for rule in HOST_EGRESS:
            while _run("iptables", "-D", "OUTPUT", *rule, check=False).returncode == 0:
                pass
        while _run("ip6tables", "-D", "OUTPUT", *HOST_EGRESS_V6, check=False).returncode == 0:
            pass
        _quiet("iptables", "-F", EGRESS_CHAIN)
        _quiet("iptables", "-X", EGRESS_CHAIN)
        # The kubelet's own chains (its canaries and firewall): kube-proxy --cleanup leaves them.
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                listing = _run(tool, "-t", table, "-S", check=False).stdout
                for line in listing.splitlines():
                    parts = line.split()
                    if line.startswith("-A") and any(f"-j {c}" in line for c in KUBELET_CHAINS):
                        _quiet(tool, "-t", table, "-D", *parts[1:])
                for chain in KUBELET_CHAINS:
                    _quiet(tool, "-t", table, "-F", chain)
                    _quiet(tool, "-t", table, "-X", chain)

    def down(self) -> None:
        self._remove_iptables()
        _quiet("ip", "addr", "del", f"{BED_IP}/32", "dev", BED_DEVICE)
        if self.before is not None:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.before.ip_forward)
            if self.before.root_propagation != "shared":
                _quiet("mount", "--make-private", "/")
        self.state_file.unlink(missing_ok=True)

    def audit(self, extra_roots: Iterable[Path] = ()) -> list[str]:
        """Everything the bed changed on the host that is still there (empty: nothing left behind)."""
        assert self.before is not None
        now = HostSnapshot.take()
        left: list[str] = []
        roots = [*self.roots, *extra_roots]
        names = {"kubelet", "containerd", "containerd-shim-runc-v2", "kube-proxy", "coredns", "pause"}
        for pid, what in processes_under(roots).items():
            left.append(f"process {pid}: {what[:200]}")
        for pid, what in processes_under([], names).items():
            if pid not in processes_under(roots):
                left.append(f"process {pid}: {what[:200]}")
        left += [f"mount {m}" for m in _mounts_under(roots)]
        left += [f"network interface {link}" for link in sorted(now.links - self.before.links)]
        if _has_bed_address():
            left.append(f"address {BED_IP} on {BED_DEVICE}")
        left += [f"network namespace {ns}" for ns in sorted(now.netns - self.before.netns)]
        left += [f"shim socket /run/containerd/s/{s}" for s in sorted(now.shim_sockets - self.before.shim_sockets)]
        left += [f"iptables: {line}" for line in sorted(now.iptables - self.before.iptables)]
        if now.ip_forward != self.before.ip_forward:
            left.append(f"net.ipv4.ip_forward is {now.ip_forward}, was {self.before.ip_forward}")
        if now.root_propagation != self.before.root_propagation:
            left.append(f"/ propagation is {now.root_propagation}, was {self.before.root_propagation}")
        return left


def egress_dropped_packets() -> int:
    """Packets the bed's egress guard has dropped so far (pod traffic headed off the machine)."""
    listing = _run("iptables", "-L", EGRESS_CHAIN, "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in listing.splitlines() if " DROP " in f" {line} ")


# --- one node ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSpec:
    """One node to run: its name, labels and taints; ``index`` picks its bridge and subnet."""

    name: str
    index: int
    zone: str
    pool: str
    taints: tuple[tuple[str, str, str], ...] = ()  # (key, value, effect)

    @property
    def ip(self) -> str:
        return f"10.244.{self.index}.1"

    @property
    def subnet(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def bridge(self) -> str:
        return f"{BRIDGE_PREFIX}{self.index}"

    @property
    def tainted(self) -> bool:
        return bool(self.taints)


def default_specs(count: int = 3, prefix: str = "node") -> list[NodeSpec]:
    """The simulator's default nodes (three zones, the last a tainted ``gpu`` pool node), as real ones."""
    return [NodeSpec(n.name, i, n.zone, n.pool, n.taints) for i, n in enumerate(default_nodes(count, prefix), 1)]


def node_cache(name: str) -> Path:
    """Where a node's containerd keeps its images between beds."""
    return build.cache_root() / "nodes" / name


@dataclass
class RealNode:
    """A kubelet and its containerd."""

    spec: NodeSpec
    dir: Path
    logs: Path
    containerd: Process | None = None
    kubelet: Process | None = None
    healthz_port: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def store(self) -> Path:
        return node_cache(self.name) / "containerd"

    @property
    def state(self) -> Path:
        # Short: containerd puts sockets under it, and a unix socket path has at most 107 bytes.
        return RUN_DIR / "nodes" / self.name

    @property
    def socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        # Short too: the kubelet binds its pod-resources and plugin sockets under its root dir.
        return self.state / "kubelet"

    @property
    def roots(self) -> list[Path]:
        return [self.dir, self.state, self.store]

    def crictl(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        exe = build.binary("cri-tools", "crictl")
        return _run(
            exe, "--runtime-endpoint", f"unix://{self.socket}", "--timeout", "30s", *args, check=check, timeout=timeout
        )

    def ctr(self, *args: str, check: bool = True, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        return _run("ctr", "--address", self.socket, "--namespace", "k8s.io", *args, check=check, timeout=timeout)

    # --- bring-up ----------------------------------------------------------------------------

    def start_runtime(self) -> None:
        """The bridge and containerd (started on its own: images load while the control plane starts)."""
        for path in (self.dir, self.state, self.store):
            path.mkdir(parents=True, exist_ok=True)
        _run("ip", "link", "add", self.spec.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.spec.ip}/24", "dev", self.spec.bridge)
        _run("ip", "link", "set", self.spec.bridge, "up")
        cni = self.dir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-bridge.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": f"happy-observatory-{self.name}",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": self.spec.bridge,
                            "isGateway": True,
                            # No masquerading: pod traffic never leaves this machine under the host's address.
                            "ipMasq": False,
                            # A pod reaching itself through its own Service.
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": self.spec.subnet, "gateway": self.spec.ip}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(cni / "ipam"),
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        config = self.dir / "containerd.toml"
        config.write_text(_containerd_config(self, cni / "net.d"))
        self.containerd = Process(
            "containerd", ["containerd", "--config", config], log=self.logs / f"{self.name}-containerd.log"
        )
        self.containerd.start()
        wait_for(
            lambda: self._alive(self.containerd) and self.ctr("version", check=False).returncode == 0,
            timeout=30,
            what=f"{self.name}'s containerd (log {self.containerd.log})",
        )
        # A crashed bed's sandboxes (the store is kept): remove them, releasing their networks.
        self.remove_sandboxes()

    def load_images(self, archives: dict[str, tuple[str, Path]]) -> list[str]:
        """Import each image (ref → (image id, docker-archive)) that this node's store does not have yet."""
        marker = self.store / "imported.json"
        known: dict[str, str] = {}
        with contextlib.suppress(ValueError, OSError):
            known = json.loads(marker.read_text())
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        loaded = []
        for ref, (ident, archive) in archives.items():
            if known.get(ref) == ident and _docker_name(ref) in present:
                continue
            self.ctr("images", "import", "--no-unpack=false", archive)
            known[ref] = ident
            marker.write_text(json.dumps(known))
            loaded.append(ref)
        return loaded

    def start_kubelet(self, cp: ControlPlane, resolv_conf: Path) -> None:
        pki = self.dir / "pki"
        pki.mkdir(exist_ok=True)
        shutil.copy(cp.pki / "ca.crt", pki / "ca.crt")
        shutil.copy(cp.pki / "ca.key", pki / "ca.key")
        client = issue_cert(pki, "kubelet-client", f"system:node:{self.name}", orgs=("system:nodes",))
        serving = issue_cert(pki, "kubelet-serving", f"system:node:{self.name}", ips=(self.spec.ip,), dns=(self.name,))
        (pki / "ca.key").unlink()  # a kubelet never holds the CA's key
        kubeconfig = self.dir / "kubeconfig"
        write_kubeconfig(kubeconfig, cp.server, pki / "ca.crt", user=f"system:node:{self.name}", cert=client)
        self.healthz_port = free_port()
        config = self.dir / "kubelet.yaml"
        config.write_text(yaml.safe_dump(_kubelet_config(self, pki, serving, resolv_conf)))
        labels = {ZONE_LABEL: self.spec.zone, POOL_LABEL: self.spec.pool}
        argv: list[str | Path] = [
            build.binary("kubernetes", "kubelet"),
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={self.kubelet_root}",
            f"--hostname-override={self.name}",
            f"--node-ip={self.spec.ip}",
            f"--node-labels={','.join(f'{k}={v}' for k, v in labels.items())}",
            "--v=1",
        ]
        self.kubelet = Process("kubelet", argv, log=self.logs / f"{self.name}-kubelet.log")
        self.kubelet.start()

    @staticmethod
    def _alive(proc: Process | None) -> bool:
        if proc is None or not proc.alive():
            tail = proc.tail() if proc else ""
            raise BedError(f"{proc.name if proc else 'process'} exited:\n{tail}")
        return True

    def check(self) -> None:
        self._alive(self.containerd)
        self._alive(self.kubelet)

    # --- teardown ----------------------------------------------------------------------------

    def remove_sandboxes(self) -> None:
        """Stop and remove every pod sandbox through CRI: containers die, CNI releases veths and netns."""
        ids = self.crictl("pods", "-q", check=False).stdout.split()
        for ident in ids:
            self.crictl("stopp", ident, check=False, timeout=90)
            self.crictl("rmp", "-f", ident, check=False, timeout=90)

    def stop(self) -> list[str]:
        """Stop the kubelet, then every pod through CRI, then containerd; returns what would not go."""
        problems: list[str] = []
        if self.kubelet is not None:
            self.kubelet.stop(grace=10.0)
        if self.containerd is not None and self.containerd.alive():
            self.remove_sandboxes()
            left = self.crictl("pods", "-q", check=False).stdout.split()
            if left:
                problems.append(f"{self.name}: sandboxes that would not go: {left}")
            tasks = self.ctr("tasks", "ls", "-q", check=False).stdout.split()
            for task in tasks:
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "-f", task, check=False)
            self.containerd.stop(grace=10.0)
        # Shims outlive containerd by design (containers survive a runtime restart): not ours to keep.
        _kill(processes_under([self.state, self.store]))
        _unmount_all([self.dir, self.state, self.store])
        _quiet("ip", "link", "delete", self.spec.bridge)
        shutil.rmtree(self.state, ignore_errors=True)
        return problems


def _docker_name(ref: str) -> str:
    """containerd's name for an image podman calls ``ref`` (docker.io/ for unqualified ones)."""
    first = ref.split("/", 1)[0]
    if "/" not in ref or ("." not in first and ":" not in first and first != "localhost"):
        return f"docker.io/{ref if '/' in ref else 'library/' + ref}"
    return ref


def _containerd_config(node: RealNode, cni_conf: Path) -> str:
    return f"""version = 2
root = "{node.store}"
state = "{node.state}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.socket}"

[ttrpc]
  address = "{node.socket}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE_REF}"
  # Processes here may not lower an oom_score_adj; containerd clamps instead of failing every sandbox.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"""


def _kubelet_config(node: RealNode, pki: Path, serving: tuple[Path, Path], resolv_conf: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node.spec.ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": node.healthz_port,
        "tlsCertFile": str(serving[0]),
        "tlsPrivateKeyFile": str(serving[1]),
        # The API server's calls (logs, exec, port-forward) authenticate with its client certificate;
        # anything else is asked about through the API server (webhook), never allowed anonymously.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{node.socket}",
        # This VM: cgroup v1 without systemd, no swap accounting, no CAP_SYS_RESOURCE.
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "imagefs.available": "0%"},
        "localStorageCapacityIsolation": False,
        # No registry is reachable: never garbage-collect the images the bed loaded.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "clusterDNS": [DNS_SERVICE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": str(resolv_conf),
        "podLogsDir": str(node.dir / "pod-logs"),
        "volumePluginDir": str(node.dir / "volume-plugins"),
        "registerWithTaints": [{"key": k, "value": v, "effect": e} for k, v, e in node.spec.taints],
        "staticPodPath": "",
        "maxPods": 110,
        "nodeStatusUpdateFrequency": "5s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "5s",
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


# --- the bed's nodes ----------------------------------------------------------------------


@dataclass
class RealNodes:
    """Three (or N) real nodes plus kube-proxy and CoreDNS, on one ``HostNetwork``."""

    control_plane: ControlPlane
    host: HostNetwork
    work_dir: Path
    logs_dir: Path
    specs: list[NodeSpec] = field(default_factory=default_specs)
    nodes: list[RealNode] = field(default_factory=list)
    kube_proxy: Process | None = None
    coredns: Process | None = None
    startup_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def kube(self) -> Kube:
        return self.control_plane.kube

    @property
    def tainted(self) -> list[RealNode]:
        return [n for n in self.nodes if n.spec.tainted]

    def node(self, name: str) -> RealNode:
        return next(n for n in self.nodes if n.name == name)

    def start_runtimes(self) -> None:
        """Bridges and containerds (from the calling thread: a child dies with the thread that spawned it)."""
        started = time.monotonic()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.nodes = [RealNode(spec, self.work_dir / spec.name, self.logs_dir) for spec in self.specs]
        for node in self.nodes:
            node.start_runtime()
        self.timings["runtimes"] = time.monotonic() - started

    def load_images(self) -> None:
        """Import the bed's images into every node that lacks them (in parallel; safe off the main thread)."""
        started = time.monotonic()
        archives = {ref: (images.image_id(ref) or "", images.save(ref)) for ref in _node_image_refs()}
        errors: list[BaseException] = []

        def load(node: RealNode) -> None:
            try:
                loaded = node.load_images(archives)
                if loaded:
                    log.info("%s: imported %s", node.name, ", ".join(loaded))
            except BaseException as exc:  # reported below, on the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(n,), name=f"images {n.name}") for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        self.timings["images"] = time.monotonic() - started

    def start(self, timeout: float = 90.0) -> None:
        """Kubelets, cluster DNS and kube-proxy; returns when every node is Ready."""
        started = time.monotonic()
        resolv = self.work_dir / "resolv.conf"
        # Pods with dnsPolicy Default get this, not the machine's resolver: no lookup leaves the host.
        resolv.write_text(f"nameserver {BED_IP}\n")
        self._start_coredns()
        for node in self.nodes:
            node.start_kubelet(self.control_plane, resolv)
        self._start_kube_proxy()

        def all_ready() -> bool:
            for node in self.nodes:
                node.check()
            if self.kube_proxy is not None:
                RealNode._alive(self.kube_proxy)
            ready = 0
            for node in self.nodes:
                with contextlib.suppress(ApiError):
                    obj = self.kube.get(f"/api/v1/nodes/{node.name}")
                    conds = (obj.get("status") or {}).get("conditions") or []
                    ready += any(c["type"] == "Ready" and c["status"] == "True" for c in conds)
            return ready == len(self.nodes)

        wait_for(
            all_ready,
            timeout=timeout,
            what=f"{len(self.nodes)} kubelets Ready (logs in {self.logs_dir})",
            interval=0.25,
        )
        self.timings["kubelets ready"] = time.monotonic() - started
        self.startup_seconds = sum(self.timings.values())

    def _start_coredns(self) -> None:
        corefile = self.work_dir / "Corefile"
        corefile.write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {BED_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.control_plane.kubeconfig} happy-observatory
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
.:53 {{
    bind {BED_IP}
    # Nothing is forwarded: a name outside the cluster does not exist for the bed's pods.
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""
        )
        self.coredns = Process(
            "coredns",
            [build.binary("coredns"), "-conf", corefile],
            log=self.logs_dir / "coredns.log",
            cwd=self.work_dir,
        )
        self.coredns.start()
        kube = self.kube
        kube.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "clusterIP": DNS_SERVICE_IP,
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            }
        )
        # No selector: the endpoint is CoreDNS on the host, named by hand as a cluster's DNS would be by its pods.
        kube.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "kube-dns-host",
                    "namespace": "kube-system",
                    "labels": {
                        "kubernetes.io/service-name": "kube-dns",
                        "endpointslice.kubernetes.io/managed-by": "happy-observatory-testenv",
                    },
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": [BED_IP], "conditions": {"ready": True}}],
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                ],
            }
        )

    def _start_kube_proxy(self) -> None:
        pki = self.work_dir / "kube-proxy"
        pki.mkdir(exist_ok=True)
        shutil.copy(self.control_plane.pki / "ca.crt", pki / "ca.crt")
        shutil.copy(self.control_plane.pki / "ca.key", pki / "ca.key")
        cert = issue_cert(pki, "kube-proxy", "system:kube-proxy")
        (pki / "ca.key").unlink()
        kubeconfig = pki / "kubeconfig"
        write_kubeconfig(kubeconfig, self.control_plane.server, pki / "ca.crt", user="system:kube-proxy", cert=cert)
        config = pki / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig)},
                    "mode": "iptables",
                    "clusterCIDR": CLUSTER_CIDR,
                    # Every node shares this host's network namespace: one kube-proxy serves them all.
                    "hostnameOverride": self.nodes[0].name,
                    "healthzBindAddress": f"127.0.0.1:{free_port()}",
                    "metricsBindAddress": f"127.0.0.1:{free_port()}",
                    "nodePortAddresses": [CLUSTER_CIDR],
                    # Leave the machine's conntrack and route_localnet sysctls alone.
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                    "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
                }
            )
        )
        self.kube_proxy = Process(
            "kube-proxy",
            [build.binary("kubernetes", "kube-proxy"), f"--config={config}", "--v=1"],
            log=self.logs_dir / "kube-proxy.log",
        )
        self.kube_proxy.start()

    # --- teardown ----------------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Stop everything (pods first, through CRI); returns problems met on the way."""
        problems: list[str] = []
        netns = _netns()
        self.host.note_netns(netns - (self.host.before.netns if self.host.before else set()))
        threads = []
        results: dict[str, list[str]] = {}
        for node in self.nodes:

            def stop_one(node: RealNode = node) -> None:
                try:
                    results[node.name] = node.stop()
                except Exception as exc:  # one node's trouble must not leave the others running
                    results[node.name] = [f"{node.name}: {exc!r}"]

            threads.append(threading.Thread(target=stop_one, name=f"stop {node.name}"))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for found in results.values():
            problems += found
        if self.kube_proxy is not None:
            self.kube_proxy.stop(grace=5.0)
            _quiet(build.binary("kubernetes", "kube-proxy"), "--cleanup")
        if self.coredns is not None:
            self.coredns.stop(grace=5.0)
        return problems

    def delete_node_objects(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(ApiError, OSError):
                self.kube.delete(f"/api/v1/nodes/{node.name}")

    @property
    def roots(self) -> list[Path]:
        return [self.work_dir, *(r for n in self.nodes for r in n.roots)]


def _node_image_refs() -> list[str]:
    return [images.PAUSE_REF, images.STAND_IN_REF, images.project_ref(), images.influxdb_ref()]


def open_host(bed_dir: Path, specs: list[NodeSpec], host: HostNetwork | None = None) -> HostNetwork:
    """Take the machine for a bed: the lock, what a crashed bed left cleared, images built, the host set up.

    ``host``: a HostNetwork whose lock is already held (taken early, while waiting costs no test its timeout).
    """
    if host is None:
        host = HostNetwork()
        host.acquire()
    try:
        cleared = host.clear_stale([node_cache(s.name) for s in specs])
        if cleared:
            print(f"  cleared what an earlier bed left: {', '.join(cleared)}", flush=True)
        images.ensure(images.NODE_IMAGES)
        host.up([bed_dir, RUN_DIR / "nodes", *(node_cache(s.name) for s in specs)])
    except BaseException:
        host.release()
        raise
    return host


def close_host(host: HostNetwork) -> list[str]:
    """Undo ``open_host`` (after the nodes and control plane stopped); returns what the audit found left behind."""
    try:
        host.down()
        return host.audit()
    finally:
        host.release()

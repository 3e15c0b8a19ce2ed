"""Host collectors: cpu, per-core cpu, memory, swap, load, disks, network, inodes, uptime, processes.

Every reader here is blocking and runs in a thread (``ThreadedCollector``). CPU usage comes
from the difference of CPU times between two cycles — no sleeping call — so the first
cycle of ``cpu`` and ``cpu_core`` yields nothing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import psutil

from observatory_agent.collectors.base import COUNTER, GAUGE, Sample
from observatory_agent.collectors.host import HostPaths

# node_exporter's defaults: filesystems that are not storage, mount points that are not the host's.
PSEUDO_FILESYSTEMS: Final = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "iso9660",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "procfs",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "erofs",
        "sysfs",
        "tracefs",
        "fuse.lxcfs",
        "fuse.gvfsd-fuse",
        "fuse.portal",
    }
)
IGNORED_MOUNTS: Final = re.compile(
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+|"
    r"var/lib/kubelet/pods/.+|run/containerd/.+|snap/.+)($|/)"
)
IGNORED_DISKS: Final = re.compile(r"^(z?ram|loop|fd|(h|s|v|xv)d[a-z]|nvme\d+n\d+p|mmcblk\d+p)\d+$|^dm-\d+$")
IGNORED_INTERFACES: Final = re.compile(r"^(lo|veth.*|cali.*|cni.*|docker.*|br-.*|flannel.*|cilium_.*|lxc.*|vxlan.*)$")


def _busy_total(t: Any) -> tuple[float, float]:
    # psutil's own definition: guest time is already inside user/nice; iowait counts as idle.
    total = float(sum(t)) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


def _percent(part: float, whole: float) -> float:
    return max(0.0, min(100.0, 100.0 * part / whole))


class CpuReader:
    """``system.cpu.usage`` and its user/system/iowait parts from deltas of ``cpu_times``."""

    def __init__(self) -> None:
        self._prev: Any = None

    def __call__(self) -> list[Sample]:
        now = psutil.cpu_times()
        prev, self._prev = self._prev, now
        if prev is None:
            return []
        busy1, total1 = _busy_total(prev)
        busy2, total2 = _busy_total(now)
        dt = total2 - total1
        if dt <= 0:
            return []
        out = [Sample("system.cpu.usage", _percent(busy2 - busy1, dt))]
        for mode in ("user", "system", "iowait", "steal"):
            if hasattr(now, mode):
                out.append(Sample(f"system.cpu.{mode}", _percent(getattr(now, mode) - getattr(prev, mode), dt)))
        return out


class CpuCoreReader:
    """``system.cpu.core.usage`` per logical core (tag ``core``)."""

    def __init__(self) -> None:
        self._prev: list[Any] | None = None

    def __call__(self) -> list[Sample]:
        now = psutil.cpu_times(percpu=True)
        prev, self._prev = self._prev, now
        if prev is None or len(prev) != len(now):
            return []
        out = []
        for core, (a, b) in enumerate(zip(prev, now, strict=True)):
            busy1, total1 = _busy_total(a)
            busy2, total2 = _busy_total(b)
            if total2 > total1:
                out.append(
                    Sample(
                        "system.cpu.core.usage", _percent(busy2 - busy1, total2 - total1), GAUGE, {"core": str(core)}
                    )
                )
        return out


def read_memory() -> list[Sample]:
    vm = psutil.virtual_memory()
    out = [
        Sample("system.memory.total", float(vm.total)),
        Sample("system.memory.available", float(vm.available)),
        Sample("system.memory.used", float(vm.used)),
        Sample("system.memory.free", float(vm.free)),
        Sample("system.memory.usage", float(vm.percent)),
    ]
    for extra in ("cached", "buffers"):
        if hasattr(vm, extra):
            out.append(Sample(f"system.memory.{extra}", float(getattr(vm, extra))))
    return out


def read_swap() -> list[Sample]:
    sw = psutil.swap_memory()
    return [
        Sample("system.swap.total", float(sw.total)),
        Sample("system.swap.used", float(sw.used)),
        Sample("system.swap.free", float(sw.free)),
        Sample("system.swap.usage", float(sw.percent)),
        Sample("system.swap.in", float(sw.sin), COUNTER),
        Sample("system.swap.out", float(sw.sout), COUNTER),
    ]


def make_load_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        fields = (paths.proc / "loadavg").read_text().split()
        return [
            Sample("system.load.1", float(fields[0])),
            Sample("system.load.5", float(fields[1])),
            Sample("system.load.15", float(fields[2])),
        ]

    return read


def make_uptime_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        return [Sample("system.uptime", float((paths.proc / "uptime").read_text().split()[0]))]

    return read


def _unescape_mount(text: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def real_mounts(paths: HostPaths) -> list[tuple[str, str, str]]:
    """``(device, mountpoint, fstype)`` of storage mounts, one per device, pseudo filesystems excluded."""
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for line in paths.mounts_file().read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mountpoint, fstype = _unescape_mount(parts[0]), _unescape_mount(parts[1]), parts[2]
        if fstype in PSEUDO_FILESYSTEMS or IGNORED_MOUNTS.match(mountpoint):
            continue
        # tmpfs has no backing device, so each mount counts; a bind mount repeats its device.
        key = mountpoint if fstype == "tmpfs" else device
        if key in seen:
            continue
        seen.add(key)
        out.append((device, mountpoint, fstype))
    return out


def _mount_stats(paths: HostPaths) -> Iterator[tuple[dict[str, str], os.statvfs_result]]:
    """(tags, statvfs) for every real mount still there; both filesystem readers share the walk."""
    for device, mountpoint, fstype in real_mounts(paths):
        try:
            st = os.statvfs(paths.host_path(mountpoint))
        except OSError:
            continue  # unmounted between listing and stat, or not visible from here
        yield {"device": device, "mountpoint": mountpoint, "fstype": fstype}, st


def make_disk_usage_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        out: list[Sample] = []
        for tags, st in _mount_stats(paths):
            if st.f_blocks == 0:
                continue
            total = st.f_blocks * st.f_frsize
            free = st.f_bfree * st.f_frsize
            avail = st.f_bavail * st.f_frsize
            used = total - free
            out += [
                Sample("system.disk.total", float(total), GAUGE, tags),
                Sample("system.disk.used", float(used), GAUGE, tags),
                Sample("system.disk.free", float(avail), GAUGE, tags),
                # df's definition: reserved blocks count as neither used nor available.
                Sample("system.disk.usage", _percent(used, used + avail) if used + avail else 0.0, GAUGE, tags),
            ]
        return out

    return read


def make_filesystem_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        out: list[Sample] = []
        for tags, st in _mount_stats(paths):
            if st.f_files == 0:
                continue  # filesystems without inode accounting (btrfs reports 0)
            used = st.f_files - st.f_ffree
            out += [
                Sample("system.filesystem.inodes.total", float(st.f_files), GAUGE, tags),
                Sample("system.filesystem.inodes.used", float(used), GAUGE, tags),
                Sample("system.filesystem.inodes.free", float(st.f_ffree), GAUGE, tags),
                Sample("system.filesystem.inodes.usage", _percent(used, st.f_files), GAUGE, tags),
            ]
        return out

    return read


def make_disk_io_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    # Sectors in /proc/diskstats are always 512 bytes, whatever the device's block size.
    sector = 512.0

    def read() -> list[Sample]:
        out: list[Sample] = []
        for line in (paths.proc / "diskstats").read_text().splitlines():
            f = line.split()
            if len(f) < 14 or IGNORED_DISKS.match(f[2]):
                continue
            tags = {"device": f[2]}
            out += [
                Sample("system.disk.io.reads", float(f[3]), COUNTER, tags),
                Sample("system.disk.io.read_bytes", float(f[5]) * sector, COUNTER, tags),
                Sample("system.disk.io.writes", float(f[7]), COUNTER, tags),
                Sample("system.disk.io.write_bytes", float(f[9]) * sector, COUNTER, tags),
                Sample("system.disk.io.busy_time", float(f[12]) / 1000.0, COUNTER, tags),
            ]
        return out

    return read


_NET_FIELDS: Final = (
    (0, "bytes_recv"),
    (1, "packets_recv"),
    (2, "errors_in"),
    (3, "drops_in"),
    (8, "bytes_sent"),
    (9, "packets_sent"),
    (10, "errors_out"),
    (11, "drops_out"),
)


def make_network_reader(paths: HostPaths, exclude: re.Pattern[str] = IGNORED_INTERFACES) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        out: list[Sample] = []
        for line in paths.proc_net("dev").read_text().splitlines()[2:]:
            name, sep, rest = line.partition(":")
            iface = name.strip()
            if not sep or exclude.match(iface):
                continue
            values = rest.split()
            tags = {"interface": iface}
            out += [Sample(f"system.network.{field}", float(values[i]), COUNTER, tags) for i, field in _NET_FIELDS]
        return out

    return read


_STATES: Final = {
    "R": "running",
    "S": "sleeping",
    "D": "blocked",
    "Z": "zombie",
    "T": "stopped",
    "t": "stopped",
    "I": "idle",
}


def make_processes_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    def read() -> list[Sample]:
        counts = dict.fromkeys(("running", "sleeping", "blocked", "zombie", "stopped", "idle"), 0)
        total = 0
        for entry in os.scandir(paths.proc):
            if not entry.name.isdigit():
                continue
            try:
                with open(os.path.join(entry.path, "stat"), "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue  # the process exited between listing and reading
            total += 1
            # The command may contain spaces and parentheses; the state follows the last ')'.
            state = chr(stat[stat.rfind(b")") + 2])
            bucket = _STATES.get(state)
            if bucket is not None:
                counts[bucket] += 1
        out = [Sample("system.processes.total", float(total))]
        out += [Sample(f"system.processes.{k}", float(v)) for k, v in counts.items()]
        return out

    return read


def reader_for(kind: str, paths: HostPaths) -> Callable[[], Sequence[Sample]]:
    """The blocking reader behind a system collector kind (except ``cpuinfo``, see ``cpuinfo``)."""
    factories: dict[str, Callable[[], Callable[[], Sequence[Sample]]]] = {
        "cpu": CpuReader,
        "cpu_core": CpuCoreReader,
        "memory": lambda: read_memory,
        "swap": lambda: read_swap,
        "load": lambda: make_load_reader(paths),
        "disk_usage": lambda: make_disk_usage_reader(paths),
        "disk_io": lambda: make_disk_io_reader(paths),
        "network": lambda: make_network_reader(paths),
        "filesystem": lambda: make_filesystem_reader(paths),
        "uptime": lambda: make_uptime_reader(paths),
        "processes": lambda: make_processes_reader(paths),
    }
    return factories[kind]()

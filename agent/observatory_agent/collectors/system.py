"""Host collectors: cpu, per-core cpu, memory, swap, load, disks, network, inodes, uptime, processes.

Every reader here is blocking and runs in its collector's own thread (``guard.Guard``). CPU usage comes
from the difference of CPU times between two cycles — no sleeping call — so the first
cycle of ``cpu`` and ``cpu_core`` yields nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import psutil
import structlog

from observatory_agent.collectors import registry
from observatory_agent.collectors.base import COUNTER, GAUGE, FunctionCollector, Sample
from observatory_agent.collectors.host import HostPaths

log = structlog.get_logger("observatory_agent.collectors.system")

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
NETWORK_FILESYSTEMS: Final = re.compile(
    r"^(nfs4?|cifs|smb3?|ceph|glusterfs|9p|afs|lustre|gpfs|beegfs|ocfs2|gfs2|davfs|sshfs|fuse\..*|fuse)$"
)
"""Filesystems whose statvfs asks a server (or a user process) and can hang: these go through the helper."""
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


_OCTAL: Final = re.compile(r"\\([0-7]{3})")


def _unescape_mount(text: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    if "\\" not in text:
        return text
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def real_mounts(
    paths: HostPaths,
    exclude_mounts: re.Pattern[str] = IGNORED_MOUNTS,
    exclude_fstypes: re.Pattern[str] | None = None,
    *,
    text: str | None = None,
) -> list[tuple[str, str, str]]:
    """``(device, mountpoint, fstype)`` of storage mounts, one per device, pseudo filesystems excluded."""
    seen: set[str] = set()
    out: list[tuple[str, str, str]] = []
    for line in (paths.mounts_file().read_text() if text is None else text).splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        device, mountpoint, fstype = _unescape_mount(parts[0]), _unescape_mount(parts[1]), parts[2]
        if exclude_fstypes is None:
            if fstype in PSEUDO_FILESYSTEMS:
                continue
        elif exclude_fstypes.match(fstype):
            continue
        if exclude_mounts.match(mountpoint):
            continue
        # tmpfs has no backing device, so each mount counts; a bind mount repeats its device.
        key = mountpoint if fstype == "tmpfs" else device
        if key in seen:
            continue
        seen.add(key)
        out.append((device, mountpoint, fstype))
    return out


MountStat = tuple[dict[str, str], os.statvfs_result]


class MountWalker:
    """One walk of the host's mounts per cycle, shared by disk_usage and filesystem.

    A local filesystem answers ``statvfs`` from memory, on the loop. Network and FUSE
    filesystems (``NETWORK_FILESYSTEMS``) are asked one after another in a helper thread,
    watched from the loop: when ``timeout`` passes without the helper finishing another mount,
    that mount (a dead NFS server) is marked stuck, skipped — and counted in ``skipped`` —
    until its call returns, as node_exporter's filesystem collector does; the helper it holds
    is abandoned and a fresh one takes the remaining mounts. A walk younger than ``max_age`` is
    reused, so the second collector of a cycle gets the first one's result.
    """

    def __init__(
        self,
        paths: HostPaths,
        *,
        exclude_mounts: re.Pattern[str] = IGNORED_MOUNTS,
        exclude_fstypes: re.Pattern[str] | None = None,
        timeout: float = 1.0,
        max_age: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = paths
        self.exclude_mounts = exclude_mounts
        self.exclude_fstypes = exclude_fstypes
        self.timeout = timeout
        self.max_age = max_age
        self.skipped = 0
        """Stat calls skipped because their mount was stuck (cumulative)."""
        self._clock = clock
        self._lock = asyncio.Lock()
        self._at = -math.inf
        self._result: list[MountStat] = []
        self._stuck: dict[str, asyncio.Future[None]] = {}
        self._helper: concurrent.futures.ThreadPoolExecutor | None = None
        self._mounts_text = ""
        self._mounts: list[tuple[str, str, str]] = []

    def _real_mounts(self) -> list[tuple[str, str, str]]:
        """``real_mounts``, parsed again only when the mount table changed (it rarely does)."""
        text = self.paths.mounts_file().read_text()
        if text != self._mounts_text:
            self._mounts = real_mounts(self.paths, self.exclude_mounts, self.exclude_fstypes, text=text)
            self._mounts_text = text
        return self._mounts

    @property
    def stuck(self) -> list[str]:
        return sorted(m for m, f in self._stuck.items() if not f.done())

    async def stats(self) -> list[MountStat]:
        async with self._lock:
            if self._clock() - self._at >= self.max_age:
                self._result = await self._walk()
                self._at = self._clock()
            return self._result

    def _stat_all(self, mounts: Sequence[tuple[str, str, str]], done: list[tuple[tuple[str, str, str], Any]]) -> None:
        for mount in mounts:
            try:
                st: os.statvfs_result | None = os.statvfs(self.paths.host_path(mount[1]))
            except OSError:
                st = None  # unmounted between listing and stat, or not visible from here
            done.append((mount, st))

    async def _walk(self) -> list[MountStat]:  # noqa: PLR0912 - local, stuck and helper mounts in one pass
        todo = []
        local: list[MountStat] = []
        for mount in self._real_mounts():
            stuck = self._stuck.get(mount[1])
            if stuck is not None and not stuck.done():
                self.skipped += 1
                continue
            if stuck is not None:
                del self._stuck[mount[1]]
                log.info("mount_answers_again", mountpoint=mount[1])
            if NETWORK_FILESYSTEMS.match(mount[2]):
                todo.append(mount)
                continue
            try:
                st = os.statvfs(self.paths.host_path(mount[1]))
            except OSError:
                continue  # unmounted between listing and stat, or not visible from here
            local.append(({"device": mount[0], "mountpoint": mount[1], "fstype": mount[2]}, st))
        out: list[MountStat] = local
        if not todo:
            return out
        loop = asyncio.get_running_loop()
        while todo:
            if self._helper is None:
                self._helper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="statvfs")
            done: list[tuple[tuple[str, str, str], Any]] = []
            walk = loop.run_in_executor(self._helper, self._stat_all, todo, done)
            stuck_at = None
            while not walk.done():
                seen = len(done)
                await asyncio.wait({walk}, timeout=self.timeout)
                if not walk.done() and len(done) == seen:
                    stuck_at = seen
                    break
            for (device, mountpoint, fstype), st in list(done):
                if st is not None:
                    out.append(({"device": device, "mountpoint": mountpoint, "fstype": fstype}, st))
            if stuck_at is None:
                break
            device, mountpoint, _ = todo[stuck_at]
            self._stuck[mountpoint] = walk
            self.skipped += 1
            log.warning("mount_stuck_skipping", mountpoint=mountpoint, device=device, timeout=self.timeout)
            self._helper.shutdown(wait=False)  # its one thread waits in the kernel; leave it there
            self._helper = None
            todo = todo[stuck_at + 1 :]
        return out


class DiskUsageCollector:
    """``system.disk.*``: space per mount, from the shared walk."""

    def __init__(self, name: str, walker: MountWalker) -> None:
        self.name = name
        self.walker = walker

    def skipped(self) -> int:
        return self.walker.skipped

    async def collect(self) -> list[Sample]:
        out: list[Sample] = []
        for tags, st in await self.walker.stats():
            if st.f_blocks == 0:
                continue
            total = st.f_blocks * st.f_frsize
            free = st.f_bfree * st.f_frsize
            avail = st.f_bavail * st.f_frsize
            used = total - free
            out += [
                Sample("system.disk.total", float(total), GAUGE, tags),
                Sample("system.disk.used", float(used), GAUGE, tags),
                Sample("system.disk.free", float(free), GAUGE, tags),
                Sample("system.disk.available", float(avail), GAUGE, tags),
                # df's definition: reserved blocks count as neither used nor available.
                Sample("system.disk.usage", _percent(used, used + avail) if used + avail else 0.0, GAUGE, tags),
            ]
        return out


class FilesystemCollector:
    """``system.filesystem.inodes.*``: inodes per mount, from the shared walk."""

    def __init__(self, name: str, walker: MountWalker) -> None:
        self.name = name
        self.walker = walker

    def skipped(self) -> int:
        return self.walker.skipped

    async def collect(self) -> list[Sample]:
        out: list[Sample] = []
        for tags, st in await self.walker.stats():
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


def make_disk_io_reader(paths: HostPaths, exclude: re.Pattern[str] = IGNORED_DISKS) -> Callable[[], list[Sample]]:
    # Sectors in /proc/diskstats are always 512 bytes, whatever the device's block size.
    sector = 512.0

    def read() -> list[Sample]:
        out: list[Sample] = []
        for line in (paths.proc / "diskstats").read_text().splitlines():
            f = line.split()
            if len(f) < 14 or exclude.match(f[2]):
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


_STATE_NAMES: Final = ("running", "sleeping", "blocked", "zombie", "stopped", "idle")


def make_processes_reader(paths: HostPaths) -> Callable[[], list[Sample]]:
    proc = str(paths.proc)
    states = {ord(k): v for k, v in _STATES.items()}

    def read() -> list[Sample]:
        # Hot: one stat file per process. os.open/read/close skip the file object, a third of the cost.
        counts = dict.fromkeys(_STATE_NAMES, 0)
        total = 0
        for name in os.listdir(proc):
            if not name.isdigit():
                continue
            try:
                fd = os.open(f"{proc}/{name}/stat", os.O_RDONLY)
            except OSError:
                continue  # the process exited between listing and opening
            try:
                stat = os.read(fd, 512)
            except OSError:
                continue
            finally:
                os.close(fd)
            total += 1
            # The command may contain spaces and parentheses; the state follows the last ')'.
            bucket = states.get(stat[stat.rfind(b")") + 2])
            if bucket is not None:
                counts[bucket] += 1
        out = [Sample("system.processes.total", float(total))]
        out += [Sample(f"system.processes.{k}", float(v)) for k, v in counts.items()]
        return out

    return read


# --- registration -----------------------------------------------------------------------------

_DISK: Final = ("device", "mountpoint", "fstype")
_MOUNT_OPTIONS: Final = {
    "exclude_mounts": "regex of mount points to skip (replaces the default, which skips /dev, /proc, /sys, "
    "container and kubelet pod mounts)",
    "exclude_fstypes": "regex of filesystem types to skip (replaces the default list of pseudo filesystems)",
    "mount_timeout": "seconds one mount's statvfs may take before it is skipped as stuck (default 1)",
}


def _walker(ctx: registry.BuildContext) -> MountWalker:
    """The build's one walker for these options: disk_usage and filesystem with equal options share it."""
    exclude_mounts = ctx.regex_option("exclude_mounts", IGNORED_MOUNTS)
    fstypes = ctx.config.options.get("exclude_fstypes")
    exclude_fstypes = ctx.regex_option("exclude_fstypes", IGNORED_MOUNTS) if fstypes is not None else None
    timeout = ctx.float_option("mount_timeout", 1.0, minimum=0.001)
    key = ("mount-walker", exclude_mounts.pattern, fstypes, timeout)
    walker = ctx.shared.get(key)
    if not isinstance(walker, MountWalker):
        walker = MountWalker(ctx.paths, exclude_mounts=exclude_mounts, exclude_fstypes=exclude_fstypes, timeout=timeout)
        ctx.shared[key] = walker
    return walker


def _metrics(kind: str, *rows: tuple[str, str, str, tuple[str, ...], str]) -> tuple[registry.MetricInfo, ...]:
    return tuple(registry.MetricInfo(name, unit, k, tags, kind, text) for name, unit, k, tags, text in rows)


def _reader(read: Callable[[registry.BuildContext], Callable[[], Sequence[Sample]]]) -> registry.Factory:
    return lambda ctx: FunctionCollector(ctx.config.name, read(ctx))


registry.register(
    registry.Kind(
        "cpu",
        _reader(lambda _ctx: CpuReader()),
        _metrics(
            "cpu",
            ("system.cpu.usage", "%", "G", (), "Busy time share of all CPUs since the last cycle"),
            ("system.cpu.user", "%", "G", (), "User time share"),
            ("system.cpu.system", "%", "G", (), "Kernel time share"),
            ("system.cpu.iowait", "%", "G", (), "I/O wait share (Linux)"),
            ("system.cpu.steal", "%", "G", (), "Time stolen by the hypervisor (Linux)"),
        ),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "cpu_core",
        _reader(lambda _ctx: CpuCoreReader()),
        _metrics("cpu_core", ("system.cpu.core.usage", "%", "G", ("core",), "Busy share per logical core")),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "memory",
        _reader(lambda _ctx: read_memory),
        _metrics(
            "memory",
            ("system.memory.total", "bytes", "G", (), "Physical memory"),
            ("system.memory.available", "bytes", "G", (), "Memory available without swapping"),
            ("system.memory.used", "bytes", "G", (), "Memory in use (psutil's definition)"),
            ("system.memory.free", "bytes", "G", (), "Unused memory"),
            ("system.memory.cached", "bytes", "G", (), "Page cache"),
            ("system.memory.buffers", "bytes", "G", (), "Buffers"),
            ("system.memory.usage", "%", "G", (), "(total - available) / total"),
        ),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "swap",
        _reader(lambda _ctx: read_swap),
        _metrics(
            "swap",
            ("system.swap.total", "bytes", "G", (), "Swap size"),
            ("system.swap.used", "bytes", "G", (), "Swap in use"),
            ("system.swap.free", "bytes", "G", (), "Swap free"),
            ("system.swap.usage", "%", "G", (), "Swap in use share"),
            ("system.swap.in", "bytes/s", "C", (), "Swapped in from disk"),
            ("system.swap.out", "bytes/s", "C", (), "Swapped out to disk"),
        ),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "load",
        _reader(lambda ctx: make_load_reader(ctx.paths)),
        _metrics(
            "load",
            ("system.load.1", "", "G", (), "1-minute load average"),
            ("system.load.5", "", "G", (), "5-minute load average"),
            ("system.load.15", "", "G", (), "15-minute load average"),
        ),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "disk_usage",
        lambda ctx: DiskUsageCollector(ctx.config.name, _walker(ctx)),
        _metrics(
            "disk_usage",
            ("system.disk.total", "bytes", "G", _DISK, "Filesystem size"),
            ("system.disk.used", "bytes", "G", _DISK, "Used space (size - free)"),
            ("system.disk.free", "bytes", "G", _DISK, "Free space, including blocks reserved for root (f_bfree)"),
            (
                "system.disk.available",
                "bytes",
                "G",
                _DISK,
                "Space available to unprivileged users (f_bavail, df's Avail)",
            ),
            ("system.disk.usage", "%", "G", _DISK, "used / (used + available), as df"),
        ),
        options=_MOUNT_OPTIONS,
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "disk_io",
        _reader(lambda ctx: make_disk_io_reader(ctx.paths, ctx.regex_option("exclude_devices", IGNORED_DISKS))),
        _metrics(
            "disk_io",
            ("system.disk.io.reads", "ops/s", "C", ("device",), "Completed reads"),
            ("system.disk.io.writes", "ops/s", "C", ("device",), "Completed writes"),
            ("system.disk.io.read_bytes", "bytes/s", "C", ("device",), "Bytes read"),
            ("system.disk.io.write_bytes", "bytes/s", "C", ("device",), "Bytes written"),
            ("system.disk.io.busy_time", "s/s", "C", ("device",), "Time busy doing I/O (1.0 = 100%)"),
        ),
        options={"exclude_devices": "regex of devices to skip (replaces the default: partitions, loop, ram, dm)"},
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "network",
        _reader(lambda ctx: make_network_reader(ctx.paths, ctx.regex_option("exclude_interfaces", IGNORED_INTERFACES))),
        _metrics(
            "network",
            ("system.network.bytes_recv", "bytes/s", "C", ("interface",), "Bytes received"),
            ("system.network.bytes_sent", "bytes/s", "C", ("interface",), "Bytes sent"),
            ("system.network.packets_recv", "packets/s", "C", ("interface",), "Packets received"),
            ("system.network.packets_sent", "packets/s", "C", ("interface",), "Packets sent"),
            ("system.network.errors_in", "errors/s", "C", ("interface",), "Receive errors"),
            ("system.network.errors_out", "errors/s", "C", ("interface",), "Transmit errors"),
            ("system.network.drops_in", "packets/s", "C", ("interface",), "Received packets dropped"),
            ("system.network.drops_out", "packets/s", "C", ("interface",), "Sent packets dropped"),
        ),
        options={
            "exclude_interfaces": "regex of interfaces to skip (replaces the default: lo, veth, cni, docker, ...)"
        },
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "filesystem",
        lambda ctx: FilesystemCollector(ctx.config.name, _walker(ctx)),
        _metrics(
            "filesystem",
            ("system.filesystem.inodes.total", "inodes", "G", _DISK, "Inodes"),
            ("system.filesystem.inodes.used", "inodes", "G", _DISK, "Inodes in use"),
            ("system.filesystem.inodes.free", "inodes", "G", _DISK, "Free inodes"),
            ("system.filesystem.inodes.usage", "%", "G", _DISK, "Inodes in use share"),
        ),
        options=_MOUNT_OPTIONS,
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "uptime",
        _reader(lambda ctx: make_uptime_reader(ctx.paths)),
        _metrics("uptime", ("system.uptime", "s", "G", (), "Seconds since boot")),
        trusted=True,
        inline=True,
    )
)
registry.register(
    registry.Kind(
        "processes",
        _reader(lambda ctx: make_processes_reader(ctx.paths)),
        _metrics(
            "processes",
            ("system.processes.total", "processes", "G", (), "All processes"),
            ("system.processes.running", "processes", "G", (), "State R"),
            ("system.processes.sleeping", "processes", "G", (), "State S"),
            ("system.processes.blocked", "processes", "G", (), "State D (uninterruptible)"),
            ("system.processes.zombie", "processes", "G", (), "State Z"),
            ("system.processes.stopped", "processes", "G", (), "State T/t"),
            ("system.processes.idle", "processes", "G", (), "State I (kernel idle threads)"),
        ),
        trusted=True,
        inline=True,
    )
)

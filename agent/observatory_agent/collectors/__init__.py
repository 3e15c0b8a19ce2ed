"""Collectors read the host and applications; ``METRICS`` lists every metric they produce.

Every series also carries ``host``, ``node`` and ``cluster`` plus the configured tags. Counters
(C) are written as per-second rates of the running total; gauges (G) as read. Each metric is
written as one InfluxDB measurement with fields count, sum, mean, min, max, last and the
configured quantiles (p50, p95, p99 by default), timestamped at the window end.
"""

from __future__ import annotations

from typing import Final, NamedTuple


class MetricInfo(NamedTuple):
    name: str
    unit: str
    kind: str
    """G: gauge, written as read; C: counter, written as a per-second rate."""
    tags: tuple[str, ...]
    collector: str
    help: str


_DISK = ("device", "mountpoint", "fstype")

METRICS: Final[tuple[MetricInfo, ...]] = (
    MetricInfo("system.cpu.usage", "%", "G", (), "cpu", "Busy time share of all CPUs since the last cycle"),
    MetricInfo("system.cpu.user", "%", "G", (), "cpu", "User time share"),
    MetricInfo("system.cpu.system", "%", "G", (), "cpu", "Kernel time share"),
    MetricInfo("system.cpu.iowait", "%", "G", (), "cpu", "I/O wait share (Linux)"),
    MetricInfo("system.cpu.steal", "%", "G", (), "cpu", "Time stolen by the hypervisor (Linux)"),
    MetricInfo("system.cpu.core.usage", "%", "G", ("core",), "cpu_core", "Busy share per logical core"),
    MetricInfo("system.memory.total", "bytes", "G", (), "memory", "Physical memory"),
    MetricInfo("system.memory.available", "bytes", "G", (), "memory", "Memory available without swapping"),
    MetricInfo("system.memory.used", "bytes", "G", (), "memory", "Memory in use (psutil's definition)"),
    MetricInfo("system.memory.free", "bytes", "G", (), "memory", "Unused memory"),
    MetricInfo("system.memory.cached", "bytes", "G", (), "memory", "Page cache"),
    MetricInfo("system.memory.buffers", "bytes", "G", (), "memory", "Buffers"),
    MetricInfo("system.memory.usage", "%", "G", (), "memory", "(total - available) / total"),
    MetricInfo("system.swap.total", "bytes", "G", (), "swap", "Swap size"),
    MetricInfo("system.swap.used", "bytes", "G", (), "swap", "Swap in use"),
    MetricInfo("system.swap.free", "bytes", "G", (), "swap", "Swap free"),
    MetricInfo("system.swap.usage", "%", "G", (), "swap", "Swap in use share"),
    MetricInfo("system.swap.in", "bytes/s", "C", (), "swap", "Swapped in from disk"),
    MetricInfo("system.swap.out", "bytes/s", "C", (), "swap", "Swapped out to disk"),
    MetricInfo("system.load.1", "", "G", (), "load", "1-minute load average"),
    MetricInfo("system.load.5", "", "G", (), "load", "5-minute load average"),
    MetricInfo("system.load.15", "", "G", (), "load", "15-minute load average"),
    MetricInfo("system.disk.total", "bytes", "G", _DISK, "disk_usage", "Filesystem size"),
    MetricInfo("system.disk.used", "bytes", "G", _DISK, "disk_usage", "Used space"),
    MetricInfo("system.disk.free", "bytes", "G", _DISK, "disk_usage", "Space available to unprivileged users"),
    MetricInfo("system.disk.usage", "%", "G", _DISK, "disk_usage", "used / (used + free), as df"),
    MetricInfo("system.disk.io.reads", "ops/s", "C", ("device",), "disk_io", "Completed reads"),
    MetricInfo("system.disk.io.writes", "ops/s", "C", ("device",), "disk_io", "Completed writes"),
    MetricInfo("system.disk.io.read_bytes", "bytes/s", "C", ("device",), "disk_io", "Bytes read"),
    MetricInfo("system.disk.io.write_bytes", "bytes/s", "C", ("device",), "disk_io", "Bytes written"),
    MetricInfo("system.disk.io.busy_time", "s/s", "C", ("device",), "disk_io", "Time busy doing I/O (1.0 = 100%)"),
    MetricInfo("system.network.bytes_recv", "bytes/s", "C", ("interface",), "network", "Bytes received"),
    MetricInfo("system.network.bytes_sent", "bytes/s", "C", ("interface",), "network", "Bytes sent"),
    MetricInfo("system.network.packets_recv", "packets/s", "C", ("interface",), "network", "Packets received"),
    MetricInfo("system.network.packets_sent", "packets/s", "C", ("interface",), "network", "Packets sent"),
    MetricInfo("system.network.errors_in", "errors/s", "C", ("interface",), "network", "Receive errors"),
    MetricInfo("system.network.errors_out", "errors/s", "C", ("interface",), "network", "Transmit errors"),
    MetricInfo("system.network.drops_in", "packets/s", "C", ("interface",), "network", "Received packets dropped"),
    MetricInfo("system.network.drops_out", "packets/s", "C", ("interface",), "network", "Sent packets dropped"),
    MetricInfo("system.filesystem.inodes.total", "inodes", "G", _DISK, "filesystem", "Inodes"),
    MetricInfo("system.filesystem.inodes.used", "inodes", "G", _DISK, "filesystem", "Inodes in use"),
    MetricInfo("system.filesystem.inodes.free", "inodes", "G", _DISK, "filesystem", "Free inodes"),
    MetricInfo("system.filesystem.inodes.usage", "%", "G", _DISK, "filesystem", "Inodes in use share"),
    MetricInfo("system.uptime", "s", "G", (), "uptime", "Seconds since boot"),
    MetricInfo("system.processes.total", "processes", "G", (), "processes", "All processes"),
    MetricInfo("system.processes.running", "processes", "G", (), "processes", "State R"),
    MetricInfo("system.processes.sleeping", "processes", "G", (), "processes", "State S"),
    MetricInfo("system.processes.blocked", "processes", "G", (), "processes", "State D (uninterruptible)"),
    MetricInfo("system.processes.zombie", "processes", "G", (), "processes", "State Z"),
    MetricInfo("system.processes.stopped", "processes", "G", (), "processes", "State T/t"),
    MetricInfo("system.processes.idle", "processes", "G", (), "processes", "State I (kernel idle threads)"),
    MetricInfo("system.cpu.info", "1", "G", ("model", "vendor", "arch"), "cpuinfo", "Always 1; the CPU in tags"),
    MetricInfo("system.cpu.count", "cpus", "G", (), "cpuinfo", "Logical CPUs"),
    MetricInfo("system.cpu.frequency.advertised", "Hz", "G", (), "cpuinfo", "Advertised CPU frequency"),
    MetricInfo(
        "app.<sample>",
        "as exposed",
        "G/C",
        ("target", "<labels>"),
        "application",
        "Each scraped sample; counters, histogram and summary _count/_sum/_bucket become rates",
    ),
)
"""Every built-in metric: name, unit, gauge/counter, tags beyond host/node/cluster, source."""

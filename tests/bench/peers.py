"""The peer the agent is measured against: Debian's prometheus-node-exporter, and /proc readings of any process.

node_exporter runs with only the collector families the agent has (``NODE_EXPORTER_COLLECTORS``)
and without its own Go/process/promhttp metrics, so a scrape costs what collecting the host
costs, as the agent's cycle does:

======================  ==========================================================
agent collector         node_exporter collector
======================  ==========================================================
cpu, cpu_core           cpu (per-core times; the agent derives usage from them)
memory, swap            meminfo, vmstat (swap in/out come from /proc/vmstat)
load                    loadavg
disk_usage, filesystem  filesystem (size and inodes per mount)
disk_io                 diskstats
network                 netdev
uptime                  stat (node_boot_time_seconds)
processes               processes (process states)
======================  ==========================================================

The agent's ``cpuinfo`` (read once at start) has no per-scrape equivalent and is left out of
the per-cycle comparison.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

from observatory_agent.contract import SYSTEM_COLLECTORS
from tests.env import tools
from tests.env.procs import Process, free_port, wait_for

NODE_EXPORTER_COLLECTORS = (
    "cpu",
    "meminfo",
    "vmstat",
    "loadavg",
    "filesystem",
    "diskstats",
    "netdev",
    "stat",
    "processes",
)
AGENT_COLLECTORS = tuple(k for k in SYSTEM_COLLECTORS if k != "cpuinfo")
"""The agent's system collectors matching ``NODE_EXPORTER_COLLECTORS`` (all but ``cpuinfo``)."""

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of every thread of ``pid`` so far (``/proc/<pid>/stat``, clock ticks)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14 and 15)


def rss_bytes(pid: int) -> int:
    """Resident set size now (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class NodeExporter:
    """``prometheus-node-exporter`` on a loopback port, restricted to the agent's collector families."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.process = Process(
            "node-exporter",
            [
                tools.node_exporter(),
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.disable-exporter-metrics",
                "--collector.disable-defaults",
                *(f"--collector.{c}" for c in NODE_EXPORTER_COLLECTORS),
            ],
            log=log_dir / "node-exporter.log",
        )

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def start(self, timeout: float = 10.0) -> None:
        self.process.start()
        wait_for(self.scrape, timeout=timeout, what=f"node_exporter /metrics (log: {self.process.log})", interval=0.005)

    def scrape(self) -> bytes:
        with urllib.request.urlopen(self.url, timeout=10) as resp:
            body: bytes = resp.read()
            return body

    def stop(self) -> None:
        self.process.stop(grace=5.0)

    def version(self) -> str:
        """``node_exporter 1.5.0``."""
        out = subprocess.run([tools.node_exporter(), "--version"], capture_output=True, text=True, check=False)
        found = re.search(r"version (\S+)", out.stdout + out.stderr)
        return f"node_exporter {found.group(1) if found else '?'}"

"""CPU time per collection cycle against node_exporter's CPU time per scrape, same collector families.

Both sides run as their own processes on this machine in the same run; both are measured
the same way (utime + stime of every thread from ``/proc/<pid>/stat``) over ``BENCH_CYCLES``
cycles/scrapes after a warm-up, spaced by the same pause. See ``peers.py`` for the mapping
of collector families.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.conftest import ROOT, Report
from tests.bench.peers import NodeExporter, cpu_seconds

CYCLES = int(os.environ.get("BENCH_CYCLES", "300"))
SPACING = 0.02
"""Seconds between cycles: the CPU collector needs time to pass for a delta; a pause costs no CPU."""


def _node_exporter_per_scrape(log_dir: Path) -> tuple[float, int, str]:
    exporter = NodeExporter(log_dir)
    exporter.start()
    try:
        for _ in range(10):  # warm-up: first scrapes allocate caches and grow the heap
            exporter.scrape()
        cpu0 = cpu_seconds(exporter.pid)
        size = 0
        for _ in range(CYCLES):
            size = len(exporter.scrape())
            time.sleep(SPACING)
        return (cpu_seconds(exporter.pid) - cpu0) / CYCLES, size, exporter.version()
    finally:
        exporter.stop()


def _agent_per_cycle() -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "tests.bench.cycle_worker", str(CYCLES), str(SPACING)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_cpu_per_cycle_vs_node_exporter(report: Report, tmp_path: Path) -> None:
    peer, body_size, version = _node_exporter_per_scrape(tmp_path)
    ours = _agent_per_cycle()
    ratio = ours["cpu_per_cycle"] / peer
    report.add(
        f"CPU per collection cycle ({CYCLES} cycles, {ours['samples_per_cycle']:.0f} samples/cycle)",
        ours=f"{ours['cpu_per_cycle'] * 1e3:.2f} ms",
        peer=f"{version}: {peer * 1e3:.2f} ms/scrape ({body_size // 1024} KiB)",
        ratio=f"{ratio:.2f}",
        target="≤ 1.0",
        met=ratio <= 1.0,
    )

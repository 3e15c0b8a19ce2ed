"""The real ``observatory-agent run`` process against node_exporter, both running at once: CPU, RSS, start-up.

Measured on the agent as the image installs it (``agent_bin``: ``uv sync --frozen --no-dev``),
next to node_exporter restricted to the same collector families (``peers.py``), in one run.

CPU and RSS: the agent runs every built-in collector at a 1 s interval with 10 s windows —
ten times the production default's cycle rate — writing to the bed's real InfluxDB, for
``BENCH_AGENT_SECONDS`` (600 by default), while node_exporter is scraped every second. Over the
same span after a warm-up: each process's CPU time (utime + stime of all its threads, from
``/proc/<pid>/stat``) divided by the agent's own cycle count (``observatory_agent_cycles_total``)
and by node_exporter's scrape count. Everything the agent process does is in its number —
window close, line protocol, the durable buffer's fsync, the InfluxDB request, its own point,
its HTTP server. RSS: both processes' VmRSS at the end.

Start-up: from ``Popen`` to the first ``/readyz`` 200 (the agent is ready once its first cycle
has run, i.e. the first sample exists), polled every 5 ms; node_exporter's is ``Popen`` to its
first successful scrape. Median of ``STARTS`` starts each.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench.conftest import Report
from tests.bench.peers import NodeExporter, cpu_seconds, rss_bytes
from tests.env.influx import InfluxDB
from tests.env.procs import Process, free_port, terminate_group, wait_for

SECONDS = float(os.environ.get("BENCH_AGENT_SECONDS", "600"))
WARMUP = 30.0
CPU_TARGET = 0.5
RSS_TARGET = 55 * 1024 * 1024
STARTS = int(os.environ.get("BENCH_STARTS", "7"))
MB = 1024 * 1024


def _config(directory: Path, influx: InfluxDB | None, port: int, *, interval: str, window: str) -> Path:
    cfg: dict[str, Any] = {
        "interval": interval,
        "window": window,
        "buffer_dir": str(directory / "buffer"),
        "port": port,
    }
    if influx is not None:
        token = directory / "influx-token"
        token.write_text(influx.token)
        cfg["influxdb"] = {"url": influx.url, "org": influx.org, "bucket": influx.bucket, "token_file": str(token)}
    path = directory / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OBSERVATORY_", "INFLUXDB_"))}
    env["NODE_NAME"] = "bench-agent"
    return env


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _cycles(port: int) -> float:
    for line in _get(port, "/metrics")[1].decode().splitlines():
        if line.startswith("observatory_agent_cycles_total "):
            return float(line.split()[1])
    raise KeyError("observatory_agent_cycles_total")


@pytest.mark.timeout(SECONDS + 240)
def test_cpu_per_cycle_and_rss_side_by_side_with_node_exporter(
    report: Report, influxdb: InfluxDB, agent_bin: Path, tmp_path: Path
) -> None:
    port = free_port()
    agent = Process(
        "agent",
        [agent_bin, "run", "--config", _config(tmp_path, influxdb, port, interval="1s", window="10s")],
        log=tmp_path / "agent.log",
        env=_env(),
    )
    exporter = NodeExporter(tmp_path)
    stop = threading.Event()
    scrapes = [0]
    size = [0]

    def scrape_every_second() -> None:
        while not stop.wait(1.0):
            size[0] = len(exporter.scrape())
            scrapes[0] += 1

    agent.start()
    exporter.start()
    scraper = threading.Thread(target=scrape_every_second, daemon=True)
    scraper.start()
    try:
        assert agent.pid is not None
        wait_for(lambda: _get(port, "/readyz")[0] == 200, timeout=30, what=f"agent ready (log: {agent.log})")
        time.sleep(WARMUP)  # imports, first writes, caches: start-up is measured below, not here
        cpu0 = (cpu_seconds(agent.pid), cpu_seconds(exporter.pid))
        cycles0, scrapes0 = _cycles(port), scrapes[0]
        deadline = time.monotonic() + SECONDS
        peak = 0
        while time.monotonic() < deadline:
            assert agent.alive(), agent.tail()
            peak = max(peak, rss_bytes(agent.pid))
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        cpu1 = (cpu_seconds(agent.pid), cpu_seconds(exporter.pid))
        cycles, n_scrapes = _cycles(port) - cycles0, scrapes[0] - scrapes0
        ours_rss, theirs_rss = rss_bytes(agent.pid), rss_bytes(exporter.pid)
        status = json.loads(_get(port, "/status")[1])
    finally:
        stop.set()
        scraper.join(timeout=5)
        exporter.stop()
        agent.stop(grace=15)
    assert status["last_successful_write"] is not None, status
    assert status["buffered_points"] == 0, status
    assert status["errors"]["collectors"] == {}, status
    ours = (cpu1[0] - cpu0[0]) / cycles
    theirs = (cpu1[1] - cpu0[1]) / n_scrapes
    ratio = ours / theirs
    report.add(
        f"CPU per cycle of the real agent process ({SECONDS:.0f} s, 1 s interval, 10 s windows written to influxd), "
        "node_exporter scraped every second at the same time",
        ours=f"{ours * 1e3:.2f} ms ({cycles:.0f} cycles)",
        peer=f"{exporter.version()}: {theirs * 1e3:.2f} ms/scrape ({n_scrapes} scrapes, {size[0] // 1024} KiB)",
        ratio=f"{ratio:.2f}",
        target=f"≤ {CPU_TARGET}",
        met=ratio <= CPU_TARGET,
        key="agent.cpu_per_cycle",
        group="agent",
        values={"ours_ms": ours * 1e3, "peer_ms": theirs * 1e3, "ratio": ratio, "cycles": cycles, "scrapes": n_scrapes},
    )
    report.add(
        f"RSS of the same agent process after {SECONDS:.0f} s (peak over the run)",
        ours=f"{ours_rss / MB:.1f} MB (peak {peak / MB:.1f})",
        peer=f"node_exporter {theirs_rss / MB:.1f} MB",
        ratio=f"{ours_rss / theirs_rss:.2f}",
        target="≤ 55 MB",
        met=ours_rss <= RSS_TARGET and peak <= RSS_TARGET,
        key="agent.rss",
        group="agent",
        values={"ours_mb": ours_rss / MB, "peak_mb": peak / MB, "peer_mb": theirs_rss / MB},
    )
    assert ratio <= CPU_TARGET, (
        f"CPU per cycle {ours * 1e3:.2f} ms is {ratio:.2f}× node_exporter's {theirs * 1e3:.2f} ms"
    )
    assert peak <= RSS_TARGET, f"RSS peaked at {peak / MB:.1f} MB"


def _time_to_ready(argv: list[str], ready: Any, log: Path, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    popen = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    try:
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {popen.returncode}: {log.read_text()[-2000:]}")
            try:
                if ready():
                    return time.perf_counter() - started
            except OSError:
                pass
            if time.perf_counter() - started > 30:
                raise TimeoutError(f"{argv[0]} not ready after 30 s")
            time.sleep(0.005)
    finally:
        terminate_group(popen, grace=10)


def test_start_to_first_sample(report: Report, influxdb: InfluxDB, agent_bin: Path, tmp_path: Path) -> None:
    ours, theirs = [], []
    exporter = NodeExporter(tmp_path)  # for its argv and port only
    for i in range(STARTS):
        port = free_port()
        run_dir = tmp_path / f"run{i}"
        run_dir.mkdir()
        config = _config(run_dir, influxdb, port, interval="10s", window="1m")
        argv = [str(agent_bin), "run", "--config", str(config)]
        ours.append(_time_to_ready(argv, lambda p=port: _get(p, "/readyz")[0] == 200, run_dir / "agent.log", _env()))
        theirs.append(_time_to_ready(exporter.process.argv, exporter.scrape, run_dir / "node-exporter.log"))
    median, peer = statistics.median(ours), statistics.median(theirs)
    report.add(
        f"process start to first sample (median of {STARTS}; /readyz after the first cycle)",
        key="agent.start_to_first_sample",
        group="agent",
        ours=f"{median * 1e3:.0f} ms (max {max(ours) * 1e3:.0f})",
        peer=f"node_exporter first scrape {peer * 1e3:.0f} ms",
        ratio=f"{median / peer:.1f}",
        target="≤ 1 s",
        met=median <= 1.0,
    )
    assert median <= 1.0

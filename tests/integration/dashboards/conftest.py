"""Real agents writing node metrics to the bed's InfluxDB under a cluster of their own, plus seeded self-telemetry.

Real ``observatory-agent run`` processes (every system collector, 1 s interval, 2 s window) write
node metrics to the bed's influxd under a cluster name of this module's own, so the dashboards'
``cluster`` variable isolates them from other tests' points in the shared bucket.
"""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from observatory_agent.contract import SYSTEM_COLLECTORS
from tests.env.fixtures import wait_until
from tests.env.influx import InfluxDB
from tests.env.procs import free_port
from tests.integration.agent.conftest import WINDOW, AgentProcess, flux_string, query

COLLECTORS = tuple(c for c in SYSTEM_COLLECTORS if c != "cpuinfo")
"""Every collector a node panel reads (cpuinfo's metrics have no panel)."""
ROLLUP = "cluster.cpu.usage"
RULE = "cpu-by-zone"
ZONES = ("zone-a", "zone-b")
ROLLUP_FUNCTIONS = ("count", "mean", "max", "p95")


@dataclass(frozen=True)
class Written:
    cluster: str
    nodes: tuple[str, ...]
    start: dt.datetime


def _count(influx: InfluxDB, cluster: str, measurement: str, since: float) -> dict[str, int]:
    flux = f"""
from(bucket: {flux_string(influx.bucket)})
  |> range(start: {int(since) - 5})
  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and r.cluster == {flux_string(cluster)})
  |> filter(fn: (r) => r._field == "count")
  |> group(columns: ["node"])
  |> count()
"""
    return {r["node"]: int(r["_value"]) for r in query(influx, flux)}


def seed_self_telemetry(influx: InfluxDB, cluster: str, nodes: tuple[str, ...], now: float) -> None:
    """SEEDED, not yet written by real processes on this branch: ``observatory.agent`` (agents),
    ``observatory.processor`` and a roll-up measurement (processors), exactly in the schema README's
    "Grafana" section gives. Replace with the real writers (the agents above already run; a
    processor from an AggregationRule) once they write these.
    """
    from influxdb_client.client.write_api import SYNCHRONOUS

    lines: list[str] = []
    ends = [int(now // WINDOW * WINDOW - WINDOW * k) for k in range(8, 0, -1)]
    for k, end in enumerate(ends, start=1):
        ns = end * 1_000_000_000
        for node in nodes:
            lines.append(
                f"observatory.agent,cluster={cluster},collector=nodes,host={node},namespace=itest,node={node} "
                f"series=58i,samples={58 * 2 * k}i,buffered_points={k % 3}i,write_errors={k // 2}i,"
                f"dropped_samples={k}i,dropped_series={k // 3}i,collector_errors=0i,"
                f"last_write_age_seconds={0.5 + k / 10} {ns}"
            )
        lines.append(
            f"observatory.processor,cluster={cluster},namespace=itest,rule={RULE} "
            f"windows_written={k}i,series={len(ZONES)}i,nodes={len(nodes)}i,late_partials={k // 4}i,"
            f"dropped_partials=0i,dropped_groups={k // 5}i,buffered_points=0i,write_errors=0i {ns}"
        )
        for z, zone in enumerate(ZONES):
            mean = 20.0 + z * 10 + k
            lines.append(
                f"{ROLLUP},cluster={cluster},rule={RULE},zone={zone} "
                f"count={4 * len(nodes)}i,mean={mean},max={mean + 5},p95={mean + 4},"
                f'nodes={len(nodes)}i,quantile_method="exact" {ns}'
            )
    client = influx.client()
    try:
        client.write_api(write_options=SYNCHRONOUS).write(bucket=influx.bucket, org=influx.org, record=lines)
    finally:
        client.close()


@pytest.fixture(scope="module")
def written(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    run = secrets.token_hex(3)
    cluster = f"itest-dashboards-{run}"
    started = time.time()
    agents: list[AgentProcess] = []
    try:
        for i in (1, 2):
            directory = tmp_path_factory.mktemp(f"agent-{i}")
            node = f"dash-{run}-node-{i}"
            agent = AgentProcess(
                directory, node, run, free_port(), influxdb, collectors=COLLECTORS, env={"CLUSTER_NAME": cluster}
            )
            agents.append(agent)
            agent.start()
        nodes = tuple(a.node for a in agents)

        # Counters become rates from the second cycle on: wait for a few windows of counters and gauges.
        def enough() -> bool:
            for measurement in ("system.cpu.usage", "system.disk.io.reads", "system.network.bytes_recv"):
                counts = _count(influxdb, cluster, measurement, started)
                if set(counts) != set(nodes) or min(counts.values()) < 3:
                    return False
            return True

        wait_until(enough, timeout=90, what="three windows of node metrics from both agents")
        seed_self_telemetry(influxdb, cluster, nodes, time.time())
        yield Written(cluster, nodes, dt.datetime.fromtimestamp(started - 60, dt.UTC))
    finally:
        for agent in agents:
            agent.stop()

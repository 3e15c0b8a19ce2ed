"""Real agents feeding a real processor, writing to the bed's InfluxDB under a cluster of their own.

Two ``observatory-agent run`` processes (every system collector, 1 s interval, 2 s window) write
node metrics and their own ``observatory.agent`` point each window, and send partials of
``system.cpu.usage`` to one ``observatory-processor run`` (an AggregationRule grouping by
``zone``), which writes the roll-up measurement and ``observatory.processor``. Nothing is seeded:
every panel reads what the product writes. The cluster name is this module's own, so the
dashboards' ``cluster`` variable isolates these points from other tests' in the shared bucket.
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
from tests.integration.agent.conftest import AgentProcess, flux_string, query
from tests.integration.processor.conftest import RULE_WINDOW, ProcessorProcess

COLLECTORS = tuple(c for c in SYSTEM_COLLECTORS if c != "cpuinfo")
"""Every collector a node panel reads (cpuinfo's metrics have no panel)."""
ZONES = ("zone-a", "zone-b")
ROLLUP_FUNCTIONS = ("count", "mean", "max", "p95")
ROLLED_UP = "system.cpu.usage"
COLLECTOR = "nodes"
"""The agents' ObservatoryCollector name (their config's ``collector``: the ``collector`` tag)."""
NAMESPACE = "itest"


@dataclass(frozen=True)
class Written:
    cluster: str
    nodes: tuple[str, ...]
    rule: str
    rollup: str
    """The rule's output measurement."""
    run: str
    """The ``run`` tag every agent point carries."""
    start: dt.datetime


def _count(influx: InfluxDB, cluster: str, measurement: str, field: str, since: float, by: str) -> dict[str, int]:
    flux = f"""
from(bucket: {flux_string(influx.bucket)})
  |> range(start: {int(since) - 5})
  |> filter(fn: (r) => r._measurement == {flux_string(measurement)} and r.cluster == {flux_string(cluster)})
  |> filter(fn: (r) => r._field == {flux_string(field)})
  |> group(columns: [{flux_string(by)}])
  |> count()
"""
    return {r[by]: int(r["_value"]) for r in query(influx, flux)}


@pytest.fixture(scope="module")
def written(influxdb: InfluxDB, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Written]:
    run = secrets.token_hex(3)
    cluster = f"itest-dashboards-{run}"
    rule = f"cpu-by-zone-{run}"
    rollup = f"itest.dashboards.cpu.{run}"
    started = time.time()
    processor = ProcessorProcess(
        tmp_path_factory.mktemp("processor"),
        rule,
        run,
        free_port(),
        influxdb,
        rule=rule,
        spec={
            "namespace": NAMESPACE,
            "cluster": cluster,
            "metrics": [ROLLED_UP],
            "match_tags": {"run": run},
            "group_by": ["zone"],
            "functions": list(ROLLUP_FUNCTIONS),
            "output": {"measurement": rollup},
        },
    )
    agents: list[AgentProcess] = []
    try:
        processor.start()
        target = {
            "rule": rule,
            "url": processor.url,
            "metrics": [ROLLED_UP],
            "match_tags": {"run": run},
            "group_by": ["zone"],
            "window": f"{RULE_WINDOW:g}s",
        }
        for i, zone in enumerate(ZONES, start=1):
            agent = AgentProcess(
                tmp_path_factory.mktemp(f"agent-{i}"),
                f"dash-{run}-node-{i}",
                run,
                free_port(),
                influxdb,
                {"zone": zone},
                collectors=COLLECTORS,
                env={"CLUSTER_NAME": cluster},
                extra={"collector": COLLECTOR, "namespace": NAMESPACE, "processors": [target]},
            )
            agents.append(agent)
            agent.start()
        nodes = tuple(a.node for a in agents)

        # Counters become rates from the second cycle on, and a counter panel's derivative needs two
        # points: wait for a few windows of counters, gauges, the agents' and the processor's own points.
        def enough() -> bool:
            for measurement, field in (
                ("system.cpu.usage", "count"),
                ("system.disk.io.reads", "count"),
                ("system.network.bytes_recv", "count"),
                ("observatory.agent", "samples"),
            ):
                counts = _count(influxdb, cluster, measurement, field, started, "node")
                if set(counts) != set(nodes) or min(counts.values()) < 3:
                    return False
            for measurement, field, by, wanted in (
                (rollup, "count", "zone", set(ZONES)),
                ("observatory.processor", "windows_written", "rule", {rule}),
            ):
                counts = _count(influxdb, cluster, measurement, field, started, by)
                if set(counts) != wanted or min(counts.values()) < 3:
                    return False
            return True

        wait_until(enough, timeout=120, what="three windows from both agents and three roll-up windows per zone")
        yield Written(cluster, nodes, rule, rollup, run, dt.datetime.fromtimestamp(started - 60, dt.UTC))
    finally:
        for agent in agents:
            agent.stop()
        processor.stop()

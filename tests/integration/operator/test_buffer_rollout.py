"""Real agents' buffers live on the node: windows buffered during an InfluxDB outage survive two rollouts.

Agents of one collector write to the bed's InfluxDB through a fault proxy. The proxy resets every
connection (an outage) until the agents hold buffered points, then the pod template changes twice:
once rolled with ``maxSurge`` (the new agent starts while the old one still owns the buffer
directory, and must take it over without waiting for it: the old pod is only stopped once the new
one is ready), once with ``maxUnavailable`` (the old pod stops first, the new one finds its buffer on
the node). Then InfluxDB answers again, and every 10 s window of every node must be in InfluxDB
exactly once, from before the outage to after it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from observatory_agent.contract import DEFAULT_METRICS_PORT
from observatory_agent.runtime import STATUS_SCHEMA_VERSION
from tests.env.controlplane import ControlPlane
from tests.env.faultproxy import FaultProxy
from tests.env.fixtures import Nodes
from tests.env.influx import InfluxDB
from tests.env.kube import Kube
from tests.integration.operator.conftest import Operator, apply_influxdb_settings, collector_path, eventually, status_of

pytestmark = pytest.mark.integration

NAME = "buffered"
AGENT_IMAGE = "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"
WINDOW = 10
"""Seconds. Longer than an agent's absence while a pod is replaced without surge (it starts in seconds)."""
SERIES = "system.memory.used"


@pytest.fixture
def proxy(influxdb: InfluxDB) -> Iterator[FaultProxy]:
    # On the address pods reach InfluxDB on (the bed's, with real nodes).
    parts = urlsplit(influxdb.url)
    assert parts.hostname is not None
    assert parts.port is not None
    with FaultProxy(parts.hostname, parts.port, listen_host=parts.hostname) as p:
        yield p


def _agent_pods(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    pods, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"app.kubernetes.io/instance={NAME}")
    return pods


def _agent_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    try:
        with urllib.request.urlopen(f"http://{ip}:{DEFAULT_METRICS_PORT}/status", timeout=1) as answer:
            status: dict[str, Any] = json.loads(answer.read())
            return status
    except (OSError, ValueError):
        return None


class BufferWatch:
    """Polls every agent's ``/status`` and keeps what each pod said about owning its buffer directory."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.seen: dict[str, set[tuple[bool, str | None]]] = collections.defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="buffer watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the API or a pod mid-restart: the next poll sees it
                for pod in _agent_pods(self.kube, self.namespace):
                    status = _agent_status(pod)
                    if status is not None:
                        buffer = status["buffer"]
                        self.seen[pod["metadata"]["name"]].add((buffer["owned"], buffer["held_by"]))
            self._stop.wait(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _setup(kube: Kube, namespace: str, nodes: Nodes, influxdb: InfluxDB, url: str) -> None:
    apply_influxdb_settings(kube, namespace, influxdb, url=url)
    kube.apply(
        {
            "apiVersion": "observatory.happypatterns.org/v1alpha1",
            "kind": "ObservatoryCollector",
            "metadata": {"name": NAME},
            "spec": {
                "image": AGENT_IMAGE,
                "interval": "1s",
                "window": f"{WINDOW}s",
                "collectors": [{"name": "cpu"}, {"name": "memory"}],
                "influxdb": {"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}},
                "tolerations": [nodes.toleration],
                "tags": {"run": namespace},  # this test's points in the session's shared bucket
                # The new pod first, the old one stopped once the new one is ready.
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "100%", "maxUnavailable": 0}},
            },
        },
        namespace,
    )


def _roll(kube: Kube, namespace: str, memory_limit: str, strategy: dict[str, Any] | None = None) -> None:
    """Change the pod template (the memory limit) and wait until every node runs an updated, ready agent."""
    before = {p["metadata"]["uid"] for p in _agent_pods(kube, namespace)}
    spec: dict[str, Any] = {
        "resources": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": memory_limit}}
    }
    if strategy is not None:
        spec["updateStrategy"] = strategy
    kube.patch(collector_path(namespace, NAME), {"spec": spec}, kind="merge")

    def rolled() -> bool:
        ds = kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{NAME}-agent")
        st = ds.get("status") or {}
        pods = _agent_pods(kube, namespace)
        return (
            st.get("observedGeneration") == ds["metadata"]["generation"]
            and st.get("updatedNumberScheduled") == st.get("numberReady") == st.get("desiredNumberScheduled") == 3
            and len(pods) == 3
            and not before & {p["metadata"]["uid"] for p in pods}
        )

    eventually(rolled, timeout=180, what=f"the agents rolled to memory limit {memory_limit}")


def _windows(influxdb: InfluxDB, run: str, since: float) -> dict[str, collections.Counter[int]]:
    """Per node, how many points each window end (s) has: across every series of the node, so a second
    series for one window (another host tag, say) would count twice."""
    flux = f"""
from(bucket: {json.dumps(influxdb.bucket)})
  |> range(start: {int(since) - WINDOW})
  |> filter(fn: (r) => r._measurement == {json.dumps(SERIES)} and r._field == "count" and r.run == {json.dumps(run)})
  |> group(columns: ["node"])
  |> keep(columns: ["node", "_time"])
"""
    client = influxdb.client()
    try:
        tables = client.query_api().query(flux, org=influxdb.org)
        found: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for table in tables:
            for record in table.records:
                found[str(record.values["node"])][int(record.get_time().timestamp())] += 1
        return found
    finally:
        client.close()


@pytest.mark.timeout(600)  # two rollouts and a drain on real nodes: past the suite's 300 s default
def test_windows_buffered_in_an_outage_survive_two_rollouts_and_arrive_once_each(
    control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB, namespace: str, operator: Operator, proxy: FaultProxy
) -> None:
    kube = control_plane.kube
    url = f"http://{urlsplit(influxdb.url).hostname}:{proxy.port}"
    _setup(kube, namespace, nodes, influxdb, url)
    started = time.time()

    def reporting() -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        return status if status.get("reporting") == "3/3" and status.get("phase") == "Ready" else None

    eventually(reporting, timeout=120, what="READY and REPORTING 3/3 through the proxy")
    assert proxy.connections > 0
    # The image's tag is shared by every checkout on the machine: fail here, not in a rollout that
    # times out, when the nodes run an agent without the handover (/status schema 3).
    schemas = {
        p["metadata"]["name"]: (_agent_status(p) or {}).get("schema_version") for p in _agent_pods(kube, namespace)
    }
    assert set(schemas.values()) == {STATUS_SCHEMA_VERSION}, (
        f"agents' /status schema {schemas}: not this checkout's image"
    )

    proxy.set_mode("reset")
    outage = time.time()

    def buffering() -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        return status if (status.get("bufferedPoints") or 0) > 0 else None

    eventually(buffering, timeout=60, what="the agents holding buffered points")
    time.sleep(2 * WINDOW)  # at least two whole windows on every node's disk, none in InfluxDB
    assert {p["metadata"]["name"] for p in _agent_pods(kube, namespace)}
    watch = BufferWatch(kube, namespace)
    try:
        old_names = {p["metadata"]["name"] for p in _agent_pods(kube, namespace)}
        _roll(kube, namespace, "160Mi")
        surged = set(watch.seen) - old_names
        # The new agents ran (and were ready) while the old ones still held the directory, and said so.
        handed_over = {
            name for name in surged if any(not owned and held in old_names for owned, held in watch.seen[name])
        }
        assert handed_over, dict(watch.seen)

        def owning() -> bool:
            statuses = [_agent_status(p) for p in _agent_pods(kube, namespace)]
            return all(s is not None and s["buffer"]["owned"] and s["buffered_points"] > 0 for s in statuses)

        eventually(owning, timeout=30, what="every new agent owning its node's buffer, with the points buffered")

        # The old pod stops first; the new one finds the buffer on the node. (maxSurge 0: the patch is a
        # merge, and the API refuses a DaemonSet strategy with both non-zero.)
        _roll(
            kube,
            namespace,
            "192Mi",
            {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "100%"}},
        )
        eventually(owning, timeout=30, what="the agents of the second rollout owning the buffers")
    finally:
        watch.close()

    # The negative check: nothing written after the outage began reached InfluxDB before it answers
    # again (a window closing mid-outage would mean the proxy let writes through, and then the
    # windows found below would prove nothing about the buffer).
    leaked = {
        node: [end for end in counts if end > outage] for node, counts in _windows(influxdb, namespace, started).items()
    }
    assert not any(leaked.values()), f"written during the outage: {leaked}"
    proxy.set_mode("pass")
    recovered = time.time()

    def drained() -> bool:
        statuses = [_agent_status(p) for p in _agent_pods(kube, namespace)]
        return len(statuses) == 3 and all(s is not None and s["buffered_points"] == 0 for s in statuses)

    eventually(drained, timeout=120, what="every agent's buffer sent once InfluxDB answers again")
    time.sleep(1)  # the newest writes acknowledged are queryable

    found = _windows(influxdb, namespace, started)
    assert set(found) == set(nodes.names)
    for node, counts in found.items():
        ends = sorted(counts)
        expected = list(range(ends[0], ends[-1] + WINDOW, WINDOW))
        missing = sorted(set(expected) - set(ends))
        assert not missing, f"{node}: windows missing {missing} of {ends[0]}..{ends[-1]}"
        assert ends[0] <= outage, f"{node}: nothing from before the outage"
        assert ends[-1] >= recovered - WINDOW, f"{node}: nothing from after it"
        twice = {end: n for end, n in counts.items() if n != 1}
        assert not twice, f"{node}: windows written more than once: {twice}"

"""The data path with the real agent image: the operator reads every agent's /status into REPORTING and DataFlowing."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes
from tests.env.influx import InfluxDB
from tests.env.nodesim import REPO
from tests.integration.operator.conftest import Operator, apply_influxdb_settings, condition, eventually, status_of

pytestmark = pytest.mark.integration

NAME = "nodes"
AGENT_IMAGE = "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"


def _setup(kube: Any, namespace: str, nodes: Nodes, influxdb: InfluxDB) -> None:
    apply_influxdb_settings(kube, namespace, influxdb)
    kube.apply(
        {
            "apiVersion": "observatory.happypatterns.org/v1alpha1",
            "kind": "ObservatoryCollector",
            "metadata": {"name": NAME},
            "spec": {
                "image": AGENT_IMAGE,
                "interval": "1s",
                "window": "2s",
                "collectors": [{"name": "cpu"}, {"name": "memory"}, {"name": "load"}],
                "influxdb": {"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}},
                "tolerations": [nodes.toleration],
                # Marks this test's points in the session's shared bucket.
                "tags": {"run": namespace},
            },
        },
        namespace,
    )


def test_every_real_agents_status_is_read_into_data_flowing(
    control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb)

    def answered() -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        flowing = condition(status, "DataFlowing")
        # Every agent answered /status: DataFlowing is decided (True or False), no longer waiting.
        # READY is not required here: whether the agent turns ready is the agent's business.
        return status if status.get("desiredAgents") == 3 and flowing.get("status") in {"True", "False"} else None

    status = eventually(answered, timeout=90, what="3 real agents' /status read and DataFlowing decided")
    assert status["desiredAgents"] == 3
    assert status["bufferedPoints"] is not None
    flowing = condition(status, "DataFlowing")
    if flowing["status"] == "False":
        # Whatever keeps some from writing, status counts the writers and names the nodes that are not
        # writing (agents that only just started are counted, not named), with what they hold back.
        message = flowing["message"]
        writers = int(message.split("/", 1)[0])
        silent = [node for node in nodes.names if node in message]
        assert silent, message
        assert writers + len(silent) <= len(nodes.names), message
        assert "points buffered" in message


def _nodes_with_points(influxdb: InfluxDB, run: str) -> set[str]:
    """The node tags of this run's points in InfluxDB: what REPORTING claims, checked at the source."""
    flux = f"""
from(bucket: {json.dumps(influxdb.bucket)})
  |> range(start: -10m)
  |> filter(fn: (r) => r.run == {json.dumps(run)} and r._field == "count")
  |> keep(columns: ["node"])
  |> distinct(column: "node")
"""
    client = influxdb.client()
    try:
        tables = client.query_api().query(flux, org=influxdb.org)
        return {str(record.values["_value"]) for table in tables for record in table.records}
    finally:
        client.close()


def test_real_agents_report_and_data_flowing_follows_influxdb(
    control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb)

    def reporting(want: str) -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        return status if status.get("reporting") == want and status.get("phase") == "Ready" else None

    status = eventually(lambda: reporting("3/3"), timeout=60, what="READY and REPORTING 3/3")
    assert status["ready"] == "3/3"
    assert condition(status, "DataFlowing")["status"] == "True"
    assert status["lastWrite"]
    assert _nodes_with_points(influxdb, namespace) == set(nodes.names)

    influxdb.stop()
    try:

        def not_flowing() -> dict[str, Any] | None:
            status = status_of(kube, namespace, NAME)
            flowing = condition(status, "DataFlowing")
            # An agent busy with its outage may miss one probe ("no answer"): wait for what the outage shows.
            buffering = "points buffered" in flowing.get("message", "")
            return status if flowing.get("status") == "False" and status.get("bufferedPoints") and buffering else None

        status = eventually(not_flowing, timeout=60, what="DataFlowing=False with buffered points")
        assert status["phase"] == "Degraded"
        assert "points buffered" in condition(status, "DataFlowing")["message"]
    finally:
        influxdb.start()
    eventually(lambda: reporting("3/3"), timeout=60, what="REPORTING 3/3 again after InfluxDB is back")


def test_the_example_collector_runs_and_reports_on_the_nodes_it_tolerates(
    control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB, namespace: str, operator: Operator
) -> None:
    """examples/ as a user applies them: host network and PID (network, processes), one node left out by its taint."""
    kube = control_plane.kube
    shared = yaml.safe_load((REPO / "examples" / "shared-config.yaml").read_text())
    shared["data"].update(influxdb_url=influxdb.url, influxdb_org=influxdb.org, influxdb_bucket=influxdb.bucket)
    kube.apply(shared, namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "influxdb-auth"},
            "stringData": {"token": influxdb.token},
        },
        namespace,
    )
    example = yaml.safe_load((REPO / "examples" / "collector.yaml").read_text())
    kube.apply(example, namespace)
    name = example["metadata"]["name"]

    def reporting() -> dict[str, Any] | None:
        status = status_of(kube, namespace, name)
        return status if status.get("reporting") == "2/2" and status.get("phase") == "Ready" else None

    # Windows are a minute long and aligned to the wall clock: the first write comes within two.
    status = eventually(reporting, timeout=150, what="READY and REPORTING 2/2 with the example")
    assert status["ready"] == "2/2"
    (uncovered,) = status["uncoveredNodes"]
    assert (uncovered["node"], uncovered["reason"]) == (nodes.tainted, "NotTolerated")
    ds = kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}-agent")
    assert ds["spec"]["template"]["spec"]["hostNetwork"] is True
    assert ds["spec"]["template"]["spec"]["hostPID"] is True

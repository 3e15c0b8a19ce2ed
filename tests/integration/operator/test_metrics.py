"""The operator's own /metrics: rounds, errors and duration by kind, probe failures, API requests by verb and code."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import REAL, Nodes
from tests.env.nodesim import REPO
from tests.integration.operator.conftest import Operator, eventually, stand_in_collector, status_of

pytestmark = pytest.mark.integration


def test_metrics_say_what_the_operator_did(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}, "stringData": {"token": "x"}},
        namespace,
    )
    kube.apply(stand_in_collector("nodes", tolerations=[nodes.toleration]), namespace)
    eventually(lambda: status_of(kube, namespace, "nodes").get("ready") == "3/3", timeout=90, what="READY 3/3")
    # The stand-in pods have no /status (real nodes: the stand-in answers 404; simulated: nothing listens):
    # every probe of them fails, and says why.
    reason = "http_status" if nodes.mode == REAL else "unreachable"
    eventually(
        lambda: operator.metrics().get(("observatory_operator_probe_failures_total", (("reason", reason),))),
        timeout=30,
        what=f"probe failures counted ({reason})",
    )
    samples = operator.metrics()

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("observatory_operator_reconciles_total", kind="ObservatoryCollector", outcome="Applied") >= 3
    assert value("observatory_operator_reconcile_duration_seconds_count", kind="ObservatoryCollector") >= 3
    assert value("observatory_operator_api_requests_total", verb="patch", code="201") >= 3  # children created
    assert value("observatory_operator_api_requests_total", verb="patch", code="200") >= 1  # status
    assert value("observatory_operator_api_requests_total", verb="watch", code="200") >= 5  # informers
    assert value("observatory_operator_leader") == 1
    assert value("process_resident_memory_bytes") > 0


def test_the_chart_monitors_the_operator_only_where_servicemonitors_exist(helm: Path) -> None:
    def kinds(*extra: str) -> list[str]:
        out = subprocess.run(
            [str(helm), "template", "obs", str(REPO / "helm" / "happy-observatory"), "--namespace", "o", *extra,
             "--show-only", "templates/operator-metrics.yaml"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return [d["kind"] for d in yaml.safe_load_all(out) if d]

    assert kinds() == ["Service"]
    assert kinds("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor") == ["Service", "ServiceMonitor"]

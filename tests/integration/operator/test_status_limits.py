"""Status stays small and truthful on big clusters, under Pod Security, against hostile agents (issue 11, 6 and 8)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import SIMULATED, Nodes
from tests.env.kube import ApiError
from tests.integration.operator.conftest import (
    RESYNC_SECONDS,
    FakeAgents,
    Operator,
    collector_path,
    condition,
    eventually,
    reply,
    stand_in_collector,
    status_of,
)

pytestmark = pytest.mark.integration

EXTRA_NODES = 100
OUT_OF_SCOPE_TAINT = {"key": "happypatterns.org/test-out-of-scope", "value": "true", "effect": "NoSchedule"}


def _secret(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}, "stringData": {"token": "x"}},
        namespace,
    )


@pytest.fixture
def extra_nodes(control_plane: ControlPlane, nodes: Nodes) -> Iterator[list[str]]:
    """100 more Node objects, in another pool and tainted (no kubelet behind them: no pod ever lands there)."""
    kube = control_plane.kube
    names = [f"extra-{i:03d}" for i in range(EXTRA_NODES)]

    def node(name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"happypatterns.org/pool": "batch", "kubernetes.io/hostname": name}},
            "spec": {"taints": [OUT_OF_SCOPE_TAINT]},
        }

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: kube.create("/api/v1/nodes", node(n)), names))

    def remove(name: str) -> None:
        with contextlib.suppress(ApiError):
            kube.delete(f"/api/v1/nodes/{name}")

    try:
        yield names
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove, names))


def test_a_hundred_out_of_scope_nodes_keep_status_small(
    control_plane: ControlPlane, nodes: Nodes, extra_nodes: list[str], namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(control_plane, namespace)
    kube.apply(stand_in_collector("general", nodeSelector={"happypatterns.org/pool": "general"}), namespace)
    kube.apply(stand_in_collector("everywhere"), namespace)

    last: dict[str, Any] = {}

    def settled(name: str, counts: dict[str, int]) -> dict[str, Any] | None:
        status = last[name] = status_of(kube, namespace, name)
        return status if status.get("ready") == "2/2" and status.get("uncoveredNodeCounts") == counts else None

    # The extra nodes and node-3 (pool gpu) are outside the selector; the rest is covered.
    mismatched = {"SelectorMismatch": EXTRA_NODES + 1}
    try:
        general = eventually(lambda: settled("general", mismatched), timeout=90, what=f"general: 2/2, {mismatched}")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last status: {last.get('general')}") from None
    assert len(general["uncoveredNodes"]) == 10
    assert {u["reason"] for u in general["uncoveredNodes"]} == {"SelectorMismatch"}

    tainted = {"NotTolerated": EXTRA_NODES + 1}
    everywhere = eventually(
        lambda: settled("everywhere", tainted), timeout=90, what=f"everywhere: READY 2/2, {tainted}"
    )
    listed = everywhere["uncoveredNodes"]
    assert len(listed) == 10
    assert any("test-out-of-scope=true:NoSchedule" in u["message"] for u in listed)
    for status in (general, everywhere):
        assert len(json.dumps(status)) < 6000, "status grows with the cluster"


def test_pods_refused_by_pod_security_show_a_condition_naming_the_policy(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(control_plane, namespace)
    labels = {"pod-security.kubernetes.io/enforce": "baseline"}
    kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": labels}}, kind="merge")
    kube.apply(stand_in_collector("nodes", tolerations=[nodes.toleration]), namespace)

    def refused() -> dict[str, Any] | None:
        status = status_of(kube, namespace, "nodes")
        return status if condition(status, "Ready").get("reason") == "PodSecurityRefused" else None

    status = eventually(refused, timeout=60, what="Ready=False PodSecurityRefused")
    ready = condition(status, "Ready")
    assert ready["status"] == "False"
    assert 'violates PodSecurity "baseline:latest"' in ready["message"]
    assert f"label namespace {namespace} pod-security.kubernetes.io/enforce=privileged" in ready["message"]
    assert status["phase"] == "Failed"

    labels["pod-security.kubernetes.io/enforce"] = "privileged"
    kube.patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": labels}}, kind="merge")
    eventually(
        lambda: status_of(kube, namespace, "nodes").get("ready") == "3/3",
        timeout=90,
        what="READY 3/3 once the namespace allows privileged pods",
    )
    assert condition(status_of(kube, namespace, "nodes"), "Ready")["reason"] == "AllAgentsReady"


HOSTILE: dict[str, bytes] = {
    "huge": b'{"last_successful_write": ' + b"1" * 20_000_000 + b"}",
    "nan": b'{"last_successful_write": NaN, "buffered_points": Infinity, "ready": true}',
    "future": json.dumps({"last_successful_write": 4_000_000_000, "buffered_points": 5, "ready": True}).encode(),
    "enormous-number": b'{"last_successful_write": 1e400, "buffered_points": -1e400}',
}


def test_hostile_status_bodies_never_stall_a_round(
    control_plane: ControlPlane,
    nodes: Nodes,
    namespace: str,
    operator: Operator,
    fake_agents: list[FakeAgents],
) -> None:
    """Agents answering /status with 20 MB, NaN, a write dated 2096 or 1e400: status still follows the spec in
    seconds, nothing counts as reporting, and the operator says why it refused each answer."""
    kube = control_plane.kube
    _secret(control_plane, namespace)
    collectors = list(HOSTILE)
    # OnDelete: a changed template replaces no pod, so the hostile agents stay where they are.
    spec = {"nodeSelector": {"topology.kubernetes.io/zone": "zone-a"}, "updateStrategy": {"type": "OnDelete"}}
    for name in collectors:
        # On real nodes the stand-in answers /status with the body its `standin` tag names.
        kube.apply(stand_in_collector(name, tags={"standin": name}, **spec), namespace)

    def pods() -> list[dict[str, Any]] | None:
        items = kube.list(f"/api/v1/namespaces/{namespace}/pods")[0]
        ready = [p for p in items if (p.get("status") or {}).get("podIP")]
        return ready if len(ready) == len(collectors) else None

    found = eventually(pods, timeout=90, what=f"{len(collectors)} agent pods with IPs")
    which = {p["metadata"]["name"]: p["metadata"]["name"].rsplit("-agent-", 1)[0] for p in found}

    def hostile(pod: str, handler: BaseHTTPRequestHandler) -> None:
        reply(handler, HOSTILE[which[pod]])

    if nodes.mode == SIMULATED:  # nothing runs in a simulated stand-in pod: play the hostile agent on its IP
        agents = FakeAgents(hostile)
        fake_agents.append(agents)
        agents.serve(found)
    refusals_before = operator.metrics()
    time.sleep(3 * RESYNC_SECONDS)

    for name in collectors:  # a spec change is acted on within seconds for every one of them
        kube.apply(stand_in_collector(name, tags={"standin": name, "t": "2"}, **spec), namespace)
    started = time.monotonic()
    for name in collectors:
        generation = kube.get(collector_path(namespace, name))["metadata"]["generation"]
        eventually(
            lambda n=name, g=generation: status_of(kube, namespace, n).get("observedGeneration") == g,
            timeout=30,
            what=f"{name}: the new generation observed",
        )
    assert time.monotonic() - started < 15, "rounds stalled on hostile agents"
    for name in collectors:
        status = status_of(kube, namespace, name)
        assert status["reporting"] == "0/1", (name, status["reporting"])
        assert status.get("lastWrite") is None, name
        assert not math.isnan(float(status.get("bufferedPoints") or 0))
    assert "in the future" in condition(status_of(kube, namespace, "future"), "DataFlowing")["message"]

    after = operator.metrics()

    def failures(reason: str) -> float:
        key = ("observatory_operator_probe_failures_total", (("reason", reason),))
        return after.get(key, 0.0) - refusals_before.get(key, 0.0)

    assert failures("too_large") > 0
    assert failures("invalid_json") > 0
    assert operator.process.alive()

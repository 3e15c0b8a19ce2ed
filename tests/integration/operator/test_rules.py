"""AggregationRules on the bed: the operator runs a processor per rule, real agents feed it, roll-ups land in InfluxDB.

Everything is real: agent and processor pods of the built image on real kubelets, partials sent to
the processor's Service by its DNS name, the bed's influxd. What the agents sample is known exactly:
an application target on the host serves, to each node's agent, a value that is constant within
each agent window (``10 * node + window % 3`` for ``kind="a"``, plus 100 for ``kind="b"``). So a
node-level point's ``min`` (= ``max``) and ``count`` say exactly which raw samples it holds, and
every roll-up is checked against an independent computation over those raw samples: count = Σ
counts, sum, pooled mean, min of mins, max of maxes, and quantiles with numpy's ``linear`` method
(exact), or, when the agents sketch, within 1% of numpy's ``lower`` (the rank a DDSketch answers for).
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.env import realnodes
from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes, require_real_nodes
from tests.env.influx import InfluxDB
from tests.env.kube import Kube
from tests.env.procs import free_port
from tests.integration.operator.conftest import GROUP_PATH, Operator, apply_influxdb_settings, condition, eventually

pytestmark = pytest.mark.integration

AGENT_IMAGE = "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"
AGENT_WINDOW = 2.0
RULE_WINDOW = 4.0


def measurement(namespace: str) -> str:
    """Each test's own output measurement: the bucket is the session's, and earlier tests' processors wrote to it."""
    return f"rollup.probe.{namespace}"


@pytest.fixture(autouse=True)
def _real_only(nodes: Nodes) -> None:
    require_real_nodes(nodes.mode, "agents reach the processor through its Service and cluster DNS")


@dataclass
class Probe:
    """The application target: what every node's agent samples, known exactly."""

    url: str
    server: http.server.ThreadingHTTPServer

    @staticmethod
    def value(node: int, window_end: float) -> float:
        return float(10 * node + int(window_end // AGENT_WINDOW) % 3)


@pytest.fixture
def probe() -> Iterator[Probe]:
    class Exposition(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            # Each node's pods get addresses from its own bridge: 10.244.<node>.x.
            node = int(self.client_address[0].split(".")[2])
            now = time.time()
            # The window this scrape lands in: agents stamp samples with the tick, just before this request.
            end = (math.floor(now / AGENT_WINDOW) + 1) * AGENT_WINDOW
            value = Probe.value(node, end)
            body = (
                "# TYPE rollup_probe_value gauge\n"
                f'rollup_probe_value{{kind="a"}} {value}\nrollup_probe_value{{kind="b"}} {value + 100}\n'
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((realnodes.BED_IP, free_port(realnodes.BED_IP)), Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Probe(f"http://{realnodes.BED_IP}:{server.server_address[1]}/metrics", server)
    finally:
        server.shutdown()
        server.server_close()


def _setup(kube: Kube, namespace: str, nodes: Nodes, influxdb: InfluxDB, probe: Probe, **aggregations: Any) -> None:
    apply_influxdb_settings(kube, namespace, influxdb)
    kube.apply(
        {
            "apiVersion": "observatory.happypatterns.org/v1alpha1",
            "kind": "ObservatoryCollector",
            "metadata": {"name": "nodes"},
            "spec": {
                "image": AGENT_IMAGE,
                "interval": "500ms",
                "window": f"{AGENT_WINDOW:g}s",
                "collectors": [{"name": "probe", "kind": "application", "targets": [probe.url], "timeout": "400ms"}],
                "aggregations": {"quantiles": [50, 95], **aggregations},
                "influxdb": {"tokenSecretRef": {"name": "influxdb-auth", "key": "token"}},
                "tolerations": [nodes.toleration],
                "tags": {"run": namespace},
            },
        },
        namespace,
    )


def _rule(namespace: str, **spec: Any) -> dict[str, Any]:
    """The test's rule; a field given as None is left out (the whole spec is applied, so it goes)."""
    fields = {
        "collectors": ["nodes"],
        "metrics": ["app.rollup_probe_value"],
        "matchTags": {"kind": "a"},
        "window": f"{RULE_WINDOW:g}s",
        "allowedLateness": "2s",
        "groupBy": ["cluster"],
        "functions": ["count", "sum", "mean", "min", "max", "p50", "p95"],
        "output": {"measurement": measurement(namespace)},
        **spec,
    }
    return {
        "apiVersion": "observatory.happypatterns.org/v1alpha1",
        "kind": "AggregationRule",
        "metadata": {"name": "probe-rollup"},
        "spec": {k: v for k, v in fields.items() if v is not None},
    }


def _rule_path(namespace: str, name: str = "probe-rollup") -> str:
    return f"{GROUP_PATH}/namespaces/{namespace}/aggregationrules/{name}"


def _query(influxdb: InfluxDB, flux: str) -> list[dict[str, Any]]:
    client = influxdb.client()
    try:
        return [dict(r.values) for t in client.query_api().query(flux, org=influxdb.org) for r in t.records]
    finally:
        client.close()


def rollups(influxdb: InfluxDB, namespace: str, group: str = "cluster") -> dict[tuple[str, float], dict[str, Any]]:
    """(group value, window end) → the roll-up's fields, for this test's rule output."""
    flux = f"""
from(bucket: {json.dumps(influxdb.bucket)})
  |> range(start: -15m)
  |> filter(fn: (r) => r._measurement == {json.dumps(measurement(namespace))} and r.rule == "probe-rollup")
  |> pivot(rowKey: ["_time", "{group}"], columnKey: ["_field"], valueColumn: "_value")
"""
    out = {}
    for row in _query(influxdb, flux):
        out[(str(row.get(group)), row["_time"].timestamp())] = row
    return out


def node_points(influxdb: InfluxDB, namespace: str, kind: str = "a") -> list[dict[str, Any]]:
    """The agents' own node-level points of the probe series (one per node and agent window)."""
    flux = f"""
from(bucket: {json.dumps(influxdb.bucket)})
  |> range(start: -15m)
  |> filter(fn: (r) => r._measurement == "app.rollup_probe_value" and r.run == {json.dumps(namespace)})
  |> filter(fn: (r) => r.kind == {json.dumps(kind)})
  |> filter(fn: (r) => r._field == "count" or r._field == "min" or r._field == "max" or r._field == "sum")
  |> pivot(rowKey: ["_time", "node"], columnKey: ["_field"], valueColumn: "_value")
"""
    return _query(influxdb, flux)


def expected(points: list[dict[str, Any]], end: float) -> dict[str, float]:
    """The roll-up of one rule window, computed from the raw samples the agents' points stand for."""
    inside = [p for p in points if end - RULE_WINDOW < p["_time"].timestamp() <= end]
    raw: list[float] = []
    for p in inside:
        assert p["min"] == p["max"], f"the probe serves one value per agent window: {p}"
        raw += [float(p["min"])] * int(p["count"])
    samples = np.array(raw)
    return {
        "count": float(len(raw)),
        "sum": float(samples.sum()),
        "mean": float(samples.mean()),
        "min": float(samples.min()),
        "max": float(samples.max()),
        "p50": float(np.percentile(samples, 50, method="linear")),
        "p95": float(np.percentile(samples, 95, method="linear")),
        # What a sketch promises: within 1% of the lower closest-rank sample (quantiles.py).
        "p50_lower": float(np.percentile(samples, 50, method="lower")),
        "p95_lower": float(np.percentile(samples, 95, method="lower")),
        "nodes": float(len({p["node"] for p in inside})),
    }


def settled_windows(influxdb: InfluxDB, namespace: str, want: int) -> list[float]:
    """Window ends (of the 'bed' group) with every node's points in, at least ``want`` of them, from the first
    window every agent sent a partial for: agents load the rule's target when the kubelet refreshes their
    config volume, not all at the same moment, and a window before that rightly rolls up fewer nodes."""

    def complete() -> list[float] | None:
        written = rollups(influxdb, namespace)
        ends = sorted(end for (group, end) in written if group == "bed")
        since = next((e for e in ends if int(written[("bed", e)]["nodes"]) == 3), None)
        if since is None:
            return None
        points = node_points(influxdb, namespace)
        full = [e for e in ends[:-1] if e >= since and expected(points, e)["nodes"] == 3]
        return full if len(full) >= want else None

    result: list[float] = eventually(complete, timeout=150, what=f"{want} complete roll-up windows in InfluxDB")
    return result


def check_window(influxdb: InfluxDB, namespace: str, end: float, *, exact: bool = True) -> None:
    got = rollups(influxdb, namespace)[("bed", end)]
    want = expected(node_points(influxdb, namespace), end)
    for field in ("count", "sum", "min", "max", "nodes"):
        assert float(got[field]) == pytest.approx(want[field], rel=1e-12), (field, end, got, want)
    assert float(got["mean"]) == pytest.approx(want["mean"], rel=1e-9), (end, got, want)
    for q in ("p50", "p95"):
        if exact:
            assert float(got[q]) == pytest.approx(want[q], rel=1e-12), (q, end, got, want)
        else:
            assert abs(float(got[q]) - want[f"{q}_lower"]) <= 0.01 * abs(want[f"{q}_lower"]), (q, end, got, want)
    assert got["quantile_method"] == ("exact" if exact else "sketch")


def rule_status(kube: Kube, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = kube.get(_rule_path(namespace)).get("status") or {}
    return status


def wait_flowing(kube: Kube, namespace: str) -> dict[str, Any]:
    def flowing() -> dict[str, Any] | None:
        status = rule_status(kube, namespace)
        return status if condition(status, "DataFlowing").get("status") == "True" else None

    result: dict[str, Any] = eventually(flowing, timeout=150, what="the rule's DataFlowing=True")
    return result


def rolling_up(kube: Kube, namespace: str, nodes: Nodes, influxdb: InfluxDB, probe: Probe) -> float:
    """The collector and the rule applied, roll-ups flowing: the end of the first complete window."""
    _setup(kube, namespace, nodes, influxdb, probe)
    kube.apply(_rule(namespace), namespace)
    wait_flowing(kube, namespace)
    return settled_windows(influxdb, namespace, want=1)[0]


def every_window_right(influxdb: InfluxDB, namespace: str, first: float, last: float) -> None:
    """Every window from ``first`` to ``last`` written (a window is one point: written once) with the right values."""
    ends = settled_windows(influxdb, namespace, want=int((last - first) // RULE_WINDOW))
    span = [e for e in ends if first <= e <= last]
    assert span == [first + i * RULE_WINDOW for i in range(len(span))], f"a window is missing: {span}"
    assert len(span) >= int((last - first) // RULE_WINDOW) - 1
    for end in span:
        check_window(influxdb, namespace, end)


# --- tests ------------------------------------------------------------------------------------


def test_rollups_equal_what_the_agents_raw_samples_give_and_kubectl_shows_them(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb, probe)
    kube.apply(_rule(namespace), namespace)
    status = wait_flowing(kube, namespace)
    assert status["ready"] == "1/1"
    ends = settled_windows(influxdb, namespace, want=3)
    for end in ends:
        check_window(influxdb, namespace, end, exact=True)

    # Once every node has sent a few windows, the status counts them all.
    def all_nodes() -> bool:
        status = rule_status(kube, namespace)
        counted = status.get("contributingNodes") == 3 and status.get("expectedNodes") == 3
        # The processor's node names are the nodes the operator knows the agents by: none is named as missing.
        return counted and "nothing from" not in condition(status, "DataFlowing").get("message", "")

    eventually(all_nodes, timeout=30, what="3 of 3 nodes contributing in the rule's status, none named as missing")

    # ... because the processor names its window's nodes as the operator knows them (its /status, via the API server).
    pods, _ = kube.list(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app.kubernetes.io/component=processor")
    status_path = f"/api/v1/namespaces/{namespace}/pods/{pods[0]['metadata']['name']}:9465/proxy/status"

    def named() -> bool:
        return kube.get(status_path)["last_window"]["node_names"] == sorted(nodes.names)

    eventually(named, timeout=20, what="the processor's /status naming the three nodes of its newest window")
    # What a user sees: READY, WINDOW, LAST-WINDOW, SERIES filled in.
    out = control_plane.kubectl("get", "aggrule", "-n", namespace).stdout.split("\n")
    header, row = out[0].split(), out[1].split()
    assert header[:6] == ["NAME", "READY", "WINDOW", "LAST-WINDOW", "SERIES", "PHASE"]
    assert row[1:3] == ["1/1", f"{RULE_WINDOW:g}s"]
    assert row[3] not in ("<unknown>", "<none>")
    assert row[4] == "1"
    # The agents were told where to send, by the Service's name, through their config.
    agent_config = json.loads(
        kube.get(f"/api/v1/namespaces/{namespace}/configmaps/nodes-agent-config")["data"]["agent.json"]
    )
    (target,) = agent_config["processors"]
    assert target["url"] == f"http://probe-rollup-processor.{namespace}.svc:9465"


def test_sketched_partials_merge_within_one_percent(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb, probe, exactThreshold=1)  # every agent window past the threshold
    kube.apply(_rule(namespace), namespace)
    for end in settled_windows(influxdb, namespace, want=2):
        check_window(influxdb, namespace, end, exact=False)


def test_group_by_a_tag_with_two_values_gives_two_series_and_max_series_limits_them(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb, probe)
    kube.apply(_rule(namespace, matchTags=None, groupBy=["kind"]), namespace)
    eventually(
        lambda: {g for (g, _) in rollups(influxdb, namespace, "kind")} == {"a", "b"},
        timeout=150,
        what="two roll-up series, kind=a and kind=b",
    )
    assert condition(rule_status(kube, namespace), "CardinalityLimited")["status"] == "False"

    kube.apply(_rule(namespace, matchTags=None, groupBy=["kind"], maxSeries=1), namespace)

    def limited() -> dict[str, Any] | None:
        status = rule_status(kube, namespace)
        return status if condition(status, "CardinalityLimited").get("status") == "True" else None

    status = eventually(limited, timeout=150, what="CardinalityLimited=True")
    assert status["droppedSeries"] >= 1
    assert "spec.maxSeries (1)" in condition(status, "CardinalityLimited")["message"]
    events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "CardinalityLimited" for e in events)


def test_rule_edit_rerenders_agent_configs_and_rule_delete_stops_the_partials(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb, probe)
    kube.apply(_rule(namespace), namespace)
    wait_flowing(kube, namespace)
    config_path = f"/api/v1/namespaces/{namespace}/configmaps/nodes-agent-config"

    def targets() -> list[dict[str, Any]]:
        return list(json.loads(kube.get(config_path)["data"]["agent.json"])["processors"])

    kube.apply(_rule(namespace, matchTags={"kind": "b"}), namespace)
    eventually(lambda: targets()[0]["match_tags"] == {"kind": "b"}, timeout=30, what="agents told the edited rule")

    rule_uid = kube.get(_rule_path(namespace))["metadata"]["uid"]
    kube.delete(_rule_path(namespace))
    eventually(lambda: targets() == [], timeout=30, what="agents told to send nothing once the rule is gone")
    eventually(
        lambda: (
            not [
                d
                for d in kube.list(f"/apis/apps/v1/namespaces/{namespace}/deployments")[0]
                if any(r.get("uid") == rule_uid for r in d["metadata"].get("ownerReferences") or [])
            ]
        ),
        timeout=60,
        what="the processor garbage-collected with its rule",
    )
    before = len(rollups(influxdb, namespace))
    time.sleep(3 * RULE_WINDOW)
    assert len(rollups(influxdb, namespace)) == before, "no roll-up written after the rule was deleted"


def test_processor_killed_mid_window_and_down_for_two_windows_loses_nothing(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    first = rolling_up(kube, namespace, nodes, influxdb, probe)
    pods_path = f"/api/v1/namespaces/{namespace}/pods"
    selector = "app.kubernetes.io/name=happy-observatory-processor"

    # Mid-window: the pod goes at once (no grace), the Deployment makes another.
    (pod,) = kube.list(pods_path, labelSelector=selector)[0]
    time.sleep(RULE_WINDOW / 2 - (time.time() % RULE_WINDOW) % (RULE_WINDOW / 2))
    kube.delete(f"{pods_path}/{pod['metadata']['name']}", gracePeriodSeconds="0")

    # Then down for two windows: paused, so the operator leaves the Deployment at zero replicas.
    kube.patch(_rule_path(namespace), {"spec": {"paused": True}}, "merge")
    deploy = f"/apis/apps/v1/namespaces/{namespace}/deployments/probe-rollup-processor"
    eventually(lambda: rule_status(kube, namespace).get("phase") == "Paused", timeout=30, what="the rule paused")
    kube.patch(deploy, {"spec": {"replicas": 0}}, "merge")
    eventually(lambda: not kube.list(pods_path, labelSelector=selector)[0], timeout=60, what="no processor pod")
    time.sleep(2 * RULE_WINDOW + 1)
    kube.patch(_rule_path(namespace), {"spec": {"paused": False}}, "merge")  # the operator restores one replica
    wait_flowing(kube, namespace)
    every_window_right(influxdb, namespace, first, time.time())


def test_influxdb_down_the_rollups_are_buffered_then_written(
    control_plane: ControlPlane,
    nodes: Nodes,
    influxdb: InfluxDB,
    namespace: str,
    operator: Operator,
    probe: Probe,
) -> None:
    kube = control_plane.kube
    first = rolling_up(kube, namespace, nodes, influxdb, probe)
    influxdb.stop()
    try:
        time.sleep(3 * RULE_WINDOW)

        def buffered() -> dict[str, Any] | None:
            status = rule_status(kube, namespace)
            return status if (status.get("bufferedPoints") or 0) > 0 else None

        eventually(buffered, timeout=60, what="the processor's buffered points in the rule's status")
    finally:
        influxdb.start()
    wait_flowing(kube, namespace)
    every_window_right(influxdb, namespace, first, time.time())


def test_a_rule_naming_a_missing_collector_says_so(
    control_plane: ControlPlane, nodes: Nodes, influxdb: InfluxDB, namespace: str, operator: Operator, probe: Probe
) -> None:
    kube = control_plane.kube
    _setup(kube, namespace, nodes, influxdb, probe)
    kube.apply(_rule(namespace, collectors=["nodes", "absent"]), namespace)

    def named() -> dict[str, Any] | None:
        status = rule_status(kube, namespace)
        named_absent = condition(status, "Reconciled").get("reason") == "CollectorNotFound"
        # "nodes" was just applied: the operator may not have seen it yet, and says so until it has.
        return status if named_absent and status.get("missingCollectors") == ["absent"] else None

    status = eventually(named, timeout=60, what="Reconciled=False CollectorNotFound")
    assert "absent" in condition(status, "Reconciled")["message"]
    assert status["missingCollectors"] == ["absent"]
    wait_flowing(kube, namespace)  # the processor still rolls up what the existing collector sends
    kube.apply(
        {
            "apiVersion": "observatory.happypatterns.org/v1alpha1",
            "kind": "ObservatoryCollector",
            "metadata": {"name": "absent"},
            "spec": {
                "image": AGENT_IMAGE,
                "interval": "1s",
                "window": f"{AGENT_WINDOW:g}s",  # the rule window a whole multiple of it, or WindowMismatch
                "collectors": [{"name": "cpu"}],
                "nodeSelector": {"none": "none"},
            },
        },
        namespace,
    )

    def reconciled_true() -> dict[str, Any]:
        reconciled = condition(rule_status(kube, namespace), "Reconciled")
        assert reconciled.get("status") == "True", reconciled  # eventually() names the last one seen
        return reconciled

    reconciled = eventually(reconciled_true, timeout=60, what="Reconciled=True once the collector exists")
    assert not rule_status(kube, namespace).get("missingCollectors"), reconciled

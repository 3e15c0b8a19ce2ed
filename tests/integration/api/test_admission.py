"""The real API server enforces the generated schemas and CEL rules, with messages naming the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.env.controlplane import ControlPlane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
GROUP, VERSION = "observatory.happypatterns.org", "v1alpha1"
PLURALS = {"ObservatoryCollector": "observatorycollectors", "AggregationRule": "aggregationrules"}


def _example(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "examples" / name).read_text())
    return loaded


def _create(api_client: client.ApiClient, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    api = client.CustomObjectsApi(api_client)
    created: dict[str, Any] = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj)
    return created


def test_every_example_is_accepted(control_plane: ControlPlane, crds: list[str], namespace: str) -> None:
    core = client.CoreV1Api(control_plane.api_client)
    shared = _example("shared-config.yaml")
    core.create_namespaced_config_map(namespace, shared)
    collector = _create(control_plane.api_client, namespace, _example("collector.yaml"))
    rule = _create(control_plane.api_client, namespace, _example("cpu-rollup.yaml"))
    assert collector["spec"]["interval"] == "10s"
    assert rule["spec"]["output"]["measurement"] == "cluster.cpu.usage"


def test_schema_defaults_are_applied_by_the_api_server(
    control_plane: ControlPlane, crds: list[str], namespace: str
) -> None:
    bare = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ObservatoryCollector", "metadata": {"name": "bare"}}
    created = _create(control_plane.api_client, namespace, bare)
    spec = created["spec"]
    assert [c["name"] for c in spec["collectors"]][:3] == ["cpu", "cpu_core", "memory"]
    assert spec["collectors"][0]["timeout"] == "5s"
    assert spec["aggregations"] == {"quantiles": [50, 95, 99], "exactThreshold": 1024}
    assert spec["sharedConfig"] == {"name": "observatory-shared-config", "optional": False}
    assert spec["paused"] is False
    assert "interval" not in spec  # left to shared-config


def _collector(**spec: Any) -> dict[str, Any]:
    obj = _example("collector.yaml")
    obj["spec"].update(spec)
    return obj


def _collector_with(path: list[str], value: Any) -> dict[str, Any]:
    obj = _example("collector.yaml")
    node = obj["spec"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return obj


def _rule(**spec: Any) -> dict[str, Any]:
    obj = _example("cpu-rollup.yaml")
    obj["spec"].update(spec)
    return obj


def _rule_without(key: str) -> dict[str, Any]:
    obj = _example("cpu-rollup.yaml")
    del obj["spec"][key]
    return obj


# (id, object, the field the message must name, the rule text the message must contain)
INVALID = [
    ("malformed-interval", _collector(interval="ten seconds"), "spec.interval", "should match"),
    ("window-not-multiple", _collector(interval="10s", window="25s"), "spec.window", "whole multiple of interval"),
    (
        "quantile-out-of-range",
        _collector(aggregations={"quantiles": [50, 100]}),
        "spec.aggregations.quantiles",
        "strictly between 0 and 100",
    ),
    (
        "duplicate-collectors",
        _collector(collectors=[{"name": "cpu"}, {"name": "cpu"}]),
        "spec.collectors",
        "collector names must be unique",
    ),
    ("no-collectors", _collector(collectors=[]), "spec.collectors", "should have at least 1 items"),
    (
        "unknown-kind",
        _collector(collectors=[{"name": "gpu", "kind": "gpu"}]),
        "spec.collectors[0].kind",
        "Unsupported value",
    ),
    (
        "unknown-name-without-kind",
        _collector(collectors=[{"name": "gpu"}]),
        "spec.collectors[0].kind",
        "kind is required when name is not a system collector",
    ),
    (
        "application-without-targets",
        _collector(collectors=[{"name": "app", "kind": "application"}]),
        "spec.collectors[0].targets",
        "needs at least one target URL",
    ),
    (
        "custom-without-entry-point",
        _collector(collectors=[{"name": "mine", "kind": "custom"}]),
        "spec.collectors[0].entryPoint",
        "needs entryPoint",
    ),
    (
        "exact-threshold-zero",
        _collector(aggregations={"exactThreshold": 0}),
        "spec.aggregations.exactThreshold",
        "should be greater than or equal to 1",
    ),
    ("influxdb-url-scheme", _collector_with(["influxdb", "url"], "ftp://influx"), "spec.influxdb.url", "should match"),
    (
        "bad-quantity",
        _collector_with(["resources", "limits", "memory"], "lots"),
        "spec.resources.limits.memory",
        "should match",
    ),
    (
        "bad-toleration-operator",
        _collector(tolerations=[{"key": "a", "operator": "Maybe"}]),
        "spec.tolerations[0].operator",
        "Unsupported value",
    ),
    (
        "bad-update-strategy",
        _collector(updateStrategy={"type": "Replace"}),
        "spec.updateStrategy.type",
        "Unsupported value",
    ),
    (
        "lateness-not-shorter-than-window",
        _rule(window="1m", allowedLateness="1m"),
        "spec.allowedLateness",
        "allowedLateness must be shorter than window",
    ),
    ("max-series-zero", _rule(maxSeries=0), "spec.maxSeries", "maxSeries must be at least 1"),
    ("no-metric-patterns", _rule(metrics=[]), "spec.metrics", "at least one non-empty metric name pattern"),
    ("empty-metric-pattern", _rule(metrics=[""]), "spec.metrics", "at least one non-empty metric name pattern"),
    ("unknown-function", _rule(functions=["median"]), "spec.functions[0]", "should match"),
    ("rule-without-output", _rule_without("output"), "spec.output", "Required value"),
    ("rule-without-collectors", _rule(collectors=[]), "spec.collectors", "should have at least 1 items"),
    ("group-by-the-rules-namespace", _rule(groupBy=["zone", "namespace"]), "spec.groupBy", "neither 'rule' nor"),
    ("group-by-the-rules-name", _rule(groupBy=["rule"]), "spec.groupBy", "neither 'rule' nor 'namespace'"),
    ("group-by-a-reserved-tag", _rule(groupBy=["_field"]), "spec.groupBy", "reserved by InfluxDB"),
]


@pytest.mark.parametrize(("obj", "field", "rule"), [case[1:] for case in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_object_is_refused_naming_the_field(
    control_plane: ControlPlane, crds: list[str], namespace: str, obj: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(ApiException) as err:
        _create(control_plane.api_client, namespace, copy.deepcopy(obj))
    assert err.value.status == 422
    body = json.loads(err.value.body)
    message = body["message"]
    assert f"{field}:" in message, message
    assert rule in message, message
    # Nothing half-applied: the object does not exist.
    api = client.CustomObjectsApi(control_plane.api_client)
    listed = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURALS[obj["kind"]])
    assert listed["items"] == []

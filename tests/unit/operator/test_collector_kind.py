"""The collector kind's glue: a spec the models refuse names the field; the cache keeps only what status reads."""

from __future__ import annotations

from typing import Any

from observatory_operator import reasons
from observatory_operator.handlers.collector import parse, trim_event, trim_node, trim_pod
from observatory_operator.reasons import Outcome


def _body(spec: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": "observatory.happypatterns.org/v1alpha1",
        "kind": "ObservatoryCollector",
        "metadata": {"name": "nodes", "namespace": "ns", "uid": "u"},
        "spec": spec,
        "status": {"phase": "Ready"},
    }


def test_a_valid_body_parses_and_status_is_ignored() -> None:
    collector, problem = parse(_body({"interval": "10s", "window": "1m"}))
    assert problem is None
    assert collector is not None
    assert collector.spec.window == "1m"


def test_an_invalid_spec_names_the_field() -> None:
    collector, problem = parse(_body({"interval": "7s", "window": "1m"}))
    assert collector is None
    assert problem is not None
    assert problem.outcome is Outcome.INVALID
    assert problem.reason == reasons.INVALID_SPEC
    assert "whole multiple of interval" in problem.message


def _node(heartbeat: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "n1", "resourceVersion": heartbeat, "labels": labels, "managedFields": [{"x": 1}]},
        "spec": {"taints": []},
        "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": heartbeat}], "images": [{"names": ["a"]}]},
    }


def test_a_node_heartbeat_changes_nothing_the_cache_keeps_but_a_label_does() -> None:
    first, beat = trim_node(_node("1")), trim_node(_node("2"))
    first["metadata"].pop("resourceVersion"), beat["metadata"].pop("resourceVersion")  # the machinery ignores it
    assert first == beat
    # Of the status only the InternalIPs stay (processors' NetworkPolicies name them): no heartbeat, no images.
    assert first["status"] == {"addresses": []}
    assert trim_node(_node("3", pool="gpu"))["metadata"]["labels"] == {"pool": "gpu"}


def test_only_warnings_status_reads_are_kept() -> None:
    def event(reason: str, kind: str) -> dict[str, Any]:
        return {
            "metadata": {"name": "e", "namespace": "ns", "uid": "e1", "resourceVersion": "1"},
            "involvedObject": {"kind": kind, "name": "x", "uid": "u1"},
            "reason": reason,
            "message": "m" * 5000,
            "type": "Warning",
        }

    kept = trim_event(event("FailedCreate", "DaemonSet"))
    assert kept is not None
    assert len(kept["message"]) == 1024
    assert trim_event(event("FailedMount", "Pod")) is not None
    assert trim_event(event("BackOff", "Pod")) is None
    assert trim_event(event("FailedCreate", "ReplicaSet")) is None


def test_a_pod_keeps_its_status_and_ports_not_its_volumes() -> None:
    pod = {
        "metadata": {"name": "p", "uid": "u", "ownerReferences": [{"uid": "ds", "controller": True}]},
        "spec": {
            "nodeName": "n1",
            "volumes": [{"name": "v"}],
            "containers": [{"name": "agent", "image": "i", "env": [], "ports": [{"name": "metrics"}]}],
        },
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "initContainerStatuses": [{"name": "buffer-owner", "state": {"terminated": {"exitCode": 0}}}],
        },
    }
    kept = trim_pod(pod)
    assert kept["status"]["initContainerStatuses"][0]["name"] == "buffer-owner"  # a failing one is reported
    assert kept["spec"]["containers"] == [{"name": "agent", "ports": [{"name": "metrics"}]}]
    assert "volumes" not in kept["spec"]
    assert kept["status"]["podIP"] == "10.0.0.1"
    assert kept["metadata"]["ownerReferences"][0]["uid"] == "ds"

"""The operator on the real control plane with simulated nodes: children, coverage, restores, failures, GC."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest

from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes
from tests.env.kube import ApiError, Kube
from tests.integration.operator.conftest import (
    SERVICE_MONITOR_CRD,
    STAND_IN_IMAGE,
    Operator,
    collector_path,
    condition,
    eventually,
    get_or_none,
    stand_in_collector,
    status_of,
)

pytestmark = pytest.mark.integration

NAME = "nodes"
AGENT_IMAGE = "ghcr.io/happy-patterns-org/happy-observatory:2.0.0"
DS = f"/apis/apps/v1/namespaces/{{ns}}/daemonsets/{NAME}-agent"
CM = f"/api/v1/namespaces/{{ns}}/configmaps/{NAME}-agent-config"
SVC = f"/api/v1/namespaces/{{ns}}/services/{NAME}-agent-metrics"


def _collector(**spec: Any) -> dict[str, Any]:
    return stand_in_collector(NAME, **spec)


def _secret(kube: Kube, ns: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "influxdb-auth"},
            "stringData": {"token": "not-a-real-token"},
        },
        ns,
    )


def _ready(kube: Kube, ns: str, want: str) -> dict[str, Any] | None:
    status = status_of(kube, ns, NAME)
    return status if status.get("ready") == want and status.get("observedGeneration") else None


def test_collector_gets_a_daemonset_on_matching_nodes_and_ready_status(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)

    status = eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3")
    assert status["desiredAgents"] == 3
    assert status["uncoveredNodes"] == []
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Reconciled")["status"] == "True"
    ds = kube.get(DS.format(ns=namespace))
    assert ds["metadata"]["ownerReferences"][0]["controller"] is True
    assert (
        ds["spec"]["template"]["metadata"]["annotations"]["observatory.happypatterns.org/config-hash"]
        == (status["configHash"])
    )
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
    assert sorted(p["spec"]["nodeName"] for p in pods) == sorted(nodes.names)
    cm = kube.get(CM.format(ns=namespace))
    assert "not-a-real-token" not in str(cm)
    assert kube.get(SVC.format(ns=namespace))["spec"]["clusterIP"] == "None"
    printed = control_plane.kubectl("get", "obscol", NAME, "-n", namespace).stdout
    assert "3/3" in printed
    with urllib.request.urlopen(operator.liveness, timeout=5) as answer:  # kopf's liveness endpoint
        assert answer.status == 200


def test_tolerations_change_moves_coverage_and_names_the_uncovered_node(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(), namespace)

    status = eventually(lambda: _ready(kube, namespace, "2/2"), timeout=90, what="READY 2/2 without toleration")
    (uncovered,) = status["uncoveredNodes"]
    assert uncovered["node"] == nodes.tainted
    assert uncovered["reason"] == "NotTolerated"
    key, value, effect = nodes.taint
    assert f"{key}={value}:{effect}" in uncovered["message"]

    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    # The rollout replaces the pods one node at a time: the DaemonSet's counts can read 3/3 a moment
    # before the last new pod is seen; what matters is that coverage ends complete.
    status = eventually(
        lambda: (s := _ready(kube, namespace, "3/3")) and s["uncoveredNodes"] == [] and s,
        timeout=90,
        what="READY 3/3 and no uncovered node after tolerating",
    )
    assert status.get("uncoveredNodeCounts") is None

    kube.apply(_collector(nodeSelector={"happypatterns.org/pool": "none-such"}), namespace)
    status = eventually(
        lambda: (s := status_of(kube, namespace, NAME)).get("desiredAgents") == 0 and s, timeout=90, what="0 desired"
    )
    assert {u["reason"] for u in status["uncoveredNodes"]} == {"SelectorMismatch"}
    assert status["phase"] == "Pending"


def test_deleted_or_edited_children_are_restored(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3")

    kube.delete(CM.format(ns=namespace))
    kube.delete(SVC.format(ns=namespace))
    eventually(lambda: kube.get(CM.format(ns=namespace)), timeout=30, what="ConfigMap restored")
    eventually(lambda: kube.get(SVC.format(ns=namespace)), timeout=30, what="Service restored")

    patch = {"spec": {"template": {"spec": {"containers": [{"name": "agent", "image": "evil.example/agent:1"}]}}}}
    kube.patch(DS.format(ns=namespace), patch)

    def image_reverted() -> bool:
        ds = kube.get(DS.format(ns=namespace))
        return bool(ds["spec"]["template"]["spec"]["containers"][0]["image"] == STAND_IN_IMAGE)

    eventually(image_reverted, timeout=30, what="DaemonSet image reverted")

    kube.delete(DS.format(ns=namespace))
    eventually(lambda: kube.get(DS.format(ns=namespace)), timeout=30, what="DaemonSet restored")


def test_sigterm_stops_the_operator_at_once_and_cleanly(control_plane: ControlPlane, operator: Operator) -> None:
    """A rollout or `helm upgrade` waits for the old operator to exit: SIGTERM ends it promptly, exit code 0
    (kopf held the exit back 5 s while its wait on the operator's stop flag was still pending)."""
    eventually(lambda: urllib.request.urlopen(operator.liveness, timeout=2).status == 200, timeout=30, what="live")
    began = time.monotonic()
    code = operator.process.stop(grace=10)
    took = time.monotonic() - began
    assert code == 0, operator.log()
    assert took < 2.0, f"the operator took {took:.1f}s to exit on SIGTERM:\n{operator.log()}"
    assert "Operator is stopping" in operator.log()


def test_invalid_spec_is_refused_at_admission(control_plane: ControlPlane, namespace: str, operator: Operator) -> None:
    with pytest.raises(ApiError) as refused:
        control_plane.kube.apply(_collector(interval="7s", window="1m"), namespace)
    assert refused.value.status == 422
    assert "window must be a whole multiple of interval" in refused.value.message


def test_missing_secret_is_read_from_the_agent_pods_and_named_in_ready(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    """The operator never reads Secrets: the agent pods waiting for their token volume say it is missing."""
    kube = control_plane.kube
    # The project image: the node (simulated or real) mounts its volumes before starting it.
    kube.apply(_collector(image=AGENT_IMAGE), namespace)

    def failed() -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        return status if condition(status, "Ready").get("reason") == "SecretNotFound" else None

    status = eventually(failed, timeout=60, what="Ready=False SecretNotFound from the agent pods")
    ready = condition(status, "Ready")
    assert "influxdb-auth (spec.influxdb.tokenSecretRef) not found" in ready["message"]
    assert status["phase"] == "Failed"
    assert condition(status, "Reconciled")["status"] == "True", "the children themselves are fine"

    def warning_event() -> bool:
        events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e.get("type") == "Warning" and e.get("reason") == "SecretNotFound" for e in events)

    eventually(warning_event, timeout=30, what="a Warning Event SecretNotFound")

    _secret(kube, namespace)
    eventually(
        lambda: condition(status_of(kube, namespace, NAME), "Ready").get("reason") != "SecretNotFound",
        # A real kubelet retries a failed mount with a backoff that grows to about two minutes.
        timeout=180,
        what="SecretNotFound gone once the Secret exists",
    )


def test_missing_shared_config_is_named_when_not_optional(
    control_plane: ControlPlane, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(sharedConfig={"name": "org-defaults", "optional": False}), namespace)

    def failed() -> dict[str, Any] | None:
        status = status_of(kube, namespace, NAME)
        return status if condition(status, "Reconciled").get("reason") == "SharedConfigNotFound" else None

    status = eventually(failed, timeout=60, what="Reconciled=False SharedConfigNotFound")
    assert "org-defaults" in condition(status, "Reconciled")["message"]
    assert get_or_none(kube, DS.format(ns=namespace)) is None


def test_paused_collector_is_left_alone_and_says_so(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3")

    kube.apply(_collector(tolerations=[nodes.toleration], paused=True), namespace)
    eventually(lambda: status_of(kube, namespace, NAME).get("phase") == "Paused", timeout=30, what="phase Paused")
    kube.delete(SVC.format(ns=namespace))
    time.sleep(3 * 2.0 + 1)
    assert get_or_none(kube, SVC.format(ns=namespace)) is None
    assert condition(status_of(kube, namespace, NAME), "Reconciled")["reason"] == "Paused"

    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    eventually(lambda: kube.get(SVC.format(ns=namespace)), timeout=30, what="Service back after unpausing")


def test_deleting_the_collector_deletes_its_children(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(), namespace)
    eventually(lambda: kube.get(DS.format(ns=namespace)), timeout=60, what="DaemonSet created")
    collector = kube.get(collector_path(namespace, NAME))
    assert not collector["metadata"].get("finalizers"), "collectors carry no finalizer"

    kube.delete(collector_path(namespace, NAME))
    for path in (DS, CM, SVC):
        eventually(
            lambda p=path: get_or_none(kube, p.format(ns=namespace)) is None, timeout=60, what=f"{path} collected"
        )


def test_operator_restart_makes_no_duplicates_and_no_writes(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3")
    # Settled: the stand-in agents answer no /status, so DataFlowing turns False two windows in.
    eventually(
        lambda: condition(status_of(kube, namespace, NAME), "DataFlowing").get("status") == "False",
        timeout=60,
        what="DataFlowing decided",
    )
    time.sleep(2 * 2.0)

    def versions() -> dict[str, str]:
        return {p: kube.get(p.format(ns=namespace))["metadata"]["resourceVersion"] for p in (DS, CM, SVC)} | {
            "collector": kube.get(collector_path(namespace, NAME))["metadata"]["resourceVersion"]
        }

    before = versions()
    operator.restart()
    time.sleep(4 * 2.0 + 3)
    assert versions() == before
    daemonsets = kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets")["items"]
    assert [d["metadata"]["name"] for d in daemonsets] == [f"{NAME}-agent"]


def test_daemonset_with_another_selector_is_recreated(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    """A selector is immutable: a DaemonSet left by an older release with another selector is replaced."""
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(paused=True), namespace)
    owner = kube.get(collector_path(namespace, NAME))
    legacy_labels = {"app": "legacy-agent"}
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {
                "name": f"{NAME}-agent",
                "ownerReferences": [
                    {
                        "apiVersion": owner["apiVersion"],
                        "kind": owner["kind"],
                        "name": NAME,
                        "uid": owner["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "selector": {"matchLabels": legacy_labels},
                "template": {
                    "metadata": {"labels": legacy_labels},
                    "spec": {"containers": [{"name": "agent", "image": STAND_IN_IMAGE}]},
                },
            },
        },
        namespace,
    )
    legacy_uid = kube.get(DS.format(ns=namespace))["metadata"]["uid"]

    kube.apply(_collector(), namespace)

    def recreated() -> dict[str, Any] | None:
        ds = kube.get(DS.format(ns=namespace))
        return ds if ds["metadata"]["uid"] != legacy_uid else None

    ds = eventually(recreated, timeout=30, what="DaemonSet recreated with the new selector")
    assert ds["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "happy-observatory-agent"

    def recreated_event() -> bool:
        events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e.get("reason") == "Recreated" for e in events)

    eventually(recreated_event, timeout=15, what="a Recreated Event")


def test_service_monitor_is_created_when_its_crd_exists(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    kube.apply(SERVICE_MONITOR_CRD)
    eventually(
        lambda: kube.get("/apis/monitoring.coreos.com/v1"), timeout=30, what="the ServiceMonitor API being served"
    )
    operator.restart()  # the operator caches API discovery for minutes; a fresh one sees the CRD at once
    _secret(kube, namespace)
    kube.apply(_collector(), namespace)
    sm_path = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/{NAME}-agent"
    monitor = eventually(lambda: kube.get(sm_path), timeout=30, what="ServiceMonitor created")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["metadata"]["ownerReferences"][0]["controller"] is True


def test_operator_works_with_exactly_its_rbac_rules(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, rbac_operator: Operator
) -> None:
    """The rules in observatory_operator.rbac are enough: children, status, Events, Secret check, nodes."""
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    status = eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3 under the operator's RBAC")
    assert condition(status, "Reconciled")["status"] == "True"
    assert "Forbidden" not in rbac_operator.log()
    assert "forbidden" not in rbac_operator.log()


def test_child_changes_are_acted_on_without_waiting_for_the_resync(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, slow_resync_operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(_collector(tolerations=[nodes.toleration]), namespace)
    # READY 3/3 arrives through DaemonSet events: the resync would take ten minutes.
    eventually(lambda: _ready(kube, namespace, "3/3"), timeout=30, what="READY 3/3 from DaemonSet events")

    uid = kube.get(DS.format(ns=namespace))["metadata"]["uid"]
    kube.delete(DS.format(ns=namespace))
    started = time.monotonic()
    eventually(
        lambda: kube.get(DS.format(ns=namespace))["metadata"]["uid"] != uid, timeout=15, what="DaemonSet restored"
    )
    assert time.monotonic() - started < 10


def test_idle_resyncs_send_no_request_at_all(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    """Rounds read watch-fed caches: an idle resync neither writes nor reads (issue 11, item 7)."""
    kube = control_plane.kube
    _secret(kube, namespace)
    # A long window keeps DataFlowing in its first state for minutes: nothing legitimately changes.
    kube.apply(_collector(tolerations=[nodes.toleration], interval="1m", window="5m"), namespace)
    eventually(lambda: _ready(kube, namespace, "3/3"), timeout=90, what="READY 3/3")
    time.sleep(3 * 2.0)

    def rounds() -> float:
        return sum(
            v
            for (name, labels), v in operator.metrics().items()
            if name == "observatory_operator_reconciles_total" and dict(labels)["kind"] == "ObservatoryCollector"
        )

    def by_verb() -> dict[str, float]:
        return {
            f"{dict(labels)['verb']} {dict(labels)['code']}": v
            for (name, labels), v in operator.metrics().items()
            if name == "observatory_operator_api_requests_total"
        }

    before, rounds_before = by_verb(), rounds()
    time.sleep(5 * 2.0)  # five 2 s resyncs
    after, rounds_after = by_verb(), rounds()
    assert rounds_after >= rounds_before + 4, "resyncs ran"
    assert after == before, f"API requests during idle resyncs: {before} -> {after}"


def test_invalid_shared_config_is_reported_but_children_stay_applied(
    control_plane: ControlPlane, nodes: Nodes, namespace: str, operator: Operator
) -> None:
    kube = control_plane.kube
    _secret(kube, namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "observatory-shared-config"},
            "data": {"observatory_collection_interval": "ten seconds"},
        },
        namespace,
    )
    kube.apply(_collector(), namespace)

    def reported() -> dict[str, Any] | None:
        reconciled = condition(status_of(kube, namespace, NAME), "Reconciled")
        return reconciled if "shared-config is invalid" in reconciled.get("message", "") else None

    reconciled = eventually(reported, timeout=30, what="Reconciled message naming the invalid shared-config")
    assert reconciled["status"] == "True"
    assert "observatory_collection_interval" in reconciled["message"]
    assert kube.get(DS.format(ns=namespace))

    def warning() -> bool:
        events = kube.get(f"/api/v1/namespaces/{namespace}/events")["items"]
        return any(e.get("reason") == "SharedConfigInvalid" and e.get("type") == "Warning" for e in events)

    eventually(warning, timeout=15, what="a SharedConfigInvalid Warning Event")


def test_a_spec_the_api_server_refuses_applies_nothing_and_says_why(
    control_plane: ControlPlane, namespace: str, operator: Operator
) -> None:
    """affinity passes through to the pod; a bad one is refused by the DaemonSet's validation, not the CRD's."""
    kube = control_plane.kube
    _secret(kube, namespace)
    bad_affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "Sometimes"}]}]
            }
        }
    }
    kube.apply(_collector(affinity=bad_affinity), namespace)

    def rejected() -> dict[str, Any] | None:
        reconciled = condition(status_of(kube, namespace, NAME), "Reconciled")
        return reconciled if reconciled.get("reason") == "ApplyRejected" else None

    reconciled = eventually(rejected, timeout=30, what="Reconciled=False ApplyRejected")
    assert "Sometimes" in reconciled["message"] or "operator" in reconciled["message"]
    # The dry run caught it before anything was written: no ConfigMap ahead of a DaemonSet that cannot follow.
    assert get_or_none(kube, CM.format(ns=namespace)) is None
    assert get_or_none(kube, DS.format(ns=namespace)) is None
    assert status_of(kube, namespace, NAME)["phase"] == "Failed"

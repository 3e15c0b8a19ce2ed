"""Least privilege, from what the API server saw: every verb the RBAC grants is one the operator sends.

The audit replay runs last in the session (``conftest.pytest_collection_modifyitems``), so it reads
every request any operator ServiceAccount sent during the whole test run (the e2e tests' in-cluster
operator included). It first drives one collector through everything the operator does (create,
apply, restore, prune of each child kind, ServiceMonitors, Events, status, leader election), so it
holds on its own when run alone.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from observatory_operator import rbac
from observatory_operator.manifests import names
from tests.env.controlplane import ControlPlane
from tests.env.fixtures import Nodes
from tests.env.nodesim import REPO
from tests.integration.operator.conftest import (
    GROUP_PATH,
    OPERATOR_ACCOUNT,
    SERVICE_MONITOR_CRD,
    Accounts,
    audit_events,
    collector_path,
    eventually,
    get_or_none,
    stand_in_collector,
    start_operator,
    status_of,
)

pytestmark = pytest.mark.integration

CHART = REPO / "helm" / "happy-observatory"
LEASE = "observatory-operator"
ROLLUP = {
    "apiVersion": "observatory.happypatterns.org/v1alpha1",
    "kind": "AggregationRule",
    "metadata": {"name": "roll"},
    "spec": {
        "collectors": ["nodes"],
        "metrics": ["system.cpu.usage"],
        "window": "1m",
        "output": {"measurement": "cluster.cpu.usage"},
    },
}


def _granted() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule of rbac.py."""
    return {
        (group, resource, verb)
        for rule in rbac.CLUSTER_RULES + rbac.NAMESPACED_RULES + rbac.LEADER_RULES
        for group in rule.groups
        for resource in rule.resources
        for verb in rule.verbs
    }


def _operator_user(username: str) -> bool:
    """ServiceAccounts that run the operator in these tests and in the chart (``<release>-operator``)."""
    account = username.rsplit(":", 1)[-1]
    return username.startswith("system:serviceaccount:") and "operator" in account


def _sent(event: dict[str, Any]) -> set[tuple[str, str, str]]:
    """What RBAC checked for one request: server-side apply that created an object also needed ``create``."""
    ref = event.get("objectRef") or {}
    resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    sent = {(ref.get("apiGroup", ""), resource, event["verb"])}
    if event["verb"] == "patch" and (event.get("responseStatus") or {}).get("code") == 201:
        sent.add((ref.get("apiGroup", ""), resource, "create"))
    return sent


def _child(kind: str, name: str, owner: dict[str, Any]) -> dict[str, Any]:
    """A child the operator no longer wants: labelled as the collector's (or the rule's), controlled by it."""
    owner_name = owner["metadata"]["name"]
    labels = (
        names.processor_labels(owner_name) if owner["kind"] == "AggregationRule" else names.common_labels(owner_name)
    )
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
    }
    meta = {"name": name, "labels": labels, "ownerReferences": [ref]}
    pod_template = {
        "metadata": {"labels": {"stray": name}},
        "spec": {
            "nodeSelector": {"happypatterns.org/pool": "none"},
            "containers": [{"name": "x", "image": "registry.example/x:1"}],
        },
    }
    bodies: dict[str, dict[str, Any]] = {
        "ConfigMap": {"apiVersion": "v1", "data": {"x": "1"}},
        "Service": {"apiVersion": "v1", "spec": {"clusterIP": "None", "ports": [{"port": 1}]}},
        "DaemonSet": {
            "apiVersion": "apps/v1",
            "spec": {"selector": {"matchLabels": {"stray": name}}, "template": pod_template},
        },
        "Deployment": {
            "apiVersion": "apps/v1",
            "spec": {"replicas": 0, "selector": {"matchLabels": {"stray": name}}, "template": pod_template},
        },
        "NetworkPolicy": {
            "apiVersion": "networking.k8s.io/v1",
            "spec": {"podSelector": {"matchLabels": {"stray": name}}, "policyTypes": ["Ingress"]},
        },
        "ServiceMonitor": {"apiVersion": "monitoring.coreos.com/v1", "spec": {"endpoints": []}},
    }
    return {"kind": kind, "metadata": meta, **bodies[kind]}


def test_every_granted_verb_is_one_the_operator_sends(
    control_plane: ControlPlane, crds: list[str], nodes: Nodes, namespace: str, bed_root: Path, accounts: Accounts
) -> None:
    kube = control_plane.kube
    kube.apply(SERVICE_MONITOR_CRD)
    eventually(lambda: kube.get("/apis/monitoring.coreos.com/v1"), timeout=30, what="the ServiceMonitor API")
    kube.apply(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "influxdb-auth"}, "stringData": {"token": "x"}},
        namespace,
    )
    kubeconfig = accounts.kubeconfig(namespace, OPERATOR_ACCOUNT, lease=LEASE)
    election = ["--leader-election", LEASE, "--leader-election-namespace", namespace]
    operator = start_operator(kubeconfig, namespace, bed_root / "logs" / f"operator-{namespace}.log", extra=election)
    try:
        kube.apply(stand_in_collector("nodes", tolerations=[nodes.toleration]), namespace)
        eventually(lambda: status_of(kube, namespace, "nodes").get("ready") == "3/3", timeout=90, what="READY 3/3")
        owner = kube.get(collector_path(namespace, "nodes"))
        strays = [
            _child(kind, f"nodes-stray-{kind.lower()}", owner)
            for kind in ("ConfigMap", "Service", "DaemonSet", "ServiceMonitor")
        ]
        for stray in strays:
            kube.apply(stray, namespace)
        for stray in strays:
            path = kube.path_of(stray, namespace)
            eventually(lambda p=path: get_or_none(kube, p) is None, timeout=30, what=f"{stray['kind']} pruned")
        kube.delete(f"/api/v1/namespaces/{namespace}/services/nodes-agent-metrics")
        eventually(
            lambda: kube.get(f"/api/v1/namespaces/{namespace}/services/nodes-agent-metrics"),
            timeout=30,
            what="restored",
        )
        # A rule: its processor's children, the same prune and restore, its status.
        kube.apply(ROLLUP, namespace)
        deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{names.processor_deployment('roll')}"
        eventually(lambda: get_or_none(kube, deployment), timeout=30, what="the processor Deployment")
        rule = kube.get(f"{GROUP_PATH}/namespaces/{namespace}/aggregationrules/roll")
        for stray in [_child(kind, f"roll-stray-{kind.lower()}", rule) for kind in ("Deployment", "NetworkPolicy")]:
            kube.apply(stray, namespace)
            path = kube.path_of(stray, namespace)
            eventually(lambda p=path: get_or_none(kube, p) is None, timeout=30, what=f"{stray['kind']} pruned")
        policy = (
            f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{names.processor_networkpolicy('roll')}"
        )
        kube.delete(policy)
        eventually(lambda: get_or_none(kube, policy), timeout=30, what="the processor's NetworkPolicy restored")
        eventually(
            lambda: (kube.get(f"{GROUP_PATH}/namespaces/{namespace}/aggregationrules/roll").get("status") or {}).get(
                "conditions"
            ),
            timeout=30,
            what="the rule's status",
        )
        assert operator.process.alive(), operator.log()
    finally:
        operator.process.stop()  # releases the Lease: an update

    events = [e for e in audit_events(control_plane) if _operator_user(e["user"]["username"])]
    mine = [e for e in events if e["user"]["username"].endswith(f":{namespace}:{OPERATOR_ACCOUNT}")]
    assert {e["verb"] for e in mine} >= {"create", "patch", "delete", "update", "list", "watch", "get"}
    # Refusals count for this test's operator only: elsewhere a `helm uninstall` deletes the RBAC
    # while the operator it bound is still shutting down, and the API server rightly says no.
    refused = Counter(
        f"{e['verb']} {e['requestURI']}" for e in mine if (e.get("responseStatus") or {}).get("code") == 403
    )
    assert not refused, f"the operator sent requests its RBAC refuses: {dict(refused)}"
    sent = {triple for e in events for triple in _sent(e)}
    unused = sorted(_granted() - sent)
    assert not unused, f"granted but never sent in this run: {unused}"


def _render(helm: Path, namespace: str, *values: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [str(helm), "template", "obs", str(CHART), "--namespace", namespace, *values],
        capture_output=True,
        text=True,
        check=True,
    )
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_cluster_scoped_rbac_names_differ_between_releases_of_the_same_name(helm: Path) -> None:
    """Two releases called obs, in two namespaces, must not overwrite each other's ClusterRole."""

    def cluster_scoped(namespace: str) -> set[str]:
        docs = _render(helm, namespace)
        return {f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"].startswith("Cluster")}

    team_a, team_b = cluster_scoped("team-a"), cluster_scoped("team-b")
    assert team_a
    assert not team_a & team_b, team_a & team_b


def test_the_chart_grants_exactly_the_rules_of_rbac_py(helm: Path) -> None:
    docs = _render(helm, "observatory", "--set", "operator.watchNamespaces={a}", "--set", "operator.replicas=2")
    by_name = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs}
    cluster = next(d for (kind, _, _), d in by_name.items() if kind == "ClusterRole")
    assert cluster["rules"] == [r.as_k8s() for r in rbac.CLUSTER_RULES]
    watched = by_name[("Role", "a", "obs-operator")]
    assert watched["rules"] == [r.as_k8s() for r in rbac.NAMESPACED_RULES]
    leader = by_name[("Role", "observatory", "obs-operator-leader-election")]
    assert leader["rules"] == rbac.role("x", "observatory", rbac.LEADER_RULES, lease="obs-operator")["rules"]
    secrets = [
        r for d in docs if d["kind"] in {"Role", "ClusterRole"} for r in d["rules"] if "secrets" in r["resources"]
    ]
    assert not secrets

"""The exact RBAC rules the operator needs, as data for the Helm chart (no wildcard verbs or resources).

``python -m observatory_operator.rbac`` prints the ClusterRole and Role rules as YAML. Every rule
says why it exists; a verb nobody can explain is a verb to remove.
"""

from __future__ import annotations

import sys
from typing import Any, Final

import yaml

from observatory_operator.api.models import GROUP

Rule = dict[str, Any]

READ: Final = ["get", "list", "watch"]
OWN: Final = ["get", "list", "watch", "create", "patch", "update", "delete"]
"""Children: server-side apply is create-or-patch, pruning and selector changes delete."""


def _rule(group: str, resources: list[str], verbs: list[str], why: str) -> Rule:
    return {"apiGroups": [group], "resources": resources, "verbs": list(verbs), "#": why}


CLUSTER_RULES: Final[list[Rule]] = [
    _rule("", ["nodes"], READ, "status: which nodes an agent should cover and why a node is not covered"),
    _rule(
        "apiextensions.k8s.io",
        ["customresourcedefinitions"],
        READ,
        "kopf verifies the watched CRDs; the operator checks whether the ServiceMonitor CRD exists",
    ),
    _rule("", ["namespaces"], READ, "kopf follows namespace lifecycle when watching all namespaces"),
    _rule(
        "kopf.dev",
        ["clusterkopfpeerings"],
        ["get", "list", "watch", "patch"],
        "only with --peering and --all-namespaces: one active replica at a time",
    ),
]
"""Cluster-scoped resources: always a ClusterRole."""

NAMESPACED_RULES: Final[list[Rule]] = [
    _rule(GROUP, ["observatorycollectors", "aggregationrules"], [*READ, "patch"], "watch; kopf's annotations"),
    _rule(GROUP, ["observatorycollectors/status", "aggregationrules/status"], ["get", "patch"], "the status funnel"),
    _rule("apps", ["daemonsets"], OWN, "one agent DaemonSet per collector"),
    _rule("", ["configmaps"], OWN, "the rendered agent.json; reading the shared-config ConfigMap"),
    _rule("", ["services"], OWN, "the agents' headless metrics Service"),
    _rule("", ["pods"], READ, "status: agent pods' readiness and IPs for /status probes"),
    _rule(
        "",
        ["secrets"],
        ["get"],
        "existence of the token Secret, read as PartialObjectMetadata: the operator never needs the token",
    ),
    _rule("", ["events"], ["create", "patch"], "Events on collectors (kopf posts through core/v1)"),
    _rule("events.k8s.io", ["events"], ["create", "patch"], "Events through the newer API"),
    _rule("monitoring.coreos.com", ["servicemonitors"], OWN, "a ServiceMonitor when prometheus-operator is there"),
    _rule("kopf.dev", ["kopfpeerings"], ["get", "list", "watch", "patch"], "only with --peering in namespaced mode"),
]
"""Namespaced resources: a ClusterRole with --all-namespaces, else a Role in every watched namespace."""


def strip_comments(rules: list[Rule]) -> list[Rule]:
    """The rules as Kubernetes accepts them (the ``#`` key is documentation only)."""
    return [{k: v for k, v in r.items() if k != "#"} for r in rules]


def cluster_role(name: str, *, all_namespaces: bool) -> dict[str, Any]:
    """The operator's ClusterRole: cluster-scoped rules, plus the namespaced ones when it watches everything."""
    rules = CLUSTER_RULES + (NAMESPACED_RULES if all_namespaces else [])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": strip_comments(rules),
    }


def role(name: str, namespace: str) -> dict[str, Any]:
    """A Role for one watched namespace when the operator does not watch all of them."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": strip_comments(NAMESPACED_RULES),
    }


def main() -> int:
    yaml.safe_dump(
        {"clusterRules": CLUSTER_RULES, "namespacedRules": NAMESPACED_RULES}, sys.stdout, sort_keys=False, width=120
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The exact RBAC rules the operator needs, as data for the Helm chart (no wildcard verbs or resources).

``python -m observatory_operator.rbac [--namespaced]`` prints the ClusterRole (and, with
``--namespaced``, the per-namespace Role) as YAML with each rule's reason as a comment. Every
rule says why it exists; a verb nobody can explain is a verb to remove.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from observatory_operator.api.models import GROUP

READ: Final = ("get", "list", "watch")
OWN: Final = ("get", "list", "watch", "create", "patch", "update", "delete")
"""Children: server-side apply is create-or-patch; pruning and selector changes delete."""


@dataclass(frozen=True)
class Rule:
    """One PolicyRule and the reason the operator needs it."""

    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def as_k8s(self) -> dict[str, Any]:
        return {"apiGroups": list(self.groups), "resources": list(self.resources), "verbs": list(self.verbs)}


CLUSTER_RULES: Final = (
    Rule(("",), ("nodes",), READ, "status: which nodes an agent should cover and why a node is not covered"),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        READ,
        "kopf checks the watched CRDs; the operator checks whether the ServiceMonitor CRD exists",
    ),
    Rule(("",), ("namespaces",), READ, "kopf follows namespaces when it watches all of them"),
    Rule(
        ("kopf.dev",),
        ("clusterkopfpeerings",),
        ("get", "list", "watch", "patch", "create"),
        "only with --peering and --all-namespaces: one active replica at a time; created before kopf starts",
    ),
)
"""Cluster-scoped resources: always in a ClusterRole."""

NAMESPACED_RULES: Final = (
    Rule((GROUP,), ("observatorycollectors", "aggregationrules"), (*READ, "patch"), "watch; kopf's annotations"),
    Rule((GROUP,), ("observatorycollectors/status", "aggregationrules/status"), ("get", "patch"), "status funnel"),
    Rule(("apps",), ("daemonsets",), OWN, "one agent DaemonSet per collector"),
    Rule(("",), ("configmaps",), OWN, "the rendered agent.json; reading the shared-config ConfigMap"),
    Rule(("",), ("services",), OWN, "the agents' headless metrics Service"),
    Rule(("",), ("pods",), READ, "status: agent pods' readiness, and their IPs for the /status probes"),
    Rule(
        ("",),
        ("secrets",),
        ("get",),
        "that the token Secret exists, read as PartialObjectMetadata: the operator never needs the token",
    ),
    Rule(("",), ("events",), ("create", "patch"), "Events on collectors"),
    Rule(("monitoring.coreos.com",), ("servicemonitors",), OWN, "a ServiceMonitor when prometheus-operator is there"),
    Rule(
        ("kopf.dev",),
        ("kopfpeerings",),
        ("get", "list", "watch", "patch", "create"),
        "only with --peering, per namespace; created before kopf starts",
    ),
)
"""Namespaced resources: in the ClusterRole with --all-namespaces, else in a Role per watched namespace."""


def cluster_role(name: str, *, all_namespaces: bool) -> dict[str, Any]:
    """The operator's ClusterRole: cluster-scoped rules, plus the namespaced ones when it watches everything."""
    rules = CLUSTER_RULES + (NAMESPACED_RULES if all_namespaces else ())
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [r.as_k8s() for r in rules],
    }


def role(name: str, namespace: str) -> dict[str, Any]:
    """A Role for one watched namespace when the operator does not watch all of them."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": [r.as_k8s() for r in NAMESPACED_RULES],
    }


def render(obj: dict[str, Any], rules: Sequence[Rule]) -> str:
    """YAML of a Role/ClusterRole with each rule's reason as a comment above it."""
    head = yaml.safe_dump({k: v for k, v in obj.items() if k != "rules"}, sort_keys=False)
    lines = [head.rstrip(), "rules:"]
    for rule in rules:
        lines.append(f"  # {rule.why}")
        body = yaml.safe_dump([rule.as_k8s()], sort_keys=False, default_flow_style=None).rstrip()
        lines.extend(f"  {line}" for line in body.splitlines())
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m observatory_operator.rbac", description=__doc__)
    parser.add_argument("--name", default="happy-observatory-operator")
    parser.add_argument("--namespaced", metavar="NAMESPACE", help="print a ClusterRole for nodes + a Role here")
    args = parser.parse_args(argv)
    if args.namespaced:
        out = render(cluster_role(args.name, all_namespaces=False), CLUSTER_RULES)
        out += "---\n" + render(role(args.name, args.namespaced), NAMESPACED_RULES)
    else:
        out = render(cluster_role(args.name, all_namespaces=True), CLUSTER_RULES + NAMESPACED_RULES)
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

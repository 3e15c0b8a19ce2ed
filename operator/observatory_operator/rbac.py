"""The exact RBAC rules the operator needs, as data for the Helm chart: every verb it sends, and no other.

``python -m observatory_operator.rbac [--namespaced NS]`` prints the ClusterRole (and, with
``--namespaced``, the per-namespace Role) as YAML with each rule's reason as a comment. Every
rule says why it exists; ``tests/integration/operator/test_least_privilege.py`` replays the API
server's audit log of a full run and fails on any granted verb the operator never sent.

What the operator does *not* get, on purpose:

- **Secrets: nothing.** It never reads the InfluxDB token; a missing token Secret is reported from
  what the agent pods show (their waiting state, the kubelet's FailedMount Events).
- **update** on anything but its own Lease (server-side apply is ``patch``; a create through apply
  also needs ``create``); no ``patch`` on Events; reads come from watches (``get`` only by name before
  creating a child).
- Cluster-scoped reads beyond Nodes (label/taint coverage in status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml

from observatory_operator.api.models import GROUP

WATCH: Final = ("list", "watch")
"""Served from watches: a list to start (and after a 410), then a watch."""
OWN: Final = ("list", "watch", "get", "create", "patch", "delete")
"""Children: watched (and one read by name before creating, to see a namesake without our labels); server-side
apply is a patch (and a create the first time); pruning and recreation delete."""
LEASE_PLACEHOLDER: Final = "__LEASE__"
"""Stands for the Lease's name in the rendered rules; the chart puts its lease name there."""


@dataclass(frozen=True)
class Rule:
    """One PolicyRule and the reason the operator needs it."""

    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    names: tuple[str, ...] = ()
    """resourceNames, when the rule may only touch named objects."""

    def as_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"apiGroups": list(self.groups), "resources": list(self.resources)}
        if self.names:
            out["resourceNames"] = list(self.names)
        out["verbs"] = list(self.verbs)
        return out


CLUSTER_RULES: Final = (
    Rule(("",), ("nodes",), WATCH, "status: which nodes an agent should cover, and why a node is not covered"),
)
"""Cluster-scoped resources: always in a ClusterRole."""

NAMESPACED_RULES: Final = (
    Rule(
        (GROUP,),
        ("observatorycollectors",),
        (*WATCH, "get"),
        "kopf watches the collectors; one read before creating children, so a missed deletion creates none",
    ),
    Rule((GROUP,), ("observatorycollectors/status",), ("patch",), "the status funnel (a merge patch)"),
    Rule(
        (GROUP,),
        ("aggregationrules",),
        (*WATCH, "get"),
        "kopf watches the rules; one read before creating children, so a missed deletion creates none",
    ),
    Rule((GROUP,), ("aggregationrules/status",), ("patch",), "the rules' status funnel (a merge patch)"),
    Rule(("apps",), ("deployments",), OWN, "one processor Deployment per AggregationRule"),
    Rule(
        ("networking.k8s.io",),
        ("networkpolicies",),
        OWN,
        "one NetworkPolicy per processor: only the rule's agents and the operator may reach it",
    ),
    Rule(("apps",), ("daemonsets",), OWN, "one agent DaemonSet per collector"),
    Rule(
        ("",),
        ("configmaps",),
        OWN,
        "the rendered agent.json and processor.json; watching the shared-config ConfigMap a spec names",
    ),
    Rule(("",), ("services",), OWN, "the agents' headless metrics Service; each processor's Service"),
    Rule(
        ("",),
        ("pods",),
        WATCH,
        "status: agent and processor pods' readiness and why they wait, and their IPs for /status",
    ),
    Rule(
        ("",),
        ("events",),
        ("list", "watch", "create"),
        "Events on collectors; reading Warnings about agent pods (FailedCreate, FailedMount) into status",
    ),
    Rule(
        ("monitoring.coreos.com",),
        ("servicemonitors",),
        OWN,
        "a ServiceMonitor per collector where prometheus-operator's CRD is installed",
    ),
)
"""Namespaced resources: in the ClusterRole with --all-namespaces, else in a Role per watched namespace."""

LEADER_RULES: Final = (
    Rule(("coordination.k8s.io",), ("leases",), ("create",), "leader election: the Lease, the first time"),
    Rule(
        ("coordination.k8s.io",),
        ("leases",),
        ("get", "update"),
        "leader election: read and renew (or take over) its own Lease, nothing else",
        names=(LEASE_PLACEHOLDER,),
    ),
)
"""In the operator's own namespace only (a Role): one writer at a time."""


def cluster_role(name: str, *, all_namespaces: bool) -> dict[str, Any]:
    """The operator's ClusterRole: cluster-scoped rules, plus the namespaced ones when it watches everything."""
    rules = CLUSTER_RULES + (NAMESPACED_RULES if all_namespaces else ())
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [r.as_k8s() for r in rules],
    }


def role(name: str, namespace: str, rules: Sequence[Rule] = NAMESPACED_RULES, *, lease: str = "") -> dict[str, Any]:
    """A Role in one namespace: the namespaced rules for a watched namespace, or LEADER_RULES with ``lease``."""
    rendered = [r.as_k8s() for r in rules]
    for rule in rendered:
        if rule.get("resourceNames") == [LEASE_PLACEHOLDER]:
            rule["resourceNames"] = [lease]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rendered,
    }


def render(obj: dict[str, Any], rules: Sequence[Rule]) -> str:
    """YAML of a Role/ClusterRole with each rule's reason as a comment above it."""
    head = yaml.safe_dump({k: v for k, v in obj.items() if k != "rules"}, sort_keys=False)
    lines = [head.rstrip(), "rules:"]
    for rule, rendered in zip(rules, obj["rules"], strict=True):
        lines.append(f"  # {rule.why}")
        body = yaml.safe_dump([rendered], sort_keys=False, default_flow_style=None).rstrip()
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

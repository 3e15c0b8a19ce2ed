"""RBAC data: no wildcards, nothing on Secrets, children applied and pruned, the Lease only by name."""

from __future__ import annotations

import yaml

from observatory_operator import rbac
from observatory_operator.api.models import API_VERSION, ObservatoryCollectorSpec
from observatory_operator.manifests import build_collector
from observatory_operator.objects import Owner
from observatory_operator.settings import Settings

ALL = rbac.CLUSTER_RULES + rbac.NAMESPACED_RULES + rbac.LEADER_RULES


def test_rules_have_no_wildcards() -> None:
    for rule in ALL:
        assert "*" not in rule.groups + rule.resources + rule.verbs, rule


def test_every_rule_says_why() -> None:
    assert all(rule.why for rule in ALL)


def test_every_built_kind_may_be_applied_and_pruned() -> None:
    owner = Owner("c", "ns", "uid", "ObservatoryCollector", API_VERSION)
    built = build_collector(owner, ObservatoryCollectorSpec(), Settings(), service_monitor=True)
    for obj in built.objects:
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        (rule,) = [r for r in rbac.NAMESPACED_RULES if group in r.groups and plural in r.resources]
        # Server-side apply is a patch, and a create the first time; prune and recreate delete.
        assert {"list", "watch", "get", "create", "patch", "delete"} == set(rule.verbs), obj["kind"]


def test_nothing_on_secrets_and_no_update_outside_the_lease() -> None:
    assert not [r for r in ALL if "secrets" in r.resources]
    updates = [r for r in ALL if "update" in r.verbs]
    assert [(r.resources, r.names) for r in updates] == [(("leases",), (rbac.LEASE_PLACEHOLDER,))]


def test_the_leader_role_touches_only_its_own_lease_once_it_exists() -> None:
    role = rbac.role("op-leader", "observatory", rbac.LEADER_RULES, lease="op")
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["op"],
            "verbs": ["get", "update"],
        }
    ]


def test_rendered_yaml_is_a_valid_cluster_role_with_every_rule() -> None:
    rules = rbac.CLUSTER_RULES + rbac.NAMESPACED_RULES
    text = rbac.render(rbac.cluster_role("op", all_namespaces=True), rules)
    role = yaml.safe_load(text)
    assert role["kind"] == "ClusterRole"
    assert role["rules"] == [r.as_k8s() for r in rules]
    assert "# the status funnel" in text


def test_namespaced_mode_keeps_nodes_cluster_wide() -> None:
    cluster = rbac.cluster_role("op", all_namespaces=False)
    assert {"nodes"} == {res for r in cluster["rules"] for res in r["resources"]}
    role = rbac.role("op", "monitoring")
    assert any("daemonsets" in r["resources"] for r in role["rules"])

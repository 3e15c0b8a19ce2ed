"""RBAC data: no wildcards, every built kind may be applied and pruned, Secrets are get-only, YAML renders."""

from __future__ import annotations

import yaml

from observatory_operator import rbac
from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.build import Owner, build_collector
from observatory_operator.settings import Settings

ALL = rbac.CLUSTER_RULES + rbac.NAMESPACED_RULES


def test_rules_have_no_wildcards() -> None:
    for rule in ALL:
        assert "*" not in rule.groups + rule.resources + rule.verbs, rule


def test_every_rule_says_why() -> None:
    assert all(rule.why for rule in ALL)


def test_every_built_kind_may_be_applied_and_pruned() -> None:
    built = build_collector(Owner("c", "ns", "uid"), ObservatoryCollectorSpec(), Settings(), service_monitor=True)
    for obj in built.objects:
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        (rule,) = [r for r in rbac.NAMESPACED_RULES if group in r.groups and plural in r.resources]
        assert {"get", "list", "patch", "delete"} <= set(rule.verbs), obj["kind"]


def test_secrets_are_get_only() -> None:
    (rule,) = [r for r in rbac.NAMESPACED_RULES if "secrets" in r.resources]
    assert rule.verbs == ("get",)


def test_rendered_yaml_is_a_valid_cluster_role_with_every_rule(capsys: object) -> None:
    text = rbac.render(rbac.cluster_role("op", all_namespaces=True), ALL)
    role = yaml.safe_load(text)
    assert role["kind"] == "ClusterRole"
    assert role["rules"] == [r.as_k8s() for r in ALL]
    assert "# status funnel" in text


def test_namespaced_mode_keeps_nodes_cluster_wide() -> None:
    cluster = rbac.cluster_role("op", all_namespaces=False)
    assert {"nodes"} <= {res for r in cluster["rules"] for res in r["resources"]}
    assert not any("daemonsets" in r["resources"] for r in cluster["rules"])
    role = rbac.role("op", "monitoring")
    assert any("daemonsets" in r["resources"] for r in role["rules"])

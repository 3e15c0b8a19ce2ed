"""RBAC data: no wildcards, and every kind the operator writes is covered."""

from __future__ import annotations

from observatory_operator import rbac
from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.build import Owner, build_collector
from observatory_operator.settings import Settings


def _all_rules() -> list[dict[str, object]]:
    return rbac.CLUSTER_RULES + rbac.NAMESPACED_RULES


def test_rules_have_no_wildcards() -> None:
    for rule in _all_rules():
        for key in ("apiGroups", "resources", "verbs"):
            values = rule[key]
            assert isinstance(values, list)
            assert "*" not in values, rule


def test_every_rule_says_why() -> None:
    assert all(rule["#"] for rule in _all_rules())


def test_every_built_kind_may_be_applied_and_pruned() -> None:
    built = build_collector(Owner("c", "ns", "uid"), ObservatoryCollectorSpec(), Settings(), service_monitor=True)
    for obj in built.objects:
        group = obj["apiVersion"].rpartition("/")[0]
        plural = obj["kind"].lower() + "s"
        matching = [r for r in rbac.NAMESPACED_RULES if group in r["apiGroups"] and plural in r["resources"]]
        assert matching, obj["kind"]
        verbs = set(matching[0]["verbs"])  # type: ignore[call-overload]
        assert {"get", "patch", "delete", "list"} <= verbs


def test_secrets_are_get_only() -> None:
    (rule,) = [r for r in rbac.NAMESPACED_RULES if "secrets" in r["resources"]]  # type: ignore[operator]
    assert rule["verbs"] == ["get"]


def test_rendered_roles_have_no_comment_keys() -> None:
    role = rbac.cluster_role("happy-observatory-operator", all_namespaces=True)
    assert all("#" not in r for r in role["rules"])
    assert len(role["rules"]) == len(rbac.CLUSTER_RULES) + len(rbac.NAMESPACED_RULES)

"""An AggregationRule's pure pieces: the processor it builds, what its collectors' agents are told, and its status."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from observatory_agent.contract import DEFAULT_PROCESSOR_PORT, ProcessorConfig
from observatory_operator import reasons
from observatory_operator.api.models import AggregationRuleSpec, ObservatoryCollectorSpec
from observatory_operator.manifests import Feeder, build_collector, build_rule, names
from observatory_operator.manifests.processor import processor_target
from observatory_operator.objects import Owner
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.settings import Settings
from observatory_operator.status import rule as funnel

NOW = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
RULE = Owner(name="cpu-rollup", namespace="monitoring", uid="u-1", kind="AggregationRule", api_version="x/v1")
COLLECTOR = Owner(name="nodes", namespace="monitoring", uid="u-2", kind="ObservatoryCollector", api_version="x/v1")


def rule_spec(**spec: Any) -> AggregationRuleSpec:
    base = {
        "collectors": ["nodes"],
        "metrics": ["system.cpu.usage"],
        "window": "1m",
        "allowedLateness": "15s",
        "groupBy": ["cluster"],
        "functions": ["mean", "max", "p95"],
        "output": {"measurement": "cluster.cpu.usage"},
    }
    return AggregationRuleSpec.model_validate({**base, **spec})


def collector_spec(**spec: Any) -> ObservatoryCollectorSpec:
    base = {
        "collectors": [{"name": "cpu"}],
        "influxdb": {"url": "http://influx:8086", "bucket": "b", "tokenSecretRef": {"name": "influxdb-auth"}},
    }
    return ObservatoryCollectorSpec.model_validate({**base, **spec})


def objects(**kw: Any) -> dict[str, dict[str, Any]]:
    feeders = kw.pop("feeders", [Feeder("nodes", collector_spec())])
    built = build_rule(RULE, rule_spec(**kw.pop("spec", {})), feeders, kw.pop("settings", Settings()), **kw)
    return {o["kind"]: o for o in built.objects}


# --- the processor the rule builds --------------------------------------------------------------


def test_processor_config_carries_the_rule_and_writes_where_its_collectors_write() -> None:
    config = ProcessorConfig.model_validate_json(objects()["ConfigMap"]["data"]["processor.json"])
    assert (config.rule, config.namespace) == ("cpu-rollup", "monitoring")
    assert config.metrics == ["system.cpu.usage"]
    assert config.group_by == ["cluster"]
    assert config.functions == ["mean", "max", "p95"]
    assert (config.window, config.allowed_lateness) == (60.0, 15.0)
    assert config.output.measurement == "cluster.cpu.usage"
    assert (config.influxdb.url, config.influxdb.bucket) == ("http://influx:8086", "b")
    assert config.influxdb.token_file == "/var/run/secrets/observatory/influxdb/token"


def test_processor_runs_one_replica_replaced_never_overlapped_and_hardened() -> None:
    deploy = objects()["Deployment"]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:2] == ["observatory-processor", "run"]
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    assert security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert not security["allowPrivilegeEscalation"]
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod
    assert {v["name"] for v in pod["volumes"]} == {"config", "buffer", "tmp", "shared-config", "influxdb-token"}
    assert deploy["spec"]["selector"]["matchLabels"] == dict(names.processor_selector_labels("cpu-rollup"))


def test_a_changed_rule_rolls_the_processor_and_an_equal_one_does_not() -> None:
    def digest(**spec: Any) -> str:
        deploy = objects(spec=spec)["Deployment"]
        return str(deploy["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION])

    assert digest() == digest()
    assert digest() != digest(functions=["p99"])


def test_network_policy_admits_only_the_rules_agents_and_the_operator() -> None:
    policy = objects(settings=Settings(operator_namespace="observatory"))["NetworkPolicy"]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    agents, operator = policy["ingress"]
    (selector,) = agents["from"]
    assert selector["podSelector"]["matchLabels"] == {names.NAME: names.AGENT_APP}
    assert selector["podSelector"]["matchExpressions"][0]["values"] == ["nodes"]
    assert agents["ports"] == [{"protocol": "TCP", "port": DEFAULT_PROCESSOR_PORT}]
    (peer,) = operator["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "observatory"}


def test_host_network_agents_are_admitted_by_their_nodes_addresses() -> None:
    network = Feeder("nodes", collector_spec(collectors=[{"name": "network"}]))
    policy = objects(feeders=[network], node_ips=["10.0.0.2", "10.0.0.1", "10.0.0.2"])["NetworkPolicy"]["spec"]
    peers = policy["ingress"][0]["from"]
    assert [p["ipBlock"]["cidr"] for p in peers if "ipBlock" in p] == ["10.0.0.1/32", "10.0.0.2/32"]


def test_a_rule_naming_no_existing_collector_still_gets_a_processor_with_shared_config_defaults() -> None:
    built = objects(feeders=[])
    config = ProcessorConfig.model_validate_json(built["ConfigMap"]["data"]["processor.json"])
    assert config.influxdb.url is None  # shared-config decides
    assert built["NetworkPolicy"]["spec"]["ingress"] == []  # nobody to admit: nobody sends


def test_collectors_agents_are_told_what_to_send_and_where_by_service_name() -> None:
    target = processor_target("cpu-rollup", "monitoring", rule_spec(matchTags={"tier": "infra"}))
    assert target.url == f"http://cpu-rollup-processor.monitoring.svc:{DEFAULT_PROCESSOR_PORT}"
    assert target.metrics == ["system.cpu.usage"]
    assert target.match_tags == {"tier": "infra"}
    assert (target.window, target.group_by) == (60.0, ["cluster"])
    built = build_collector(COLLECTOR, collector_spec(), Settings(), processors=[target])
    config = json.loads(next(o for o in built.objects if o["kind"] == "ConfigMap")["data"]["agent.json"])
    assert config["processors"][0]["url"] == target.url
    without = build_collector(COLLECTOR, collector_spec(), Settings())
    assert without.config_hash != built.config_hash, "a rule's change rolls the agents' config"


# --- the rule's status ---------------------------------------------------------------------------


def deployment(ready: int = 1, generation: int = 2, observed: int = 2) -> dict[str, Any]:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": 1},
        "status": {"readyReplicas": ready, "observedGeneration": observed},
    }


def report(**fields: Any) -> funnel.ProcessorReport:
    data = {
        "watermark": NOW.timestamp() - 30,
        "last_window": {"end": NOW.timestamp() - 30, "series": 2, "nodes": 3, "dropped_series": 0},
        "partials": {"late": 1},
        "buffered_points": 0,
        "errors": {"writes": {}},
    }
    data.update(fields)
    return funnel.ProcessorReport.from_json(data)


def compute(**kw: Any) -> Any:
    observed = funnel.Observed(
        generation=2,
        spec=kw.pop("spec", rule_spec()),
        verdict=kw.pop("verdict", Verdict(Outcome.APPLIED, reasons.APPLIED, "children are up to date")),
        namespace="monitoring",
        deployment=kw.pop("deployment", deployment()),
        report=kw.pop("report", report()),
        started=NOW.timestamp() - 600,
        expected_node_names=kw.pop("expected_node_names", frozenset({"node-1", "node-2", "node-3"})),
        **kw,
    )
    return funnel.compute(observed, NOW)


def cond(result: Any, type_: str) -> dict[str, Any]:
    (c,) = [c for c in result.status["conditions"] if c["type"] == type_]
    return dict(c)


def test_a_rule_that_writes_every_window_reads_ready_with_its_last_window_and_series() -> None:
    result = compute()
    s = result.status
    assert (s["ready"], s["phase"]) == ("1/1", "Ready")
    assert s["lastWindow"] == "2026-12-04T11:59:30Z"
    assert (s["series"], s["contributingNodes"], s["expectedNodes"], s["latePartials"]) == (2, 3, 3, 1)
    assert cond(result, "DataFlowing")["status"] == "True"
    assert "2 series from 3/3 nodes" in cond(result, "DataFlowing")["message"]
    assert cond(result, "CardinalityLimited")["status"] == "False"


def test_nodes_running_agents_whose_partials_are_not_in_the_window_are_named() -> None:
    names = frozenset({"node-1", "node-2", "node-3"})
    two = report(last_window={"end": NOW.timestamp() - 30, "series": 2, "nodes": 2, "node_names": ["node-1", "node-3"]})
    result = compute(report=two, expected_node_names=names)
    flowing = cond(result, "DataFlowing")
    assert flowing["status"] == "True"  # roll-ups are written, from the nodes that send
    assert flowing["message"].endswith("2 series from 2/3 nodes; nothing from node-2"), flowing["message"]
    every = report(last_window={"end": NOW.timestamp() - 30, "series": 2, "nodes": 3, "node_names": sorted(names)})
    assert "nothing from" not in cond(compute(report=every, expected_node_names=names), "DataFlowing")["message"]


@pytest.mark.parametrize(
    "listed",
    [None, ["node-1"], ["node-1", 7], "node-1,node-3"],
    ids=["not listed", "fewer than nodes", "not names", "not a list"],
)
def test_a_missing_or_implausible_node_list_names_no_node(listed: Any) -> None:
    two = report(last_window={"end": NOW.timestamp() - 30, "series": 2, "nodes": 2, "node_names": listed})
    result = compute(report=two, expected_node_names=frozenset({"node-1", "node-2", "node-3"}))
    assert cond(result, "DataFlowing")["message"].endswith("2 series from 2/3 nodes"), listed


def test_windows_older_than_two_windows_and_the_lateness_are_late() -> None:
    stale = report(watermark=NOW.timestamp() - 3 * 60)
    result = compute(report=stale)
    flowing = cond(result, "DataFlowing")
    assert (flowing["status"], flowing["reason"]) == ("False", reasons.WINDOWS_LATE)
    assert "3m ago" in flowing["message"]
    assert result.status["phase"] == "Degraded"


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ({"watermark": float("nan")}, "NaN"),
        ({"watermark": 1e400}, "infinity"),
        ({"watermark": 99_999_999_999}, "far future"),
        ({"watermark": "yesterday"}, "a string"),
    ],
)
def test_an_implausible_watermark_reads_as_no_window(answer: dict[str, Any], why: str) -> None:
    result = compute(report=funnel.ProcessorReport.from_json(answer))
    assert result.status["lastWindow"] is None, why


def test_dropped_groups_turn_cardinality_limited_with_a_warning_once() -> None:
    dropped = report(last_window={"end": NOW.timestamp() - 30, "series": 1000, "nodes": 3, "dropped_series": 17})
    first = compute(report=dropped, spec=rule_spec(maxSeries=1000))
    limited = cond(first, "CardinalityLimited")
    assert (limited["status"], limited["reason"]) == ("True", reasons.SERIES_DROPPED)
    assert "17 groups over spec.maxSeries (1000)" in limited["message"]
    assert [(n.type, n.reason) for n in first.notices] == [("Warning", reasons.CARDINALITY_LIMITED)]
    again = compute(report=dropped, spec=rule_spec(maxSeries=1000), previous_conditions=first.status["conditions"])
    assert again.notices == []


def test_a_missing_collector_is_named_in_reconciled_while_the_processor_runs() -> None:
    result = compute(missing_collectors=["gone"])
    reconciled = cond(result, "Reconciled")
    assert (reconciled["status"], reconciled["reason"]) == ("False", reasons.COLLECTOR_NOT_FOUND)
    assert "spec.collectors: gone not found in namespace monitoring" in reconciled["message"]
    assert result.status["missingCollectors"] == ["gone"]
    assert result.status["phase"] == "Degraded"


def test_a_collector_window_that_does_not_divide_the_rules_is_named() -> None:
    result = compute(window_problems=["nodes (window 45s)"])
    reconciled = cond(result, "Reconciled")
    assert reconciled["reason"] == reasons.WINDOW_MISMATCH
    assert "nodes (window 45s)" in reconciled["message"]


def test_before_the_processor_runs_status_waits_without_alarm() -> None:
    result = compute(deployment=deployment(ready=0), report=None)
    assert cond(result, "Ready")["reason"] == reasons.PROCESSOR_NOT_READY
    assert cond(result, "DataFlowing")["status"] == "Unknown"
    assert result.status["phase"] == "Progressing"
    assert all(not t.warning for t in result.transitions)


def test_a_ready_processor_that_does_not_answer_is_not_flowing() -> None:
    result = compute(report=None)
    assert cond(result, "DataFlowing")["reason"] == reasons.PROCESSOR_NOT_ANSWERING


def test_write_errors_and_buffered_points_are_named() -> None:
    failing = report(buffered_points=420, errors={"writes": {"retryable": 3}})
    assert "420 points buffered (retryable)" in cond(compute(report=failing), "DataFlowing")["message"]


def test_a_processor_whose_token_cannot_read_its_watermark_says_so_in_ready() -> None:
    unready = report(watermark=None, errors={"writes": {}, "watermark_read": "ApiException: (403) Forbidden"})
    result = compute(deployment=deployment(ready=0), report=unready)
    ready = cond(result, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", reasons.WATERMARK_UNREADABLE)
    assert "(403) Forbidden" in ready["message"]
    assert "spec.output.tokenSecretRef" in ready["message"]
    assert any(t.warning for t in result.transitions), "a token that cannot read is not a normal rollout step"


def test_the_processor_uses_the_rules_own_token_when_given_else_the_collectors() -> None:
    def token_of(built: dict[str, dict[str, Any]]) -> tuple[str, str]:
        volumes = built["Deployment"]["spec"]["template"]["spec"]["volumes"]
        (secret,) = [v["secret"] for v in volumes if "secret" in v]
        config = ProcessorConfig.model_validate_json(built["ConfigMap"]["data"]["processor.json"])
        return secret["secretName"], str(config.influxdb.token_file)

    assert token_of(objects()) == ("influxdb-auth", "/var/run/secrets/observatory/influxdb/token")
    own = objects(spec={"output": {"measurement": "m", "tokenSecretRef": {"name": "influxdb-processor", "key": "rw"}}})
    assert token_of(own) == ("influxdb-processor", "/var/run/secrets/observatory/influxdb/rw")

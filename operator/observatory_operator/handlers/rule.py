"""AggregationRule: its round as a ``Kind`` for the machinery (plan, then status) and its kopf handler.

- ``plan``: parse the spec, read the collectors it names from their store, build the processor's
  ConfigMap, Deployment, Service and NetworkPolicy with the pure builder.
- ``status``: read the Deployment and its pod from the cache, the agent pods of the named
  collectors (expected nodes), probe the processor's ``/status``, and hand it all to the pure
  status function.
- Inputs that poke a rule's round: its children, its processor pod, the collectors it names
  (created, deleted, their window or InfluxDB target changed) and node addresses (the
  NetworkPolicy admits host-network agents by node IP).

The collectors' side of a rule (agents sending partials) is rendered by the collector's round,
which reads the rules that name its collector through ``COLLECTOR_INDEX`` on this kind's store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf

from observatory_agent.contract import DEFAULT_PROCESSOR_PORT, ProcessorTarget, parse_duration
from observatory_operator import reasons
from observatory_operator.api.models import API_VERSION, AggregationRule, AggregationRuleSpec
from observatory_operator.controller.cache import Cache
from observatory_operator.controller.machinery import Controller, Kind, Plan, Round, Watch
from observatory_operator.handlers.collector import COLLECTORS
from observatory_operator.handlers.collector import parse as parse_collector
from observatory_operator.handlers.common import Seen, controlled_child, parse_as, paused, register_events, unusable
from observatory_operator.kube.apply import CONTROLLER_INDEX
from observatory_operator.kube.client import (
    CONFIGMAPS,
    DAEMONSETS,
    DEPLOYMENTS,
    NETWORKPOLICIES,
    NODES,
    PODS,
    SERVICES,
    Resource,
)
from observatory_operator.kube.probe import Prober
from observatory_operator.manifests import Feeder, build_rule, names
from observatory_operator.manifests.processor import processor_target
from observatory_operator.objects import Key, Obj, Owner, key_of
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.settings import Settings
from observatory_operator.status import rule as funnel
from observatory_operator.status.collector import effective_window
from observatory_operator.status.conditions import Computed, invalid, parse_time

PLURAL: Final = "aggregationrules"
RULES: Final = Resource(API_VERSION, "AggregationRule", PLURAL)
COLLECTOR_INDEX: Final = "collector"
"""On the rules' store: (namespace, collector) → the rules that name that collector."""
PROCESSOR_POD_INDEX: Final = "processor"
"""On the pods' store: (namespace, rule instance label) → that rule's processor pods."""


@dataclass(frozen=True)
class _Planned:
    """What planning read and built, for the status step."""

    spec: AggregationRuleSpec | None
    feeders: tuple[Feeder, ...] = ()
    missing: tuple[str, ...] = ()
    window_problems: tuple[str, ...] = ()
    config_hash: str | None = None


def parse(body: Mapping[str, Any]) -> tuple[AggregationRule | None, Verdict | None]:
    """The typed rule, or the verdict that names the field and the rule it breaks."""
    return parse_as(AggregationRule, body)


def named_collectors(rule: Obj) -> list[Key]:
    """The (namespace, name) of every collector a rule's spec names (same namespace), valid spec or not."""
    namespace = str((rule.get("metadata") or {}).get("namespace") or "")
    wanted = (rule.get("spec") or {}).get("collectors") or []
    return [(namespace, str(name)) for name in wanted if isinstance(name, str) and name]


def targets_for(cache: Cache, namespace: str, collector: str) -> list[ProcessorTarget]:
    """What the rules naming ``collector`` want its agents to send (rules whose spec does not parse send nothing)."""
    out = []
    for body in cache.primary(RULES).by_index(COLLECTOR_INDEX, (namespace, collector)):
        rule, _ = parse(body)
        if rule is not None:
            out.append(processor_target(str(body["metadata"]["name"]), namespace, rule.spec))
    return out


def _processor_pod_key(pod: Obj) -> list[tuple[str, str]]:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(names.NAME) != names.PROCESSOR_APP or not labels.get(names.INSTANCE):
        return []
    return [(str(pod["metadata"].get("namespace") or ""), str(labels[names.INSTANCE]))]


def _node_ips(cache: Cache) -> list[str]:
    ips = []
    for node in cache.store(NODES).objects():
        for address in (node.get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP" and address.get("address"):
                ips.append(str(address["address"]))
    return ips


def _rules_naming(cache: Cache, collector: Obj) -> list[Key]:
    meta = collector["metadata"]
    named = (str(meta.get("namespace") or ""), str(meta["name"]))
    return [key_of(b) for b in cache.primary(RULES).by_index(COLLECTOR_INDEX, named)]


def _every_rule(cache: Cache, _node: Obj) -> list[Key]:
    return cache.primary(RULES).known_keys()


def _rule_of_pod(cache: Cache, pod: Obj) -> list[Key]:
    found = _processor_pod_key(pod)
    if not found:
        return []
    namespace, instance = found[0]
    return [k for k in cache.primary(RULES).known_keys() if k[0] == namespace and names.label_value(k[1]) == instance]


# --- the round --------------------------------------------------------------------------------


def kind(settings: Settings, prober: Prober) -> Kind:
    """The rule's round as the machinery runs it."""

    async def plan(body: Obj, cache: Cache) -> Plan:
        rule, invalid_spec = parse(body)
        if rule is None:
            return unusable(invalid_spec, _Planned(None))
        spec, owner = rule.spec, Owner.of(body)
        if spec.paused:
            return paused(_Planned(spec))
        collectors = cache.primary(COLLECTORS)
        feeders, missing, problems = [], [], []
        window = parse_duration(spec.window, key="spec.window")
        for name in spec.collectors:
            found = collectors.get(owner.namespace, name)
            parsed = parse_collector(found)[0] if found is not None else None
            if parsed is None:
                missing.append(name)
                continue
            feeders.append(Feeder(name, parsed.spec))
            shared = await cache.named(CONFIGMAPS, owner.namespace, parsed.spec.shared_config.name)
            agent_window = effective_window(parsed.spec, (shared or {}).get("data") if shared else None)
            ratio = window / agent_window
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 1:
                problems.append(f"{name} (window {agent_window:g}s)")
        built = build_rule(owner, spec, feeders, settings, node_ips=_node_ips(cache))
        return Plan(
            Verdict(Outcome.APPLIED, reasons.APPLIED, "children are up to date"),
            tuple(built.objects),
            context=_Planned(spec, tuple(feeders), tuple(missing), tuple(problems), built.config_hash),
        )

    async def status(body: Obj, rnd: Round, cache: Cache) -> Computed:
        planned: _Planned = rnd.plan.context
        seen = Seen.of(body)
        if planned.spec is None:
            return invalid(seen.generation, rnd.verdict, seen.previous_conditions, seen.now)
        owner = rnd.owner
        deploy = controlled_child(rnd, cache, DEPLOYMENTS, names.processor_deployment(owner.name))
        pods = [
            p
            for p in cache.store(PODS).by_index(PROCESSOR_POD_INDEX, (owner.namespace, names.label_value(owner.name)))
            if not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        answers = await prober.read(pods, lambda _pod: DEFAULT_PROCESSOR_PORT)
        report = next(
            (funnel.ProcessorReport.from_json(a) for a in answers.values() if a is not None),
            None,
        )
        started = [t.timestamp() for p in pods if (t := parse_time((p.get("status") or {}).get("startTime")))]
        observed = funnel.Observed(
            generation=seen.generation,
            spec=planned.spec,
            verdict=rnd.verdict,
            namespace=owner.namespace,
            deployment=deploy,
            report=report,
            started=max(started) if started else None,
            expected_node_names=_expected_nodes(cache, planned.feeders, owner.namespace),
            missing_collectors=planned.missing,
            window_problems=planned.window_problems,
            config_hash=planned.config_hash or seen.config_hash,
            previous_conditions=seen.previous_conditions,
        )
        return funnel.compute(observed, seen.now)

    return Kind(
        resource=RULES,
        children=(CONFIGMAPS, SERVICES, DEPLOYMENTS, NETWORKPOLICIES),
        child_selector=names.children_selector(),
        plan=plan,
        status=status,
        watches=(
            # The same store as the collectors' (one watch of the operator's pods): its index finds a rule's processor.
            Watch(
                PODS,
                label_selector=names.pods_selector(),
                indexes={PROCESSOR_POD_INDEX: _processor_pod_key},
                owners=_rule_of_pod,
            ),
            Watch(NODES, owners=_every_rule),
        ),
        child_fields={DEPLOYMENTS: (("spec", "replicas"),)},
    )


def _expected_nodes(cache: Cache, feeders: Iterable[Feeder], namespace: str) -> frozenset[str]:
    """Nodes running a ready agent of any collector the rule names."""
    nodes: set[str] = set()
    daemonsets = cache.store(DAEMONSETS)
    for feeder in feeders:
        ds = daemonsets.get(namespace, names.agent_daemonset(feeder.name))
        uid = str(((ds or {}).get("metadata") or {}).get("uid") or "")
        for pod in cache.store(PODS).by_index(CONTROLLER_INDEX, uid) if uid else []:
            conditions = (pod.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                node = (pod.get("spec") or {}).get("nodeName")
                if node:
                    nodes.add(str(node))
    return frozenset(nodes)


def connect(rules: Controller, collectors: Controller) -> None:
    """The seam between the two kinds: a rule's change re-renders the collectors it names (their agents' targets),
    and a collector's change (created, deleted, window, InfluxDB target) re-plans the rules that name it."""
    rules.primary.add_index(COLLECTOR_INDEX, named_collectors)
    collectors.follow(rules.primary, named_collectors)
    rules.follow(collectors.primary, lambda collector: _rules_naming(rules.cache, collector))


# --- kopf ---------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Every watch event of a rule goes to the machinery."""
    register_events(registry, controller, PLURAL, "rule")


__all__ = ["COLLECTOR_INDEX", "RULES", "connect", "kind", "named_collectors", "parse", "register", "targets_for"]

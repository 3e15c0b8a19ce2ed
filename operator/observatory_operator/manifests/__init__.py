"""Pure builders: a validated collector spec plus settings become the list of desired child objects.

Nothing here talks to the API server or imports kopf (an import-linter contract enforces it), so
every builder is tested with plain values, and the reconciler only applies what ``build_collector``
returns and prunes the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from observatory_agent.contract import ProcessorTarget
from observatory_operator.api.models import AggregationRuleSpec, ObservatoryCollectorSpec
from observatory_operator.manifests import agent, hashing, names, processor
from observatory_operator.manifests.processor import Feeder
from observatory_operator.objects import Obj, Owner, owner_reference
from observatory_operator.settings import Settings

__all__ = ["Built", "Feeder", "build_collector", "build_rule"]


@dataclass(frozen=True)
class Built:
    """The desired objects of one collector, and the config hash that is on its pod template."""

    objects: list[Obj]
    config_hash: str


def build_collector(
    owner: Owner,
    spec: ObservatoryCollectorSpec,
    settings: Settings,
    *,
    service_monitor: bool = False,
    processors: Sequence[ProcessorTarget] = (),
) -> Built:
    """Every desired child of one ObservatoryCollector, in apply order (the ConfigMap before the pods that mount it).

    ``processors``: what the AggregationRules naming this collector want its agents to send them.
    """
    name, namespace = owner.name, owner.namespace
    labels = names.common_labels(name)
    rendered = agent.render_agent_config(agent.agent_config(name, namespace, spec, processors))
    template = agent.pod_template(name, namespace, spec, settings)
    digest = hashing.config_hash(rendered, template)
    objects = [
        agent.configmap(name, namespace, rendered, labels),
        agent.service(name, namespace, labels, spec.metrics_port),
        agent.daemonset(name, namespace, spec, template, config_hash=digest, labels=labels),
    ]
    if service_monitor:
        objects.append(agent.servicemonitor(name, namespace, {**labels, **settings.service_monitor_labels}))
    ref = owner_reference(owner)
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [dict(ref)]
    return Built(objects=objects, config_hash=digest)


def build_rule(
    owner: Owner,
    spec: AggregationRuleSpec,
    feeders: Sequence[Feeder],
    settings: Settings,
    *,
    node_ips: Sequence[str] = (),
) -> Built:
    """Every desired child of one AggregationRule: its processor's ConfigMap, Deployment, Service and NetworkPolicy."""
    name, namespace = owner.name, owner.namespace
    labels = names.processor_labels(name)
    rendered = processor.render_processor_config(processor.processor_config(name, namespace, spec, feeders))
    template = processor.pod_template(name, spec, feeders, settings)
    digest = hashing.config_hash(rendered, template)
    objects = [
        processor.configmap(name, namespace, rendered, labels),
        processor.service(name, namespace, labels),
        processor.deployment(name, namespace, template, config_hash=digest, labels=labels),
        processor.networkpolicy(
            name,
            namespace,
            feeders,
            labels,
            operator_namespace=settings.operator_namespace,
            node_ips=node_ips,
        ),
    ]
    ref = owner_reference(owner)
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [dict(ref)]
    return Built(objects=objects, config_hash=digest)

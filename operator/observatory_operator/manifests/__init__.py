"""Pure builders: a validated collector spec plus settings become the list of desired child objects.

Nothing here talks to the API server or imports kopf (an import-linter contract enforces it), so
every builder is tested with plain values, and the reconciler only applies what ``build_collector``
returns and prunes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.manifests import agent, hashing, names
from observatory_operator.objects import Obj, Owner, owner_reference
from observatory_operator.settings import Settings

__all__ = ["Built", "build_collector"]


@dataclass(frozen=True)
class Built:
    """The desired objects of one collector, and the config hash that is on its pod template."""

    objects: list[Obj]
    config_hash: str


def build_collector(
    owner: Owner, spec: ObservatoryCollectorSpec, settings: Settings, *, service_monitor: bool = False
) -> Built:
    """Every desired child of one ObservatoryCollector, in apply order (the ConfigMap before the pods that mount it)."""
    name, namespace = owner.name, owner.namespace
    labels = names.common_labels(name)
    rendered = agent.render_agent_config(agent.agent_config(name, namespace, spec))
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

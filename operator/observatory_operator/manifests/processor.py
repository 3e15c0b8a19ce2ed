"""Pure builders of one AggregationRule's processor: ProcessorConfig, ConfigMap, Deployment, Service, NetworkPolicy,
and the ProcessorTarget its collectors' agents are given.

The processor writes where its collectors write: the InfluxDB URL, org, bucket and token Secret of
the first collector the rule names (``spec.output.bucket`` overrides the bucket,
``spec.output.tokenSecretRef`` the token), and it reads the same shared-config, so a rule needs no
InfluxDB settings of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from observatory_agent.contract import (
    DEFAULT_PROCESSOR_PORT,
    InfluxTarget,
    ProcessorConfig,
    ProcessorTarget,
    RollupOutput,
    parse_duration,
)
from observatory_operator.api.models import AggregationRuleSpec, ObservatoryCollectorSpec, SecretKeyRef
from observatory_operator.manifests import agent, names, pods
from observatory_operator.settings import Settings

Obj = dict[str, Any]

CONFIG_DIR: Final = "/etc/observatory/processor"
CONFIG_FILE: Final = "processor.json"
BUFFER_DIR: Final = "/var/lib/observatory/processor-buffer"
COMMAND: Final = (
    "observatory-processor",
    "run",
    "--config",
    f"{CONFIG_DIR}/{CONFIG_FILE}",
    "--shared-config",
    agent.SHARED_CONFIG_DIR,
)
OPERATOR_POD_LABELS: Final = {"app.kubernetes.io/name": "happy-observatory", names.COMPONENT: "operator"}
"""The chart's operator pods (templates/operator.yaml): the one client besides agents a processor answers."""


@dataclass(frozen=True)
class Feeder:
    """A collector the rule names, as the rule's processor and NetworkPolicy need it."""

    name: str
    spec: ObservatoryCollectorSpec


def service_url(rule: str, namespace: str) -> str:
    """Where agents send partials: the Service by its cluster DNS name (agents on the host network resolve it too)."""
    return f"http://{names.processor_service(rule)}.{namespace}.svc:{DEFAULT_PROCESSOR_PORT}"


def processor_target(rule: str, namespace: str, spec: AggregationRuleSpec) -> ProcessorTarget:
    """What an agent of a collector the rule names gets in its ``agent.json``: which series to send, and where."""
    return ProcessorTarget(
        rule=rule,
        url=service_url(rule, namespace),
        metrics=list(spec.metrics),
        match_tags=dict(spec.match_tags or {}),
        window=parse_duration(spec.window, key="spec.window"),
        group_by=list(spec.group_by),
    )


def processor_config(
    rule: str, namespace: str, spec: AggregationRuleSpec, feeders: Sequence[Feeder]
) -> ProcessorConfig:
    """The rule's spec as ``processor.json``; InfluxDB settings the collectors leave unset stay unset."""
    first = feeders[0].spec if feeders else None
    influx = first.influxdb if first is not None else None
    return ProcessorConfig(
        rule=rule,
        namespace=namespace,
        metrics=list(spec.metrics),
        match_tags=dict(spec.match_tags or {}),
        group_by=list(spec.group_by),
        functions=list(spec.functions),
        window=parse_duration(spec.window, key="spec.window"),
        allowed_lateness=parse_duration(spec.allowed_lateness, key="spec.allowedLateness"),
        output=RollupOutput(measurement=spec.output.measurement, bucket=spec.output.bucket),
        max_series=spec.max_series,
        exact_threshold=first.aggregations.exact_threshold
        if first is not None
        else ProcessorConfig.model_fields["exact_threshold"].default,
        influxdb=InfluxTarget(
            url=influx.url if influx else None,
            org=influx.org if influx else None,
            bucket=influx.bucket if influx else None,
            token_file=pods.token_file(token_ref(spec, feeders)),
        ),
        port=DEFAULT_PROCESSOR_PORT,
        buffer_dir=BUFFER_DIR,
    )


def render_processor_config(config: ProcessorConfig) -> str:
    """The exact text of ``processor.json``; hashing and the ConfigMap both use this one rendering."""
    return config.model_dump_json(indent=2)


def configmap(rule: str, namespace: str, rendered: str, labels: dict[str, str]) -> Obj:
    """The ConfigMap with ``processor.json`` (never a token: that stays in the collectors' Secret)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": names.processor_configmap(rule), "namespace": namespace, "labels": dict(labels)},
        "data": {CONFIG_FILE: rendered},
    }


def token_ref(spec: AggregationRuleSpec, feeders: Sequence[Feeder]) -> SecretKeyRef | None:
    """The processor's token: ``spec.output.tokenSecretRef``, else the first collector's.

    A processor reads its watermark back from InfluxDB at start, so this token must read the output
    bucket as well as write it (an agents' write-only token leaves the processor never ready).
    """
    if spec.output.token_secret_ref is not None:
        return spec.output.token_secret_ref
    return feeders[0].spec.influxdb.token_secret_ref if feeders else None


def _volumes(
    rule: str, spec: AggregationRuleSpec, feeders: Sequence[Feeder], settings: Settings
) -> tuple[list[Obj], list[Obj]]:
    """(volumes, volumeMounts): config, the collectors' shared-config and token, a buffer and /tmp."""
    first = feeders[0].spec if feeders else None
    volumes: list[Obj] = [
        {"name": "config", "configMap": {"name": names.processor_configmap(rule)}},
        # Write-through buffer for roll-ups InfluxDB has not taken yet; agents keep their partials
        # until the window is written, so losing it with the pod loses nothing.
        {"name": "buffer", "emptyDir": {"sizeLimit": settings.processor.buffer_size_limit}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    mounts: list[Obj] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "buffer", "mountPath": BUFFER_DIR},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, private to the pod
    ]
    if first is not None:
        shared = first.shared_config
        volumes.append({"name": "shared-config", "configMap": {"name": shared.name, "optional": shared.optional}})
        mounts.append({"name": "shared-config", "mountPath": agent.SHARED_CONFIG_DIR, "readOnly": True})
    token = pods.token_volume(token_ref(spec, feeders))
    if token is not None:
        volumes.append(token[0])
        mounts.append(token[1])
    return volumes, mounts


def pod_template(rule: str, spec: AggregationRuleSpec, feeders: Sequence[Feeder], settings: Settings) -> Obj:
    """The processor pod: the agent's image and hardening, ``observatory-processor run``, probes on its port."""
    image = spec.image or settings.agent.image
    volumes, mounts = _volumes(rule, spec, feeders, settings)
    defaults = settings.processor
    container: Obj = {
        "name": names.PROCESSOR_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.agent.image_pull_policy,
        "command": list(COMMAND),
        "env": [
            pods.field_env("POD_NAME", "metadata.name"),
            pods.field_env("POD_NAMESPACE", "metadata.namespace"),
            # The processor binds its endpoints to the pod IP, where agents (through the Service) and probes reach it.
            pods.field_env("POD_IP", "status.podIP"),
        ],
        "ports": [{"name": names.PROCESSOR_PORT_NAME, "containerPort": DEFAULT_PROCESSOR_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": names.PROCESSOR_PORT_NAME},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": names.PROCESSOR_PORT_NAME},
            "initialDelaySeconds": 10,
            "periodSeconds": 20,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        },
        "resources": pods.resources(
            spec.resources, cpu=defaults.cpu_request, memory=defaults.memory_request, limit=defaults.memory_limit
        ),
        "securityContext": pods.container_security(settings.agent.run_as_user),
        "volumeMounts": mounts,
    }
    return {
        "metadata": {"labels": {**names.processor_labels(rule), **pods.version_label(image)}},
        "spec": {
            # The processor never calls the API server.
            "automountServiceAccountToken": False,
            "containers": [container],
            "securityContext": pods.pod_security(settings.agent.run_as_user),
            # Time to write the windows that are due to InfluxDB or its buffer.
            "terminationGracePeriodSeconds": 30,
            "volumes": volumes,
        },
    }


def deployment(rule: str, namespace: str, template: Obj, *, config_hash: str, labels: dict[str, str]) -> Obj:
    """One processor per rule, replaced rather than overlapped: two would each write half of a window."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.processor_deployment(rule), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(names.processor_selector_labels(rule))},
            "template": {
                "metadata": {
                    **template["metadata"],
                    "annotations": {
                        names.CONFIG_HASH_ANNOTATION: config_hash,
                        "kubectl.kubernetes.io/default-container": names.PROCESSOR_CONTAINER,
                    },
                },
                "spec": template["spec"],
            },
        },
    }


def service(rule: str, namespace: str, labels: dict[str, str]) -> Obj:
    """The ClusterIP Service agents POST partials to."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.processor_service(rule), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "selector": dict(names.processor_selector_labels(rule)),
            "ports": [
                {
                    "name": names.PROCESSOR_PORT_NAME,
                    "port": DEFAULT_PROCESSOR_PORT,
                    "targetPort": names.PROCESSOR_PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def networkpolicy(
    rule: str,
    namespace: str,
    feeders: Sequence[Feeder],
    labels: dict[str, str],
    *,
    operator_namespace: str | None,
    node_ips: Sequence[str],
) -> Obj:
    """Ingress to the processor only from the rule's agents and the operator's pods, on its one port.

    Agents on the host network (the network collector) come from their node's address, which no pod
    selector matches: then each node's InternalIP is admitted as an ipBlock.
    """
    port = [{"protocol": "TCP", "port": DEFAULT_PROCESSOR_PORT}]
    instances = sorted({names.label_value(f.name) for f in feeders})
    peers: list[Obj] = []
    if instances:
        peers.append(
            {
                "podSelector": {
                    "matchLabels": {names.NAME: names.AGENT_APP},
                    "matchExpressions": [{"key": names.INSTANCE, "operator": "In", "values": instances}],
                }
            }
        )
    if any(agent.needs_host_network(f.spec) for f in feeders):
        peers += [{"ipBlock": {"cidr": f"{ip}/32" if ":" not in ip else f"{ip}/128"}} for ip in sorted(set(node_ips))]
    ingress: list[Obj] = [{"from": peers, "ports": port}] if peers else []
    if operator_namespace:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}},
                        "podSelector": {"matchLabels": dict(OPERATOR_POD_LABELS)},
                    }
                ],
                "ports": port,
            }
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": names.processor_networkpolicy(rule), "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "podSelector": {"matchLabels": dict(names.processor_selector_labels(rule))},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }

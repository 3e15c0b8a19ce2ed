"""Names, labels and annotations of every object the operator creates: the one place they are decided."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from observatory_operator.api.models import GROUP

MAX_NAME: Final = 63
"""DNS-1123 label length: Service names and label values may not be longer."""

NAME: Final = "app.kubernetes.io/name"
INSTANCE: Final = "app.kubernetes.io/instance"
COMPONENT: Final = "app.kubernetes.io/component"
MANAGED_BY: Final = "app.kubernetes.io/managed-by"
PART_OF: Final = "app.kubernetes.io/part-of"
VERSION: Final = "app.kubernetes.io/version"

AGENT_APP: Final = "happy-observatory-agent"
AGENT_COMPONENT: Final = "agent"
PROCESSOR_APP: Final = "happy-observatory-processor"
PROCESSOR_COMPONENT: Final = "processor"
OPERATOR: Final = "happy-observatory-operator"
PRODUCT: Final = "happy-observatory"

CONFIG_HASH_ANNOTATION: Final = f"{GROUP}/config-hash"
"""On the pod template: a new value rolls the agents; nothing else in the operator's output does."""
INPUT_HASH_ANNOTATION: Final = f"{GROUP}/input-hash"
"""On every child: the hash of the whole desired object; a live object with another value is applied again."""
COLLECTOR_ANNOTATION: Final = f"{GROUP}/collector"
"""The owning collector's full name, for when the instance label had to be shortened."""

AGENT_CONTAINER: Final = "agent"
BUFFER_OWNER_CONTAINER: Final = "buffer-owner"
"""The init container that hands the node's buffer directory to the agent's uid."""
METRICS_PORT_NAME: Final = "metrics"
PROCESSOR_CONTAINER: Final = "processor"
PROCESSOR_PORT_NAME: Final = "http"
RULE_ANNOTATION: Final = f"{GROUP}/rule"
"""The owning rule's full name, for when the instance label had to be shortened."""

_INVALID = re.compile(r"[^a-z0-9-]+")


def _digest(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def dns_label(*parts: str, max_length: int = MAX_NAME) -> str:
    """A DNS-1123 label from ``parts`` joined by ``-``; shortened with a hash suffix so distinct inputs stay distinct.

    Characters outside ``[a-z0-9-]`` become ``-``; a result that would start with a digit is
    still valid DNS-1123 but not DNS-1035 (Service names), so such names get an ``o-`` prefix.
    """
    raw = "-".join(parts)
    cleaned = _INVALID.sub("-", raw.lower()).strip("-") or "x"
    if cleaned[0].isdigit():
        cleaned = f"o-{cleaned}"
    if cleaned == raw and len(cleaned) <= max_length:
        return cleaned
    # Anything rewritten gets a suffix of the original's hash: "a.b" and "a-b" must not collide.
    suffix = _digest(raw)
    head = cleaned[: max_length - len(suffix) - 1].rstrip("-")
    return f"{head}-{suffix}"


def label_value(value: str) -> str:
    """A label value (≤ 63 characters of ``[A-Za-z0-9-_.]``) standing for ``value``, hashed when too long."""
    if len(value) <= MAX_NAME and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value):
        return value
    cleaned = re.sub(r"[^A-Za-z0-9-_.]+", "-", value).strip("-_.")
    suffix = _digest(value)
    head = cleaned[: MAX_NAME - len(suffix) - 1].rstrip("-_.")
    return f"{head}-{suffix}" if head else suffix


def agent_daemonset(collector: str) -> str:
    """The agent DaemonSet's name; also the prefix of its pods' names."""
    return dns_label(collector, "agent")


def agent_configmap(collector: str) -> str:
    """The ConfigMap holding the rendered ``agent.json``."""
    return dns_label(collector, "agent-config")


def agent_service(collector: str) -> str:
    """The headless Service in front of the agents' metrics port (a DNS-1035 label)."""
    return dns_label(collector, "agent-metrics")


def agent_servicemonitor(collector: str) -> str:
    """The ServiceMonitor scraping the agents when the prometheus-operator CRD exists."""
    return dns_label(collector, "agent")


def agent_buffer_directory(root: str, namespace: str, collector: str) -> str:
    """The collector's buffer directory on each node; below it one per node name.

    Plain names, no hashing: an admin cleaning up after a deleted collector finds it by name.
    Namespace and collector names are DNS labels/subdomains, so neither can be ``..`` or hold a ``/``.
    """
    return f"{root.rstrip('/')}/{namespace}/{collector}"


def selector_labels(collector: str) -> Mapping[str, str]:
    """The DaemonSet's selector: small and frozen, because a selector is immutable once created.

    Changing this set (or its values) forces every existing DaemonSet to be recreated.
    """
    return MappingProxyType({NAME: AGENT_APP, INSTANCE: label_value(collector)})


def common_labels(collector: str) -> dict[str, str]:
    """Labels on every child object: the selector labels plus ownership and product labels.

    ``managed-by`` + ``component`` is what the operator's watches select children by.
    """
    return {
        **selector_labels(collector),
        COMPONENT: AGENT_COMPONENT,
        MANAGED_BY: OPERATOR,
        PART_OF: PRODUCT,
    }


def pod_labels(collector: str, version: str | None) -> dict[str, str]:
    """Labels on agent pods: the common labels plus the image version when it is a readable tag."""
    labels = common_labels(collector)
    if version:
        labels[VERSION] = label_value(version)
    return labels


def children_selector() -> str:
    """The label selector of every child the operator manages, of any kind, in any namespace (what it watches).

    One selector for every kind: kinds share the stores of the resources they both own (ConfigMaps,
    Services), and each kind keeps to the children whose controller reference is one of its own.
    """
    return f"{MANAGED_BY}={OPERATOR}"


def pods_selector() -> str:
    """The label selector of every agent and processor pod (what the operator watches for status)."""
    return f"{NAME} in ({AGENT_APP},{PROCESSOR_APP})"


# --- an AggregationRule's processor -----------------------------------------------------------


def processor_deployment(rule: str) -> str:
    """The processor Deployment's name."""
    return dns_label(rule, "processor")


def processor_configmap(rule: str) -> str:
    """The ConfigMap holding the rendered ``processor.json``."""
    return dns_label(rule, "processor-config")


def processor_service(rule: str) -> str:
    """The Service agents send partials to (a DNS-1035 label: agents address it by name)."""
    return dns_label(rule, "processor")


def processor_networkpolicy(rule: str) -> str:
    """The NetworkPolicy admitting only the rule's agents and the operator."""
    return dns_label(rule, "processor")


def processor_selector_labels(rule: str) -> Mapping[str, str]:
    """The Deployment's selector (immutable once created, as for agents)."""
    return MappingProxyType({NAME: PROCESSOR_APP, INSTANCE: label_value(rule)})


def processor_labels(rule: str) -> dict[str, str]:
    """Labels on every child of a rule."""
    return {
        **processor_selector_labels(rule),
        COMPONENT: PROCESSOR_COMPONENT,
        MANAGED_BY: OPERATOR,
        PART_OF: PRODUCT,
    }

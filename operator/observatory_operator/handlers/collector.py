"""ObservatoryCollector: its round as a ``Kind`` for the machinery (plan, then status) and its kopf handler.

- ``plan``: parse the spec, read the shared-config from its watch, build the desired ConfigMap,
  Service, DaemonSet (and ServiceMonitor where that API is served) with the pure builder.
- ``status``: read the DaemonSet, its pods, the nodes and the Warning Events about them from the
  cache, probe the agents' ``/status``, and hand it all to the pure status function.
- Inputs that poke a collector's round: its children, its agent pods, Warning Events about them,
  node label/taint changes (every collector), and its shared-config ConfigMap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kopf

from observatory_agent.contract import DEFAULT_METRICS_PORT, ProcessorTarget
from observatory_operator import reasons
from observatory_operator.api.models import API_VERSION, ObservatoryCollector, ObservatoryCollectorSpec
from observatory_operator.controller.cache import Cache
from observatory_operator.controller.machinery import UID_INDEX, Controller, Kind, Plan, Reference, Round, Watch, by_uid
from observatory_operator.handlers.common import Seen, controlled_child, parse_as, paused, register_events, unusable
from observatory_operator.kube.apply import CONTROLLER_INDEX, by_controller
from observatory_operator.kube.client import (
    CONFIGMAPS,
    DAEMONSETS,
    EVENTS,
    NODES,
    PODS,
    SERVICEMONITORS,
    SERVICES,
    Resource,
)
from observatory_operator.kube.probe import Prober
from observatory_operator.manifests import build_collector, names
from observatory_operator.objects import Key, Obj, Owner, controller_of, controller_uid
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.settings import Settings
from observatory_operator.status import collector as funnel
from observatory_operator.status.conditions import Computed, invalid

PLURAL: Final = "observatorycollectors"
COLLECTORS: Final = Resource(API_VERSION, "ObservatoryCollector", PLURAL)
INVOLVED_INDEX: Final = "involved"
EVENT_REASONS: Final = frozenset({funnel.FAILED_CREATE, *funnel.FAILING_EVENT_REASONS})


@dataclass(frozen=True)
class _Planned:
    """What planning read and built, for the status step."""

    spec: ObservatoryCollectorSpec | None
    shared: Mapping[str, str] | None = None
    config_hash: str | None = None


def parse(body: Mapping[str, Any]) -> tuple[ObservatoryCollector | None, Verdict | None]:
    """The typed collector, or the verdict that names the field and the rule it breaks."""
    return parse_as(ObservatoryCollector, body)


# --- what the cache keeps (only what status reads) -------------------------------------------


def trim_pod(pod: Obj) -> Obj:
    """What status reads of an agent or processor pod (one store serves both kinds)."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    return {
        "metadata": {
            **{
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp", "ownerReferences")
                if k in meta
            },
            # Which app and instance: a processor pod is found by its rule's instance label.
            "labels": {k: labels[k] for k in (names.NAME, names.INSTANCE) if k in labels},
        },
        "spec": {
            "nodeName": spec.get("nodeName"),
            "affinity": spec.get("affinity"),
            "containers": [{"name": c.get("name"), "ports": c.get("ports")} for c in spec.get("containers") or []],
        },
        "status": {
            k: status[k]
            for k in (
                "phase",
                "reason",
                "message",
                "podIP",
                "startTime",
                "conditions",
                "initContainerStatuses",
                "containerStatuses",
            )
            if k in status
        },
    }


def trim_node(node: Obj) -> Obj:
    """Labels, taints and InternalIPs: a heartbeat changes nothing kept here, so it pokes no round."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    addresses = (node.get("status") or {}).get("addresses") or []
    return {
        "metadata": {
            "name": meta.get("name"),
            "resourceVersion": meta.get("resourceVersion"),
            "labels": meta.get("labels") or {},
        },
        "spec": {"taints": spec.get("taints") or [], "unschedulable": spec.get("unschedulable", False)},
        # Processors' NetworkPolicies admit host-network agents by their node's address.
        "status": {"addresses": [a for a in addresses if a.get("type") == "InternalIP"]},
    }


def trim_event(event: Obj) -> Obj | None:
    """Only the Warnings status reads (FailedCreate on DaemonSets; FailedMount, Failed on pods)."""
    involved = event.get("involvedObject") or {}
    if event.get("reason") not in EVENT_REASONS or involved.get("kind") not in {"DaemonSet", "Pod"}:
        return None
    meta = event.get("metadata") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
        "involvedObject": {k: involved.get(k) for k in ("kind", "name", "uid")},
        "reason": event.get("reason"),
        "message": str(event.get("message") or "")[:1024],
        "lastTimestamp": event.get("lastTimestamp") or (event.get("series") or {}).get("lastObservedTime"),
        "eventTime": event.get("eventTime"),
    }


def _involved(event: Obj) -> list[str]:
    uid = (event.get("involvedObject") or {}).get("uid")
    return [str(uid)] if uid else []


# --- mapping inputs to collectors ------------------------------------------------------------


def _collector_of_daemonset(ds: Obj | None) -> list[Key]:
    ref = controller_of(ds or {})
    if ds is None or ref is None or ref.get("kind") != COLLECTORS.kind:
        return []
    return [(str(ds["metadata"].get("namespace") or ""), str(ref.get("name")))]


def _by_uid(cache: Cache, resource: Resource, uid: str | None) -> Obj | None:
    found = cache.store(resource).by_index(UID_INDEX, uid) if uid else []
    return found[0] if found else None


def _pod_owners(cache: Cache, pod: Obj) -> list[Key]:
    return _collector_of_daemonset(_by_uid(cache, DAEMONSETS, controller_uid(pod)))


def _event_owners(cache: Cache, event: Obj) -> list[Key]:
    uid = (event.get("involvedObject") or {}).get("uid")
    ds = _by_uid(cache, DAEMONSETS, uid)
    if ds is None:
        pod = _by_uid(cache, PODS, uid)
        ds = _by_uid(cache, DAEMONSETS, controller_uid(pod)) if pod else None
    return _collector_of_daemonset(ds)


def _every_collector(cache: Cache, _node: Obj) -> list[Key]:
    return cache.primary(COLLECTORS).known_keys()


def _shared_config(body: Obj) -> Iterable[Key]:
    ref = ((body.get("spec") or {}).get("sharedConfig") or {}).get("name")
    namespace = str((body.get("metadata") or {}).get("namespace") or "")
    return [(namespace, str(ref))] if ref else []


def _metrics_port(pod: Obj) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == names.METRICS_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return DEFAULT_METRICS_PORT


# --- the round --------------------------------------------------------------------------------


Targets = Callable[[Cache, str, str], list[ProcessorTarget]]
"""(cache, namespace, collector) → what the AggregationRules naming that collector want its agents to send."""


def kind(settings: Settings, prober: Prober, processors: Targets | None = None) -> Kind:
    """The collector's round as the machinery runs it; ``processors`` reads the rules that name a collector."""

    async def plan(body: Obj, cache: Cache) -> Plan:
        collector, refused = parse(body)
        if collector is None:
            return unusable(refused, _Planned(None))
        spec, owner = collector.spec, Owner.of(body)
        cm = await cache.named(CONFIGMAPS, owner.namespace, spec.shared_config.name)
        shared: Mapping[str, str] | None = (cm.get("data") or {}) if cm is not None else None
        if spec.paused:
            return paused(_Planned(spec, shared))
        if cm is None and not spec.shared_config.optional:
            message = (
                f"ConfigMap {spec.shared_config.name} (spec.sharedConfig) not found in namespace {owner.namespace}; "
                "create it or set spec.sharedConfig.optional: true"
            )
            return Plan(
                Verdict(Outcome.BLOCKED, reasons.SHARED_CONFIG_NOT_FOUND, message), context=_Planned(spec, shared)
            )
        service_monitor = await cache.kube.served(SERVICEMONITORS.api_version)
        targets = processors(cache, owner.namespace, owner.name) if processors is not None else []
        built = build_collector(owner, spec, settings, service_monitor=service_monitor, processors=targets)
        problem = funnel.shared_config_problem(shared, spec.shared_config.name)
        message = "children are up to date"
        if problem is not None:
            # Not a failure: agents keep their last good shared-config; say so where people look.
            message += f"; shared-config is invalid, agents keep their last good config: {problem}"
        return Plan(
            Verdict(Outcome.APPLIED, reasons.APPLIED, message),
            tuple(built.objects),
            optional=(SERVICEMONITORS,) if service_monitor else (),
            context=_Planned(spec, shared, built.config_hash),
        )

    async def status(body: Obj, rnd: Round, cache: Cache) -> Computed:
        planned: _Planned = rnd.plan.context
        seen = Seen.of(body)
        if planned.spec is None:
            return invalid(seen.generation, rnd.verdict, seen.previous_conditions, seen.now)
        owner = rnd.owner
        ds = controlled_child(rnd, cache, DAEMONSETS, names.agent_daemonset(owner.name))
        ds_uid = str((ds or {}).get("metadata", {}).get("uid") or "")
        pods = cache.store(PODS).by_index(CONTROLLER_INDEX, ds_uid) if ds_uid else []
        events = cache.store(EVENTS)
        warnings = [
            e
            for uid in (ds_uid, *(p["metadata"].get("uid") for p in pods))
            if uid
            for e in events.by_index(INVOLVED_INDEX, uid)
        ]
        answers = await prober.read(pods, _metrics_port)
        observed = funnel.Observed(
            generation=seen.generation,
            spec=planned.spec,
            verdict=rnd.verdict,
            namespace=owner.namespace,
            daemonset=ds,
            pods=pods,
            nodes=cache.store(NODES).objects(),
            warnings=warnings,
            reports={k: funnel.AgentReport.from_json(v) if v is not None else None for k, v in answers.items()},
            window_seconds=funnel.effective_window(planned.spec, planned.shared),
            config_hash=planned.config_hash or seen.config_hash,
            previous_conditions=seen.previous_conditions,
        )
        computed = funnel.compute(observed, seen.now)
        notice = funnel.shared_config_notice(
            funnel.shared_config_problem(planned.shared, planned.spec.shared_config.name), seen.previous_conditions
        )
        return Computed(computed.status, computed.transitions, [notice] if notice else [])

    return Kind(
        resource=COLLECTORS,
        children=(CONFIGMAPS, SERVICES, DAEMONSETS),
        optional_children=(SERVICEMONITORS,),
        child_fields={DAEMONSETS: (("spec", "template", "spec", "hostNetwork"),)},
        child_selector=names.children_selector(),
        plan=plan,
        status=status,
        watches=(
            Watch(
                PODS,
                label_selector=names.pods_selector(),
                trim=trim_pod,
                indexes={CONTROLLER_INDEX: by_controller, UID_INDEX: by_uid},
                owners=_pod_owners,
            ),
            Watch(NODES, trim=trim_node, owners=_every_collector),
            Watch(
                EVENTS,
                field_selector="type=Warning",
                trim=trim_event,
                indexes={INVOLVED_INDEX: _involved},
                owners=_event_owners,
            ),
        ),
        references=(Reference(CONFIGMAPS, _shared_config),),
    )


# --- kopf ---------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Every watch event of a collector goes to the machinery."""
    register_events(registry, controller, PLURAL, "collector")


__all__ = ["COLLECTORS", "kind", "parse", "register"]

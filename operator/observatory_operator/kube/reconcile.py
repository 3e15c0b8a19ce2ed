"""Applies a collector's desired children with server-side apply, skips what already matches, prunes the rest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from observatory_operator.api.models import ObservatoryCollectorSpec
from observatory_operator.build import Owner, names
from observatory_operator.kube import errors
from observatory_operator.kube.client import Kube, Obj, path_for
from observatory_operator.kube.diff import needs_apply
from observatory_operator.status import Outcome

SERVICE_MONITOR_API: Final = "monitoring.coreos.com/v1"
CHILD_KINDS: Final = (("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "DaemonSet"))


@dataclass
class Applied:
    """What one apply round changed; a round on an unchanged cluster leaves every list empty."""

    changed: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    unchanged: int = 0
    live: dict[str, Obj] = field(default_factory=dict)
    """Kind → the live object after this round (the applied answer, or what was already there)."""


@dataclass(frozen=True)
class Prerequisites:
    """What the children depend on but the operator does not own."""

    problem: Outcome | None
    shared_config: Mapping[str, str] | None
    """The shared-config ConfigMap's data, or None when it does not exist."""


def _ref(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def _controller_uid(obj: Obj) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


async def prerequisites(kube: Kube, namespace: str, spec: ObservatoryCollectorSpec) -> Prerequisites:
    """The token Secret and the shared-config ConfigMap: missing ones name themselves in the outcome."""
    shared_ref = spec.shared_config
    shared = await kube.aget_or_none(path_for("v1", "ConfigMap", namespace, shared_ref.name))
    shared_data: Mapping[str, str] | None = (shared or {}).get("data") or ({} if shared is not None else None)
    ref = spec.influxdb.token_secret_ref
    if ref is not None:
        # Metadata only: checking that the Secret exists must not hand the operator the token.
        secret = await kube.ametadata_or_none(path_for("v1", "Secret", namespace, ref.name))
        if secret is None:
            message = (
                f"Secret {ref.name} (spec.influxdb.tokenSecretRef) not found in namespace {namespace}; "
                f"create it with key {ref.key}"
            )
            return Prerequisites(Outcome(ok=False, reason="SecretNotFound", message=message), shared_data)
    if shared is None and not shared_ref.optional:
        message = (
            f"ConfigMap {shared_ref.name} (spec.sharedConfig) not found in namespace {namespace}; "
            "create it or set spec.sharedConfig.optional: true"
        )
        return Prerequisites(Outcome(ok=False, reason="SharedConfigNotFound", message=message), shared_data)
    return Prerequisites(None, shared_data)


async def apply(kube: Kube, objects: Sequence[Obj], owner: Owner) -> Applied:
    """Apply each object that is missing or drifted, all or nothing; recreate on an immutable-field refusal.

    Every changed object is first applied with ``dryRun=All``: a spec the API server refuses (say,
    a malformed affinity) then fails before the ConfigMap is rewritten, so agents never run a
    config whose DaemonSet could not follow.
    """
    result = Applied()
    todo: list[tuple[Obj, Obj | None]] = []
    for obj in objects:
        meta = obj["metadata"]
        live = await kube.aget_or_none(path_for(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"]))
        if live is not None and _controller_uid(live) not in {None, owner.uid}:
            # Someone else's object under our name: taking it over could break their workload.
            raise errors.PermanentError(f"{_ref(obj)} exists and is controlled by another owner", reason="NameTaken")
        if needs_apply(obj, live):
            todo.append((obj, live))
        else:
            result.unchanged += 1
            result.live[obj["kind"]] = live or {}
    recreate: set[str] = set()
    for obj, _live in todo:
        try:
            await kube.aapply(obj, dry_run=True)
        except errors.ImmutableField:
            # A DaemonSet's selector cannot change in place; the new DaemonSet replaces the pods.
            recreate.add(_ref(obj))
    for obj, live in todo:
        if _ref(obj) in recreate and live is not None:
            await kube.adelete(live)
            result.recreated.append(_ref(obj))
        result.live[obj["kind"]] = await kube.aapply(obj)
        result.changed.append(_ref(obj))
    return result


async def prune(kube: Kube, owner: Owner, keep: Sequence[Obj], *, service_monitor: bool) -> list[str]:
    """Delete children labelled as this collector's and controlled by it that are no longer desired."""
    wanted = {(o["kind"], o["metadata"]["name"]) for o in keep}
    kinds = [*CHILD_KINDS, *([(SERVICE_MONITOR_API, "ServiceMonitor")] if service_monitor else [])]
    pruned: list[str] = []
    for api_version, kind in kinds:
        items = await kube.alist_objects(
            path_for(api_version, kind, owner.namespace), label_selector=names.children_selector(owner.name)
        )
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
            if (kind, item["metadata"]["name"]) in wanted or _controller_uid(item) != owner.uid:
                continue
            await kube.adelete(item)
            pruned.append(_ref(item))
    return pruned


async def agent_pods(kube: Kube, owner: Owner, daemonset: Obj | None) -> list[Obj]:
    """The pods of the collector's DaemonSet (by selector, then by controller uid)."""
    if daemonset is None or not daemonset.get("metadata", {}).get("uid"):
        return []
    selector = ",".join(f"{k}={v}" for k, v in names.selector_labels(owner.name).items())
    pods = await kube.alist_objects(path_for("v1", "Pod", owner.namespace), label_selector=selector)
    uid = daemonset["metadata"]["uid"]
    return [p for p in pods if _controller_uid(p) == uid]


def live_daemonset(applied: Applied | None) -> Obj | None:
    ds = (applied.live if applied else {}).get("DaemonSet")
    return ds or None


__all__ = ["Applied", "Prerequisites", "agent_pods", "apply", "live_daemonset", "prerequisites", "prune"]

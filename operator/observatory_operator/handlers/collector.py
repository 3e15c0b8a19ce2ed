"""ObservatoryCollector handlers: a spec change or a resync runs one round of build → apply → observe → status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import kopf
from pydantic import ValidationError

from observatory_operator import status
from observatory_operator.api.models import API_VERSION, GROUP, VERSION, ObservatoryCollector
from observatory_operator.build import Built, Owner, build_collector, names
from observatory_operator.handlers.runtime import CollectorState, Key, Runtime
from observatory_operator.kube import errors, events, probe, reconcile
from observatory_operator.kube.client import path_for

PLURAL: Final = "observatorycollectors"
KIND: Final = "ObservatoryCollector"
PRUNE_EVERY: Final = 6
"""Resync rounds between prune passes (a prune lists every child kind; spec changes always prune)."""

log = logging.getLogger("observatory_operator.collector")


def _key(body: Mapping[str, Any]) -> Key:
    meta = body["metadata"]
    return str(meta["namespace"]), str(meta["name"])


def _parse(body: Mapping[str, Any]) -> tuple[ObservatoryCollector | None, status.Outcome | None]:
    """The typed resource, or the outcome that says why the spec is unusable."""
    raw = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    try:
        return ObservatoryCollector.model_validate(raw), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return None, status.Outcome(ok=False, reason="InvalidSpec", message=f"{where}: {err['msg']}")


async def _apply(
    runtime: Runtime, owner: Owner, collector: ObservatoryCollector, *, prune: bool
) -> tuple[status.Outcome, reconcile.Applied | None, Built | None, Mapping[str, str] | None]:
    """Prerequisites, build and apply; permanent problems become the outcome, temporary ones raise."""
    kube, spec = runtime.kube, collector.spec
    pre = await reconcile.prerequisites(kube, owner.namespace, spec)
    if pre.problem is not None:
        return pre.problem, None, None, pre.shared_config
    service_monitor = await kube.ahas_api(reconcile.SERVICE_MONITOR_API)
    built = build_collector(owner, spec, runtime.settings, service_monitor=service_monitor)
    try:
        applied = await reconcile.apply(kube, built.objects, owner)
        if prune:
            applied.pruned = await reconcile.prune(kube, owner, built.objects, service_monitor=service_monitor)
    except errors.TemporaryError:
        raise
    except errors.PermanentError as exc:
        # The API server refused what we built from this spec: the user has to change the spec.
        outcome = status.Outcome(ok=False, reason="ApplyRejected", message=exc.message)
        return outcome, None, built, pre.shared_config
    problem = status.shared_config_problem(pre.shared_config, spec.shared_config.name)
    if problem is not None:
        # Not a reconcile failure: agents keep their last good shared-config; say so where people look.
        message = f"children are up to date; shared-config is invalid, agents keep their last good config: {problem}"
        return status.Outcome.applied(message), applied, built, pre.shared_config
    return status.Outcome.applied(), applied, built, pre.shared_config


@dataclass
class _Round:
    """One reconcile round's results, handed from the apply step to the observe step."""

    body: Mapping[str, Any]
    collector: ObservatoryCollector
    owner: Owner
    outcome: status.Outcome
    applied: reconcile.Applied | None = None
    built: Built | None = None
    shared: Mapping[str, str] | None = None


async def reconcile_collector(runtime: Runtime, body: Mapping[str, Any], *, spec_changed: bool) -> None:
    """One round for one collector. Temporary API errors propagate (the caller retries with backoff)."""
    key = _key(body)
    state = runtime.state(key)
    async with state.lock:
        state.rounds += 1
        collector, invalid = _parse(body)
        if collector is None:
            await _write_invalid(runtime, body, state, invalid or status.Outcome(ok=False, reason="InvalidSpec"))
            return
        owner = Owner(name=key[1], namespace=key[0], uid=str(body["metadata"]["uid"]))
        was_ok = state.outcome is not None and state.outcome.ok
        rnd = _Round(body, collector, owner, state.outcome or status.Outcome.applied())
        if collector.spec.paused:
            rnd.outcome = status.Outcome.paused()
        elif spec_changed or not state.backing_off:
            prune = spec_changed or state.rounds % PRUNE_EVERY == 1
            rnd.outcome, rnd.applied, rnd.built, rnd.shared = await _apply(runtime, owner, collector, prune=prune)
        # else: backing off, so keep saying what failed without hammering the API.
        settings = runtime.settings.reconcile
        if not rnd.outcome.ok and rnd.outcome.reason != "Paused":
            if spec_changed or not state.backing_off:
                delay = state.failed(settings.backoff_initial_seconds, settings.backoff_max_seconds)
                log.warning("%s/%s: %s (%s); retry in %.0fs", *key, rnd.outcome.reason, rnd.outcome.message, delay)
        elif rnd.outcome.ok:
            state.succeeded()
        state.outcome = rnd.outcome
        if rnd.shared is not None:  # only when this round read it
            await _report_shared_config(runtime, body, state, rnd.shared, collector.spec.shared_config.name)
        if rnd.applied is not None:
            # Outside a spec change, a change to children that were fine means someone edited them.
            restored = not spec_changed and was_ok
            await _report_changes(runtime, body, rnd.applied, restored=restored)
        await _observe_and_write(runtime, rnd, state)


async def _report_shared_config(
    runtime: Runtime, body: Mapping[str, Any], state: CollectorState, data: Mapping[str, str] | None, name: str
) -> None:
    problem = status.shared_config_problem(data, name)
    if problem != state.shared_config_problem and problem is not None:
        await events.post(runtime.kube, body, "Warning", "SharedConfigInvalid", problem)
    state.shared_config_problem = problem


async def _report_changes(
    runtime: Runtime, body: Mapping[str, Any], applied: reconcile.Applied, *, restored: bool
) -> None:
    if applied.recreated:
        message = f"recreated {', '.join(applied.recreated)} (an immutable field changed)"
        await events.post(runtime.kube, body, "Normal", "Recreated", message)
    if applied.changed:
        reason = "Restored" if restored else "Applied"
        await events.post(runtime.kube, body, "Normal", reason, f"{reason.lower()} {', '.join(applied.changed)}")
    if applied.pruned:
        message = f"deleted {', '.join(applied.pruned)} (no longer desired)"
        await events.post(runtime.kube, body, "Normal", "Pruned", message)


def _last_status(state: CollectorState, body: Mapping[str, Any]) -> dict[str, Any]:
    """What the status is now: our last write's answer, else (first round since start) the body's."""
    return dict(state.status if state.status is not None else body.get("status") or {})


async def _observe_and_write(runtime: Runtime, rnd: _Round, state: CollectorState) -> None:
    """Read what is running, compute status, write only what changed, post Events on transitions."""
    kube, spec, owner, body, shared = runtime.kube, rnd.collector.spec, rnd.owner, rnd.body, rnd.shared
    ds = reconcile.live_daemonset(rnd.applied)
    if ds is None:
        ds_path = path_for("apps/v1", "DaemonSet", owner.namespace, names.agent_daemonset(owner.name))
        ds = await kube.aget_or_none(ds_path)
    if shared is None:
        cm = await kube.aget_or_none(path_for("v1", "ConfigMap", owner.namespace, spec.shared_config.name))
        shared = (cm or {}).get("data") or None
    pods = await reconcile.agent_pods(kube, owner, ds)
    nodes, reports = await asyncio.gather(
        kube.anodes(),
        probe.agent_reports(pods, timeout_seconds=runtime.settings.reconcile.probe_timeout_seconds),
    )
    previous = _last_status(state, body)
    observed = status.Observed(
        generation=int(body["metadata"].get("generation", 0)),
        spec=spec,
        outcome=rnd.outcome,
        daemonset=ds,
        pods=pods,
        nodes=nodes,
        reports=reports,
        window_seconds=status.effective_window(spec, shared),
        config_hash=rnd.built.config_hash if rnd.built else previous.get("configHash"),
        previous_conditions=list(previous.get("conditions") or []),
    )
    computed = status.compute(observed, datetime.now(UTC))
    await _patch_status(runtime, body, state, computed.status)
    for t in computed.transitions:
        kind = "Warning" if t.warning else "Normal"
        await events.post(runtime.kube, body, kind, t.reason or t.type, f"{t.type}={t.status}: {t.message}")


async def _write_invalid(
    runtime: Runtime, body: Mapping[str, Any], state: CollectorState, outcome: status.Outcome
) -> None:
    """Status for a resource whose spec could not even be parsed: Failed, with the reason."""
    previous = _last_status(state, body)
    condition = {"type": status.RECONCILED, "status": "False", "reason": outcome.reason, "message": outcome.message}
    held = [
        c for c in previous.get("conditions") or [] if c.get("type") == status.RECONCILED and c.get("status") == "False"
    ]
    # The condition keeps its transition time while it holds: a resync of an invalid spec writes nothing.
    since = held[0].get("lastTransitionTime") if held else None
    condition["lastTransitionTime"] = since or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = {
        "observedGeneration": int(body["metadata"].get("generation", 0)),
        "phase": "Failed",
        "conditions": [condition],
    }
    if previous.get("phase") != "Failed":
        await events.post(runtime.kube, body, "Warning", outcome.reason, outcome.message)
    await _patch_status(runtime, body, state, new)


async def _patch_status(
    runtime: Runtime, body: Mapping[str, Any], state: CollectorState, new: Mapping[str, Any]
) -> None:
    """Send only the top-level status fields that differ: an unchanged status costs no write at all."""
    current = _last_status(state, body)
    patch = {k: v for k, v in new.items() if current.get(k) != v}
    if not patch:
        return
    meta = body["metadata"]
    try:
        written = await runtime.kube.apatch_status(API_VERSION, KIND, meta["namespace"], meta["name"], patch)
    except errors.NotFound:
        return  # deleted while we worked: nothing to report on
    state.status = dict(written.get("status") or {})
    key = _key(body)
    if key in runtime.bodies:
        # The answer is the newest object: the next round compares against it, not against a body
        # the watch stream has not refreshed yet (which would repeat this very write).
        runtime.bodies[key] = written


# --- resync -------------------------------------------------------------------------------


async def resync_loop(runtime: Runtime) -> None:
    """Every ``resync_seconds``: refresh each known collector's status and restore hand-edited children.

    A loop of our own instead of ``@kopf.timer``: kopf puts a finalizer on every object with a
    timer, and nothing here needs one (children go with their owner through the garbage
    collector), so collectors stay deletable while the operator is down.
    """
    interval = runtime.settings.reconcile.resync_seconds
    limit = asyncio.Semaphore(16)  # bounded fan-out: 200 collectors must not open 200 probes at once

    while True:
        await asyncio.sleep(interval)
        await asyncio.gather(*(_guarded_round(runtime, k, limit) for k in list(runtime.bodies)))


async def _guarded_round(runtime: Runtime, key: Key, limit: asyncio.Semaphore | None = None) -> None:
    """A resync round that never raises: the loop must go on for every other collector."""
    body = runtime.bodies.get(key)
    if body is None:
        return
    async with limit or contextlib.nullcontext():
        try:
            await reconcile_collector(runtime, body, spec_changed=False)
        except errors.TemporaryError as exc:
            # The next tick retries; an API blip must not flip any status.
            log.warning("%s/%s: round deferred: %s", *key, exc.message)
        except Exception:
            # Never let one collector's surprise stop the loop for every other collector.
            log.exception("%s/%s: round failed", *key)


POKE_DELAY: Final = 1.0
"""Seconds to gather a burst of child events (a rollout sends many) into one out-of-turn round."""


def poke(runtime: Runtime, key: Key) -> None:
    """Run an out-of-turn round for ``key`` soon: a child changed, so restore it or refresh status now."""
    if key not in runtime.bodies or key in runtime.pokes:
        return

    async def later() -> None:
        try:
            await asyncio.sleep(POKE_DELAY)
        finally:
            runtime.pokes.pop(key, None)
        await _guarded_round(runtime, key)

    runtime.pokes[key] = asyncio.create_task(later(), name=f"observatory-poke-{key[0]}/{key[1]}")


def _owner_key(child: Mapping[str, Any]) -> Key | None:
    meta = child.get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION:
            return str(meta.get("namespace")), str(ref.get("name"))
    return None


# --- kopf registration --------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry) -> None:
    """Attach the collector handlers to ``registry`` (explicit, so tests and the CLI choose what runs)."""

    @kopf.on.event(GROUP, VERSION, PLURAL, id="remember", registry=registry)
    async def collector_seen(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        # Only remembers the latest body for the resync loop; no API calls, no writes.
        runtime: Runtime = memo["runtime"]
        if type == "DELETED":
            runtime.forget(_key(body))
        else:
            runtime.bodies[_key(body)] = dict(body)

    # Stable handler ids: kopf keys its progress annotations by them.
    @kopf.on.resume(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, id="reconcile", registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", id="reconcile", registry=registry)
    async def collector_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo["runtime"]
        runtime.bodies[_key(body)] = dict(body)
        try:
            await reconcile_collector(runtime, body, spec_changed=True)
        except errors.TemporaryError as exc:
            raise kopf.TemporaryError(exc.message, delay=exc.delay) from exc

    @kopf.on.event("apps", "v1", "daemonsets", labels={names.MANAGED_BY: names.OPERATOR}, id="child", registry=registry)
    async def child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        # A hand edit or deletion is restored, and READY follows the rollout, without waiting for the resync.
        key = _owner_key(body)
        if key is not None:
            poke(memo["runtime"], key)

    @kopf.on.probe(id="api-requests", registry=registry)
    def api_requests(memo: kopf.Memo, **_: Any) -> dict[str, int]:
        # On the liveness endpoint: lets anyone check that an idle resync sends no writes.
        runtime: Runtime = memo["runtime"]
        return {**runtime.kube.calls, "writes": runtime.kube.writes()}

    @kopf.on.startup(id="start-resync", registry=registry)
    async def start_resync(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo["runtime"]
        runtime.resync_task = asyncio.create_task(resync_loop(runtime), name="observatory-resync")

    @kopf.on.cleanup(id="stop-resync", registry=registry)
    async def stop_resync(memo: kopf.Memo, **_: Any) -> None:
        runtime: Runtime = memo["runtime"]
        if runtime.resync_task is not None:
            runtime.resync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runtime.resync_task

"""One controller machinery for every kind: the round's orchestration, with no kind in it.

A kind hands the machinery a ``Kind``: its resource, the child resources it owns, the inputs it
watches, and its round as two functions, ``plan`` (read the cache, parse, build the desired
objects: pure but for cache reads) and ``status`` (observe, then a pure status function). The
machinery does the rest, the same way for every kind:

1. A **work queue** keyed by namespace/name: a key is in at most one round at a time, and events
   arriving meanwhile queue it once more, so the next round reads the newest object.
2. Each round reads its object **fresh from the store under the key** (never a body captured
   before waiting); a deleted object is forgotten, a **terminating** one is left to the garbage
   collector (no writes during a foreground deletion).
3. **Apply** (``kube.apply.sync``): input-hash and fingerprint drift, dry run first, recreate on
   immutable fields, prune what is no longer desired. Failures back off per key.
4. **Status funnel**: one merge patch of the changed top-level fields, with the object's uid as a
   precondition; a NotFound forgets the key (a missed DELETED event cannot cause endless
   re-creation under a dangling owner).
5. **Events** for written, restored, recreated and pruned children, condition transitions and
   the kind's notices.

Inputs: children, watched resources and named references each map a changed object to the keys
it concerns (``Watch.owners``); ``Controller.follow`` lets another kind's store poke this kind's
keys (a rule's change re-renders the collectors it names). A resync enqueues every key every
``resync_seconds`` for status that depends on time and on agents' answers.

Leadership: workers and the resync run only while ``leading`` is set; informers run on
standbys too, so a takeover starts from a warm cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from observatory_operator import metrics, reasons
from observatory_operator.controller.cache import Cache
from observatory_operator.controller.queue import WorkQueue
from observatory_operator.kube import apply, errors, events
from observatory_operator.kube.client import Kube, Resource
from observatory_operator.kube.informer import Indexer, Store, trim_metadata
from observatory_operator.objects import Key, Obj, Owner, canonical_json, controller_of, key_of
from observatory_operator.reasons import Outcome, Verdict
from observatory_operator.settings import ReconcileSettings
from observatory_operator.status.conditions import Computed

UID_INDEX: Final = "uid"

log = logging.getLogger("observatory_operator.controller")


def by_uid(obj: Obj) -> list[str]:
    uid = (obj.get("metadata") or {}).get("uid")
    return [str(uid)] if uid else []


def merge_patch(current: Mapping[str, Any], wanted: Mapping[str, Any], *, whole: bool = False) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) bringing ``current`` to ``wanted``: top-level fields ``wanted`` names, and
    maps inside them ``whole``.

    A map's keys missing from ``wanted`` are sent as null, or the merge would keep them; an empty map
    is sent as null too (a merge patch cannot create one, so ``{}`` would be sent again every round).
    Top-level fields ``wanted`` does not name are left as they are.
    """
    patch: dict[str, Any] = {}
    for key in wanted.keys() | (current.keys() if whole else set()):
        have, want = current.get(key), wanted.get(key)
        if want == {}:
            want = None
        if isinstance(have, dict) and isinstance(want, dict):
            inner = merge_patch(have, want, whole=True)
            if inner:
                patch[key] = inner
        elif have != want:
            patch[key] = want
    return patch


def _same(old: Obj, new: Obj) -> bool:
    """Equal but for the resourceVersion (which changes with every write, even one that changes nothing kept)."""

    def bare(obj: Obj) -> Obj:
        meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
        return {**obj, "metadata": meta}

    return bare(old) == bare(new)


@dataclass(frozen=True)
class Watch:
    """An input a kind's rounds read from a watch, and which of its keys a change concerns."""

    resource: Resource
    label_selector: str | None = None
    field_selector: str | None = None
    trim: Callable[[Obj], Obj | None] = trim_metadata
    """What of each object to keep; None keeps the object out of the store altogether."""
    indexes: Mapping[str, Indexer] = field(default_factory=dict)
    owners: Callable[[Cache, Obj], Iterable[Key]] | None = None
    """The kind's keys a change to one object concerns (None: changes poke nobody)."""


@dataclass(frozen=True)
class Reference:
    """Objects a spec names (a ConfigMap it mounts): watched one by one, a change pokes who names it."""

    resource: Resource
    names: Callable[[Obj], Iterable[Key]]
    """The (namespace, name) a body refers to."""


@dataclass(frozen=True)
class Plan:
    """What a round should bring about: the verdict so far and, when the spec is usable, the desired objects."""

    verdict: Verdict
    objects: tuple[Obj, ...] | None = None
    """None: leave the children exactly as they are (paused, invalid spec, missing prerequisite)."""
    optional: tuple[Resource, ...] = ()
    """Child resources this round may own besides the kind's fixed ones (served APIs only; pruned with them)."""
    context: Any = None
    """Whatever the kind's status function needs from planning (the parsed spec, inputs read)."""


@dataclass(frozen=True)
class Round:
    """What the machinery did with a plan: the final verdict and what the apply step changed."""

    plan: Plan
    verdict: Verdict
    applied: apply.Applied
    owner: Owner


@dataclass(frozen=True)
class Kind:
    """Everything the machinery needs to know about one kind: the round as functions, and its inputs."""

    resource: Resource
    children: tuple[Resource, ...]
    child_selector: str
    """Labels every child of this kind carries: the children's watches select by them."""
    plan: Callable[[Obj, Cache], Awaitable[Plan]]
    status: Callable[[Obj, Round, Cache], Awaitable[Computed]]
    watches: tuple[Watch, ...] = ()
    references: tuple[Reference, ...] = ()
    optional_children: tuple[Resource, ...] = ()
    """Child resources that exist only where their API is served (ServiceMonitor)."""
    child_fields: Mapping[Resource, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    """Paths of a child's spec the status function reads: the cache keeps those (and a digest of the rest)."""


@dataclass
class _KeyState:
    """What the machinery remembers about one key between rounds (lost on restart, by design)."""

    uid: str
    status: dict[str, Any] | None = None
    """The status as the API server answered our last write. kopf may coalesce watch events or
    deliver one from before that write, so the body's status can lag; we are its only writer, so
    our last answer is the newest (after a restart or failover, the body's is)."""
    failed_hash: str | None = None
    """The desired objects that last failed to apply: not retried before the backoff, unless they change."""
    failure: Verdict | None = None
    retry_at: float = 0.0


class Controller:
    """The machinery for one kind."""

    def __init__(self, kind: Kind, *, kube: Kube, cache: Cache, settings: ReconcileSettings, annotation: str) -> None:
        self.kind, self.kube, self.cache, self.settings = kind, kube, cache, settings
        self.annotation = annotation
        """The input-hash annotation on every child."""
        self.name = kind.resource.kind
        self.queue: WorkQueue[Key] = WorkQueue(
            initial=settings.backoff_initial_seconds, maximum=settings.backoff_max_seconds
        )
        self.primary = cache.primary(kind.resource)
        self.prefix = annotation.rsplit("/", 1)[0] + "/"
        self.memory = apply.Memory(self.prefix)
        self._states: dict[Key, _KeyState] = {}
        for child in kind.children:
            self._watch_child(child)
        for watch in kind.watches:
            store = cache.watch(
                watch.resource,
                label_selector=watch.label_selector,
                field_selector=watch.field_selector,
                trim=watch.trim,
                indexes=watch.indexes,
            )
            if watch.owners is not None:
                self.follow(store, self._owners_by(watch.owners), delay=settings.poke_delay_seconds)
        for ref in kind.references:
            index = f"ref:{ref.resource}"
            self.primary.add_index(index, ref.names)
            self.follow(cache.named_store(ref.resource), self._referrers(index))

    # --- inputs ---------------------------------------------------------------------------

    def _watch_child(self, resource: Resource) -> Store:
        store = self.cache.watch(
            resource,
            label_selector=self.kind.child_selector,
            trim=functools.partial(apply.trim_child, prefix=self.prefix, keep=self.kind.child_fields.get(resource, ())),
            indexes={apply.CONTROLLER_INDEX: apply.by_controller, UID_INDEX: by_uid},
        )
        self.follow(store, self._owner_of, delay=self.settings.poke_delay_seconds)
        return store

    def _owners_by(self, owners: Callable[[Cache, Obj], Iterable[Key]]) -> Callable[[Obj], Iterable[Key]]:
        return lambda obj: owners(self.cache, obj)

    def _referrers(self, index: str) -> Callable[[Obj], list[Key]]:
        return lambda obj: [key_of(b) for b in self.primary.by_index(index, key_of(obj))]

    def _owner_of(self, child: Obj) -> list[Key]:
        ref = controller_of(child)
        if ref is None or ref.get("kind") != self.kind.resource.kind:
            return []
        if ref.get("apiVersion") != self.kind.resource.api_version:
            return []
        return [(str((child.get("metadata") or {}).get("namespace") or ""), str(ref.get("name")))]

    def follow(self, store: Store, keys: Callable[[Obj], Iterable[Key]], *, delay: float = 0.0) -> None:
        """When an object in ``store`` changes, run a round for the keys ``keys`` maps its old and new versions to.

        The seam between kinds: a rule's store followed by the collector controller with "the
        collectors this rule names" re-renders exactly those collectors when the rule changes.
        """

        def changed(old: Obj | None, new: Obj | None) -> None:
            if old is not None and new is not None and _same(old, new):
                return  # nothing a round reads changed (a node heartbeat, once trimmed)
            for obj in (old, new):
                if obj is not None:
                    for key in keys(obj):
                        self.enqueue(key, delay)

        store.listen(changed)

    def observe(self, event_type: str | None, body: Obj) -> None:
        """A watch event of the kind itself (from kopf): remember the body and run a round."""
        self.primary.observe(event_type, body)
        key = key_of(body)
        if event_type == "DELETED":
            self.forget(key, body)
        else:
            self.enqueue(key)

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        if self.primary.get(*key) is None:
            return
        self.queue.add_after(key, delay)
        metrics.QUEUE_DEPTH.labels(self.name).set(len(self.queue))

    def forget(self, key: Key, body: Obj | None = None) -> None:
        self.queue.drop(key)
        self._states.pop(key, None)
        if body is not None:
            uid = str((body.get("metadata") or {}).get("uid") or "")
            for resource in (*self.kind.children, *self.kind.optional_children):
                if self.cache.has(resource):
                    self.memory.forget(self.cache.store(resource).by_index(apply.CONTROLLER_INDEX, uid))

    # --- running --------------------------------------------------------------------------

    async def run(self, leading: asyncio.Event) -> None:
        """Workers and the resync, while ``leading`` is set (the caller cancels this task when it is not)."""
        await leading.wait()
        await self.cache.synced()
        for key in self.primary.known_keys():
            self.queue.add(key)
        # A TaskGroup: cancelling this task, or one worker failing (NotLeader), stops them all.
        async with asyncio.TaskGroup() as group:
            for i in range(self.settings.workers):
                group.create_task(self._worker(), name=f"{self.name} worker {i}")
            group.create_task(self._resync(), name=f"{self.name} resync")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            for key in self.primary.known_keys():
                self.queue.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            started = time.monotonic()
            try:
                await self.sync(key)
            except errors.NotLeader:
                raise  # this replica must stop writing: the leader elector ends the process
            except errors.TemporaryError as exc:
                # An API blip or a race: no status flips; the key comes back after its backoff.
                delay = self.queue.backoff(key)
                metrics.RECONCILE_ERRORS.labels(self.name, "temporary").inc()
                log.warning("%s %s/%s: round deferred %.0fs: %s", self.name, *key, delay, exc.message)
            except Exception:
                # Never let one object's surprise stop the workers for every other object.
                delay = self.queue.backoff(key)
                metrics.RECONCILE_ERRORS.labels(self.name, "unexpected").inc()
                log.exception("%s %s/%s: round failed; again in %.0fs", self.name, *key, delay)
            finally:
                self.queue.done(key)
                metrics.RECONCILE_DURATION.labels(self.name).observe(time.monotonic() - started)
                metrics.QUEUE_DEPTH.labels(self.name).set(len(self.queue))

    # --- one round ------------------------------------------------------------------------

    async def sync(self, key: Key) -> None:
        """One round for one key, reading the object fresh from the store now."""
        body = self.primary.get(*key)
        if body is None:
            self.forget(key)
            return
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            # Being deleted (a foreground deletion waits for the garbage collector to remove the
            # children first): re-creating or even re-applying a child would fight it.
            return
        owner = Owner.of(body)
        state = self._state(key, owner.uid)
        if state.status is not None:
            body = {**body, "status": state.status}
        log.debug("%s %s/%s: round for generation %s", self.name, *key, body["metadata"].get("generation"))
        plan = await self.kind.plan(body, self.cache)
        try:
            verdict, applied = await self._apply(key, state, owner, plan)
        except errors.NotFound as gone:
            # A DELETED event we never saw: stop working on it rather than re-create its children.
            log.info("%s %s/%s: %s; forgetting it", self.name, *key, gone.message)
            self.primary.forget(*key)
            self.forget(key, body)
            return
        metrics.RECONCILES.labels(self.name, verdict.outcome.value).inc()
        await self._announce_changes(body, applied)
        computed = await self.kind.status(body, Round(plan, verdict, applied, owner), self.cache)
        if not await self._write_status(key, state, body, computed.status):
            return
        for t in computed.transitions:
            kind = "Warning" if t.warning else "Normal"
            await events.post(self.kube, body, kind, t.reason or t.type, f"{t.type}={t.status}: {t.message}")
        for notice in computed.notices:
            await events.post(self.kube, body, notice.type, notice.reason, notice.message)

    async def _confirm(self, owner: Owner) -> None:
        """Raise NotFound unless the owner still exists with its uid (read once, only before creating a child)."""
        live = await self.kube.get_or_none(self.kind.resource.path(owner.namespace, owner.name))
        if live is None or (live.get("metadata") or {}).get("uid") != owner.uid:
            raise errors.NotFound(f"{owner.kind} {owner.namespace}/{owner.name} (uid {owner.uid}) no longer exists")

    def _state(self, key: Key, uid: str) -> _KeyState:
        state = self._states.get(key)
        if state is None or state.uid != uid:
            state = self._states[key] = _KeyState(uid)  # a new object under the same name starts afresh
        return state

    async def _apply(self, key: Key, state: _KeyState, owner: Owner, plan: Plan) -> tuple[Verdict, apply.Applied]:
        if plan.objects is None or not plan.verdict.outcome.ok:
            return plan.verdict, apply.Applied()
        desired = [apply.with_input_hash(o, self.annotation) for o in plan.objects]
        digest = canonical_json([apply.input_hash(o, self.annotation) for o in desired])
        if state.failure is not None and state.failed_hash == digest and time.monotonic() < state.retry_at:
            # Backing off after the API server refused exactly these objects: keep saying so.
            return state.failure, apply.Applied()
        for resource in plan.optional:
            if not self.cache.has(resource):
                # An optional API (ServiceMonitor) appeared: watch its children before owning any.
                self._watch_child(resource)
                await self.cache.synced()
        children = (*self.kind.children, *plan.optional)
        stores = {(r.api_version, r.kind): self.cache.store(r) for r in children}
        try:
            applied = await apply.sync(
                self.kube,
                owner,
                desired,
                stores,
                prune=[self.cache.store(r) for r in children],
                memory=self.memory,
                annotation=self.annotation,
                confirm_owner=lambda: self._confirm(owner),
            )
        except errors.NotFound:
            raise  # the owner is gone (see _confirm): sync() forgets it
        except errors.PermanentError as exc:
            # The API server refused what we built from this spec (or a namesake is in the way):
            # the user has to change something; retried after a backoff since admission may change.
            delay = self.queue.backoff(key)
            reason = reasons.NAME_TAKEN if exc.reason == reasons.NAME_TAKEN else reasons.APPLY_REJECTED
            state.failure = Verdict(Outcome.REJECTED, reason, exc.message)
            state.failed_hash, state.retry_at = digest, time.monotonic() + delay
            log.warning("%s %s/%s: %s; retry in %.0fs", self.name, *key, exc.message, delay)
            return state.failure, apply.Applied()
        state.failed_hash, state.failure = None, None
        self.queue.forget(key)
        return plan.verdict, applied

    async def _announce_changes(self, body: Obj, applied: apply.Applied) -> None:
        if applied.recreated:
            message = f"recreated {', '.join(applied.recreated)} (an immutable field changed)"
            await events.post(self.kube, body, "Normal", reasons.RECREATED, message)
        written = applied.refs(apply.Why.CREATED, apply.Why.UPDATED)
        if written:
            await events.post(self.kube, body, "Normal", reasons.APPLIED, f"applied {', '.join(written)}")
        restored = applied.refs(apply.Why.RESTORED)
        if restored:
            message = f"restored {', '.join(restored)} (edited or deleted by someone else)"
            await events.post(self.kube, body, "Normal", reasons.RESTORED, message)
        if applied.pruned:
            message = f"deleted {', '.join(applied.pruned)} (no longer desired)"
            await events.post(self.kube, body, "Normal", reasons.PRUNED, message)

    async def _write_status(self, key: Key, state: _KeyState, body: Obj, new: Mapping[str, Any]) -> bool:
        """Send only the top-level status fields that differ; False when the object is gone or replaced."""
        current = body.get("status") or {}
        patch = merge_patch(current, new)
        if not patch:
            return True
        meta = body["metadata"]
        log.debug("%s %s/%s: status patch of %s", self.name, *key, ", ".join(sorted(patch)))
        try:
            written = await self.kube.patch_status(self.kind.resource, key[0], key[1], str(meta.get("uid")), patch)
        except errors.NotFound:
            # Deleted while we worked, or a DELETED event we never saw: stop working on it for good.
            log.info("%s %s/%s: gone (status write answered NotFound); forgetting it", self.name, *key)
            self.primary.forget(*key)
            self.forget(key, body)
            return False
        except errors.Conflict as exc:
            if "UID" in exc.message or "uid" in exc.message:
                return False  # a namesake replaced it; the new object has its own rounds
            raise
        state.status = dict(written.get("status") or {})
        return True


class Machinery:
    """Every kind's controller, one cache, and leadership: started and stopped with the operator."""

    def __init__(self, kube: Kube, cache: Cache) -> None:
        self.kube, self.cache = kube, cache
        self.controllers: dict[str, Controller] = {}
        self.leading = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, controller: Controller) -> Controller:
        self.controllers[controller.kind.resource.kind] = controller
        return controller

    def controller(self, kind: str) -> Controller:
        return self.controllers[kind]

    def start(self) -> None:
        self.cache.start()
        for controller in self.controllers.values():
            self._tasks.append(asyncio.create_task(self._run(controller), name=f"{controller.name} controller"))

    async def _run(self, controller: Controller) -> None:
        try:
            await controller.run(self.leading)
        except* errors.NotLeader:
            log.error("%s controller stopped: this replica may no longer write", controller.name)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.cache.stop()
        with contextlib.suppress(Exception):
            await self.kube.close()


__all__ = ["Cache", "Controller", "Kind", "Machinery", "Plan", "Reference", "Round", "Watch", "by_uid"]

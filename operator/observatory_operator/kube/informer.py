"""Watch-fed stores: rounds read the cluster from memory, so an idle resync sends no API request.

An ``Informer`` lists a collection once (from the API server's watch cache, ``resourceVersion=0``),
then watches from the list's resourceVersion with bookmarks, resuming after each server timeout
and listing again only on ``410 Gone``. A relist replaces its part of the store and reports what
vanished meanwhile as a deletion, so a missed DELETED event cannot leave a ghost behind.

A ``Store`` holds one resource's objects (trimmed to what rounds read: ``managedFields`` never),
keeps secondary indexes, and tells its listeners ``(old, new)`` on every change. The operator's
own writes go through it too (``write_through``): the answer is stored and *pinned* until the
watch delivers that very version, so an older event in flight cannot roll the store back and
make the next round repeat the write.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

from observatory_operator.kube import errors
from observatory_operator.kube.client import Kube, Resource
from observatory_operator.objects import Key, Obj, key_of

Listener = Callable[[Obj | None, Obj | None], None]
"""Called with (old, new) after a change: (None, obj) added, (obj, None) deleted."""
Indexer = Callable[[Obj], Iterable[Hashable]]

DELIVERED: Final = 8
"""Versions remembered per key; a watch delivers fewer than this between our write and its answer."""
PIN_SECONDS: Final = 30.0
"""After this long a pin gives way, whatever the watch delivered (a resumed watch may skip a version)."""
WATCH_TIMEOUT: Final = (300, 600)
"""Seconds a watch request asks for, chosen at random in this range so many watches never reconnect together."""
BACKOFF: Final = (1.0, 30.0)
"""First and longest wait before listing again after a failed list or watch."""

log = logging.getLogger("observatory_operator.informer")


def trim_metadata(obj: Obj) -> Obj:
    """Drop ``managedFields``: often half an object's size, and nothing a round reads."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


class Store:
    """One resource's objects by (namespace, name), as the watches last reported them."""

    def __init__(self, resource: Resource, *, trim: Callable[[Obj], Obj | None] = trim_metadata) -> None:
        self.resource = resource
        self.trim = trim
        self._objects: dict[Key, Obj] = {}
        self._indexers: dict[str, Indexer] = {}
        self._indexes: dict[str, dict[Hashable, set[Key]]] = {}
        self._listeners: list[Listener] = []
        self._pins: dict[Key, tuple[str, float]] = {}
        self._delivered: dict[Key, deque[str]] = {}
        """The last few resourceVersions the watch delivered per key: did our write's answer already come by?"""

    # --- reading ----------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Obj | None:
        return self._objects.get((namespace if self.resource.namespaced else "", name))

    def objects(self, namespace: str | None = None) -> list[Obj]:
        if namespace is None:
            return list(self._objects.values())
        return [o for k, o in self._objects.items() if k[0] == namespace]

    def known_keys(self) -> list[Key]:
        return list(self._objects)

    def by_index(self, index: str, value: Hashable) -> list[Obj]:
        return [self._objects[k] for k in sorted(self._indexes[index].get(value, ()))]

    def __len__(self) -> int:
        return len(self._objects)

    # --- wiring -----------------------------------------------------------------------------

    def add_index(self, name: str, indexer: Indexer) -> None:
        if name in self._indexers:
            return
        self._indexers[name] = indexer
        index: dict[Hashable, set[Key]] = {}
        for key, obj in self._objects.items():
            for value in indexer(obj):
                index.setdefault(value, set()).add(key)
        self._indexes[name] = index

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # --- writing ----------------------------------------------------------------------------

    def _set(self, key: Key, new: Obj | None) -> None:
        old = self._objects.get(key)
        if old is None and new is None:
            return
        for name, indexer in self._indexers.items():
            index = self._indexes[name]
            if old is not None:
                for value in indexer(old):
                    index.get(value, set()).discard(key)
                    if not index.get(value, True):
                        del index[value]
            if new is not None:
                for value in indexer(new):
                    index.setdefault(value, set()).add(key)
        if new is None:
            self._objects.pop(key, None)
        else:
            self._objects[key] = new
        if old is new:
            return
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                # A listener only enqueues keys; one that fails must not stop the watch.
                log.exception("listener failed on %s %s/%s", self.resource, *key)

    def _key(self, obj: Obj) -> Key:
        namespace, name = key_of(obj)
        return (namespace if self.resource.namespaced else "", name)

    def observe(self, event_type: str | None, obj: Obj) -> None:
        """A watch event (``None``: seen in a list, kopf's convention); ignored while a newer write is pinned."""
        key = self._key(obj)
        if event_type == "DELETED":
            self._pins.pop(key, None)
            self._delivered.pop(key, None)
            self._set(key, None)
            return
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        self._delivered.setdefault(key, deque(maxlen=DELIVERED)).append(rv)
        pin = self._pins.get(key)
        if pin is not None:
            if rv != pin[0] and time.monotonic() < pin[1]:
                return  # older than what our own write answered: the watch will catch up to it
            del self._pins[key]
        self._set(key, self.trim(obj))  # a trim that answers None keeps the object out (or removes it)

    def write_through(self, obj: Obj) -> Obj:
        """Store the API server's answer to our own write now, and pin it until the watch reports it."""
        key = self._key(obj)
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if rv and rv in self._delivered.get(key, ()):
            return obj  # the watch was faster: the store has this version, or a newer one
        if rv:
            self._pins[key] = (rv, time.monotonic() + PIN_SECONDS)
        self._set(key, self.trim(obj))
        return obj

    def forget(self, namespace: str, name: str) -> None:
        """Drop an object the API server says is gone (a missed DELETED event)."""
        key = (namespace if self.resource.namespaced else "", name)
        self._pins.pop(key, None)
        self._delivered.pop(key, None)
        self._set(key, None)

    def replace(self, objects: Iterable[Obj], within: Callable[[Key], bool]) -> None:
        """A fresh list of the keys ``within`` covers: what vanished from it meanwhile is reported as deleted."""
        fresh = {self._key(o): o for o in objects}
        for key in [k for k in self._objects if within(k) and k not in fresh]:
            self._pins.pop(key, None)
            self._delivered.pop(key, None)
            self._set(key, None)
        for key, obj in fresh.items():
            self._pins.pop(key, None)
            self._delivered.setdefault(key, deque(maxlen=DELIVERED)).append(_rv(obj))
            old = self._objects.get(key)
            if old is None or _rv(old) != _rv(obj):
                self._set(key, self.trim(obj))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    """List, then watch, one collection (one namespace or all) into a Store, forever."""

    def __init__(
        self,
        kube: Kube,
        store: Store,
        *,
        namespace: str | None,
        name: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        """One namespace (None: every namespace, or a cluster-scoped resource); one object when ``name`` is set."""
        self.kube = kube
        self.store = store
        self.namespace = namespace
        self.name = name
        self.label_selector = label_selector
        self.field_selector = ",".join(s for s in (field_selector, f"metadata.name={name}" if name else None) if s)
        self.path = store.resource.path(namespace)
        self.listed = asyncio.Event()
        """Set after the first list: from then on the store answers for this collection."""

    def covers(self, key: Key) -> bool:
        if self.name is not None:
            return key == (self.namespace or "", self.name)
        return self.namespace is None or key[0] == self.namespace

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        selectors = ",".join(s for s in (self.label_selector, self.field_selector) if s)
        return f"{self.store.resource}{where}" + (f" [{selectors}]" if selectors else "")

    async def run(self) -> None:
        delay = BACKOFF[0]
        while True:
            try:
                rv = await self._list()
                delay = BACKOFF[0]
                await self._watch(rv)
            except errors.KubeError as exc:
                # Forbidden, throttled or unreachable: say so and try again later; the rounds keep
                # reading the last known state meanwhile.
                log.warning("watching %s failed: %s; again in %.0fs", self, exc.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])

    async def _list(self) -> str:
        items, rv = await self.kube.list_objects(
            self.path, label_selector=self.label_selector, field_selector=self.field_selector
        )
        api_version, kind = self.store.resource.api_version, self.store.resource.kind
        for item in items:
            # Lists leave apiVersion and kind out of their items; watch events carry them.
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        self.store.replace(items, self.covers)
        self.listed.set()
        return rv

    async def _watch(self, rv: str) -> None:
        """Watch from ``rv`` across server timeouts; returns when the version is gone (relist)."""
        query: dict[str, Any] = {"resourceVersion": rv}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        while True:
            async for event in self.kube.watch(self.path, query, timeout_seconds=random.randint(*WATCH_TIMEOUT)):  # noqa: S311 - spread, not secrecy
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return  # our version is too old for the watch cache: list again
                    raise errors.from_response(int(obj.get("code") or 500), str(obj.get("message")), what=str(self))
                new_rv = _rv(obj)
                if new_rv:
                    query["resourceVersion"] = new_rv
                if kind in {"ADDED", "MODIFIED", "DELETED"}:
                    self.store.observe(str(kind), obj)


__all__ = ["Informer", "Listener", "Store", "trim_metadata"]

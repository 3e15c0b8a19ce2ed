"""The cluster as rounds see it: one Store per watched resource, fed by informers in the watched namespaces.

Three ways a store is fed:

- ``watch(resource, ...)``: informers, one per watched namespace (or one cluster-wide), for
  children and other inputs (pods, nodes, Events), each with the label/field selector that keeps
  the stream to what the operator needs;
- ``primary(resource)``: the kinds kopf watches; kopf's events feed the store (``Store.observe``);
- ``named(resource, namespace, name)``: objects a spec refers to by name (a shared-config
  ConfigMap), one small watch per distinct referenced object, started on first use.

Rounds only read stores; the API server sees lists and watches, never a GET per round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from observatory_operator.kube.client import Kube, Resource
from observatory_operator.kube.informer import Indexer, Informer, Store, trim_metadata
from observatory_operator.objects import Obj

log = logging.getLogger("observatory_operator.cache")


class Cache:
    def __init__(self, kube: Kube, namespaces: Sequence[str] | None) -> None:
        """``namespaces``: the watched namespaces, or None for every namespace."""
        self.kube = kube
        self.namespaces = tuple(namespaces) if namespaces else None
        self._stores: dict[Resource, Store] = {}
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._named: dict[Resource, Store] = {}
        self._named_informers: dict[tuple[Resource, str, str], Informer] = {}
        self._running = False

    # --- registration ---------------------------------------------------------------------

    def primary(self, resource: Resource) -> Store:
        """The store of a kind kopf watches (fed through ``Store.observe`` by its handler)."""
        if resource not in self._stores:
            self._stores[resource] = Store(resource)
        return self._stores[resource]

    def watch(
        self,
        resource: Resource,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        trim: Callable[[Obj], Obj | None] = trim_metadata,
        indexes: Mapping[str, Indexer] | None = None,
    ) -> Store:
        """The store of ``resource`` fed by informers with these selectors (registered once; indexes add up)."""
        store = self._stores.get(resource)
        if store is None:
            store = self._stores[resource] = Store(resource, trim=trim)
            scopes: Iterable[str | None] = (
                self.namespaces if resource.namespaced and self.namespaces is not None else (None,)
            )
            for namespace in scopes:
                informer = Informer(
                    self.kube,
                    store,
                    namespace=namespace,
                    label_selector=label_selector,
                    field_selector=field_selector,
                )
                self._informers.append(informer)
                if self._running:
                    self._start(informer)
        for name, indexer in (indexes or {}).items():
            store.add_index(name, indexer)
        return store

    def store(self, resource: Resource) -> Store:
        return self._stores[resource]

    def has(self, resource: Resource) -> bool:
        return resource in self._stores

    async def named(self, resource: Resource, namespace: str, name: str, *, wait: float = 10.0) -> Obj | None:
        """One object by name, from a watch of just that object (started on first use, then kept)."""
        store = self._named.get(resource)
        if store is None:
            store = self._named[resource] = Store(resource)
        informer = self._named_informers.get((resource, namespace, name))
        if informer is None:
            informer = Informer(self.kube, store, namespace=namespace, name=name)
            self._named_informers[(resource, namespace, name)] = informer
            self._start(informer)
        if not informer.listed.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(informer.listed.wait(), wait)
        return store.get(namespace, name)

    def named_store(self, resource: Resource) -> Store:
        """Where named objects of ``resource`` land (to listen for their changes)."""
        if resource not in self._named:
            self._named[resource] = Store(resource)
        return self._named[resource]

    # --- running --------------------------------------------------------------------------

    def _start(self, informer: Informer) -> None:
        self._tasks.append(asyncio.create_task(informer.run(), name=f"informer {informer}"))

    def start(self) -> None:
        self._running = True
        for informer in self._informers:
            self._start(informer)

    async def synced(self) -> None:
        """Wait until every informer registered so far has listed once."""
        await asyncio.gather(*(i.listed.wait() for i in self._informers))

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()


__all__ = ["Cache"]

"""Brings an owner's children to the desired objects: drift by input hash, dry run first, apply, recreate, prune.

Drift, two ways, neither needing a request:

- **Input hash.** Every desired object carries, in an annotation, the sha256 of the whole object
  as built (prometheus-operator's input hash). A live object whose annotation differs was built
  from other inputs, so it is applied, and server-side apply then also *removes* every field the
  operator set before and no longer sets (a dropped ``spec.updateStrategy`` leaves the DaemonSet).
- **Digest.** The cache keeps a child trimmed to what rounds read (its metadata, status, a few
  paths the kind asks for) plus a digest of everything it says: its spec or data, its labels and
  the operator's own annotations. After each apply the operator remembers the digest of the API
  server's answer (so ``0.5`` and ``500m`` are never compared); a later live object with another
  digest was edited by someone else (``kubectl set image``) and is restored. After a restart the
  first live object seen is the baseline. Keeping digests instead of specs is what keeps the
  operator's memory flat as collectors are added.

Every object to write is first applied with ``dryRun=All``: a spec the API server refuses (say, a
malformed affinity) then fails before anything is written, so agents never run a ConfigMap whose
DaemonSet could not follow. A refusal naming an immutable field (a DaemonSet's selector) means
delete and create. Children carrying the owner's controller reference that are no longer desired
are deleted (pruned); objects under our name controlled by someone else are never touched.
"""

from __future__ import annotations

import copy
import enum
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from observatory_operator import reasons
from observatory_operator.kube import errors
from observatory_operator.kube.client import Kube
from observatory_operator.kube.informer import Store
from observatory_operator.objects import Obj, Owner, canonical_json, controller_uid, ref_of

CONTROLLER_INDEX: Final = "controller"
"""Child stores' index: the uid of each object's controller reference (what pruning selects by)."""


def by_controller(obj: Obj) -> list[str]:
    uid = controller_uid(obj)
    return [uid] if uid else []


def _sha(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def with_input_hash(obj: Obj, annotation: str) -> Obj:
    """A copy of ``obj`` annotated with the hash of everything else in it."""
    out = copy.deepcopy(obj)
    annotations = out["metadata"].setdefault("annotations", {})
    annotations.pop(annotation, None)
    annotations[annotation] = _sha(out)
    return out


def input_hash(obj: Mapping[str, Any], annotation: str) -> str | None:
    return ((obj.get("metadata") or {}).get("annotations") or {}).get(annotation)


DIGEST: Final = "__digest__"
"""Where a trimmed child carries its digest (not a Kubernetes field: it exists only in the cache)."""
METADATA_KEPT: Final = (
    "name", "namespace", "uid", "resourceVersion", "generation", "labels", "ownerReferences", "deletionTimestamp"
)  # fmt: skip


def _said(obj: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """What an object says (beyond status and bookkeeping): its body, labels and the annotations under ``prefix``."""
    meta = obj.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(prefix)}
    body = {k: v for k, v in obj.items() if k not in {"apiVersion", "kind", "metadata", "status", DIGEST}}
    return {"body": body, "labels": meta.get("labels") or {}, "annotations": annotations}


def digest(obj: Mapping[str, Any], prefix: str) -> str:
    """The digest of what ``obj`` says; a trimmed child carries it already."""
    carried = obj.get(DIGEST)
    return str(carried) if carried else _sha(_said(obj, prefix))


def trim_child(obj: Obj, *, prefix: str, keep: Sequence[tuple[str, ...]] = ()) -> Obj:
    """A child as the cache keeps it: metadata, status, the ``keep`` paths, our annotations, and its digest."""
    meta = obj.get("metadata") or {}
    kept_meta = {k: meta[k] for k in METADATA_KEPT if k in meta}
    kept_meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k.startswith(prefix)}
    out: Obj = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": kept_meta,
        "status": obj.get("status") or {},
        DIGEST: digest(obj, prefix),
    }
    for path in keep:
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    return out


class Why(enum.Enum):
    """Why an object is written this round."""

    CREATED = "created"
    UPDATED = "updated"
    """Its input hash changed: the spec or another input changed."""
    RESTORED = "restored"
    """Someone else edited or deleted it."""


@dataclass
class Applied:
    """What one apply step changed; a round on an unchanged cluster leaves every list empty."""

    written: list[tuple[str, Why]] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    live: dict[str, Obj] = field(default_factory=dict)
    """Kind → the live object after this step (the applied answer, or what was already there)."""

    def refs(self, *whys: Why) -> list[str]:
        return [ref for ref, why in self.written if why in whys]


@dataclass
class Memory:
    """What this process last applied or accepted, per child object (lost on restart, by design)."""

    prefix: str
    """The operator's annotation prefix (its group and a slash): its own annotations count in digests."""
    digests: dict[tuple[str, str, str], tuple[str, str]] = field(default_factory=dict)
    """(kind, namespace, name) → (uid, digest)."""

    @staticmethod
    def key(obj: Obj) -> tuple[str, str, str]:
        meta = obj.get("metadata") or {}
        return str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta.get("name"))

    def remember(self, answer: Obj) -> None:
        self.digests[self.key(answer)] = (str(answer["metadata"].get("uid")), digest(answer, self.prefix))

    def forget(self, objects: Iterable[Obj]) -> None:
        for obj in objects:
            self.digests.pop(self.key(obj), None)


def needs_write(desired: Obj, live: Obj | None, memory: Memory, annotation: str) -> Why | None:
    """Whether (and why) ``desired`` must be applied over ``live``; records a baseline digest when none."""
    key = Memory.key(desired)
    if live is None:
        return Why.RESTORED if key in memory.digests else Why.CREATED
    if input_hash(live, annotation) != input_hash(desired, annotation):
        return Why.UPDATED
    uid, current = str(live["metadata"].get("uid")), digest(live, memory.prefix)
    known = memory.digests.get(key)
    if known is None or known[0] != uid:
        memory.digests[key] = (uid, current)  # first sight since start: this is the baseline
        return None
    return Why.RESTORED if known[1] != current else None


async def _live_object(kube: Kube, owner: Owner, obj: Obj, store: Store) -> Obj | None:
    """The live object under ``obj``'s name: from the store, else (only when creating) read once by name."""
    meta = obj["metadata"]
    live = store.get(meta.get("namespace") or "", meta["name"])
    if live is None:
        # Not among the objects carrying our labels: a namesake of someone else's, or one an older
        # release labelled otherwise, is seen this way.
        live = await kube.get_or_none(store.resource.path(meta.get("namespace"), meta["name"]))
    if live is not None and controller_uid(live) not in {None, owner.uid}:
        # Someone else's object under our name: taking it over could break their workload.
        raise errors.PermanentError(
            f"{ref_of(obj)} exists and is controlled by another owner", reason=reasons.NAME_TAKEN
        )
    return live


async def _prune(
    kube: Kube, owner: Owner, desired: Sequence[Obj], stores: Iterable[Store], memory: Memory
) -> list[str]:
    wanted = {(o["kind"], o["metadata"]["name"]) for o in desired}
    pruned = []
    for store in stores:
        for child in store.by_index(CONTROLLER_INDEX, owner.uid):
            if (child.get("kind"), child["metadata"]["name"]) in wanted:
                continue
            await kube.delete(child, store.resource)
            store.forget(child["metadata"].get("namespace") or "", child["metadata"]["name"])
            memory.forget([child])
            pruned.append(ref_of(child))
    return pruned


async def sync(
    kube: Kube,
    owner: Owner,
    desired: Sequence[Obj],
    stores: Mapping[tuple[str, str], Store],
    *,
    prune: Iterable[Store],
    memory: Memory,
    annotation: str,
    confirm_owner: Callable[[], Awaitable[None]],
) -> Applied:
    """Apply what is missing or drifted (all or nothing), recreate on immutable fields, prune the undesired.

    Before creating a child, ``confirm_owner`` makes sure the owner still exists (it raises
    NotFound otherwise): a child created under a deleted owner would be garbage-collected and
    created again, forever, if the owner's DELETED event was missed.
    """
    result = Applied()
    todo: list[tuple[Obj, Obj | None, Why, Store]] = []
    for obj in desired:
        store = stores[(obj["apiVersion"], obj["kind"])]
        live = await _live_object(kube, owner, obj, store)
        why = needs_write(obj, live, memory, annotation)
        if why is None:
            result.live[obj["kind"]] = live or {}
        else:
            todo.append((obj, live, why, store))
    if any(live is None for _, live, _, _ in todo):
        await confirm_owner()
    recreate: set[str] = set()
    for obj, _, _, store in todo:
        try:
            await kube.apply(obj, store.resource, dry_run=True)
        except errors.ImmutableField:
            # A DaemonSet's selector cannot change in place; the new DaemonSet replaces the pods.
            recreate.add(ref_of(obj))
    for obj, live, why, store in todo:
        if ref_of(obj) in recreate and live is not None:
            await kube.delete(live, store.resource)
            store.forget(live["metadata"].get("namespace") or "", live["metadata"]["name"])
            result.recreated.append(ref_of(obj))
        answer = store.write_through(await kube.apply(obj, store.resource))
        memory.remember(answer)
        result.live[obj["kind"]] = answer
        result.written.append((ref_of(obj), why))
    result.pruned = await _prune(kube, owner, desired, prune, memory)
    return result


__all__ = [
    "CONTROLLER_INDEX",
    "DIGEST",
    "Applied",
    "Memory",
    "Why",
    "by_controller",
    "digest",
    "input_hash",
    "needs_write",
    "sync",
    "trim_child",
    "with_input_hash",
]

"""Kind-neutral object vocabulary: the plain-dict object type, keys, owners and owner references.

Pure: the manifest builders, the status functions and the controller machinery all speak it, so
none of them has to import another to name an object or its owner.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as the API speaks it: camelCase keys, plain JSON values."""

Key = tuple[str, str]
"""(namespace, name); the namespace is "" for cluster-scoped objects."""


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal inputs give equal text whatever the dict order (what hashes hash)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def ref_of(obj: Mapping[str, Any]) -> str:
    """``Kind/name``: how Events and logs name an object."""
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a round's children: passed explicitly, never read from a global."""

    name: str
    namespace: str
    uid: str
    kind: str
    api_version: str

    @property
    def key(self) -> Key:
        return self.namespace, self.name

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(
            name=str(meta["name"]),
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            kind=str(body["kind"]),
            api_version=str(body["apiVersion"]),
        )


def owner_reference(owner: Owner) -> Obj:
    """A controller reference: the garbage collector deletes the child with its owner."""
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's controller reference (the one ownerReference with ``controller: true``), if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return dict(ref)
    return None


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    ref = controller_of(obj)
    return str(ref.get("uid")) if ref is not None else None


__all__ = [
    "Key",
    "Obj",
    "Owner",
    "canonical_json",
    "controller_of",
    "controller_uid",
    "key_of",
    "owner_reference",
    "ref_of",
]

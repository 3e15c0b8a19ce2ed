"""Makes sure kopf's peering objects exist before the operator starts, so replicas never both work.

kopf decides which replica is active through a KopfPeering (namespaced) or ClusterKopfPeering
object. A replica that starts before that object exists runs as if alone, and when the object
appears later every replica that started meanwhile keeps working until its next keep-alive:
two writers for most of a minute. Creating the object first closes that window.
"""

from __future__ import annotations

from collections.abc import Sequence

from observatory_operator.kube import errors
from observatory_operator.kube.client import Kube, Obj

API: str = "/apis/kopf.dev/v1"


def _targets(name: str, namespaces: Sequence[str], clusterwide: bool) -> list[tuple[str, Obj]]:
    if clusterwide:
        body: Obj = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        return [(f"{API}/clusterkopfpeerings", body)]
    return [
        (
            f"{API}/namespaces/{ns}/kopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": ns}},
        )
        for ns in namespaces
    ]


def ensure_peering(kube: Kube, name: str, *, namespaces: Sequence[str], clusterwide: bool) -> list[str]:
    """Create the missing peering objects; returns the paths created (none when all existed)."""
    created = []
    for collection, body in _targets(name, namespaces, clusterwide):
        if kube.get_or_none(f"{collection}/{name}") is not None:
            continue  # the usual case after the first start: no write at all
        try:
            kube.request("POST", collection, body=body)
        except errors.TemporaryError as exc:
            if exc.status != 409:  # 409: another replica created it first, which is what we wanted
                raise
        created.append(f"{collection}/{name}")
    return created

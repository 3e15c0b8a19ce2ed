"""Kubernetes Events on a collector, posted through our own client so every code path (resync loop included) can."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from observatory_operator.kube import errors
from observatory_operator.kube.client import Kube

COMPONENT: Final = "happy-observatory-operator"

log = logging.getLogger("observatory_operator.events")


def event_body(obj: Mapping[str, Any], type_: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    """A core/v1 Event about ``obj`` (what ``kubectl describe`` and ``kubectl get events`` show)."""
    meta = obj["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj.get("kind"),
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason[:128],
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post(kube: Kube, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post one Event; a failure to post is logged, never raised (an Event is never worth a failed round)."""
    body = event_body(obj, type_, reason, message, datetime.now(UTC))
    path = f"/api/v1/namespaces/{obj['metadata']['namespace']}/events"
    log.info("%s/%s: event %s %s: %s", obj["metadata"]["namespace"], obj["metadata"]["name"], type_, reason, message)
    try:
        await asyncio.to_thread(kube.request, "POST", path, body=body)
    except errors.KubeError as exc:
        log.warning("could not post event %s on %s: %s", reason, obj["metadata"]["name"], exc.message)

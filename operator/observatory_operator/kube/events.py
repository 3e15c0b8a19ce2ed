"""Kubernetes Events about the operator's objects, posted through its own client (kopf's posting is off)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from observatory_operator.kube import errors
from observatory_operator.kube.client import EVENTS, Kube

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
    namespace = obj["metadata"]["namespace"]
    log.info("%s/%s: event %s %s: %s", namespace, obj["metadata"]["name"], type_, reason, message)
    try:
        await kube.create(EVENTS.path(namespace), body)
    except errors.KubeError as exc:
        log.warning("could not post event %s on %s: %s", reason, obj["metadata"]["name"], exc.message)

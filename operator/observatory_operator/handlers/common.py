"""What every kind's round does the same way: parse the body, the paused plan, the status step's
inputs from the body, the child it controls, and the thin kopf handler that feeds the machinery."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from observatory_operator import reasons
from observatory_operator.api.models import GROUP, VERSION
from observatory_operator.controller.cache import Cache
from observatory_operator.controller.machinery import Controller, Plan, Round
from observatory_operator.kube.client import Resource
from observatory_operator.objects import Obj, controller_uid
from observatory_operator.reasons import Outcome, Verdict

M = TypeVar("M", bound=BaseModel)


def parse_as(model: type[M], body: Mapping[str, Any]) -> tuple[M | None, Verdict | None]:
    """The typed resource, or the verdict that names the field and the rule it breaks."""
    raw = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    try:
        return model.model_validate(raw), None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return None, Verdict(Outcome.INVALID, reasons.INVALID_SPEC, f"{where}: {err['msg']}")


def unusable(verdict: Verdict | None, context: Any) -> Plan:
    """The plan for a spec that does not parse: children are left as they are."""
    return Plan(verdict or Verdict(Outcome.INVALID, reasons.INVALID_SPEC), context=context)


def paused(context: Any) -> Plan:
    """The plan for ``spec.paused``: children are left as they are."""
    verdict = Verdict(Outcome.PAUSED, reasons.PAUSED, "spec.paused is true: children are left as they are")
    return Plan(verdict, context=context)


@dataclass(frozen=True)
class Seen:
    """What the status step reads of the body itself, and the one clock reading of the round."""

    generation: int
    previous_conditions: list[Any]
    config_hash: str | None
    now: datetime

    @classmethod
    def of(cls, body: Obj) -> Seen:
        status = body.get("status") or {}
        return cls(
            generation=int((body.get("metadata") or {}).get("generation") or 0),
            previous_conditions=list(status.get("conditions") or []),
            config_hash=status.get("configHash"),
            now=datetime.now(UTC),
        )


def controlled_child(rnd: Round, cache: Cache, resource: Resource, name: str) -> Obj | None:
    """The child this round applied (else the cached one), or None when a namesake we do not control holds the
    name: that one says nothing about this resource (NameTaken)."""
    child = rnd.applied.live.get(resource.kind) or cache.store(resource).get(rnd.owner.namespace, name)
    if child is not None and controller_uid(child) != rnd.owner.uid:
        return None
    return child


def register_events(registry: kopf.OperatorRegistry, controller: Controller, plural: str, handler_id: str) -> None:
    """The thin kopf handler: every watch event of the kind goes to the machinery, which does the rest."""

    @kopf.on.event(GROUP, VERSION, plural, id=handler_id, registry=registry)
    async def on_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        # No API calls, no writes here: remember the newest body and queue a round for its key.
        controller.observe(type, dict(body))


__all__ = ["Seen", "controlled_child", "parse_as", "paused", "register_events", "unusable"]

"""What every kind's status funnel shares: conditions that keep their transition time, transitions, the result.

Pure. A kind's status function computes its condition values from what it observed; ``settle``
turns them into conditions that keep ``lastTransitionTime`` while their status holds (as
prometheus-operator's do) and lists the transitions worth an Event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from observatory_operator import reasons
from observatory_operator.api.models import Condition, ConditionStatus, Phase
from observatory_operator.reasons import Verdict

CondValue = tuple[ConditionStatus, str, str]
"""(status, reason, message) of one condition."""


@dataclass(frozen=True)
class Transition:
    """A condition whose status changed this round, or that turned False for a new cause: worth an Event."""

    type: str
    status: str
    reason: str
    message: str

    @property
    def warning(self) -> bool:
        """Whether someone should look: a condition turned False for a reason that will not pass by itself."""
        return self.status == "False" and self.reason not in reasons.TRANSIENT


@dataclass(frozen=True)
class Notice:
    """An Event a kind wants posted that is not a condition transition (e.g. an invalid shared-config)."""

    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Computed:
    """A kind's status for one round, and what to announce."""

    status: dict[str, Any]
    """camelCase, JSON-ready; None values are explicit so a merge patch clears stale fields."""
    transitions: list[Transition] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)


MAX_TIMESTAMP: Final = 4_102_444_800.0
"""2100-01-01: larger "unix seconds" are garbage, not a date."""
MAX_POINTS: Final = 2**53


def finite(value: Any, low: float, high: float) -> float | None:
    """``value`` as a float when it is a real number in [low, high]; None for bools, NaN, ±inf, garbage."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        return None
    return number if math.isfinite(number) and low <= number <= high else None


def human(seconds: float) -> str:
    """A duration as people read it in a condition message: 45s, 12m, 3h."""
    seconds = max(int(seconds), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def settle(
    values: Sequence[tuple[str, CondValue]],
    previous: Sequence[Mapping[str, Any]],
    *,
    generation: int,
    now: datetime,
) -> tuple[list[Condition], list[Transition]]:
    """Conditions from (type, value) pairs, keeping each one's lastTransitionTime while its status holds."""
    before = {str(c.get("type")): c for c in previous}
    conditions: list[Condition] = []
    transitions: list[Transition] = []
    for type_, (status, reason, message) in values:
        prior = before.get(type_)
        since = now
        if prior is not None and prior.get("status") == status.value:
            since = parse_time(prior.get("lastTransitionTime")) or now
        conditions.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message[:32768],
                last_transition_time=since,
                observed_generation=generation,
            )
        )
        transition = Transition(type=type_, status=status.value, reason=reason, message=message)
        changed = (prior or {}).get("status") != status.value
        # Still False, but now for a cause someone must fix (RolloutPending → SecretNotFound): say so too.
        worse = not changed and (prior or {}).get("reason") != reason and transition.warning
        if changed or worse:
            transitions.append(transition)
    return conditions, transitions


def invalid(
    generation: int, verdict: Verdict, previous_conditions: Sequence[Mapping[str, Any]], now: datetime
) -> Computed:
    """Status for a resource whose spec could not even be parsed: Failed, with the reason naming the field."""
    held = [c for c in previous_conditions if c.get("type") == reasons.RECONCILED]
    conditions, transitions = settle(
        ((reasons.RECONCILED, (ConditionStatus.FALSE, verdict.reason, verdict.message)),),
        held,
        generation=generation,
        now=now,
    )
    status = {
        "observedGeneration": generation,
        "phase": Phase.FAILED.value,
        "conditions": [c.model_dump(by_alias=True, mode="json") for c in conditions],
    }
    return Computed(status=status, transitions=transitions)


__all__ = [
    "MAX_POINTS",
    "MAX_TIMESTAMP",
    "Computed",
    "CondValue",
    "Notice",
    "Transition",
    "finite",
    "human",
    "invalid",
    "parse_time",
    "settle",
]

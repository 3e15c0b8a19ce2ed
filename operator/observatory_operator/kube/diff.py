"""Drift detection: does a live object still carry everything we want it to? (No request when it does.)

Server-side apply of an unchanged object is harmless but still a write request; comparing first
makes a resync where nothing changed send zero writes, while a hand edit (an image changed with
``kubectl set image``, a deleted volume) is seen and reverted.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils import parse_quantity


def _quantity_equal(want: Any, have: Any) -> bool:
    """``"0.5"`` and ``"500m"`` are the same quantity; the API server canonicalises what we send."""
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    try:
        a: Decimal = parse_quantity(want)  # type: ignore[no-untyped-call]  # the client ships no annotations
        b: Decimal = parse_quantity(have)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, InvalidOperation):
        return False
    return a == b


def _empty(value: Any) -> bool:
    """Zero values the API server omits (``omitempty``): wanting False/0/""/{}/[] is the same as absence."""
    return value is None or value is False or value in (0, "", {}, [])


def contains(live: Any, desired: Any) -> bool:
    """True when every field of ``desired`` is present with the same value in ``live``.

    Extra live fields (defaults, status, other managers' fields) are fine; lists must have the
    same length and match element by element, because we own the lists we send whole.
    """
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        return all((contains(live[k], v) if k in live else _empty(v)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return False
        return all(contains(lv, dv) for lv, dv in zip(live, desired, strict=True))
    if live == desired:
        return True
    return isinstance(desired, str | int) and isinstance(live, str | int) and _quantity_equal(desired, live)


def needs_apply(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether ``desired`` must be (re-)applied: missing, or some desired field differs on the live object."""
    if live is None:
        return True
    want = {k: v for k, v in desired.items() if k not in {"apiVersion", "kind"}}
    return not contains(live, want)

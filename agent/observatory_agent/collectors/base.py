"""What a collector is: a name and a ``collect()`` — blocking or async — that returns plain samples.

Collectors return ``Sample`` tuples with only their own tags (core, device, interface); the
runtime adds host/node/cluster and configured tags and stamps the cycle time, so the
per-sample cost stays a tuple, not a model object. A blocking ``collect`` runs in its
collector's own thread, an async one on the loop; either way under the one guard
(``guard.Guard``): timeout, busy, validation, error counts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from observatory_agent.contract import MetricType

GAUGE = MetricType.GAUGE
COUNTER = MetricType.COUNTER


class Sample(NamedTuple):
    """One reading: a level (gauge) or a running total (counter, turned into a rate later)."""

    name: str
    value: float
    type: MetricType = GAUGE
    tags: Mapping[str, str] = {}


class Collector(Protocol):
    """Anything the guard can drive: ``collect()`` returns samples, or an awaitable of them."""

    @property
    def name(self) -> str: ...

    def collect(self) -> Any: ...


class FunctionCollector:
    """A blocking reader function as a collector (the host readers, and tests)."""

    def __init__(self, name: str, read: Callable[[], Sequence[Sample]]) -> None:
        self._name = name
        self._read = read

    @property
    def name(self) -> str:
        return self._name

    def collect(self) -> Sequence[Sample]:
        return self._read()

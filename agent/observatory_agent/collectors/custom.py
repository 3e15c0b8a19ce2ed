"""Custom collectors: plugins in the ``observatory.collectors`` entry-point group.

A plugin's entry point names a callable ``collect(options: dict[str, str])`` returning an
iterable of ``MetricEvent`` or ``Sample`` (or an awaitable of one). A plain function runs
in a thread; a coroutine function runs on the loop. Either way the runner's timeout applies.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any

from observatory_agent.collectors.base import Sample, executor
from observatory_agent.contract import MetricEvent

ENTRY_POINT_GROUP = "observatory.collectors"

CollectFn = Callable[[Mapping[str, str]], Any]


class CollectorLoadError(RuntimeError):
    """A custom collector's entry point is missing or fails to import."""


def _to_samples(items: Iterable[MetricEvent | Sample]) -> list[Sample]:
    out: list[Sample] = []
    for item in items:
        if isinstance(item, MetricEvent):
            out.append(Sample(item.name, item.value, item.type, item.tags))
        elif isinstance(item, Sample):
            out.append(item)
        else:
            raise TypeError(f"custom collectors yield MetricEvent or Sample, got {type(item).__name__}")
    return out


class CustomCollector:
    """Wraps a plugin callable; constructible directly from any callable."""

    def __init__(self, name: str, func: CollectFn, options: Mapping[str, str], timeout: float) -> None:
        self._name = name
        self._func = func
        self._options = dict(options)
        self._timeout = timeout

    @property
    def name(self) -> str:
        return self._name

    @property
    def timeout(self) -> float:
        return self._timeout

    async def collect(self) -> Sequence[Sample]:
        if inspect.iscoroutinefunction(self._func):
            result = await self._func(self._options)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(executor(), self._func, self._options)
            if inspect.isawaitable(result):
                result = await result
        return _to_samples(result)


def load_entry_point(entry_point: str, group: str = ENTRY_POINT_GROUP) -> CollectFn:
    """The callable behind ``entry_point`` in ``group``; ``CollectorLoadError`` when it cannot load."""
    matches = [ep for ep in entry_points(group=group) if ep.name == entry_point]
    if not matches:
        raise CollectorLoadError(f"no entry point {entry_point!r} in group {group!r}")
    try:
        loaded = matches[0].load()
    except Exception as exc:  # any import-time failure of a third-party plugin
        raise CollectorLoadError(f"entry point {entry_point!r} failed to load: {type(exc).__name__}: {exc}") from exc
    if not callable(loaded):
        raise CollectorLoadError(f"entry point {entry_point!r} is not callable")
    func: CollectFn = loaded
    return func

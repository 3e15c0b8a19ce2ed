"""Custom collectors: plugins in the ``observatory.collectors`` entry-point group.

A plugin's entry point names a callable ``collect(options: dict[str, str])`` returning an
iterable of ``MetricEvent`` or ``Sample``. A plain function runs in its collector's own thread,
a coroutine function on the loop; either way under the guard, which validates every item it
returns (a bad one is dropped and counted, never fatal).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from observatory_agent.collectors import registry

ENTRY_POINT_GROUP = "observatory.collectors"

CollectFn = Callable[[Mapping[str, str]], Any]


class CollectorLoadError(RuntimeError):
    """A custom collector's entry point is missing or fails to import."""


class CustomCollector:
    """Wraps a plugin callable; constructible directly from any callable."""

    def __init__(self, name: str, func: CollectFn, options: Mapping[str, str]) -> None:
        self._name = name
        self._func = func
        self._options = dict(options)
        if inspect.iscoroutinefunction(func):
            self.collect = self._collect_async  # type: ignore[method-assign]

    @property
    def name(self) -> str:
        return self._name

    def collect(self) -> Any:
        return self._func(self._options)

    async def _collect_async(self) -> Any:
        return await self._func(self._options)


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


registry.register(
    registry.Kind(
        "custom",
        lambda ctx: CustomCollector(
            ctx.config.name, load_entry_point(ctx.config.entry_point or ctx.config.name), ctx.config.options
        ),
        (),
        free_options=True,
    )
)

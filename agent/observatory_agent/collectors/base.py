"""What a collector is: an async ``collect()`` with a timeout, returning plain samples.

Collectors return ``Sample`` tuples with only their own tags (core, device, interface);
the runner adds host/node/cluster and configured tags and stamps the cycle time, so the
per-sample cost stays a tuple, not a model object.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

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
    """Anything the runner can drive."""

    @property
    def name(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    async def collect(self) -> Sequence[Sample]: ...


class CollectorBusyError(RuntimeError):
    """The previous call of a blocking collector is still running (it timed out earlier)."""


# A few threads is plenty: host reads take milliseconds, and a hung one (a stale NFS mount)
# holds its thread, not the loop.
_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None


def executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR  # noqa: PLW0603 - one lazily created pool per process
    if _EXECUTOR is None:
        _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="collect")
    return _EXECUTOR


class ThreadedCollector:
    """Runs a blocking ``read()`` off the event loop.

    A timed-out read keeps its thread until it returns; until then further cycles fail fast
    with ``CollectorBusyError`` instead of stacking more threads on the same stuck call.
    """

    def __init__(self, name: str, read: Callable[[], Sequence[Sample]], timeout: float) -> None:
        self._name = name
        self._read = read
        self._timeout = timeout
        self._inflight: asyncio.Future[Sequence[Sample]] | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def timeout(self) -> float:
        return self._timeout

    async def collect(self) -> Sequence[Sample]:
        if self._inflight is not None and not self._inflight.done():
            raise CollectorBusyError(f"{self._name}: previous collection still running")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(executor(), self._read)
        self._inflight = future
        future.add_done_callback(_consume_result)
        # Shielded so a timeout abandons the wait, not the thread's bookkeeping.
        return await asyncio.shield(future)


def _consume_result(future: asyncio.Future[Sequence[Sample]]) -> None:
    # An abandoned (timed-out) read may fail later; nobody awaits it, so silence the warning.
    if not future.cancelled():
        future.exception()

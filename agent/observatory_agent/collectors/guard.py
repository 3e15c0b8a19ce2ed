"""The one guard around every collector kind: its own thread or task, a timeout, busy, validation.

Every collector — host reader, cpuinfo, application scrape, custom plugin — runs under a
``Guard``. A blocking ``collect()`` runs in the collector's own thread, so a hung plugin or a
stuck ``statvfs`` holds that one thread and nothing else; an async one runs as a task. The
built-in readers of procfs run *inline*, on the loop: procfs answers from kernel memory and
never waits on a device, and handing each of them to a thread cost more CPU than the read
itself (4.3 ms against 1.3 ms per cycle for the host collectors, measured on the real agent's
collectors); their guard still times them, counts their errors and keeps one from stopping the
rest, but cannot interrupt one. A
collection still running from an earlier cycle makes the collector *busy* (never a second
thread on the same stuck call). What a collector hands back is checked sample by sample at
this boundary, as Telegraf's accumulator does, unless its kind is a trusted built-in: a bad
sample is dropped and counted by reason, and never reaches the windows or the encoder.

Outcome reasons: ``timeout``, ``busy``, ``error`` (it raised, or returned no iterable); rejected
samples: ``not_a_sample``, ``name``, ``value``, ``type``, ``tags``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import structlog

from observatory_agent.collectors.base import Collector, Sample
from observatory_agent.contract import MetricEvent, MetricType

log = structlog.get_logger("observatory_agent.collectors")

LOG_EVERY: Final = 60.0
"""Seconds between repeated log lines about the same failing collector: counted always, logged sparingly."""

_TYPES: Final = {"gauge": MetricType.GAUGE, "counter": MetricType.COUNTER}


@dataclass
class Outcome:
    """One collector's result in one cycle."""

    samples: list[Sample] = field(default_factory=list)
    error: str | None = None
    """``timeout``, ``busy`` or ``error``; None when the collection succeeded."""
    message: str | None = None
    rejected: dict[str, int] = field(default_factory=dict)
    """Samples dropped at the boundary, by reason."""
    duration: float = 0.0


def _reject(item: Any) -> tuple[Sample | None, str]:  # noqa: PLR0911 - one return per rule
    """A well-formed ``Sample`` from a plugin's item, or None and the reason it is refused."""
    if isinstance(item, Sample):
        name, value, kind, tags = item
    elif isinstance(item, MetricEvent):
        name, value, kind, tags = item.name, item.value, item.type, item.tags
    else:
        return None, "not_a_sample"
    if not isinstance(name, str) or not name.strip():
        return None, "name"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, "value"
    value = float(value)
    if not math.isfinite(value):
        return None, "value"
    if not isinstance(kind, MetricType):
        kind = _TYPES.get(kind) if isinstance(kind, str) else None
        if kind is None:
            return None, "type"
    if not isinstance(tags, Mapping):
        return None, "tags"
    clean: dict[str, str] = {}
    for k, v in tags.items():
        if not isinstance(k, str) or not k or not isinstance(v, str):
            return None, "tags"
        if v:  # InfluxDB has no empty tag values; an empty one means "no such tag"
            clean[k] = v
    return Sample(name, value, kind, clean), ""


def validate(items: Iterable[Any]) -> tuple[list[Sample], dict[str, int], str]:
    """Accepted samples, rejected counts by reason, and one rejected item for the log."""
    accepted: list[Sample] = []
    rejected: dict[str, int] = {}
    example = ""
    for item in items:
        sample, reason = _reject(item)
        if sample is not None:
            accepted.append(sample)
            continue
        rejected[reason] = rejected.get(reason, 0) + 1
        if not example:
            example = repr(item)[:200]
    return accepted, rejected, example


def _consume(future: asyncio.Future[Any]) -> None:
    # An abandoned (timed-out) collection may fail later; nobody awaits it, so retrieve it here.
    if not future.cancelled():
        future.exception()


class Guard:
    """Runs one collector: own thread (blocking) or task (async), timeout, busy, validation."""

    def __init__(self, collector: Collector, timeout: float, *, trusted: bool = False, inline: bool = False) -> None:
        self.collector = collector
        self.name = collector.name
        self.timeout = timeout
        self.trusted = trusted
        self.inline = inline
        self._async = inspect.iscoroutinefunction(collector.collect)
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._logged: dict[str, float] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[Any] | None:
        """Begin one collection; None when the previous one is still running (busy)."""
        if self._inflight is not None and not self._inflight.done():
            return None
        future: asyncio.Future[Any]
        if self._async:
            future = loop.create_task(self.collector.collect())
        else:
            if self._thread is None:
                self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"collect-{self.name}")
            future = loop.run_in_executor(self._thread, self.collector.collect)
        future.add_done_callback(_consume)
        self._inflight = future
        return future

    def finish(self, future: asyncio.Future[Any] | None, duration: float) -> Outcome:
        """The outcome of the collection ``start`` began (None: it was busy)."""
        if future is None:
            return self._failed("busy", "previous collection still running", duration)
        if not future.done():
            if self._async:
                future.cancel()  # a coroutine can be stopped; a thread cannot, and stays busy
            return self._failed("timeout", f"no result within {self.timeout:g}s", duration)
        if future.cancelled():
            return self._failed("error", "cancelled", duration)
        exc = future.exception()
        if exc is not None:
            return self._failed("error", f"{type(exc).__name__}: {exc}", duration)
        return self._accept(future.result(), duration)

    def run_inline(self, clock: Callable[[], float]) -> Outcome:
        """Collect right here, on the loop (procfs readers only)."""
        started = clock()
        try:
            result = self.collector.collect()
        except Exception as exc:  # a reader's failure is its collector's error, not the cycle's
            return self._failed("error", f"{type(exc).__name__}: {exc}", clock() - started)
        return self._accept(result, clock() - started)

    async def await_inline(self, clock: Callable[[], float]) -> Outcome:
        """An inline async collector, awaited in place (no task): it awaits only bounded waits itself."""
        started = clock()
        try:
            async with asyncio.timeout(self.timeout):
                result = await self.collector.collect()
        except TimeoutError:
            return self._failed("timeout", f"no result within {self.timeout:g}s", clock() - started)
        except Exception as exc:  # a reader's failure is its collector's error, not the cycle's
            return self._failed("error", f"{type(exc).__name__}: {exc}", clock() - started)
        return self._accept(result, clock() - started)

    def _accept(self, result: Any, duration: float) -> Outcome:
        if self.trusted:
            return Outcome(result if isinstance(result, list) else list(result), duration=duration)
        if isinstance(result, str | bytes) or not isinstance(result, Iterable):
            return self._failed("error", f"collect() returned {type(result).__name__}, not samples", duration)
        samples, rejected, example = validate(result)
        if rejected:
            self._log("samples_rejected", "collector_samples_rejected", rejected=rejected, example=example)
        return Outcome(samples, rejected=rejected, duration=duration)

    def _failed(self, reason: str, message: str, duration: float) -> Outcome:
        self._log(reason + message, "collector_failed", reason=reason, error=message)
        return Outcome(error=reason, message=message, duration=duration)

    def _log(self, key: str, event: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY) >= LOG_EVERY:
            self._logged[key] = now
            log.warning(event, collector=self.name, **fields)

    async def close(self) -> None:
        close = getattr(self.collector, "close", None)
        if close is not None:
            await close()
        if self._inflight is not None and self._async:
            self._inflight.cancel()
        if self._thread is not None:
            self._thread.shutdown(wait=False)


@dataclass
class CycleResult:
    """What one cycle produced, per collector."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)

    @property
    def samples(self) -> list[Sample]:
        return [s for o in self.outcomes.values() for s in o.samples]

    @property
    def errors(self) -> dict[str, str]:
        return {name: o.error for name, o in self.outcomes.items() if o.error is not None}


def _stamp(finished: dict[str, float], name: str, loop: asyncio.AbstractEventLoop) -> Callable[[Any], None]:
    def done(_future: Any) -> None:
        finished[name] = loop.time()

    return done


async def run_cycle(guards: Sequence[Guard]) -> CycleResult:
    """Every collector at once; the cycle lasts as long as the slowest timeout at most."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    finished: dict[str, float] = {}
    started: list[tuple[Guard, asyncio.Future[Any] | None]] = []
    result = CycleResult()
    for guard in guards:
        if guard.inline:
            continue
        future = guard.start(loop)
        if future is not None:
            future.add_done_callback(_stamp(finished, guard.name, loop))
        started.append((guard, future))
    # The inline readers run while the threads and tasks started above do their work.
    for guard in guards:
        if guard.inline and not guard._async:
            result.outcomes[guard.name] = guard.run_inline(time.perf_counter)
    for guard in guards:
        if guard.inline and guard._async:
            result.outcomes[guard.name] = await guard.await_inline(time.perf_counter)
    pending = {f for _, f in started if f is not None}
    # One wait per distinct timeout (usually one): collectors share the cycle's deadlines.
    for limit in sorted({g.timeout for g, f in started if f is not None}):
        remaining = t0 + limit - loop.time()
        if pending and remaining > 0:
            _done, pending = await asyncio.wait(pending, timeout=remaining)
        pending -= {f for g, f in started if g.timeout <= limit}  # past their deadline: timed out
    now = loop.time()
    for guard, future in started:
        result.outcomes[guard.name] = guard.finish(future, finished.get(guard.name, now) - t0)
    return result

"""The agent's loop: collect on interval ticks, fold into windows, queue each closed window durably.

Ticks are aligned to wall-clock multiples of the interval. At each tick the windows that
ended are closed first — synchronously, so a slow collector can never delay a window close:
their lines (and the agent's own ``observatory.agent`` point) go into the durable buffer at
once, before any network wait; a background drainer then sends the buffer to InfluxDB, after
a random ``flush_jitter`` so a fleet's nodes do not all write at the same instant. Then every
collector runs concurrently under its guard and its samples are stamped with the tick time.

Time comes from ``Timeline``: a wall clock that never runs backwards. After a backward step
the samples keep their place in the window open at the step (none is dropped as late) until
the wall clock passes it again; a forward step closes the windows it skips. Counter rates use
the monotonic clock, so no rate spans a step. Both steps are logged and counted.

On SIGTERM the open window is closed early and buffered with its usual end timestamp; if the
agent comes back within that window, the later write for the same window replaces it.

The buffer directory outlives pods (a hostPath), and one process owns it at a time. An agent
that starts while another still holds it — the pod it replaces in a rolling update that starts
the new pod first — does not wait: it collects, closes and sends its windows as usual, holding
them in memory (and the AggregationRule partials they feed, a few windows at most) until the
other one lets go, then takes the directory over: the old agent's batches first, its own behind
them. ``/status`` ``buffer.owned`` and ``buffer.held_by`` say so meanwhile. Waiting for the
directory instead would deadlock such a rollout, which stops the old pod only once the new one
is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import structlog

from observatory_agent import tracing
from observatory_agent.aggregation.series import TagsKey
from observatory_agent.aggregation.windows import ClosedWindow, WindowAggregator
from observatory_agent.collectors import runner
from observatory_agent.collectors.application import ApplicationCollector
from observatory_agent.collectors.base import COUNTER
from observatory_agent.collectors.guard import Guard, Outcome
from observatory_agent.collectors.host import HostPaths
from observatory_agent.config import ConfigWatcher, LoadedConfig
from observatory_agent.sinks import lineproto, partials
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.delivery import Delivery
from observatory_agent.sinks.influx import InfluxWriter, TokenSource, WriterSettings
from observatory_agent.telemetry import Telemetry

log = structlog.get_logger("observatory_agent.runtime")

STATUS_SCHEMA_VERSION: Final = 3
"""``/status`` layout version: 2 added ``collectors``, ``series`` and ``buffer``; 3 ``buffer.owned``,
``buffer.held_by`` and ``buffer.waiting_since``."""
SHUTDOWN_FLUSH_BUDGET: Final = 5.0
"""Seconds the final drain may try InfluxDB; the windows are on disk before it starts."""
SELF_MEASUREMENT: Final = "observatory.agent"
SELF_FIELDS: Final = (
    "series",
    "samples",
    "buffered_points",
    "write_errors",
    "dropped_samples",
    "dropped_series",
    "collector_errors",
    "last_write_age_seconds",
    "partials_pending",
    "partials_errors",
)
"""The fields of the agent's own point, each window (the README documents each)."""
TAG_CACHE_ENTRIES: Final = 4096
"""Tag sets whose merged series key is remembered between cycles (the host's few hundred fit)."""
STEP_TOLERANCE: Final = 1.0
"""Seconds the wall clock may disagree with the monotonic one before it counts as a step."""
RETRY_MIN, RETRY_MAX = 1.0, 30.0
"""Seconds between drain attempts while InfluxDB fails (doubling, jittered), besides each window close."""
CLAIM_INTERVAL: Final = 0.5
"""Seconds between tries to take over a buffer directory another agent holds (its final flush takes seconds)."""
CLAIM_WARN_EVERY: Final = 60.0
"""Seconds between warnings while the directory stays held: longer than any pod's grace period is a problem."""
HELD_PARTIAL_WINDOWS: Final = 6
"""Closed windows kept for AggregationRule partials while the buffer directory (their outbox) is held
elsewhere: a window holds its samples, so few; older ones are dropped and counted."""


def buffer_directory(configured: str) -> Path:
    """The configured buffer dir, or a per-user one when it is not writable (a laptop run)."""
    path = Path(configured)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    fallback = state / "observatory-agent" / "buffer"
    log.warning("buffer_dir_not_writable_using_fallback", configured=configured, fallback=str(fallback))
    return fallback


class Timeline:
    """Wall-clock time that never goes backwards, with steps detected against the monotonic clock."""

    def __init__(self, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic) -> None:
        self._wall = wall
        self._mono = mono
        self._last_wall = wall()
        self._last_mono = mono()
        self._high = self._last_wall
        self.steps: dict[str, int] = {"backward": 0, "forward": 0}

    def now(self) -> float:
        wall, mono = self._wall(), self._mono()
        drift = (wall - self._last_wall) - (mono - self._last_mono)
        self._last_wall, self._last_mono = wall, mono
        if drift < -STEP_TOLERANCE:
            self.steps["backward"] += 1
            log.warning("clock_stepped_backward", seconds=round(-drift, 3), holding_until=self._high)
        elif drift > STEP_TOLERANCE:
            self.steps["forward"] += 1
            log.warning("clock_stepped_forward", seconds=round(drift, 3))
        self._high = max(self._high, wall)
        return self._high

    def mono(self) -> float:
        return self._mono()


def _log_failure(task: asyncio.Task[Any]) -> None:
    # A background task's bug must be seen, not end as "Task exception was never retrieved".
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background_task_failed", task=task.get_name(), error=f"{type(exc).__name__}: {exc}")


class Agent:
    def __init__(
        self,
        watcher: ConfigWatcher,
        *,
        node: str,
        host: str,
        paths: HostPaths,
        version: str,
        telemetry: Telemetry,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        instance: str | None = None,
    ) -> None:
        self.watcher = watcher
        self.node = node
        self.host = host
        self.instance = instance or f"{host} pid {os.getpid()}"
        """This process as the buffer's lock file names it to a successor (the pod's name in a pod)."""
        self.paths = paths
        self.version = version
        self.telemetry = telemetry
        self.timeline = Timeline(wall)
        self.first_cycle_done = False
        self.started_at = self.timeline.now()
        self.collector_errors: dict[str, int] = {}
        self.collector_health: dict[str, dict[str, Any]] = {}
        self.partials: partials.Partials | None = None
        self._partials_seen = (0, 0)
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._collectors: list[Guard] = []
        self._aggregator: WindowAggregator | None = None
        self._delivery: Delivery | None = None
        self._buffer: DurableBuffer | None = None
        self._loaded: LoadedConfig | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._drainer: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._held_partials: deque[tuple[ClosedWindow, float]] = deque()
        self._wake = asyncio.Event()
        self._base_tags: dict[str, str] = {}
        self._identity: dict[str, str] = {}
        self._self_tags: dict[str, str] = {}
        self._tag_keys: dict[tuple[tuple[str, str], ...], TagsKey] = {}
        self._counts = {"samples": 0, "rejected": 0, "late": 0, "invalid": 0, "limited": 0, "dropped_series": 0}
        self._seen: dict[str, int] = {}
        self._steps_seen: dict[str, int] = {"backward": 0, "forward": 0}
        self._corrupt_seen = 0
        self._config_hash_label: str | None = None
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    # --- state for /status and /readyz --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.first_cycle_done and self.watcher.valid

    def status(self) -> dict[str, Any]:
        stats = self._delivery.stats if self._delivery else None
        buffer = self._buffer
        agg = self._aggregator
        return {
            "schema_version": STATUS_SCHEMA_VERSION,
            "last_successful_write": stats.last_successful_write if stats else None,
            "buffered_points": buffer.points if buffer else 0,
            "buffered_bytes": buffer.disk_bytes if buffer else 0,
            "errors": {
                "collectors": dict(self.collector_errors),
                "writes": dict(stats.errors) if stats else {},
                "last_write_error": stats.last_error if stats else None,
                "rejected_points": stats.rejected_points if stats else 0,
                "config_reloads_failed": self.watcher.reloads["failure"],
                "config": self.watcher.last_error,
                "partials": self.partials.errors if self.partials else 0,
            },
            "collectors": {name: dict(h) for name, h in self.collector_health.items()},
            "series": {
                "open": agg.open_series if agg else 0,
                "limit": agg.max_series if agg else 0,
                "dropped_series": agg.dropped_series if agg else 0,
                "dropped_samples": agg.limited_samples if agg else 0,
            },
            "buffer": {
                "unpersisted_points": buffer.unpersisted_points if buffer else 0,
                "dropped_points": buffer.dropped_points if buffer else 0,
                "write_errors": dict(buffer.write_errors) if buffer else {},
                "last_write_error": buffer.last_write_error if buffer else None,
                "corrupt_records": buffer.corrupt_records if buffer else 0,
                # False while the agent this one replaces still holds the directory: windows wait in memory.
                # (``is not None``: an empty buffer is falsy, it has a length.)
                "owned": buffer.owned if buffer is not None else False,
                "held_by": buffer.holder() if buffer is not None and not buffer.owned else None,
                "waiting_since": buffer.waiting_since if buffer is not None else None,
            },
            "clock_steps": dict(self.timeline.steps),
            "config_hash": self._loaded.hash if self._loaded else "",
            "version": self.version,
            "node": self.node,
            "ready": self.ready,
            # False when shared-config's observatory_enabled (or the spec) switched collection off:
            # the operator then reports "disabled", not "broken", for an agent that writes nothing.
            "enabled": self._loaded.effective.enabled if self._loaded else True,
            # Per AggregationRule: partials waiting for their processor, its last answer, the last failure.
            "partials": self.partials.report() if self.partials else {},
        }

    # --- configuration ------------------------------------------------------------------------

    def apply(self, loaded: LoadedConfig) -> list[ClosedWindow]:
        """Adopt a config; returns windows closed early because the window length changed."""
        previous = self._loaded.effective if self._loaded else None
        eff = loaded.effective
        agent = eff.agent
        self._loaded = loaded
        self._identity = {"host": self.host, "node": self.node, "cluster": eff.cluster}
        self._self_tags = {**self._identity, "collector": agent.collector, "namespace": agent.namespace}
        self._base_tags = dict(eff.tags)
        self._tag_keys = {}
        built = runner.build_collectors(agent.collectors, self.paths, max_timeout=max(0.1, eff.interval * 0.9))
        for name, error in built.errors.items():
            self._count_collector_error(name, "load")
            self._health(name)["last_error"] = error
        self._retire(self._collectors)
        self._collectors = built.collectors
        closed: list[ClosedWindow] = []
        if (
            self._aggregator is None
            or previous is None
            or previous.window != eff.window
            or previous.agent.exact_quantile_threshold != agent.exact_quantile_threshold
            or previous.agent.max_series != agent.max_series
        ):
            if self._aggregator is not None:
                closed = self._aggregator.close_all(self.timeline.now())
                self._fold_aggregator_counts(self._aggregator)
            self._aggregator = WindowAggregator(
                eff.window, exact_threshold=agent.exact_quantile_threshold, max_series=agent.max_series
            )
        self.telemetry.series_limit.set(agent.max_series)
        if self._buffer is None:
            self._open_buffer(buffer_directory(agent.buffer_dir), agent.buffer_max_bytes)
        elif self.partials is not None:
            self.partials.configure(agent.processors)
        writer = None
        if eff.influxdb_url and eff.influxdb_org and eff.influxdb_bucket:
            token = TokenSource(agent.influxdb)
            writer = InfluxWriter(
                WriterSettings(url=eff.influxdb_url, org=eff.influxdb_org, bucket=eff.influxdb_bucket, token=token.get)
            )
            writer.on_request = self.telemetry.write_duration.observe
        else:
            log.warning("influx_not_configured_buffering", url=eff.influxdb_url, org=eff.influxdb_org)
        if self._delivery is None:
            assert self._buffer is not None
            self._delivery = Delivery(writer, self._buffer, clock=time.time)
        else:
            if self._delivery.writer is not None:
                self._delivery.writer.close()
            self._delivery.writer = writer
        if self._config_hash_label is not None:
            self.telemetry.config_info.remove(self._config_hash_label)
        self.telemetry.config_info.labels(hash=loaded.hash).set(1)
        self._config_hash_label = loaded.hash
        log.info(
            "config_applied",
            config_hash=loaded.hash,
            interval=eff.interval,
            window=eff.window,
            collectors=[c.name for c in self._collectors],
            enabled=eff.enabled,
        )
        return closed

    def _open_buffer(self, directory: Path, max_bytes: int) -> None:
        buffer = self._buffer = DurableBuffer(directory, max_bytes, wait_for_lock=False, owner=self.instance)
        self.telemetry.buffer_owned.set(1 if buffer.owned else 0)
        if buffer.owned:
            self._open_partials()
            return
        log.warning(
            "buffer_held_by_another_agent",
            directory=str(directory),
            held_by=buffer.holder(),
            detail="windows are sent from memory and written to the buffer once it lets go",
        )
        self._claimer = asyncio.get_running_loop().create_task(self._claim_buffer(), name="claim-buffer")
        self._claimer.add_done_callback(_log_failure)

    def _open_partials(self) -> None:
        """Open and configure the partials: their outboxes live in the buffer directory, so only its owner may."""
        assert self._buffer is not None
        assert self._loaded is not None
        agent = self._loaded.effective.agent
        self.partials = partials.Partials(
            self.node, self._buffer.directory / "partials", partials.outbox_bytes(agent.buffer_max_bytes)
        )
        self.partials.configure(agent.processors)

    async def _claim_buffer(self) -> None:
        """Take the buffer directory over once the agent holding it (the pod this one replaces) lets go."""
        buffer = self._buffer
        assert buffer is not None
        started = next_warning = time.monotonic()
        while not buffer.claim():
            if time.monotonic() >= next_warning + CLAIM_WARN_EVERY:
                next_warning = time.monotonic()
                log.warning(
                    "buffer_still_held_by_another_agent",
                    held_by=buffer.holder(),
                    waited_seconds=round(next_warning - started),
                    unpersisted_points=buffer.unpersisted_points,
                )
            await asyncio.sleep(CLAIM_INTERVAL)
        self.telemetry.buffer_owned.set(1)
        log.info(
            "buffer_claimed",
            directory=str(buffer.directory),
            waited_seconds=round(time.monotonic() - started, 3),
            buffered_points=buffer.points,
        )
        self._open_partials()
        assert self.partials is not None
        while self._held_partials:
            self.partials.submit(*self._held_partials.popleft())
        self._sync_delivery_metrics()
        self._wake.set()  # the previous owner's batches may wait for InfluxDB too

    def _hold_partial(self, window: ClosedWindow, now: float) -> None:
        """Keep a window for its partials until the buffer directory (their outbox) is ours."""
        assert self._loaded is not None
        if not self._loaded.effective.agent.processors:
            return
        if len(self._held_partials) >= HELD_PARTIAL_WINDOWS:
            dropped, _ = self._held_partials.popleft()
            self.telemetry.partials_dropped.inc()
            log.error("partials_dropped_buffer_held_elsewhere", window_end=dropped.end, kept=HELD_PARTIAL_WINDOWS)
        self._held_partials.append((window, now))

    def _retire(self, guards: list[Guard]) -> None:
        """Close replaced collectors' resources (threads, application scrapers' HTTP sessions)."""
        for guard in guards:
            self._spawn(guard.close(), f"close-{guard.name}")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    def _health(self, name: str) -> dict[str, Any]:
        health = self.collector_health.get(name)
        if health is None:
            health = self.collector_health[name] = {
                "last_success": None,
                "last_error": None,
                "last_duration_seconds": None,
                "errors": {},
                "rejected_samples": {},
            }
        return health

    def _count_collector_error(self, name: str, reason: str) -> None:
        self.collector_errors[name] = self.collector_errors.get(name, 0) + 1
        errors = self._health(name)["errors"]
        errors[reason] = errors.get(reason, 0) + 1
        self.telemetry.collector_errors.labels(collector=name, reason=reason).inc()

    # --- one cycle ----------------------------------------------------------------------------

    async def cycle(self, ts: float, mono: float | None = None) -> int:
        """Run every collector once and fold the samples at ``ts``; returns the sample count."""
        assert self._aggregator is not None
        assert self._loaded is not None
        if not self._loaded.effective.enabled:
            # Switched off by config: idle but healthy, so a rollout does not stall on readiness.
            self.first_cycle_done = True
            return 0
        mono = self.timeline.mono() if mono is None else mono
        started = time.perf_counter()
        with tracing.span("agent.cycle", collectors=len(self._collectors)):
            result = await runner.run_cycle(self._collectors)
            agg = self._aggregator
            n = 0
            for outcome in result.outcomes.values():
                n += self._fold(agg, outcome, ts, mono)
        now = time.time()
        for guard in self._collectors:
            outcome = result.outcomes[guard.name]
            self._record(guard, outcome, now)
        t = self.telemetry
        t.cycles.inc()
        t.cycle_duration.observe(time.perf_counter() - started)
        t.samples.inc(n)
        self._counts["samples"] += n
        t.open_series.set(agg.open_series)
        self._sync_aggregator_metrics(agg)
        self.first_cycle_done = True
        t.ready.set(1 if self.ready else 0)
        return n

    def _fold(self, agg: WindowAggregator, outcome: Outcome, ts: float, mono: float) -> int:
        samples = outcome.samples
        if not samples:
            return 0
        base, identity, cache = self._base_tags, self._identity, self._tag_keys
        if len(cache) > TAG_CACHE_ENTRIES:
            cache.clear()  # bounded: a scrape of many label sets must not grow it past the windows themselves
        add, add_counter = agg.add, agg.add_counter
        for s in samples:
            tags = s.tags
            items = tuple(tags.items()) if tags else ()
            key = cache.get(items)
            if key is None:
                key = cache[items] = runner.series_tags(tags, base, identity)
            if s.type is COUNTER:
                add_counter(s.name, key, s.value, ts, mono)
            else:
                add(s.name, key, s.value, ts)
        return len(samples)

    def _record(self, guard: Guard, outcome: Outcome, now: float) -> None:
        name = guard.name
        health = self._health(name)
        health["last_duration_seconds"] = round(outcome.duration, 6)
        t = self.telemetry
        self._child(t.collector_duration, name).set(outcome.duration)
        if outcome.error is None:
            health["last_success"] = now
            self._child(t.collector_last_success, name).set(now)
        else:
            health["last_error"] = f"{outcome.error}: {outcome.message}"
            self._count_collector_error(name, outcome.error)
        if outcome.rejected:
            rejected = health["rejected_samples"]
            for reason, count in outcome.rejected.items():
                rejected[reason] = rejected.get(reason, 0) + count
                t.rejected_samples.labels(collector=name, reason=reason).inc(count)
                self._counts["rejected"] += count
        skipped = getattr(guard.collector, "skipped", None)
        if skipped is not None:
            self._sync_counter(
                f"skipped:{name}", skipped(), t.collector_skipped.labels(collector=name, reason="mount_stuck")
            )
        if isinstance(guard.collector, ApplicationCollector):
            for target, up in guard.collector.up.items():
                t.scrape_up.labels(collector=name, target=target).set(up)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: the cycle updates these every second."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _sync_counter(self, key: str, total: int, counter: Any) -> None:
        seen = self._seen.get(key, 0)
        if total > seen:
            counter.inc(total - seen)
        self._seen[key] = total

    def _sync_aggregator_metrics(self, agg: WindowAggregator) -> None:
        t = self.telemetry
        prefix = f"agg{id(agg)}:"
        self._sync_counter(prefix + "late", agg.late_samples, self._child(t.dropped_samples, "late"))
        self._sync_counter(prefix + "invalid", agg.invalid_samples, self._child(t.dropped_samples, "invalid"))
        self._sync_counter(prefix + "limited", agg.limited_samples, self._child(t.dropped_samples, "series_limit"))
        self._sync_counter(prefix + "series", agg.dropped_series, t.dropped_series)
        for direction, n in self.timeline.steps.items():
            if n > self._steps_seen[direction]:
                t.clock_steps.labels(direction=direction).inc(n - self._steps_seen[direction])
                self._steps_seen[direction] = n
                if self._aggregator is not None:
                    self._aggregator.forget_counters()

    def _fold_aggregator_counts(self, agg: WindowAggregator) -> None:
        """Keep a replaced aggregator's drop counts in the cumulative totals."""
        self._sync_aggregator_metrics(agg)
        for key, attr in (("late", "late_samples"), ("invalid", "invalid_samples"), ("limited", "limited_samples")):
            self._counts[key] += getattr(agg, attr)
        self._counts["dropped_series"] += agg.dropped_series

    def _dropped_samples(self) -> int:
        agg = self._aggregator
        live = (agg.late_samples + agg.invalid_samples + agg.limited_samples) if agg else 0
        c = self._counts
        return c["late"] + c["invalid"] + c["limited"] + c["rejected"] + live

    # --- window close: buffer first, then send ------------------------------------------------

    def close_windows(self, closed: list[ClosedWindow]) -> None:
        """Encode each closed window and put it in the durable buffer now; the drainer sends it."""
        if not closed:
            return
        assert self._loaded is not None
        assert self._delivery is not None
        quantiles = self._loaded.effective.agent.quantiles
        now = self.timeline.now()
        for window in closed:
            with tracing.span("agent.window_close", window_end=window.end, series=len(window.series)):
                skipped: list[str] = []
                lines = lineproto.encode_many(window.aggregates(quantiles), skipped=skipped)
                if skipped:
                    log.error("metrics_not_encodable", count=len(skipped), example=skipped[0])
                lines.append(self._self_point(window, now))
                self._delivery.enqueue(lines)
            self.telemetry.windows_closed.inc()
            self.telemetry.window_close_lateness.observe(max(0.0, now - window.end))
        for window in closed:
            if self.partials is not None:
                self.partials.submit(window, now)  # built, kept and sent on their own tasks: never delays writes
            else:
                self._hold_partial(window, now)
        self._sync_partials_metrics()
        self._sync_delivery_metrics()
        self._wake.set()

    def _self_point(self, window: ClosedWindow, now: float) -> str:
        stats = self._delivery.stats if self._delivery else None
        agg = self._aggregator
        last = stats.last_successful_write if stats else None
        write_errors = stats.failed_requests if stats else 0
        return lineproto.encode_point(
            SELF_MEASUREMENT,
            self._self_tags,
            {
                "series": len(window.series),
                "samples": self._counts["samples"],
                "buffered_points": self._buffer.points if self._buffer else 0,
                "write_errors": write_errors,
                "dropped_samples": self._dropped_samples(),
                "dropped_series": self._counts["dropped_series"] + (agg.dropped_series if agg else 0),
                "collector_errors": sum(self.collector_errors.values()),
                "last_write_age_seconds": float(now - (last if last is not None else self.started_at)),
                "partials_pending": self.partials.pending if self.partials else len(self._held_partials),
                "partials_errors": self.partials.errors if self.partials else 0,
            },
            window.end,
        )

    def _drain_budget(self) -> float:
        assert self._loaded is not None
        return max(1.0, min(self._loaded.effective.window, 60.0) * 0.5)

    def _jitter(self) -> float:
        assert self._loaded is not None
        eff = self._loaded.effective
        configured = eff.agent.flush_jitter
        limit = configured if configured is not None else min(5.0, eff.window / 5)
        return self._rng.uniform(0.0, limit) if limit > 0 else 0.0

    async def _drain_loop(self) -> None:
        """Send the buffer whenever a window is queued (after jitter), and retry with backoff."""
        assert self._delivery is not None
        retry = RETRY_MIN
        pending = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(retry if pending else None):
                    await self._wake.wait()
            woken = self._wake.is_set()
            self._wake.clear()
            if woken:
                await asyncio.sleep(self._jitter())
            with tracing.span("agent.flush", points=self._delivery.buffer.points):
                empty = await self._delivery.drain(budget=self._drain_budget())
            self._sync_delivery_metrics()
            pending = not empty
            retry = RETRY_MIN if empty else min(RETRY_MAX, retry * 2) * self._rng.uniform(0.5, 1.0)

    def _sync_delivery_metrics(self) -> None:
        assert self._delivery is not None
        assert self._buffer is not None
        t, stats, buffer = self.telemetry, self._delivery.stats, self._buffer
        self._sync_counter("points_written", stats.points_written, t.points_written)
        self._sync_counter("rejected_points", stats.rejected_points, t.rejected_points)
        for kind, n in stats.errors.items():
            if kind == "dropped_buffer_full":
                continue
            self._sync_counter(f"write:{kind}", n, t.write_errors.labels(kind=kind))
        self._sync_counter("buffer_dropped", buffer.dropped_points, t.buffer_dropped_points)
        for reason, n in buffer.write_errors.items():
            self._sync_counter(f"buffer:{reason}", n, t.buffer_write_errors.labels(error=reason))
        self._sync_counter("corrupt", buffer.corrupt_records, t.buffer_corrupt_records)
        t.buffered_points.set(buffer.points)
        t.buffered_bytes.set(buffer.disk_bytes)
        t.unpersisted_points.set(buffer.unpersisted_points)
        if stats.last_successful_write is not None:
            t.last_successful_write.set(stats.last_successful_write)

    def _sync_partials_metrics(self) -> None:
        if self.partials is None:
            return
        t, p = self.telemetry, self.partials
        sent = sum(s.stats.sent for s in p.senders.values())
        t.partials_sent.inc(sent - self._partials_seen[0])
        t.partials_dropped.inc(p.dropped - self._partials_seen[1])
        self._partials_seen = (sent, p.dropped)
        t.partials_pending.set(p.pending)
        self._sync_counter("partials:errors", p.errors, t.partials_errors)

    def _sync_reload_metrics(self) -> None:
        for result, n in self.watcher.reloads.items():
            self._sync_counter(f"reload:{result}", n, self.telemetry.config_reloads.labels(result=result))

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loaded = self.watcher.current or self.watcher.start()
        self.apply(loaded)
        self._sync_reload_metrics()
        assert self._aggregator is not None
        assert self._loaded is not None
        self._sync_delivery_metrics()
        self._drainer = asyncio.get_running_loop().create_task(self._drain_loop(), name="drain")
        self._drainer.add_done_callback(_log_failure)
        if self._buffer is not None and len(self._buffer):
            self._wake.set()  # a restart replays what an earlier run left
        # The first cycle runs at once so the agent is ready (and cpu primed) without waiting a tick.
        await self.cycle(self.timeline.now())
        while not stop.is_set():
            interval = self._loaded.effective.interval
            now = self.timeline.now()
            next_tick = (math.floor(now / interval) + 1) * interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_tick - now)):
                    await stop.wait()
            if stop.is_set():
                break
            now = self.timeline.now()
            # Samples carry the tick, so every node's samples land in the same window; after a
            # stall (a suspended VM, a forward clock step) longer than an interval, the real time
            # is the honest stamp; while the clock is held after a backward step, the held time.
            tick = min(next_tick, now) if now - next_tick < interval else now
            self.close_windows(self._aggregator.close(tick))
            changed = self.watcher.poll()
            self._sync_reload_metrics()
            if changed is not None:
                self.close_windows(self.apply(changed))
            await self.cycle(tick)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close the current window early into the buffer, try to send it, leave the rest on disk."""
        started = time.monotonic()
        if self._aggregator is not None:
            self.close_windows(self._aggregator.close_all(self.timeline.now()))
        if self._claimer is not None and not self._claimer.done():
            self._claimer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claimer
            if self._buffer is not None and self._buffer.claim():
                log.info("buffer_claimed_at_shutdown", buffered_points=self._buffer.points)
        if self._drainer is not None:
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        if self._delivery is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_FLUSH_BUDGET + 1.0):
                    await self._delivery.drain(budget=SHUTDOWN_FLUSH_BUDGET)
            self._sync_delivery_metrics()
        if self._background:
            _done, pending = await asyncio.wait(set(self._background), timeout=2.0)
            for task in pending:
                task.cancel()
        if self.partials is not None:
            await self.partials.close(SHUTDOWN_FLUSH_BUDGET)
        for guard in self._collectors:
            with contextlib.suppress(Exception):  # best effort on the way out
                await guard.close()
        if self._delivery is not None and self._delivery.writer is not None:
            self._delivery.writer.close()
        if self._buffer is not None:
            if not self._buffer.owned and (self._buffer.points or self._held_partials):
                # Still held by the agent this one was to replace: what InfluxDB did not take is lost.
                log.error(
                    "points_lost_buffer_held_elsewhere",
                    points=self._buffer.points,
                    partial_windows=len(self._held_partials),
                    held_by=self._buffer.holder(),
                )
            self._buffer.close()
        log.info(
            "agent_stopped",
            took=round(time.monotonic() - started, 3),
            buffered_points=self._buffer.points if self._buffer else 0,
        )

"""The agent's loop: collect on interval ticks, fold into windows, flush each closed window.

Ticks are aligned to wall-clock multiples of the interval. At each tick the windows that
ended are closed first — synchronously, so a slow collector can never delay a window close —
and handed to a background flush (InfluxDB, then processors); then every collector runs
concurrently under its timeout and its samples are stamped with the tick time.

On SIGTERM the open window is closed early and written with its usual end timestamp; if the
agent comes back within that window, the later write for the same window replaces it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import structlog

from observatory_agent import tracing
from observatory_agent.aggregation.windows import ClosedWindow, WindowAggregator
from observatory_agent.collectors import runner
from observatory_agent.collectors.base import COUNTER, Collector
from observatory_agent.collectors.host import HostPaths
from observatory_agent.config import ConfigWatcher, LoadedConfig
from observatory_agent.sinks import lineproto, partials
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.delivery import Delivery
from observatory_agent.sinks.influx import InfluxWriter, WriterSettings, read_token
from observatory_agent.telemetry import Telemetry

log = structlog.get_logger("observatory_agent.runtime")

SHUTDOWN_FLUSH_BUDGET = 5.0
"""Seconds the final flush may try InfluxDB before leaving the rest in the disk buffer."""


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
    ) -> None:
        self.watcher = watcher
        self.node = node
        self.host = host
        self.paths = paths
        self.version = version
        self.telemetry = telemetry
        self.first_cycle_done = False
        self.collector_errors: dict[str, int] = {}
        self.partials: partials.Partials | None = None
        self._collectors: list[Collector] = []
        self._aggregator: WindowAggregator | None = None
        self._delivery: Delivery | None = None
        self._buffer: DurableBuffer | None = None
        self._loaded: LoadedConfig | None = None
        self._flush_lock = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()
        self._base_tags: dict[str, str] = {}
        self._identity: dict[str, str] = {}
        self._dropped_seen = (0, 0)
        self._written_seen = 0
        self._errors_seen: dict[str, int] = {}
        self._reloads_seen: dict[str, int] = {}
        self._partials_seen = (0, 0)

    # --- state for /status and /readyz --------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.first_cycle_done and self.watcher.valid

    def status(self) -> dict[str, Any]:
        stats = self._delivery.stats if self._delivery else None
        buffer = self._buffer
        return {
            "last_successful_write": stats.last_successful_write if stats else None,
            "buffered_points": buffer.points if buffer else 0,
            "buffered_bytes": buffer.disk_bytes if buffer else 0,
            "errors": {
                "collectors": dict(self.collector_errors),
                "writes": dict(stats.errors) if stats else {},
                "config_reloads_failed": self.watcher.reloads["failure"],
                "config": self.watcher.last_error,
                "partials": self.partials.errors if self.partials else 0,
            },
            "config_hash": self._loaded.hash if self._loaded else "",
            "version": self.version,
            "node": self.node,
            "ready": self.ready,
            # False when shared-config's observatory_enabled (or the spec) switched collection off:
            # the operator then reports "disabled", not "broken", for an agent that writes nothing.
            "enabled": self._loaded.effective.enabled if self._loaded else True,
        }

    # --- configuration ------------------------------------------------------------------------

    def apply(self, loaded: LoadedConfig) -> list[ClosedWindow]:
        """Adopt a config; returns windows closed early because the window length changed."""
        previous = self._loaded.effective if self._loaded else None
        eff = loaded.effective
        agent = eff.agent
        self._loaded = loaded
        self._identity = {"host": self.host, "node": self.node, "cluster": eff.cluster}
        self._base_tags = dict(eff.tags)
        built = runner.build_collectors(agent.collectors, self.paths, max_timeout=max(0.1, eff.interval * 0.9))
        for name in built.errors:
            self._count_collector_error(name, "load")
        self._retire(self._collectors)
        self._collectors = built.collectors
        closed: list[ClosedWindow] = []
        if (
            self._aggregator is None
            or previous is None
            or previous.window != eff.window
            or previous.agent.exact_quantile_threshold != agent.exact_quantile_threshold
        ):
            if self._aggregator is not None:
                closed = self._aggregator.close_all(time.time())
            self._aggregator = WindowAggregator(eff.window, exact_threshold=agent.exact_quantile_threshold)
        if self._buffer is None:
            self._buffer = DurableBuffer(buffer_directory(agent.buffer_dir), agent.buffer_max_bytes)
        if self.partials is None:
            self.partials = partials.Partials(
                self.node, self._buffer.directory / "partials", partials.outbox_bytes(agent.buffer_max_bytes)
            )
        self.partials.configure(agent.processors)
        writer = None
        if eff.influxdb_url and eff.influxdb_org and eff.influxdb_bucket:
            try:
                token = read_token(agent.influxdb)
            except OSError as exc:
                log.error("influx_token_unreadable", token_file=agent.influxdb.token_file, error=exc.strerror)
                token = None
            writer = InfluxWriter(
                WriterSettings(url=eff.influxdb_url, org=eff.influxdb_org, bucket=eff.influxdb_bucket, token=token)
            )
        else:
            log.warning("influx_not_configured_buffering", url=eff.influxdb_url, org=eff.influxdb_org)
        if self._delivery is None:
            self._delivery = Delivery(writer, self._buffer)
        else:
            if self._delivery.writer is not None:
                self._delivery.writer.close()
            self._delivery.writer = writer
        log.info(
            "config_applied",
            config_hash=loaded.hash,
            interval=eff.interval,
            window=eff.window,
            collectors=[c.name for c in self._collectors],
            enabled=eff.enabled,
        )
        return closed

    def _retire(self, collectors: list[Collector]) -> None:
        """Close replaced collectors' resources (application scrapers hold HTTP sessions)."""
        for collector in collectors:
            close = getattr(collector, "close", None)
            if close is not None:
                task = asyncio.get_running_loop().create_task(close())
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    def _count_collector_error(self, name: str, reason: str) -> None:
        self.collector_errors[name] = self.collector_errors.get(name, 0) + 1
        self.telemetry.collector_errors.labels(collector=name, reason=reason).inc()

    # --- one cycle ----------------------------------------------------------------------------

    async def cycle(self, ts: float) -> int:
        """Run every collector once and fold the samples at ``ts``; returns the sample count."""
        assert self._aggregator is not None
        assert self._loaded is not None
        if not self._loaded.effective.enabled:
            # Switched off by config: idle but healthy, so a rollout does not stall on readiness.
            self.first_cycle_done = True
            return 0
        started = time.perf_counter()
        with tracing.span("agent.cycle", collectors=len(self._collectors)):
            result = await runner.run_cycle(self._collectors)
            agg = self._aggregator
            base, identity = self._base_tags, self._identity
            series_tags = runner.series_tags
            for s in result.samples:
                key = series_tags(s.tags, base, identity)
                if s.type is COUNTER:
                    agg.add_counter(s.name, key, s.value, ts)
                else:
                    agg.add(s.name, key, s.value, ts)
        for name, reason in result.errors.items():
            self._count_collector_error(name, reason)
        t = self.telemetry
        t.cycles.inc()
        t.cycle_duration.observe(time.perf_counter() - started)
        t.samples.inc(len(result.samples))
        t.open_series.set(agg.open_series)
        late, invalid = agg.late_samples, agg.invalid_samples
        t.dropped_samples.labels(reason="late").inc(late - self._dropped_seen[0])
        t.dropped_samples.labels(reason="invalid").inc(invalid - self._dropped_seen[1])
        self._dropped_seen = (late, invalid)
        self.first_cycle_done = True
        t.ready.set(1 if self.ready else 0)
        return len(result.samples)

    # --- flushing -----------------------------------------------------------------------------

    def schedule_flush(self, closed: list[ClosedWindow], budget: float) -> None:
        if not closed:
            return
        task = asyncio.create_task(self.flush(closed, budget))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def flush(self, closed: list[ClosedWindow], budget: float) -> None:
        """Write closed windows in order (one flush at a time) and send processors their partials."""
        assert self._loaded is not None
        assert self._delivery is not None
        agent = self._loaded.effective.agent
        async with self._flush_lock:
            for window in closed:
                with tracing.span("agent.window_close", window_end=window.end, series=len(window.series)):
                    lines = lineproto.encode_many(window.aggregates(agent.quantiles))
                    if self.partials is not None:
                        self.partials.submit(window, time.time())  # built and sent on their own task
                with tracing.span("agent.flush", points=len(lines)):
                    await self._delivery.deliver(lines, budget=budget)
                self.telemetry.windows_closed.inc()
            self._sync_delivery_metrics()
            self._sync_partials_metrics()

    def _sync_delivery_metrics(self) -> None:
        assert self._delivery is not None
        assert self._buffer is not None
        t, stats = self.telemetry, self._delivery.stats
        t.points_written.inc(stats.points_written - self._written_seen)
        self._written_seen = stats.points_written
        for kind, n in stats.errors.items():
            seen = self._errors_seen.get(kind, 0)
            if kind == "dropped_buffer_full":
                t.buffer_dropped_points.inc(n - seen)
            else:
                t.write_errors.labels(kind=kind).inc(n - seen)
            self._errors_seen[kind] = n
        t.buffered_points.set(self._buffer.points)
        t.buffered_bytes.set(self._buffer.disk_bytes)
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

    def _sync_reload_metrics(self) -> None:
        for result, n in self.watcher.reloads.items():
            self.telemetry.config_reloads.labels(result=result).inc(n - self._reloads_seen.get(result, 0))
            self._reloads_seen[result] = n

    # --- the loop -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loaded = self.watcher.current or self.watcher.start()
        self.apply(loaded)
        self._sync_reload_metrics()
        assert self._aggregator is not None
        assert self._loaded is not None
        # The first cycle runs at once so the agent is ready (and cpu primed) without waiting a tick.
        await self.cycle(time.time())
        while not stop.is_set():
            interval = self._loaded.effective.interval
            now = time.time()
            next_tick = (math.floor(now / interval) + 1) * interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_tick - now))
            if stop.is_set():
                break
            # Samples carry the tick, so every node's samples land in the same window; after a
            # stall (a suspended VM) longer than an interval, the real time is the honest stamp.
            late_by = time.time() - next_tick
            tick = next_tick if late_by < interval else time.time()
            budget = max(1.0, min(self._loaded.effective.window, 60.0) * 0.5)
            self.schedule_flush(self._aggregator.close(tick), budget)
            changed = self.watcher.poll()
            self._sync_reload_metrics()
            if changed is not None:
                self.schedule_flush(self.apply(changed), budget)
            await self.cycle(tick)
        await self.shutdown()

    async def shutdown(self) -> None:
        """Close the current window early, flush what we have, leave the rest in the buffer."""
        started = time.monotonic()
        if self._aggregator is not None:
            self.schedule_flush(self._aggregator.close_all(time.time()), SHUTDOWN_FLUSH_BUDGET)
        if self._flushes:
            _done, pending = await asyncio.wait(set(self._flushes), timeout=SHUTDOWN_FLUSH_BUDGET + 2.0)
            for task in pending:
                task.cancel()
        if self.partials is not None:
            await self.partials.close(SHUTDOWN_FLUSH_BUDGET)
        for collector in self._collectors:
            close = getattr(collector, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):  # best effort on the way out
                    await close()
        if self._delivery is not None and self._delivery.writer is not None:
            self._delivery.writer.close()
        if self._buffer is not None:
            self._buffer.close()
        log.info(
            "agent_stopped",
            took=round(time.monotonic() - started, 3),
            buffered_points=self._buffer.points if self._buffer else 0,
        )

"""One rule's processor: takes partials over HTTP, merges them (``aggregation.rollup``) and writes windows.

Start-up reads the newest marker back from InfluxDB (and from its own disk buffer, whose
batches InfluxDB has not acknowledged yet): partials at or below it are refused, so a window an
earlier instance wrote is never overwritten by a half re-sent one. Until that read succeeds the
processor is not ready and answers 503.

POSTs are parsed on their connection threads and merged under one lock (handing each over to the
event loop and back cost more CPU than the merge). Windows are written in order by one task on
the loop, which takes the same lock to turn a window into lines: the window's points, its marker
and a health point go out in one request through the agent's ``Delivery`` (failed writes wait in
the same kind of durable buffer and are replayed in order). The watermark reported to agents moves only when
InfluxDB acknowledged a batch: when the buffer is empty, or up to the batch before the oldest
buffered one (its marker names the batch). SIGTERM writes nothing early: windows still merging
are re-sent by the agents to the next instance.

``/status`` (JSON)::

    {"rule", "namespace", "instance", "ready", "watermark": unix | null, "open_windows",
     "last_window": {"end", "acknowledged", "series", "nodes", "node_names" (up to 256, else null),
                     "expected_nodes", "dropped_series",
                     "quantile_methods": {"exact": n, "sketch": n}} | null,
     "partials": {"received", "accepted", "duplicates", "late", "dropped": {reason: n}, "kept": {reason: n},
                  "invalid"},
     "windows_written", "windows_rewritten", "dropped_series", "dropped_groups", "buffered_points",
     "errors": {"writes": {kind: n}, "watermark_read": str | null, "config": str | null},
     "config_hash", "version"}

``last_window.dropped_series`` counts output series (groups) that ``max_series`` kept out of that
window; ``dropped_groups`` sums those over every window since start, and ``dropped_series`` the
input series that fell into them. ``partials.dropped`` are refusals the agent drops (too late,
conflict, mismatch); ``partials.kept`` those it keeps and sends again (written, busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import structlog
from pydantic import ValidationError

from observatory_agent import server, tracing
from observatory_agent.aggregation.rollup import Outcome, Rollup, RollupWindow
from observatory_agent.contract import (
    TELEMETRY_MEASUREMENT,
    PartialsAck,
    ProcessorState,
    RefusalReason,
    WindowPartial,
)
from observatory_agent.processor import watermark
from observatory_agent.processor.config import LoadedProcessorConfig
from observatory_agent.processor.telemetry import ProcessorTelemetry
from observatory_agent.sinks import lineproto
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.delivery import Delivery
from observatory_agent.sinks.influx import InfluxWriter, WriterSettings, read_token

log = structlog.get_logger("observatory_agent.processor")

PARTIALS_PATH: Final = "/v1/partials"
WRITE_BUDGET: Final = 2.0
"""Seconds one window's write may retry before its batch waits in the disk buffer."""
READ_RETRY_MAX: Final = 10.0
"""Longest pause between attempts to read the watermark back."""
HEALTH_FIELDS: Final = (
    "windows_written",
    "series",
    "nodes",
    "late_partials",
    "dropped_partials",
    "dropped_groups",
    "buffered_points",
    "write_errors",
)
"""Fields of the ``observatory.processor`` point written with each window (all integers)."""
NODE_NAMES_SHOWN: Final = 256
"""``/status`` names the last window's contributing nodes up to this many (the operator names the missing ones)."""
LOG_EVERY: Final = 10.0
"""Seconds between two log lines about refusals of the same reason."""


def validation_error(exc: ValidationError) -> server.Response:
    """A 4xx naming the first offending field (``series.count.3``) and the rule it broke."""
    errors = exc.errors()
    first = errors[0]
    path = ".".join(str(p) for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if first["type"] == "json_invalid":
        return server.error(400, f"body is not valid JSON: {first['msg']}{more}")
    return server.error(422, f"{path or 'body'}: {first['msg']}{more}", path or None)


def content_digest(body: bytes) -> bytes:
    """Tells a re-sent partial from a different one under the same key.

    Length and CRC-32, not a cryptographic hash: a blake2b of every body cost a tenth of the
    processor's CPU, and the digest only ever compares two bodies of one (node, source, window).
    """
    return len(body).to_bytes(8, "little") + zlib.crc32(body).to_bytes(4, "little")


class Processor:
    """A processor's state, endpoints and write loop; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        loaded: LoadedProcessorConfig,
        telemetry: ProcessorTelemetry,
        *,
        version: str,
        clock: Callable[[], float] = time.time,
        reader: Callable[[watermark.Target, str, str], float | None] = watermark.read,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.effective
        self.spec = loaded.effective.processor
        self.telemetry = telemetry
        self.version = version
        self.instance = uuid.uuid4().hex
        self.rollup: Rollup | None = None
        self.config_error: str | None = None
        """Why this config cannot work (no InfluxDB target): the processor never becomes ready."""
        self.reload_error: str | None = None
        """Why the config files' newest content was refused (the running config stays)."""
        self.read_error: str | None = None
        self._clock = clock
        self._reader = reader
        self._lock = threading.RLock()
        """Guards the merge state: POSTs merge on their connection threads, the loop writes windows."""
        self._buffer: DurableBuffer | None = None
        self._delivery: Delivery | None = None
        self._acked = -math.inf
        self._batches: deque[tuple[int, float]] = deque()
        self._batch = 0
        self._buffered_floor: float | None = None
        self._outcomes: dict[str, int] = {}
        self._windows_written = 0
        self._windows_rewritten = 0
        self._last: dict[str, Any] | None = None
        self._logged: dict[str, float] = {}
        self._seen_counts = (0, 0, 0, 0)
        self._seen_errors: dict[str, int] = {}
        telemetry.ready.set(0)

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self, buffer_dir: Path) -> None:
        """Open the disk buffer and the writer; what the buffer still holds counts as written."""
        self._buffer = DurableBuffer(buffer_dir, self.spec.buffer_max_bytes)
        pending = self._buffer.peek_many(len(self._buffer))
        found = [m.window_end for r in pending for m in watermark.markers(r.lines, self.spec.rule, self.spec.namespace)]
        self._buffered_floor = max(found) if found else None
        writer = None
        c = self.config
        if c.influxdb_url and c.influxdb_org and c.bucket:
            try:
                token = read_token(self.spec.influxdb)
            except OSError as exc:
                log.error("influx_token_unreadable", token_file=self.spec.influxdb.token_file, error=exc.strerror)
                token = None
            writer = InfluxWriter(WriterSettings(url=c.influxdb_url, org=c.influxdb_org, bucket=c.bucket, token=token))
        else:
            self.config_error = "influxdb url, org and bucket must be set (spec or shared-config)"
        self._delivery = Delivery(writer, self._buffer)
        log.info(
            "processor_opened",
            rule=self.spec.rule,
            instance=self.instance,
            buffered_batches=len(pending),
            buffered_floor=self._buffered_floor,
        )

    async def read_back(self, stop: asyncio.Event) -> None:
        """Read the watermark from InfluxDB until it works; then the processor is ready."""
        c = self.config
        delay = 0.5
        while not stop.is_set():
            if self.config_error is None and c.influxdb_url and c.influxdb_org and c.bucket:
                try:
                    token = read_token(self.spec.influxdb)
                    target = watermark.Target(c.influxdb_url, c.influxdb_org, c.bucket, token)
                    found = await asyncio.to_thread(self._reader, target, self.spec.rule, self.spec.namespace)
                except Exception as exc:  # any failure: not ready, try again; never guess a watermark
                    self.read_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("watermark_read_failed", error=self.read_error, retry_in=delay)
                else:
                    self._ready(found)
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
            delay = min(READ_RETRY_MAX, delay * 2)

    def _ready(self, found: float | None) -> None:
        self.read_error = None
        with self._lock:
            if found is not None:
                self._acked = max(self._acked, found)
            floors = [f for f in (found, self._buffered_floor) if f is not None]
            floor = max(floors) if floors else None
            self.rollup = Rollup(self.config, started=self._clock(), floor=floor)
            self._sync_watermark()
        self.telemetry.ready.set(1)
        # Everything alive now (imported modules, clients) lives as long as the process: out of
        # the collector's way, so its passes walk only what partials allocate. Garbage first:
        # after a reload, the previous instance's state must not be frozen in.
        gc.collect()
        gc.freeze()
        log.info(
            "processor_ready",
            rule=self.spec.rule,
            instance=self.instance,
            watermark=found,
            floor=floor,
            grace=self.config.restart_grace,
        )

    @property
    def ready(self) -> bool:
        return self.rollup is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Read the watermark back, then write windows as they come due until ``stop``."""
        reader = asyncio.create_task(self.read_back(stop))
        tick = max(0.05, min(0.5, self.config.window / 8))
        try:
            while not stop.is_set():
                await self.tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=tick)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def close(self) -> None:
        """Give the disk buffer a moment to drain, then let go of the writer and the files."""
        if self._delivery is not None and self._buffer is not None and len(self._buffer):
            await self._delivery.drain(budget=WRITE_BUDGET)
            with self._lock:
                self._update_acked()
        if self._delivery is not None and self._delivery.writer is not None:
            self._delivery.writer.close()
        if self._buffer is not None:
            self._buffer.close()
        log.info("processor_stopped", rule=self.spec.rule, instance=self.instance, watermark=self.watermark)

    # --- partials in -------------------------------------------------------------------------

    def prepare(self, request: server.Request) -> server.Response:
        """``POST /v1/partials``, on the connection's thread: validate, then merge under the state lock.

        Not on the event loop: handing each request over to it and back cost more CPU than the
        merge itself, and the lock serialises exactly what the loop would have.
        """
        if not self.ready:
            why = self.config_error or self.read_error or "reading the watermark back from InfluxDB"
            return server.Response(
                503, server.error(503, f"not ready: {why}").body, server.JSON, (("Retry-After", "2"),)
            )
        kind = request.headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
        if kind not in {"application/json", ""}:
            return server.error(415, f"Content-Type {kind!r} is not supported (send application/json)")
        try:
            partial = WindowPartial.model_validate_json(request.body)
        except ValidationError as exc:
            refusal = validation_error(exc)
            with self._lock:
                return self._invalid(refusal)
        digest = content_digest(request.body)
        with self._lock:
            return self.offer(partial, digest)

    def _invalid(self, response: server.Response) -> server.Response:
        self._count("invalid")
        self._log_refusal("invalid", response.body.decode(errors="replace"))
        return response

    def offer(self, partial: WindowPartial, digest: bytes) -> server.Response:
        """Merge one partial (the caller holds the state lock) and answer with a ``PartialsAck``."""
        assert self.rollup is not None
        with tracing.span("processor.partial", node=partial.node, series=len(partial.series)):
            outcome = self.rollup.offer(partial, digest, self._clock())
        name = "duplicate" if outcome.duplicate else "accepted" if outcome.accepted else str(outcome.reason)
        self._count(name)
        if not outcome.accepted and outcome.reason is not None:
            self._log_refusal(outcome.reason.value, outcome.message or "", node=partial.node)
        ack = self._ack(outcome)
        return server.Response(202 if outcome.accepted else 200, ack.model_dump_json().encode(), server.JSON)

    def _ack(self, outcome: Outcome) -> PartialsAck:
        return PartialsAck(
            rule=self.spec.rule,
            instance=self.instance,
            watermark=self.watermark,
            accepted=outcome.accepted,
            reason=outcome.reason,
            message=outcome.message,
            window_end=outcome.window_end,
        )

    def state(self) -> server.Response:
        if not self.ready:
            return server.error(503, "not ready: the watermark has not been read back yet")
        with self._lock:
            body = ProcessorState(rule=self.spec.rule, instance=self.instance, watermark=self.watermark)
        return server.Response(200, body.model_dump_json().encode(), server.JSON)

    def _count(self, outcome: str) -> None:
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1
        self.telemetry.partials.labels(outcome=outcome).inc()
        if outcome == "invalid":
            self.telemetry.dropped_partials.inc()

    def _log_refusal(self, reason: str, message: str, **extra: Any) -> None:
        now = time.monotonic()
        if now - self._logged.get(reason, -math.inf) >= LOG_EVERY:
            self._logged[reason] = now
            log.warning("partial_refused", rule=self.spec.rule, reason=reason, message=message[:500], **extra)

    # --- the watermark -----------------------------------------------------------------------

    @property
    def watermark(self) -> float | None:
        """Every window at or before this that was accepted is in InfluxDB (what agents may delete)."""
        mark = self._acked
        if self.rollup is not None:
            pending = self.rollup.pending_below(mark)
            if pending is not None:
                mark = min(mark, pending - self.config.window)
        return None if mark == -math.inf else mark

    def _update_acked(self) -> None:
        """Move the acknowledged frontier past every batch that left the disk buffer."""
        assert self._buffer is not None
        if len(self._buffer) == 0:
            done = [end for _, end in self._batches]
            if self._buffered_floor is not None:
                done.append(self._buffered_floor)
                self._buffered_floor = None
            self._acked = max([self._acked, *done])
            self._batches.clear()
        else:
            head = self._buffer.peek()
            assert head is not None
            found = watermark.markers(head.lines, self.spec.rule, self.spec.namespace)
            if found and found[0].instance == self.instance:
                if self._buffered_floor is not None:  # every earlier instance's batch is out
                    self._acked = max(self._acked, self._buffered_floor)
                    self._buffered_floor = None
                while self._batches and self._batches[0][0] < found[0].batch:
                    self._acked = max(self._acked, self._batches.popleft()[1])
        self._sync_watermark()

    def _sync_watermark(self) -> None:
        mark = self.watermark
        if mark is not None:
            self.telemetry.watermark.set(mark)

    # --- writing windows ---------------------------------------------------------------------

    async def tick(self) -> None:
        """Write every due window in order; otherwise replay the disk buffer if it holds anything."""
        assert self._delivery is not None
        assert self._buffer is not None
        rollup = self.rollup
        with self._lock:
            due = rollup.due(self._clock()) if rollup is not None else []
        for window in due:
            await self._write(window)
        if not due and len(self._buffer):
            await self._delivery.drain(budget=WRITE_BUDGET)
            with self._lock:
                self._update_acked()
        with self._lock:
            if rollup is not None:
                rollup.expire(self._clock())
                self.telemetry.open_windows.set(rollup.open_windows)
            self._sync_counters()

    async def _write(self, window: RollupWindow) -> None:
        assert self.rollup is not None
        assert self._delivery is not None
        started = time.perf_counter()
        rewrite = window.written
        with tracing.span("processor.window_write", window_end=window.end, series=window.series, rewrite=rewrite):
            with self._lock:
                lines = self._lines(window, rewrite)
                # Marked before the write: a partial arriving meanwhile makes the window due again.
                self.rollup.written(window)
                self._batches.append((self._batch, window.end))
                self._batch += 1
            self.telemetry.window_write.observe(time.perf_counter() - started)
            # Buffered first (fsynced), then sent: a window is never only in memory while InfluxDB is slow.
            self._delivery.enqueue(lines)
            await self._delivery.drain(budget=WRITE_BUDGET)
        with self._lock:
            self._update_acked()

    def _lines(self, window: RollupWindow, rewrite: bool) -> list[str]:
        assert self.rollup is not None
        spec = self.spec
        end = window.end
        lines = [
            lineproto.encode_point(spec.output.measurement, tags, fields, end)
            for tags, fields in self.rollup.points(window)
        ]
        methods = {"exact": 0, "sketch": 0}
        for group in window.states:
            methods["exact" if group.exact else "sketch"] += 1
        if rewrite:
            self._windows_rewritten += 1
            self.telemetry.windows_rewritten.inc()
        else:
            self._windows_written += 1
            self.telemetry.windows_written.inc()
        if self._last is None or end >= self._last["end"]:
            self._last = {
                "end": end,
                "series": window.series,
                "nodes": window.nodes,
                # Who contributed, so the operator can name the nodes whose agents run but sent nothing.
                "node_names": sorted(window.node_index) if window.nodes <= NODE_NAMES_SHOWN else None,
                "expected_nodes": self.rollup.expected_nodes(end),
                "dropped_series": len(window.dropped_keys),
                "quantile_methods": methods,
            }
            self.telemetry.series.set(window.series)
            self.telemetry.nodes.set(window.nodes)
            self.telemetry.expected_nodes.set(self._last["expected_nodes"])
            self.telemetry.last_window.set(end)
        marker = watermark.Marker(end, self.instance, self._batch)
        lines.append(watermark.marker_line(spec.rule, spec.namespace, marker))
        lines.append(self._health_line(window))
        if rewrite:
            log.info("window_rewritten", rule=spec.rule, window_end=end, series=window.series)
        return lines

    def _health_line(self, window: RollupWindow) -> str:
        assert self.rollup is not None
        assert self._buffer is not None
        assert self._delivery is not None
        counters = self.rollup.counters
        values = (
            self._windows_written,
            window.series,
            window.nodes,
            counters.late_partials,
            self._dropped(),
            counters.dropped_groups,
            self._buffer.points,
            self._delivery.stats.failed_requests,
        )
        fields: dict[str, lineproto.FieldValue] = dict(zip(HEALTH_FIELDS, values, strict=True))
        tags = {"rule": self.spec.rule, "namespace": self.spec.namespace, "cluster": self.config.cluster}
        return lineproto.encode_point(TELEMETRY_MEASUREMENT, tags, fields, window.end)

    def _dropped(self) -> int:
        """Partials refused for good: the agent dropped them (kept-for-later refusals are not drops)."""
        assert self.rollup is not None
        refused = self.rollup.counters.dropped_partials
        return self._outcomes.get("invalid", 0) + sum(n for r, n in refused.items() if not RefusalReason(r).keep)

    def _sync_counters(self) -> None:
        t = self.telemetry
        if self.rollup is not None:
            c = self.rollup.counters
            dropped = sum(n for r, n in c.dropped_partials.items() if not RefusalReason(r).keep)
            now = (c.late_partials, dropped, c.dropped_groups, c.dropped_series)
            late, drops, groups, series = (n - seen for n, seen in zip(now, self._seen_counts, strict=True))
            t.late_partials.inc(late)
            t.dropped_partials.inc(drops)
            t.dropped_groups.inc(groups)
            t.dropped_series.inc(series)
            self._seen_counts = now
        if self._delivery is not None:
            for kind, n in self._delivery.stats.errors.items():
                t.write_errors.labels(kind=kind).inc(n - self._seen_errors.get(kind, 0))
                self._seen_errors[kind] = n
        if self._buffer is not None:
            t.buffered_points.set(self._buffer.points)

    # --- /status -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._status()

    def _status(self) -> dict[str, Any]:
        rollup = self.rollup
        counters = rollup.counters if rollup is not None else None
        refused = counters.dropped_partials if counters is not None else {}
        last = dict(self._last) if self._last is not None else None
        mark = self.watermark
        if last is not None:
            last["acknowledged"] = mark is not None and last["end"] <= mark
        return {
            "rule": self.spec.rule,
            "namespace": self.spec.namespace,
            "instance": self.instance,
            "ready": self.ready,
            "watermark": mark,
            "open_windows": rollup.open_windows if rollup is not None else 0,
            "last_window": last,
            "partials": {
                "received": sum(self._outcomes.values()),
                "accepted": self._outcomes.get("accepted", 0),
                "duplicates": self._outcomes.get("duplicate", 0),
                "late": counters.late_partials if counters is not None else 0,
                "dropped": {r: n for r, n in refused.items() if not RefusalReason(r).keep},
                "kept": {r: n for r, n in refused.items() if RefusalReason(r).keep},
                "invalid": self._outcomes.get("invalid", 0),
            },
            "windows_written": self._windows_written,
            "windows_rewritten": self._windows_rewritten,
            "dropped_series": counters.dropped_series if counters is not None else 0,
            "dropped_groups": counters.dropped_groups if counters is not None else 0,
            "buffered_points": self._buffer.points if self._buffer is not None else 0,
            "errors": {
                "writes": dict(self._delivery.stats.errors) if self._delivery is not None else {},
                "watermark_read": self.read_error,
                "config": self.config_error or self.reload_error,
            },
            "config_hash": self.loaded.hash,
            "version": self.version,
        }

    def app(self) -> server.App:
        """The processor's endpoints on the agent's HTTP server."""
        app = server.make_app(self.telemetry, self.status, lambda: self.ready)
        app.routes[PARTIALS_PATH] = self.state
        app.posts[PARTIALS_PATH] = self.prepare
        app.max_body = self.spec.max_body_bytes
        return app

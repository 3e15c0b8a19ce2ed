"""Getting each window's lines into InfluxDB in order, through the durable buffer — buffer first.

Policy:
- Every batch is written to the durable buffer *before* it is sent (``enqueue``), then sent
  from there (``drain``) and removed once InfluxDB acknowledged it. Nothing waits on the
  network before it is on disk: a hung InfluxDB, a SIGTERM or a SIGKILL at any moment loses
  no window, and a window sent twice overwrites itself (timestamps are window ends).
- A window's lines become batches of ``batch_size`` lines, one record and one request each,
  so one refused batch never takes its siblings down with it.
- Replay sends the oldest batch alone (a probe: during an outage that is one failed request,
  not several), then keeps ``REPLAY_IN_FLIGHT`` batches in flight: the next one goes out as
  soon as the oldest is answered, so InfluxDB always has work queued (in groups that each
  waited for their slowest batch, a 2-core influxd idled one core at every group's tail).
  Batches are acknowledged to the buffer strictly oldest first: when one fails, it and every
  younger batch stay buffered, even those InfluxDB accepted meanwhile (resending them later
  rewrites the same points).
- A retryable failure (network, 429, 5xx) that outlives the retry budget → the batch stays.
- 401/403/404 (token, org or bucket wrong) are not retried now but the batch stays: it
  replays once the configuration (or the token file) is fixed. Other 4xx mean the data itself
  was refused — InfluxDB writes a batch's valid points and names how many it dropped — so the
  batch is acknowledged and the dropped points are counted and logged with InfluxDB's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from observatory_agent.sinks.buffer import DurableBuffer, Record
from observatory_agent.sinks.influx import InfluxWriter, PermanentWriteError, RetryableWriteError, dropped_points

log = structlog.get_logger("observatory_agent.sinks.delivery")

CONFIG_STATUSES: Final = frozenset({401, 403, 404})
REPLAY_IN_FLIGHT: Final = 4
"""Buffered batches replayed concurrently once the oldest one went through."""
ATTEMPT_BUDGET: Final = 1.0
"""Seconds of retries one replayed batch gets before the drain backs off (a request's own timeout aside)."""


@dataclass
class DeliveryStats:
    points_written: int = 0
    rejected_points: int = 0
    """Points InfluxDB refused (field type conflict, bad line): counted, never retried."""
    last_successful_write: float | None = None
    last_error: str | None = None
    """The newest failure, with InfluxDB's own message."""
    errors: dict[str, int] = field(default_factory=dict)
    """Write failures by kind: retryable, config, rejected, dropped_buffer_full."""

    def count(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    @property
    def failed_requests(self) -> int:
        """Write requests that failed: the ``write_errors`` agents and processors write about themselves.

        ``dropped_buffer_full`` counts points, not requests, so it stays out (it has its own counters).
        """
        return sum(n for kind, n in self.errors.items() if kind != "dropped_buffer_full")


@dataclass(frozen=True)
class _Sent:
    outcome: str
    """ok, retry, config or rejected."""
    dropped: int = 0


class Delivery:
    def __init__(
        self,
        writer: InfluxWriter | None,
        buffer: DurableBuffer,
        *,
        batch_size: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.writer = writer
        self.buffer = buffer
        self.batch_size = max(1, batch_size)
        self.stats = DeliveryStats()
        self._clock = clock

    def enqueue(self, lines: Sequence[str]) -> None:
        """Queue a window's lines durably, one record per batch; never waits on the network."""
        size = self.batch_size
        for start in range(0, len(lines), size):
            batch = lines[start : start + size]
            dropped = self.buffer.append_payload("\n".join(batch).encode(), len(batch))
            if dropped:
                self.stats.count("dropped_buffer_full", dropped)
                log.error(
                    "buffer_full_dropped_oldest",
                    dropped_points=dropped,
                    max_bytes=self.buffer.max_bytes,
                    total_dropped=self.buffer.dropped_points,
                )

    async def _send(self, record: Record, budget: float) -> _Sent:
        if self.writer is None:
            return _Sent("config")
        try:
            await self.writer.send(record.payload, budget=budget)
        except RetryableWriteError as exc:
            self.stats.count("retryable")
            self.stats.last_error = str(exc)
            log.warning("influx_unavailable", error=str(exc), points=record.points)
            return _Sent("retry")
        except PermanentWriteError as exc:
            kind = "config" if exc.status in CONFIG_STATUSES else "rejected"
            self.stats.count(kind)
            self.stats.last_error = str(exc)
            log.error("influx_refused", status=exc.status, influx_message=exc.message, points=record.points)
            if kind == "config":
                return _Sent("config")
            return _Sent("rejected", dropped_points(exc.message, record.points))
        return _Sent("ok")

    async def drain(self, *, budget: float) -> bool:
        """Replay buffered batches oldest first until empty, a failure, or ``budget`` is spent.

        Returns True when the buffer is empty.
        """
        deadline = time.monotonic() + budget
        width = 1  # the head alone first; concurrent only once InfluxDB is known to answer
        in_flight: deque[tuple[Record, asyncio.Task[_Sent]]] = deque()
        try:
            while True:
                while len(in_flight) < width and (remaining := deadline - time.monotonic()) > 0:
                    (record,) = self.buffer.peek_many(1, skip=len(in_flight)) or (None,)
                    if record is None:
                        break
                    task = asyncio.ensure_future(self._send(record, min(remaining, ATTEMPT_BUDGET)))
                    in_flight.append((record, task))
                if not in_flight:
                    return len(self.buffer) == 0
                record, task = in_flight.popleft()
                result = await task
                if result.outcome in {"retry", "config"}:
                    # Younger batches already sent may be written: let them finish, keep them all.
                    await asyncio.gather(*(t for _, t in in_flight))
                    return False
                self.buffer.ack(record)  # oldest first; a no-op for one dropped meanwhile
                written = record.points - result.dropped
                self.stats.rejected_points += result.dropped
                self.stats.points_written += written
                if written:
                    self.stats.last_successful_write = self._clock()
                width = REPLAY_IN_FLIGHT
        finally:
            for _, task in in_flight:  # cancelled (shutdown): nothing outlives the drain
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

"""Getting each window's lines into InfluxDB exactly in order, through the durable buffer.

Policy:
- While the buffer holds anything, new batches queue behind it so InfluxDB sees windows in order.
- Replay sends the oldest batch alone (a probe: during an outage that is one failed request,
  not several), then up to ``REPLAY_IN_FLIGHT`` batches at once. Batches are acknowledged to
  the buffer strictly oldest first: when one fails, it and every younger batch stay buffered,
  even those InfluxDB accepted meanwhile (resending them later rewrites the same points).
- A retryable failure (network, 429, 5xx) that outlives the retry budget → the batch is buffered.
- 401/403/404 (token, org or bucket wrong) are not retried now but the batch is buffered: it
  replays once the configuration is fixed. Other 4xx mean the data itself was refused:
  the batch is dropped, counted and logged with InfluxDB's message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.influx import InfluxWriter, PermanentWriteError, RetryableWriteError

log = structlog.get_logger("observatory_agent.sinks.delivery")

CONFIG_STATUSES = frozenset({401, 403, 404})
REPLAY_IN_FLIGHT = 4
"""Buffered batches replayed concurrently once the oldest one went through."""


@dataclass
class DeliveryStats:
    points_written: int = 0
    last_successful_write: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    """Write failures by kind: retryable, config, rejected, dropped_buffer_full."""

    def count(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n


class Delivery:
    def __init__(
        self, writer: InfluxWriter | None, buffer: DurableBuffer, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.writer = writer
        self.buffer = buffer
        self.stats = DeliveryStats()
        self._clock = clock

    def _buffer(self, lines: Sequence[str]) -> None:
        dropped = self.buffer.append(lines)
        if dropped:
            self.stats.count("dropped_buffer_full", dropped)
            log.error(
                "buffer_full_dropped_oldest",
                dropped_points=dropped,
                max_bytes=self.buffer.max_bytes,
                total_dropped=self.buffer.dropped_points,
            )

    def _written(self, n: int) -> None:
        self.stats.points_written += n
        self.stats.last_successful_write = self._clock()

    async def _send(self, lines: Sequence[str], budget: float) -> str:
        """``ok``, ``retry`` (keep it), ``config`` (keep it) or ``rejected`` (drop it)."""
        if self.writer is None:
            return "config"
        try:
            await self.writer.write(lines, budget=budget)
        except RetryableWriteError as exc:
            self.stats.count("retryable")
            log.warning("influx_unavailable", error=str(exc), points=len(lines))
            return "retry"
        except PermanentWriteError as exc:
            kind = "config" if exc.status in CONFIG_STATUSES else "rejected"
            self.stats.count(kind)
            log.error("influx_refused", status=exc.status, influx_message=exc.message, points=len(lines))
            return kind
        self._written(len(lines))
        return "ok"

    async def deliver(self, lines: Sequence[str], *, budget: float) -> None:
        """Write ``lines`` now if nothing is queued, else queue them and drain in order."""
        if not lines:
            await self.drain(budget=budget)
            return
        if len(self.buffer) == 0:
            outcome = await self._send(lines, budget)
            if outcome in {"retry", "config"}:
                self._buffer(lines)
            return
        self._buffer(lines)
        await self.drain(budget=budget)

    async def drain(self, *, budget: float) -> None:
        """Replay buffered batches oldest first until empty, a failure, or ``budget`` is spent."""
        deadline = time.monotonic() + budget
        width = 1  # the head alone first; concurrent only once InfluxDB is known to answer
        while records := self.buffer.peek_many(width):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            attempt = min(remaining, 1.0)
            outcomes = await asyncio.gather(*(self._send(r.lines, attempt) for r in records))
            for record, outcome in zip(records, outcomes, strict=True):
                if outcome in {"retry", "config"}:
                    return
                self.buffer.ack(record)  # oldest first; a no-op for one dropped meanwhile
            width = REPLAY_IN_FLIGHT

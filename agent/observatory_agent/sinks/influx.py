"""Write line protocol to InfluxDB 2 with influxdb-client: batches, gzip, retries with jitter.

Errors, as the delivery loop sees them::

    WriteError                 base: the batch was not written
    ├── RetryableWriteError    timeout, connection refused, 429, 5xx: try again later
    └── PermanentWriteError    any other 4xx: retrying cannot help; carries InfluxDB's message

Retries use exponential backoff with full jitter (``backoff_delay``) within a time budget;
a 429's ``Retry-After`` is honoured. The token comes from a file or an environment variable
and is never logged or put into an error message.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from observatory_agent.contract import InfluxTarget
from observatory_agent.sinks.lineproto import PRECISION

log = structlog.get_logger("observatory_agent.sinks.influx")


class WriteError(Exception):
    """A batch was not written."""


class RetryableWriteError(WriteError):
    """Worth retrying: the server or the network was unavailable or overloaded."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentWriteError(WriteError):
    """InfluxDB refused the batch (4xx); ``message`` is InfluxDB's own explanation."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**attempt)]`` (attempt counts from 0)."""
    return rng.uniform(0.0, min(cap, base * (2.0**attempt)))


def influx_message(body: Any) -> str:
    """InfluxDB's ``{"code": ..., "message": ...}`` error body as one readable line."""
    if isinstance(body, bytes | bytearray):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str):
        try:
            parsed = json.loads(body)
        except ValueError:
            return body.strip()[:500]
        if isinstance(parsed, dict) and "message" in parsed:
            return str(parsed["message"])[:500]
        return body.strip()[:500]
    return "" if body is None else str(body)[:500]


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    value = headers.get("Retry-After") if hasattr(headers, "get") else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def classify(exc: BaseException) -> WriteError:
    """Map influxdb-client / urllib3 failures onto our two kinds, never echoing credentials."""
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        message = influx_message(getattr(exc, "body", None)) or str(getattr(exc, "reason", "")) or "no message"
        if status == 429 or status >= 500:
            return RetryableWriteError(f"HTTP {status}: {message}", _retry_after(getattr(exc, "headers", None)))
        return PermanentWriteError(status, message)
    # No HTTP status: timeouts, refused connections, DNS — the network, not the data.
    return RetryableWriteError(f"{type(exc).__name__}: {exc}")


def read_token(target: InfluxTarget, environ: dict[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (a mounted Secret) or else ``token_env``."""
    if target.token_file:
        return Path(target.token_file).read_text().strip()
    env = os.environ if environ is None else environ
    return env.get(target.token_env)


@dataclass(frozen=True)
class WriterSettings:
    url: str
    org: str
    bucket: str
    token: str | None
    timeout: float = 5.0
    """Seconds per HTTP request: short enough that a hung InfluxDB cannot hold up shutdown."""
    batch_size: int = 5000
    """Lines per request: large enough for throughput, small enough to retry cheaply."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    gzip: bool = True

    def __repr__(self) -> str:  # the token must never reach a log line
        return f"WriterSettings(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, token=***)"


def _import_client() -> tuple[Any, Any]:
    """influxdb-client's classes, imported on the first write (~1 s and ~35 MB: not at start).

    The client imports numpy whenever it is installed, for DataFrame writes the agent never
    makes; blocking it for the duration of the import saves ~20 MB of RSS where numpy exists.
    """
    blocked = "numpy" not in sys.modules
    if blocked:
        sys.modules["numpy"] = None  # type: ignore[assignment]
    try:
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
    finally:
        if blocked:
            del sys.modules["numpy"]
    return InfluxDBClient, SYNCHRONOUS


class InfluxWriter:
    """Sends line batches; ``write`` retries retryable failures until ``budget`` seconds pass."""

    def __init__(
        self,
        settings: WriterSettings,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._sleep = sleep
        self._clock = clock
        self._client: Any = None
        self._api: Any = None

    def _ensure_client(self) -> Any:
        if self._api is None:
            InfluxDBClient, SYNCHRONOUS = _import_client()

            s = self.settings
            self._client = InfluxDBClient(
                url=s.url, token=s.token or "", org=s.org, timeout=int(s.timeout * 1000), enable_gzip=s.gzip
            )
            self._api = self._client.write_api(write_options=SYNCHRONOUS)
        return self._api

    def _post(self, body: str) -> None:
        api = self._ensure_client()
        try:
            api.write(bucket=self.settings.bucket, org=self.settings.org, record=body, write_precision=PRECISION)
        except Exception as exc:  # mapped to our error tree right here
            raise classify(exc) from exc

    async def write_once(self, lines: Sequence[str]) -> None:
        """Every batch of ``lines``, one attempt each (in a thread: the client blocks)."""
        size = self.settings.batch_size
        for start in range(0, len(lines), size):
            body = "\n".join(lines[start : start + size])
            await asyncio.to_thread(self._post, body)

    async def write(self, lines: Sequence[str], *, budget: float) -> None:
        """Write with retries; raises the last ``RetryableWriteError`` once ``budget`` is spent."""
        deadline = self._clock() + budget
        attempt = 0
        while True:
            try:
                await self.write_once(lines)
                return
            except RetryableWriteError as exc:
                delay = backoff_delay(
                    attempt, base=self.settings.base_delay, cap=self.settings.max_delay, rng=self._rng
                )
                if exc.retry_after is not None:
                    delay = max(delay, exc.retry_after)
                if self._clock() + delay > deadline:
                    raise
                log.warning("influx_write_retry", attempt=attempt + 1, delay=round(delay, 3), error=str(exc))
                await self._sleep(delay)
                attempt += 1

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

"""Write line protocol to InfluxDB 2 with influxdb-client: batches, gzip, retries with jitter.

Errors, as the delivery loop sees them::

    WriteError                 base: the batch was not written
    ├── RetryableWriteError    timeout, connection refused, 429, 5xx: try again later
    └── PermanentWriteError    any other 4xx: retrying cannot help; carries InfluxDB's message

A batch (a request body of at most ``batch_size`` lines, gzip level 1) is posted through
influxdb-client's ``WriteService`` and retried with exponential backoff and full jitter
(``backoff_delay``) within its time budget; a 429's ``Retry-After`` is honoured. Up to
``max_in_flight`` requests go out at once. The token comes from a file — re-read when it
changes, so a rotated Secret needs no restart — or an environment variable, and is never
logged or put into an error message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import json
import os
import random
import re
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

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


def read_token(target: InfluxTarget, environ: Mapping[str, str] | None = None) -> str | None:
    """The token from ``token_file`` (a mounted Secret) or else ``token_env``."""
    if target.token_file:
        return Path(target.token_file).read_text().strip()
    env = os.environ if environ is None else environ
    return env.get(target.token_env)


class TokenSource:
    """The current token: ``token_file`` is re-read whenever it changes, so a rotated Secret is used
    without a restart (the kubelet swaps the file behind a symlink; its inode and mtime change)."""

    def __init__(self, target: InfluxTarget, environ: Mapping[str, str] | None = None) -> None:
        self._target = target
        self._environ = environ
        self._stamp: tuple[int, int, int] | None = None
        self._token: str | None = None
        self.error: str | None = None

    def get(self) -> str | None:
        path = self._target.token_file
        if not path:
            return read_token(self._target, self._environ)
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._token = read_token(self._target, self._environ)
                if self._stamp is not None:
                    log.info("influx_token_reloaded", token_file=path)
                self._stamp = stamp
                self.error = None
        except OSError as exc:
            if self.error is None:
                log.error("influx_token_unreadable", token_file=path, error=exc.strerror or str(exc))
            self.error = f"token file {path}: {exc.strerror or exc}"
        return self._token


_DROPPED = re.compile(r"dropped=(\d+)")


def dropped_points(message: str, batch_points: int) -> int:
    """Points InfluxDB says it dropped from a partially written batch (``dropped=N``), else all of it."""
    found = _DROPPED.search(message)
    return min(batch_points, int(found.group(1))) if found else batch_points


@dataclass(frozen=True)
class WriterSettings:
    url: str
    org: str
    bucket: str
    token: str | Callable[[], str | None] | None
    """The token, or a function giving the current one (``TokenSource.get``), read per request."""
    timeout: float = 5.0
    """Seconds per HTTP request: short enough that a hung InfluxDB cannot hold up shutdown."""
    batch_size: int = 5000
    """Lines per request: large enough for throughput, small enough to retry cheaply."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    gzip: bool = True
    gzip_level: int = 1
    """Level 1 compresses ~6× faster than gzip's default 9, for bodies ~10% larger."""
    max_in_flight: int = 4
    """Requests of one write sent concurrently: InfluxDB parses one batch while the next travels."""

    def __repr__(self) -> str:  # the token must never reach a log line
        return f"WriterSettings(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, token=***)"


_LIGHT_PACKAGES: Final = (
    "influxdb_client",
    "influxdb_client.client",
    "influxdb_client.service",
    "influxdb_client._sync",
)


_IMPORT_LOCK = threading.Lock()


def _import_write_path() -> tuple[Any, Any, Any, str]:
    """influxdb-client's ``WriteService``, ``Configuration``, synchronous ``RESTClientObject``, version.

    The package's ``__init__`` (and those of ``client`` and ``service``) import every generated
    service and domain model: ~15 MB of RSS for a process that only ever posts line protocol.
    The three modules the write path needs import none of that, so they are loaded under
    placeholder parent packages that are removed again afterwards; a later ``import
    influxdb_client`` still runs the real ``__init__`` and reuses these very modules (and so
    the same ``ApiException`` class). When the package is already imported, it is simply used.
    """
    placed: list[str] = []
    if "influxdb_client" not in sys.modules:
        spec = importlib.util.find_spec("influxdb_client")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("influxdb-client is not installed")
        root = next(iter(spec.submodule_search_locations))
        for name in _LIGHT_PACKAGES:
            if name in sys.modules:
                continue
            package = types.ModuleType(name)
            package.__path__ = [os.path.join(root, *name.split(".")[1:])]
            package.__package__ = name
            sys.modules[name] = package
            placed.append(name)
    try:
        from influxdb_client._sync.rest import RESTClientObject  # noqa: PLC0415
        from influxdb_client.configuration import Configuration  # noqa: PLC0415
        from influxdb_client.service.write_service import WriteService  # noqa: PLC0415
        from influxdb_client.version import VERSION  # noqa: PLC0415
    finally:
        for name in placed:
            del sys.modules[name]
    return WriteService, Configuration, RESTClientObject, VERSION


class _WriteApiClient:
    """The part of influxdb-client's ``ApiClient`` that ``WriteService.post_write`` calls.

    ``ApiClient`` itself imports every domain model for response deserialisation, which a
    write (204, no body) never needs. Requests go through influxdb-client's own REST client,
    which raises its ``ApiException`` (status, InfluxDB's message, headers) on any non-2xx.
    """

    def __init__(self, configuration: Any, rest: Any, token: Callable[[], str | None], user_agent: str) -> None:
        self.configuration = configuration
        self.rest_client = rest
        self._token = token
        self._user_agent = user_agent

    @staticmethod
    def select_header_accept(accepts: Sequence[str]) -> str:
        return "application/json" if "application/json" in accepts else ", ".join(accepts)

    @staticmethod
    def select_header_content_type(content_types: Sequence[str]) -> str:
        return content_types[0] if content_types else "application/json"

    def call_api(  # noqa: PLR0917 - WriteService passes these positionally
        self,
        resource_path: str,
        method: str,
        path_params: Any = None,
        query_params: Any = None,
        header_params: dict[str, str] | None = None,
        body: Any = None,
        _request_timeout: Any = None,
        **_: Any,
    ) -> None:
        headers = {
            **(header_params or {}),
            "Authorization": f"Token {self._token() or ''}",
            "User-Agent": self._user_agent,
        }
        self.rest_client.request(
            method,
            self.configuration.host + resource_path,
            query_params=query_params,
            headers=headers,
            body=body,
            _request_timeout=_request_timeout,
        )


class InfluxWriter:
    """Sends line batches; ``write`` retries retryable failures until ``budget`` seconds pass.

    A write's batches go out concurrently, at most ``max_in_flight`` requests at a time, each
    retried on its own. ``write`` returns only when InfluxDB acknowledged every batch and raises
    otherwise, so its caller keeps (buffers) all of ``lines``: batches already accepted are then
    sent again later, which overwrites them with themselves (timestamps are window ends).
    """

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
        self._service: Any = None
        self._rest: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.on_request: Callable[[float], None] | None = None
        """Called with each request's duration (from a writer thread): the write latency metric."""

    def _ensure_service(self) -> Any:
        with _IMPORT_LOCK:  # the first write's batches arrive in several threads at once
            return self._ensure_service_locked()

    def _ensure_service_locked(self) -> Any:
        if self._service is None:
            WriteService, Configuration, RESTClientObject, version = _import_write_path()

            s = self.settings
            conf = Configuration()
            conf.host = s.url.rstrip("/")
            conf.timeout = int(s.timeout * 1000)
            self._rest = RESTClientObject(conf, pools_size=1, maxsize=self._in_flight, retries=False)
            token = s.token
            api = _WriteApiClient(
                conf, self._rest, token if callable(token) else lambda: token, f"influxdb-client-python/{version}"
            )
            self._service = WriteService(api)
        return self._service

    @property
    def _in_flight(self) -> int:
        return max(1, self.settings.max_in_flight)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        # The client blocks; its own few threads keep the loop's default executor out of it.
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self._in_flight, thread_name_prefix="influx")
        return self._pool

    def _post(self, payload: bytes) -> None:
        """One request (blocking, in the writer's threads); raises ``WriteError``."""
        service = self._ensure_service()
        s = self.settings
        started = time.perf_counter()
        try:
            if s.gzip:
                body = zlib.compress(payload, s.gzip_level, wbits=31)  # wbits 31: gzip framing
                service.post_write(org=s.org, bucket=s.bucket, body=body, precision=PRECISION, content_encoding="gzip")
            else:
                service.post_write(org=s.org, bucket=s.bucket, body=payload, precision=PRECISION)
        except Exception as exc:  # mapped to our error tree right here
            # A connection that failed is not reused: the next attempt connects (and is routed) afresh. One kept
            # alive to the wrong peer (a proxy answering for a Service address not routed yet) would be reused forever.
            self._rest.pool_manager.clear()
            raise classify(exc) from exc
        finally:
            if self.on_request is not None:
                self.on_request(time.perf_counter() - started)

    async def send(self, payload: bytes, *, budget: float) -> None:
        """One batch (a request body), retried with backoff until acknowledged or ``budget`` is spent."""
        await self._write_batch(payload, self._clock() + budget)

    async def _write_batch(self, payload: bytes, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            try:
                await loop.run_in_executor(self._executor(), self._post, payload)
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

    async def write(self, lines: Sequence[str], *, budget: float) -> None:
        """Write ``lines`` in batches, each retried on its own; raises the first failure once every
        batch has finished — a failing batch never cancels the others (they may well be written)."""
        deadline = self._clock() + budget
        size = max(1, self.settings.batch_size)
        slots = asyncio.Semaphore(self._in_flight)

        async def one(start: int) -> None:
            async with slots:
                await self._write_batch("\n".join(lines[start : start + size]).encode(), deadline)

        results = await asyncio.gather(*(one(i) for i in range(0, len(lines), size)), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def close(self) -> None:
        if self._rest is not None:
            self._rest.pool_manager.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None  # a write still in progress (a config reload) gets a fresh pool

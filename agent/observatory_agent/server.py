"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz`` and ``/status`` (JSON).

``/status`` is what the operator reads into the ObservatoryCollector's status::

    {"last_successful_write": unix | null, "buffered_points": int, "buffered_bytes": int,
     "errors": {...}, "config_hash": str, "version": str, "node": str, "ready": bool, "enabled": bool}

Four GET endpoints do not need a web framework: this is a small HTTP/1.1 server on asyncio
streams (GET and HEAD, keep-alive, bounded request heads, idle and read timeouts). Importing
aiohttp's server for them cost ~9 MB of the agent's steady RSS, on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observatory_agent.telemetry import Telemetry

MAX_HEAD_BYTES = 16 * 1024
"""Request line plus headers; more is refused (431) — nothing legitimate sends that much."""
MAX_HEADERS = 100
READ_TIMEOUT = 10.0
"""Seconds a client may take to send a request head once it started one."""
IDLE_TIMEOUT = 60.0
"""Seconds a kept-alive connection may sit idle between requests (Prometheus reuses them)."""
MAX_DISCARDED_BODY = 64 * 1024

TEXT = "text/plain; charset=utf-8"
JSON = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = TEXT


Handler = Callable[[], Response]


@dataclass
class App:
    """Path → handler; handlers are synchronous and quick (they read in-memory state)."""

    routes: dict[str, Handler] = field(default_factory=dict)


def make_app(telemetry: Telemetry, status: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> App:
    def metrics() -> Response:
        return Response(200, generate_latest(telemetry.registry), CONTENT_TYPE_LATEST)

    def healthz() -> Response:
        return Response(200, b"ok\n")

    def readyz() -> Response:
        if ready():
            return Response(200, b"ready\n")
        return Response(503, b"not ready: first cycle pending or config invalid\n")

    def status_view() -> Response:
        return Response(200, json.dumps(status()).encode(), JSON)

    return App({"/metrics": metrics, "/healthz": healthz, "/readyz": readyz, "/status": status_view})


class _BadRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class _Request:
    method: str
    path: str
    version: str
    headers: dict[str, str]


async def _read_head(reader: asyncio.StreamReader, *, first_timeout: float) -> _Request | None:
    """The next request's line and headers; None when the client closed or idled out."""
    try:
        line = await asyncio.wait_for(reader.readline(), first_timeout)
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        return None
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise _BadRequestError(431, "request line too long") from exc
    if not line:
        return None
    size = len(line)
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    while True:
        try:
            raw = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
        except TimeoutError:
            return None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise _BadRequestError(431, "header line too long") from exc
        size += len(raw)
        if size > MAX_HEAD_BYTES or len(headers) >= MAX_HEADERS:
            raise _BadRequestError(431, "request head too large")
        if not raw:
            return None
        if raw in (b"\r\n", b"\n"):
            break
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            raise _BadRequestError(400, "malformed header")
        headers[name.strip().lower()] = value.strip()
    return _Request(method, target.split("?", 1)[0], version, headers)


def _encode(response: Response, *, keep_alive: bool, head_only: bool, allow: str | None = None) -> bytes:
    reason = HTTPStatus(response.status).phrase
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


class Server:
    """The listening socket; ``cleanup()`` stops it and closes open connections."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._connection, host, port, limit=MAX_HEAD_BYTES)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def _respond(self, request: _Request) -> tuple[Response, str | None]:
        handler = self.app.routes.get(request.path)
        if handler is None:
            return Response(404, b"not found\n"), None
        if request.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n"), "GET, HEAD"
        try:
            return handler(), None
        except Exception:  # a handler's bug is a 500 for that request, not a dead server
            return Response(500, b"internal error\n"), None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            first = True
            while True:
                try:
                    request = await _read_head(reader, first_timeout=READ_TIMEOUT if first else IDLE_TIMEOUT)
                except _BadRequestError as exc:
                    writer.write(_encode(Response(exc.status, f"{exc}\n".encode()), keep_alive=False, head_only=False))
                    await writer.drain()
                    return
                if request is None:
                    return
                first = False
                keep_alive = await self._skip_body(reader, request)
                response, allow = self._respond(request)
                writer.write(_encode(response, keep_alive=keep_alive, head_only=request.method == "HEAD", allow=allow))
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._connections.discard(task)

    @staticmethod
    async def _skip_body(reader: asyncio.StreamReader, request: _Request) -> bool:
        """Drop a (small) request body; returns whether the connection can be kept alive."""
        connection = request.headers.get("connection", "").lower()
        keep_alive = "close" not in connection if request.version == "HTTP/1.1" else "keep-alive" in connection
        if "transfer-encoding" in request.headers:
            return False  # not worth parsing chunks for endpoints that take no body: close after
        try:
            length = int(request.headers.get("content-length", "0"))
        except ValueError:
            return False
        if length < 0 or length > MAX_DISCARDED_BODY:
            return False
        if length:
            await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT)
        return keep_alive

    async def cleanup(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


async def start(app: App, host: str, port: int) -> Server:
    """Serve ``app``; the caller keeps the server and calls ``cleanup()`` on shutdown."""
    server = Server(app)
    await server.serve(host, port)
    return server

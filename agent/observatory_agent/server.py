"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz`` and ``/status`` (JSON).

``/status`` is what the operator reads into the ObservatoryCollector's status::

    {"last_successful_write": unix | null, "buffered_points": int, "buffered_bytes": int,
     "errors": {...}, "config_hash": str, "version": str, "node": str, "ready": bool, "enabled": bool}

Four GET endpoints do not need a web framework: the standard library's ``http.server``
serves them (prometheus-client imports it anyway), from one daemon thread with a thread per
connection. Importing aiohttp's server for them cost ~9 MB of the agent's steady RSS, on every
node. Handlers run on the agent's event loop, never on the server's threads, so they read the
agent's state without racing the loop that mutates it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observatory_agent.telemetry import Telemetry

POLL_INTERVAL = 3600.0
"""Seconds serve_forever's select() sleeps when nothing arrives: idle wake-ups cost CPU on every node."""
IDLE_TIMEOUT = 60.0
"""Seconds a connection may sit idle (Prometheus keeps its connections alive between scrapes)."""
HANDLER_TIMEOUT = 5.0
"""Seconds a handler may wait for the event loop; a loop that busy answers 503, it never hangs a scrape."""

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


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # connection threads never hold up the agent's exit
    app: App
    loop: asyncio.AbstractEventLoop

    def call(self, handler: Handler) -> Response:
        """Run ``handler`` on the agent's event loop and wait for its answer."""
        done: concurrent.futures.Future[Response] = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(handler())
            except Exception as exc:  # a handler's bug is a 500 for that request, not a dead server
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        try:
            return done.result(timeout=HANDLER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            return Response(503, b"agent busy\n")
        except Exception:
            return Response(500, b"internal error\n")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Prometheus and kubelet probes expect
    timeout = IDLE_TIMEOUT
    server: _HTTPServer
    ALLOW: ClassVar[str] = "GET, HEAD"

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _refuse(self) -> None:
        self._send(Response(405, b"method not allowed\n"), head=False, allow=self.ALLOW)

    do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def _serve(self, *, head: bool) -> None:
        handler = self.server.app.routes.get(self.path.split("?", 1)[0])
        response = Response(404, b"not found\n") if handler is None else self.server.call(handler)
        self._send(response, head=head)

    def _send(self, response: Response, *, head: bool, allow: str | None = None) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if not head:
            self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per probe and scrape is noise; the agent logs what matters itself


class Server:
    """The listening socket and its thread; ``cleanup()`` stops both."""

    def __init__(self, httpd: _HTTPServer) -> None:
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": POLL_INTERVAL}, name="observatory-http", daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        port: int = self._httpd.server_address[1]
        return port

    async def cleanup(self) -> None:
        # shutdown() waits for serve_forever to notice: off the loop, which handlers may be waiting on;
        # a connection wakes its select() at once instead of after POLL_INTERVAL.
        stopping = asyncio.get_running_loop().run_in_executor(None, self._httpd.shutdown)
        while not stopping.done():
            with contextlib.suppress(OSError):
                host, port = self._httpd.server_address[:2]
                socket.create_connection((str(host), int(port)), timeout=1).close()
            await asyncio.wait({stopping}, timeout=0.2)
        self._httpd.server_close()


async def start(app: App, host: str, port: int) -> Server:
    """Serve ``app``; the caller keeps the server and calls ``cleanup()`` on shutdown."""
    httpd = _HTTPServer((host, port), _Handler)
    httpd.app = app
    httpd.loop = asyncio.get_running_loop()
    return Server(httpd)

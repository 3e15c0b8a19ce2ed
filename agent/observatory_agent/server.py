"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz``, ``/status`` (JSON), and POST routes.

``/status`` is what the operator reads into the ObservatoryCollector's status::

    {"last_successful_write": unix | null, "buffered_points": int, "buffered_bytes": int,
     "errors": {...}, "config_hash": str, "version": str, "node": str, "ready": bool, "enabled": bool,
     "partials": {rule: {"processor", "pending", "oldest_pending_window_end", "last_contact", "last_error", ...}}}

Four GET endpoints do not need a web framework: the standard library's ``http.server``
serves them (prometheus-client imports it anyway), accepting on one daemon thread. Importing
aiohttp's server for them cost ~9 MB of the agent's steady RSS, on every node. GET handlers run
on the agent's event loop, never on the server's threads, so they read the agent's state
without racing the loop that mutates it.

Connections are served by ``App.workers`` long-lived threads: starting a thread per connection
cost a fifth of a processor's CPU per POST, and a fixed set bounds the threads that bursty or
bad clients can cause. While every worker is busy the server stops accepting and connections
wait in the listen backlog.

POST routes (the processor's ``/v1/partials``) get their body read, size-capped (413) and
gzip-decoded (capped again) on the worker's thread; their handler runs there too and returns
either a response or a function that the server runs on the event loop to apply the request to
shared state. Any request to a POST route's path closes its connection after the answer, so a
thousand agents posting (or asking for the watermark) once a window never keep workers idle.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import queue
import socket
import threading
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

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
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[], Response]


@dataclass(frozen=True)
class Request:
    """A POST as its handler sees it: the body is already size-checked and decoded."""

    path: str
    headers: Mapping[str, str]
    body: bytes


PostHandler = Callable[[Request], "Response | Handler"]
"""Runs on the connection's thread; a returned ``Handler`` then runs on the event loop."""


def json_response(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), JSON)


def error(status: int, message: str, field: str | None = None) -> Response:
    """A 4xx/5xx JSON body: ``{"error": message, "field": field}``."""
    return json_response(status, {"error": message, "field": field})


@dataclass
class App:
    """Path → handler; handlers are synchronous and quick (they read in-memory state)."""

    routes: dict[str, Handler] = field(default_factory=dict)
    posts: dict[str, PostHandler] = field(default_factory=dict)
    max_body: int = 1 << 20
    """Largest POST body in bytes, before and after gzip decoding."""
    workers: int = 16
    """Connections served at once; a kept-alive one (Prometheus) holds its worker until it goes idle."""


class HasRegistry(Protocol):
    registry: CollectorRegistry


def make_app(telemetry: HasRegistry, status: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> App:
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
    request_queue_size = 128
    """Listen backlog: agents posting at a window close wait here while every worker is busy."""
    app: App
    loop: asyncio.AbstractEventLoop
    free: threading.Semaphore
    connections: queue.SimpleQueue[tuple[Any, Any] | None]

    def start_workers(self) -> None:
        self.free = threading.Semaphore(self.app.workers)
        self.connections = queue.SimpleQueue()
        for i in range(self.app.workers):
            # Daemon threads: a kept-alive connection never holds up the process's exit.
            threading.Thread(target=self._work, name=f"observatory-http-{i}", daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a worker, waiting (not accepting) while every worker is busy."""
        self.free.acquire()
        self.connections.put((request, client_address))

    def _work(self) -> None:
        while (item := self.connections.get()) is not None:
            try:
                self.process_request_thread(*item)
            finally:
                self.free.release()

    def stop_workers(self) -> None:
        for _ in range(self.app.workers):
            self.connections.put(None)

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
        path = self.path.split("?", 1)[0]
        allow = self.ALLOW + (", POST" if path in self.server.app.posts else "")
        self._send(Response(405, b"method not allowed\n"), head=False, allow=allow)

    do_PUT = do_PATCH = do_DELETE = _refuse

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        app = self.server.app
        handler = app.posts.get(path)
        self.close_connection = True  # see the module docstring: one POST, one connection
        if handler is None:
            if path in app.routes:
                self._refuse()
            else:
                self._send(Response(404, b"not found\n"), head=False)
            return
        self._send(self._post(handler, app.max_body), head=False)

    def _post(self, handler: PostHandler, limit: int) -> Response:
        body = self._body(limit)
        if isinstance(body, Response):
            return body
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            result = handler(Request(self.path, headers, body))
        except Exception:  # a handler's bug is a 500 for that request, not a dead server
            return error(500, "internal error")
        return result if isinstance(result, Response) else self.server.call(result)

    def _body(self, limit: int) -> bytes | Response:  # noqa: PLR0911 - one refusal per rule of HTTP
        """The request body, decoded, or the response refusing it."""
        if self.headers.get("Transfer-Encoding"):
            return error(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return error(411, "Content-Length is required")
        if length < 0:
            return error(400, "Content-Length must not be negative")
        if length > limit:
            return error(413, f"body of {length} bytes is over the limit of {limit}")
        body = self.rfile.read(length)
        if len(body) != length:
            return error(400, f"body ended after {len(body)} of {length} bytes")
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "identity":
            return body
        if encoding != "gzip":
            return error(415, f"Content-Encoding {encoding!r} is not supported (use gzip or none)")
        decoder = zlib.decompressobj(wbits=31)
        try:
            body = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            return error(400, f"body is not valid gzip: {exc}")
        if len(body) > limit or decoder.unconsumed_tail:
            return error(413, f"body decodes to more than the limit of {limit} bytes")
        if not decoder.eof:
            return error(400, "body is not valid gzip: truncated")
        return body

    def _serve(self, *, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in self.server.app.posts:
            self.close_connection = True  # see the module docstring: agents ask once a window
        handler = self.server.app.routes.get(path)
        response = Response(404, b"not found\n") if handler is None else self.server.call(handler)
        self._send(response, head=head)

    def _send(self, response: Response, *, head: bool, allow: str | None = None) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        if allow:
            self.send_header("Allow", allow)
        for name, value in response.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
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
        self._httpd.stop_workers()


async def start(app: App, host: str, port: int) -> Server:
    """Serve ``app``; the caller keeps the server and calls ``cleanup()`` on shutdown."""
    httpd = _HTTPServer((host, port), _Handler)
    httpd.app = app
    httpd.loop = asyncio.get_running_loop()
    httpd.start_workers()
    return Server(httpd)

"""The agent's HTTP endpoints: routes, methods, keep-alive, and requests they refuse."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from observatory_agent import server
from observatory_agent.telemetry import Telemetry


@pytest.fixture
async def running() -> AsyncIterator[tuple[server.Server, dict[str, bool]]]:
    state = {"ready": False}
    telemetry = Telemetry("test", "n1")
    telemetry.cycles.inc()
    app = server.make_app(telemetry, lambda: {"ready": state["ready"], "node": "n1"}, lambda: state["ready"])
    srv = await server.start(app, "127.0.0.1", 0)
    try:
        yield srv, state
    finally:
        await srv.cleanup()


def _requests(port: int, *requests: tuple[str, str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Several requests over one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    out = []
    try:
        for method, path in requests:
            conn.request(method, path)
            resp = conn.getresponse()
            out.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()))
    finally:
        conn.close()
    return out


async def test_endpoints_answer_over_one_kept_alive_connection(running: tuple[server.Server, dict[str, bool]]) -> None:
    srv, state = running
    first = await asyncio.to_thread(
        _requests, srv.port, ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/status?x=1"), ("GET", "/metrics")
    )
    (health, _, hbody), (ready, _, _), (status, sheaders, sbody), (metrics, mheaders, mbody) = first
    assert (health, hbody) == (200, b"ok\n")
    assert ready == 503
    assert status == 200
    assert sheaders["content-type"].startswith("application/json")
    assert json.loads(sbody) == {"ready": False, "node": "n1"}
    assert metrics == 200
    assert mheaders["content-type"] == CONTENT_TYPE_LATEST
    assert b"observatory_agent_cycles_total 1.0" in mbody
    state["ready"] = True
    assert (await asyncio.to_thread(_requests, srv.port, ("GET", "/readyz")))[0][0] == 200


async def test_head_unknown_paths_and_other_methods(running: tuple[server.Server, dict[str, bool]]) -> None:
    srv, _ = running
    (head, hheaders, hbody), (missing, _, _), (post, pheaders, _) = await asyncio.to_thread(
        _requests, srv.port, ("HEAD", "/healthz"), ("GET", "/nope"), ("POST", "/status")
    )
    assert (head, hbody, hheaders["content-length"]) == (200, b"", "3")
    assert missing == 404
    assert (post, pheaders["allow"]) == (405, "GET, HEAD")


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


async def test_malformed_or_oversized_requests_are_refused_and_closed(
    running: tuple[server.Server, dict[str, bool]],
) -> None:
    srv, _ = running
    garbage = await asyncio.to_thread(_raw, srv.port, b"HELLO\r\n\r\n")
    assert b"400 - Bad request syntax" in garbage  # answered HTTP/0.9-style, as the request was
    too_long = await asyncio.to_thread(_raw, srv.port, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert too_long.startswith(b"HTTP/1.1 414 ")
    huge = await asyncio.to_thread(
        _raw, srv.port, b"GET /healthz HTTP/1.1\r\n" + b"X-Pad: " + b"a" * 70000 + b"\r\n\r\n"
    )
    assert huge.startswith(b"HTTP/1.1 431 ")
    closing = await asyncio.to_thread(_raw, srv.port, b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert closing.startswith(b"HTTP/1.1 200 ")
    assert closing.endswith(b"ok\n")
    # HTTP/1.0 without keep-alive: answered, then closed (_raw reads until the server closes).
    http10 = await asyncio.to_thread(_raw, srv.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert http10.endswith(b"ok\n")


async def test_a_handler_that_raises_is_a_500_and_the_server_goes_on() -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("bug")

    app = server.make_app(Telemetry("test", "n1"), broken, lambda: True)
    srv = await server.start(app, "127.0.0.1", 0)
    try:
        (failed, _, _), (health, _, _) = await asyncio.to_thread(
            _requests, srv.port, ("GET", "/status"), ("GET", "/healthz")
        )
    finally:
        await srv.cleanup()
    assert (failed, health) == (500, 200)

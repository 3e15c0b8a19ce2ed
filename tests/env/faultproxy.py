"""A small fault-injecting TCP proxy: put it between a client and a real server, switch faults at runtime.

Modes (``proxy.mode = ...``, effective for the next bytes of every connection):

- ``pass``: bytes go through unchanged.
- ``hang``: connections are accepted and read, but nothing is forwarded or answered — a server
  that takes the request and never replies (a brown-out).
- ``slow``: bytes go through in ``slow_chunk``-byte pieces, ``slow_delay`` seconds apart.
- ``reset``: every open connection and every new one is reset (RST, not FIN).

Runs its own event loop in a daemon thread; ``close()`` stops it and drops every connection::

    with FaultProxy("127.0.0.1", influx_port) as proxy:
        agent_url = proxy.url           # http://127.0.0.1:<proxy port>
        proxy.mode = "hang"
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from typing import Literal

Mode = Literal["pass", "hang", "slow", "reset"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.slow_chunk = 64
        self.slow_delay = 0.05
        self.connections = 0
        """Connections accepted so far (a test proves the client went through the proxy)."""
        self._loop = asyncio.new_event_loop()
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, args=(listen_host,), name="faultproxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        assert self._server is not None, "fault proxy did not start"
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode) -> None:
        """Switch the fault; ``reset`` also resets the connections open right now."""
        self.mode = mode
        if mode == "reset":
            asyncio.run_coroutine_threadsafe(self._reset_all(), self._loop).result(5)

    def _run(self, host: str) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._handle, host, 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "reset":
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            return
        self._writers.update((client_writer, server_writer))
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer, client_writer),
                self._pipe(server_reader, client_writer, server_writer),
            )
        finally:
            for w in (client_writer, server_writer):
                self._writers.discard(w)
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(65536):
                while self.mode == "hang":  # noqa: ASYNC110 - the mode is switched from another thread
                    await asyncio.sleep(0.05)  # swallow: hold the bytes, answer nothing
                if self.mode == "reset":
                    _reset(writer)
                    _reset(peer)
                    return
                if self.mode == "slow":
                    for i in range(0, len(data), self.slow_chunk):
                        await asyncio.sleep(self.slow_delay)
                        writer.write(data[i : i + self.slow_chunk])
                        await writer.drain()
                else:
                    writer.write(data)
                    await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            _reset(peer)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            await self._reset_all()

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST: SO_LINGER on, timeout 0."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()

"""A network that misbehaves between an operator and the real API server: a TLS proxy that can lose watch events.

Kubernetes watches do lose events in production: a relist after ``410 Gone`` reports what exists,
not what was deleted meanwhile, and clients built on it (kopf among them) then never see a
DELETED. Waiting for that to happen naturally takes minutes of etcd compaction; this proxy makes
it happen on demand. It terminates TLS with a certificate from the bed's own CA, forwards every
request to the API server unchanged, and passes watch streams through line by line, leaving out
the events ``drop`` picks. Nothing about the API server is faked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.env.controlplane import ControlPlane, write_kubeconfig
from tests.env.procs import free_port

FORWARDED = ("Authorization", "Content-Type", "Accept", "User-Agent")


def _certificate(control_plane: ControlPlane, work: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1 signed by the bed's CA: clients trust it as they trust the API server."""
    pki = control_plane.pki
    work.mkdir(parents=True, exist_ok=True)
    (work / "proxy.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for args in (
        ["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "proxy.key",
         "-out", "proxy.csr", "-subj", "/CN=lossy-proxy"],
        ["x509", "-req", "-in", "proxy.csr", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
         "-CAcreateserial", "-days", "1", "-extfile", "proxy.ext", "-out", "proxy.crt"],
    ):  # fmt: skip
        subprocess.run(["openssl", *args], cwd=work, check=True, capture_output=True)
    return work / "proxy.crt", work / "proxy.key"


class LossyProxy:
    """Forwards to ``control_plane``; watch events for which ``drop(event)`` is true never arrive."""

    def __init__(self, control_plane: ControlPlane, work: Path, drop: Callable[[dict[str, Any]], bool]) -> None:
        self.control_plane, self.work, self.drop = control_plane, work, drop
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.dropped: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lossy-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    def kubeconfig(self, path: Path, token: str, user: str = "admin") -> Path:
        write_kubeconfig(path, self.url, self.control_plane.pki / "ca.crt", token, user=user)
        return path

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        cert, key = _certificate(self.control_plane, self.work)
        serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        serving.load_cert_chain(cert, key)
        upstream = ssl.create_default_context(cafile=str(self.control_plane.pki / "ca.crt"))
        self._client = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=upstream))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # Open watch streams never end on their own: give them a moment at shutdown, not a minute.
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=serving).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._client is not None
        headers = {k: request.headers[k] for k in FORWARDED if k in request.headers}
        body = await request.read()
        watching = request.query.get("watch") in {"true", "1"}
        timeout = aiohttp.ClientTimeout(total=None if watching else 60)
        async with self._client.request(
            request.method,
            self.control_plane.server + request.path_qs,
            headers=headers,
            data=body or None,
            timeout=timeout,
        ) as upstream:
            if not watching or upstream.status != 200:
                payload = await upstream.read()
                kind = upstream.headers.get("Content-Type", "application/json")
                return web.Response(body=payload, status=upstream.status, headers={"Content-Type": kind})
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):  # either side hung up: the stream ends
                await self._relay(upstream, response)
            return response

    async def _relay(self, upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> None:
        pending = b""
        async for chunk in upstream.content.iter_any():
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not line.strip():
                    continue
                event = json.loads(line)
                if self.drop(event):
                    self.dropped.append(event)
                    continue
                await response.write(line + b"\n")

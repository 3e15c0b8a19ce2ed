"""HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz`` and ``/status`` (JSON).

``/status`` is what the operator reads into the ObservatoryCollector's status::

    {"last_successful_write": unix | null, "buffered_points": int, "buffered_bytes": int,
     "errors": {...}, "config_hash": str, "version": str, "node": str, "ready": bool, "enabled": bool}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from observatory_agent.telemetry import Telemetry


def make_app(telemetry: Telemetry, status: Callable[[], dict[str, Any]], ready: Callable[[], bool]) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready: first cycle pending or config invalid\n")

    async def status_view(_: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status_view)
    return app


async def start(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve ``app``; the caller keeps the runner and calls ``cleanup()`` on shutdown."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner

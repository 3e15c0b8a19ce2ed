"""Reads each agent's ``/status`` over HTTP from its pod IP, concurrently and with a short timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from observatory_agent.contract import DEFAULT_METRICS_PORT
from observatory_operator.build import names
from observatory_operator.status import AgentReport


def _port(pod: Mapping[str, Any]) -> int:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == names.METRICS_PORT_NAME and port.get("containerPort"):
                return int(port["containerPort"])
    return DEFAULT_METRICS_PORT


async def _one(session: aiohttp.ClientSession, pod: Mapping[str, Any]) -> AgentReport | None:
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip
    try:
        async with session.get(f"http://{host}:{_port(pod)}/status") as response:
            if response.status != 200:
                return None
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        # An agent that does not answer is reported as such in status; never an operator error.
        return None
    return AgentReport.from_json(data) if isinstance(data, dict) else None


async def agent_reports(pods: Sequence[Mapping[str, Any]], *, timeout_seconds: float) -> dict[str, AgentReport | None]:
    """Pod name → its /status answer (None when unreachable or not yet running)."""
    running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
    if not running:
        return {}
    client_timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with aiohttp.ClientSession(timeout=client_timeout) as session:
        answers = await asyncio.gather(*(_one(session, p) for p in running))
    return {str(p["metadata"]["name"]): a for p, a in zip(running, answers, strict=True)}

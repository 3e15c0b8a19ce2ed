"""Reads agents' ``/status`` over HTTP from their pod IPs: concurrently, briefly, and trusting nothing.

An agent pod runs whatever image the collector names, so its answer is untrusted input: the body
is capped (``body_limit`` bytes, refused unread past that), the whole read has one deadline,
NaN/Infinity and pathological nesting are refused by the parser, and anything but a JSON object
is a failed read. Each failure is counted by reason (``observatory_operator_probe_failures_total``)
and the pod is reported as not answering; a hostile agent can cost its own collector's status one
timeout, never stall a round or the operator.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import aiohttp

from observatory_operator import metrics
from observatory_operator.objects import Obj

PATH: Final = "/status"

log = logging.getLogger("observatory_operator.probe")


class ProbeFailed(Exception):
    """One agent's answer could not be used; ``reason`` is the metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a /status body; NaN, Infinity, deep nesting and non-objects raise ProbeFailed."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ProbeFailed("invalid_json", str(exc)[:200]) from exc
    if not isinstance(data, dict):
        raise ProbeFailed("invalid_json", f"a JSON {type(data).__name__}, not an object")
    return data


class Prober:
    """One HTTP client for every agent probe of this process (connections are not kept across rounds)."""

    def __init__(self, *, timeout_seconds: float, body_limit: int) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.body_limit = body_limit
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # force_close: one request per agent per round, to many addresses; idle sockets only cost memory.
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(force_close=True, limit=64)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _read(self, url: str) -> dict[str, Any]:
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status != 200:
                    raise ProbeFailed("http_status", str(response.status))
                if (response.content_length or 0) > self.body_limit:
                    raise ProbeFailed("too_large", f"Content-Length {response.content_length}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(16384):
                    body += chunk
                    if len(body) > self.body_limit:
                        raise ProbeFailed("too_large", f"more than {self.body_limit} bytes")
        except TimeoutError as exc:
            raise ProbeFailed("timeout") from exc
        except aiohttp.ClientError as exc:
            raise ProbeFailed("unreachable", type(exc).__name__) from exc
        return parse_body(bytes(body))

    async def _one(self, pod: Mapping[str, Any], port: int) -> dict[str, Any] | None:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        host = f"[{ip}]" if ":" in ip else ip
        try:
            return await self._read(f"http://{host}:{port}{PATH}")
        except ProbeFailed as failure:
            # An agent that does not answer usefully is reported as such in status; never an operator error.
            metrics.PROBE_FAILURES.labels(failure.reason).inc()
            log.debug("probe of %s failed: %s", (pod.get("metadata") or {}).get("name"), failure)
            return None

    async def read(self, pods: Sequence[Obj], port_of: Callable[[Obj], int]) -> dict[str, dict[str, Any] | None]:
        """Pod name → its /status object (None when unreachable or unusable), for the Running pods."""
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        answers = await asyncio.gather(*(self._one(p, port_of(p)) for p in running))
        return {str(p["metadata"]["name"]): a for p, a in zip(running, answers, strict=True)}


__all__ = ["PATH", "ProbeFailed", "Prober", "parse_body"]

"""Send the series an AggregationRule selects, as a ``WindowPartial``, to that rule's processor."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

import structlog

from observatory_agent.aggregation.series import SeriesKey
from observatory_agent.aggregation.windows import ClosedWindow
from observatory_agent.contract import ProcessorTarget, WindowPartial

log = structlog.get_logger("observatory_agent.sinks.partials")


def selected(keys: Sequence[SeriesKey], target: ProcessorTarget) -> list[SeriesKey]:
    """Series whose name matches one of the rule's globs and whose tags equal its matchers."""
    out = []
    for name, tags in keys:
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in target.metrics):
            continue
        tag_map = dict(tags)
        if all(tag_map.get(k) == v for k, v in target.match_tags.items()):
            out.append((name, tags))
    return out


def build(window: ClosedWindow, target: ProcessorTarget, node: str) -> WindowPartial | None:
    keys = selected(list(window.series), target)
    if not keys:
        return None
    return WindowPartial(
        rule=target.rule, node=node, window_start=window.start, window_end=window.end, series=window.partials(keys)
    )


class PartialsClient:
    """POSTs partials; a processor that is down loses that window's roll-up, never the node's data."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._timeout = timeout
        self._session: Any = None
        self.sent = 0
        self.errors = 0

    async def send(self, target: ProcessorTarget, partial: WindowPartial) -> bool:
        import aiohttp  # noqa: PLC0415 - only agents feeding a processor need the client

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        url = target.url.rstrip("/") + "/v1/partials"
        try:
            async with self._session.post(
                url, data=partial.model_dump_json(), headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status >= 300:
                    body = (await resp.text())[:300]
                    raise RuntimeError(f"HTTP {resp.status}: {body}")
        except Exception as exc:  # the processor's trouble must not stop the node's own writes
            self.errors += 1
            log.warning("partials_send_failed", rule=target.rule, url=url, error=f"{type(exc).__name__}: {exc}")
            return False
        self.sent += 1
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

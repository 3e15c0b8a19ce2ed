"""``app.*``: scrape Prometheus text endpoints named in config (prometheus-client's parser)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from observatory_agent.collectors.base import COUNTER, GAUGE, Sample
from observatory_agent.contract import RESERVED_TAGS, MetricType

_CUMULATIVE_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def _sample_type(family_type: str, sample_name: str) -> MetricType:
    # Untyped samples named *_total follow the counter naming convention; trust it.
    if family_type == "unknown" and sample_name.endswith("_total"):
        return COUNTER
    if family_type in {"counter", "histogram", "gaugehistogram", "summary"} and sample_name.endswith(
        _CUMULATIVE_SUFFIXES
    ):
        return COUNTER
    return GAUGE


def parse_exposition(text: str, *, prefix: str = "app.", extra_tags: dict[str, str] | None = None) -> list[Sample]:
    """Samples of a Prometheus text exposition; ``_created`` timestamps are skipped.

    Labels become tags; a label that collides with a tag the agent sets (``host``, ...) is
    renamed ``label_<name>`` rather than silently overriding node identity.
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 - lazy: only when scraping

    out: list[Sample] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            tags = dict(extra_tags or {})
            for k, v in s.labels.items():
                tags[f"label_{k}" if k in RESERVED_TAGS or k in (extra_tags or {}) else k] = v
            out.append(Sample(prefix + s.name, float(s.value), _sample_type(family.type, s.name), tags))
    return out


class ApplicationCollector:
    """Scrapes every target concurrently; one failing target fails the whole collection visibly."""

    def __init__(self, name: str, targets: Sequence[str], timeout: float, prefix: str = "app.") -> None:
        self._name = name
        self._targets = list(targets)
        self._timeout = timeout
        self._prefix = prefix
        self._session: Any = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def timeout(self) -> float:
        return self._timeout

    async def _fetch(self, url: str) -> list[Sample]:
        import aiohttp  # noqa: PLC0415 - lazy: agents without app targets never load the client

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        async with self._session.get(url, headers={"Accept": "text/plain;version=0.0.4"}) as resp:
            resp.raise_for_status()
            text = await resp.text()
        # Parsing a large exposition is CPU work; keep it off the loop.
        return await asyncio.to_thread(parse_exposition, text, prefix=self._prefix, extra_tags={"target": url})

    async def collect(self) -> Sequence[Sample]:
        results = await asyncio.gather(*(self._fetch(u) for u in self._targets), return_exceptions=True)
        out: list[Sample] = []
        errors: list[str] = []
        for url, result in zip(self._targets, results, strict=True):
            if isinstance(result, BaseException):
                errors.append(f"{url}: {type(result).__name__}: {result}")
            else:
                out.extend(result)
        if errors and not out:
            raise RuntimeError("; ".join(errors))
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

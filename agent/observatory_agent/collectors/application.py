"""``app.*``: scrape Prometheus text endpoints named in config (prometheus-client's parser).

Each target is bounded as Prometheus bounds a scrape: a body over ``max_body_bytes`` or more
than ``sample_limit`` samples fails that target (``up`` 0, the reason logged) instead of
growing the agent's memory with it; the other targets and collectors are unaffected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, Final

import structlog

from observatory_agent import httpclient
from observatory_agent.collectors import registry
from observatory_agent.collectors.base import COUNTER, GAUGE, Sample
from observatory_agent.contract import RESERVED_TAGS, MetricType

log = structlog.get_logger("observatory_agent.collectors.application")

_CUMULATIVE_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
DEFAULT_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
DEFAULT_SAMPLE_LIMIT: Final = 50_000


class ScrapeLimitError(RuntimeError):
    """A target exposed more than the collector accepts (body size or sample count)."""


def _sample_type(family_type: str, sample_name: str) -> MetricType:
    # Untyped samples named *_total follow the counter naming convention; trust it.
    if family_type == "unknown" and sample_name.endswith("_total"):
        return COUNTER
    if family_type in {"counter", "histogram", "gaugehistogram", "summary"} and sample_name.endswith(
        _CUMULATIVE_SUFFIXES
    ):
        return COUNTER
    return GAUGE


def parse_exposition(
    text: str,
    *,
    prefix: str = "app.",
    extra_tags: dict[str, str] | None = None,
    sample_limit: int | None = None,
) -> list[Sample]:
    """Samples of a Prometheus text exposition; ``_created`` timestamps are skipped.

    Labels become tags; a label that collides with a tag the agent sets (``host``, ...) is
    renamed ``label_<name>`` rather than silently overriding node identity. More than
    ``sample_limit`` samples raise ``ScrapeLimitError`` as soon as the limit is passed.
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 - lazy: only when scraping

    if sample_limit is not None:
        # The parser builds a whole family before yielding it: refuse a flood before parsing it.
        # Lines not starting with '#' bound the samples; _created lines (skipped) may double them.
        lines = text.count("\n") + 1 - text.count("\n#") - text.startswith("#")
        if lines > 2 * sample_limit:
            raise ScrapeLimitError(f"{lines} sample lines, more than sample_limit={sample_limit}")
    out: list[Sample] = []
    extra = extra_tags or {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            tags = dict(extra)
            for k, v in s.labels.items():
                tags[f"label_{k}" if k in RESERVED_TAGS or k in extra else k] = v
            out.append(Sample(prefix + s.name, float(s.value), _sample_type(family.type, s.name), tags))
        if sample_limit is not None and len(out) > sample_limit:
            raise ScrapeLimitError(f"more than sample_limit={sample_limit} samples")
    return out


class ApplicationCollector:
    """Scrapes every target concurrently; ``up`` says which answered; all failing fails the collection."""

    def __init__(
        self,
        name: str,
        targets: Sequence[str],
        timeout: float,
        prefix: str = "app.",
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        sample_limit: int = DEFAULT_SAMPLE_LIMIT,
    ) -> None:
        self._name = name
        self._targets = list(targets)
        self._timeout = timeout
        self._prefix = prefix
        self.max_body_bytes = max_body_bytes
        self.sample_limit = sample_limit
        self.up: dict[str, int] = dict.fromkeys(self._targets, 0)
        """Per target: 1 when its last scrape succeeded (Prometheus's ``up``)."""
        self.scrape_seconds: dict[str, float] = dict.fromkeys(self._targets, 0.0)
        self._session: Any = None

    @property
    def name(self) -> str:
        return self._name

    async def _fetch(self, url: str) -> list[Sample]:
        if self._session is None or self._session.closed:
            self._session = httpclient.session(self._timeout)  # a connection per scrape, routed afresh
        async with self._session.get(url, headers={"Accept": "text/plain;version=0.0.4"}) as resp:
            resp.raise_for_status()
            if (resp.content_length or 0) > self.max_body_bytes:
                raise ScrapeLimitError(f"body of {resp.content_length} bytes exceeds max_body_bytes")
            body = bytearray()
            lines = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise ScrapeLimitError(f"body exceeds max_body_bytes={self.max_body_bytes}")
                # Stop reading a flood early: lines bound samples (twice over, for comments and _created).
                lines += chunk.count(b"\n")
                if lines > 2 * self.sample_limit:
                    raise ScrapeLimitError(f"more than {lines} lines: over sample_limit={self.sample_limit}")
        text = body.decode(resp.charset or "utf-8", "replace")
        # Parsing a large exposition is CPU work; keep it off the loop.
        return await asyncio.to_thread(
            parse_exposition, text, prefix=self._prefix, extra_tags={"target": url}, sample_limit=self.sample_limit
        )

    async def _scrape(self, url: str) -> list[Sample] | BaseException:
        started = time.perf_counter()
        try:
            samples = await self._fetch(url)
        except Exception as exc:  # one target's trouble is its own; the others still count
            self.up[url] = 0
            log.warning("scrape_failed", collector=self._name, target=url, error=f"{type(exc).__name__}: {exc}")
            return exc
        finally:
            self.scrape_seconds[url] = time.perf_counter() - started
        self.up[url] = 1
        return samples

    async def collect(self) -> Sequence[Sample]:
        results = await asyncio.gather(*(self._scrape(u) for u in self._targets))
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


def _build(ctx: registry.BuildContext) -> ApplicationCollector:
    cfg = ctx.config
    if not cfg.targets:
        raise registry.OptionError(f"collectors[{cfg.name}].targets: application collectors need at least one URL")
    return ApplicationCollector(
        cfg.name,
        cfg.targets,
        ctx.timeout,
        ctx.option("prefix", "app."),
        max_body_bytes=int(ctx.float_option("max_body_bytes", DEFAULT_MAX_BODY_BYTES, minimum=1)),
        sample_limit=int(ctx.float_option("sample_limit", DEFAULT_SAMPLE_LIMIT, minimum=1)),
    )


registry.register(
    registry.Kind(
        "application",
        _build,
        (
            registry.MetricInfo(
                "app.<sample>",
                "as exposed",
                "G/C",
                ("target", "<labels>"),
                "application",
                "Each scraped sample; counters, histogram and summary _count/_sum/_bucket become rates",
            ),
        ),
        options={
            "prefix": "prepended to every sample name (default app.)",
            "max_body_bytes": f"a larger response fails the target (default {DEFAULT_MAX_BODY_BYTES})",
            "sample_limit": f"more samples fail the target, like Prometheus's (default {DEFAULT_SAMPLE_LIMIT})",
        },
    )
)

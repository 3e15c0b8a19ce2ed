"""OpenTelemetry spans around cycles, window closes and flushes — free unless OTEL_* asks for them.

Tracing is on when ``OTEL_TRACES_EXPORTER`` names an exporter (``otlp``, ``console``) or an
``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`` is set, and off when ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none``. Off means the SDK is never imported and no provider exists:
``span()`` is then a shared no-op context manager.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

import structlog

log = structlog.get_logger("observatory_agent.tracing")

_tracer: Any = None
_provider: Any = None


def wanted(environ: Mapping[str, str]) -> str | None:
    """Which exporter the environment asks for, or None for no tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return None
    if exporter:
        return exporter.split(",")[0]
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return "otlp"
    return None


def setup(service_name: str, version: str, node: str, environ: Mapping[str, str] | None = None) -> bool:
    """Install a tracer provider if asked to; returns whether tracing is on."""
    global _tracer, _provider  # noqa: PLW0603 - one provider per process
    exporter_name = wanted(os.environ if environ is None else environ)
    if exporter_name is None:
        return False
    # Imported only here: the SDK is not paid for when tracing is off.
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter  # noqa: PLC0415

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("otlp_exporter_missing", hint="install happy-observatory[otlp]; tracing stays off")
            return False
        exporter = OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": version, "host.name": node})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    _tracer = provider.get_tracer("observatory_agent", version)
    log.info("tracing_enabled", exporter=exporter_name)
    return True


@contextlib.contextmanager
def span(name: str, **attributes: str | int | float | bool) -> Iterator[None]:
    """A span when tracing is on; nothing at all otherwise."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


def shutdown() -> None:
    """Flush pending spans (on exit)."""
    if _provider is not None:
        _provider.shutdown()

"""When tracing turns on, and the ``once`` command's output (partials: test_partials.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from observatory_agent import cli, tracing


@pytest.mark.parametrize(
    ("environ", "exporter"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "otlp"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "otlp"),
        ({"OTEL_TRACES_EXPORTER": "console"}, "console"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, None),
    ],
)
def test_tracing_is_on_only_when_the_otel_environment_asks(environ: dict[str, str], exporter: str | None) -> None:
    assert tracing.wanted(environ) == exporter


def test_spans_cost_nothing_when_tracing_is_off() -> None:
    with tracing.span("agent.cycle", collectors=3):
        pass  # no provider, no SDK import: the context manager just yields


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    # `once` points structlog at the (captured) stderr; later tests must not log into a closed file.
    yield None
    structlog.reset_defaults()


@pytest.mark.usefixtures("_restore_logging")
def test_once_prints_this_hosts_metrics_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["once", "--format", "json"])
    assert exit_info.value.code == 0
    metrics = json.loads(capsys.readouterr().out)
    names = {m["name"] for m in metrics}
    assert {"system.cpu.usage", "system.memory.used", "system.load.1", "system.uptime"} <= names
    cpu = next(m for m in metrics if m["name"] == "system.cpu.usage")
    assert 0.0 <= cpu["last"] <= 100.0
    assert {"host", "node", "cluster"} <= set(cpu["tags"])


@pytest.mark.usefixtures("_restore_logging")
def test_once_line_protocol_is_one_line_per_series(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["once", "--format", "line-protocol"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines
    assert all(" count=" in line for line in lines)
    assert any(line.startswith("system.memory.used,") for line in lines)

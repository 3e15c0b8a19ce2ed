"""Processor series selection, when tracing turns on, and the ``once`` command's output."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import structlog

from observatory_agent import cli, tracing
from observatory_agent.aggregation.series import tags_key
from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import ProcessorTarget, WindowPartial
from observatory_agent.sinks import partials


def _window() -> WindowAggregator:
    agg = WindowAggregator(60.0, exact_threshold=1024)
    agg.add("system.cpu.usage", tags_key({"node": "a", "pool": "gpu"}), 10.0, 61.0)
    agg.add("system.cpu.core.usage", tags_key({"node": "a", "pool": "gpu", "core": "0"}), 20.0, 61.0)
    agg.add("system.memory.used", tags_key({"node": "a", "pool": "gpu"}), 30.0, 61.0)
    agg.add("system.cpu.usage", tags_key({"node": "b", "pool": "general"}), 40.0, 62.0)
    return agg


def test_processor_gets_only_series_matching_its_globs_and_tags() -> None:
    (closed,) = _window().close(120.0)
    target = ProcessorTarget(
        rule="cpu-rollup", url="http://p:9465", metrics=["system.cpu.*"], match_tags={"pool": "gpu"}
    )
    partial = partials.build(closed, target, node="a")
    assert partial is not None
    assert sorted(s.name for s in partial.series) == ["system.cpu.core.usage", "system.cpu.usage"]
    assert (partial.window_start, partial.window_end, partial.rule) == (60.0, 120.0, "cpu-rollup")
    assert WindowPartial.model_validate_json(partial.model_dump_json()) == partial


def test_no_partial_when_nothing_matches() -> None:
    (closed,) = _window().close(120.0)
    target = ProcessorTarget(rule="r", url="http://p", metrics=["app.*"])
    assert partials.build(closed, target, node="a") is None


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


async def test_partials_reach_the_processor_as_the_contracts_json() -> None:
    from aiohttp import web

    received: list[WindowPartial] = []

    async def accept(request: web.Request) -> web.Response:
        received.append(WindowPartial.model_validate_json(await request.read()))
        return web.json_response({"accepted": True}, status=202)

    app = web.Application()
    app.router.add_post("/v1/partials", accept)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = partials.PartialsClient()
    try:
        (closed,) = _window().close(120.0)
        target = ProcessorTarget(rule="r", url=f"http://127.0.0.1:{port}/", metrics=["system.memory.*"])
        partial = partials.build(closed, target, node="a")
        assert partial is not None
        assert await client.send(target, partial)
        down = ProcessorTarget(rule="r", url="http://127.0.0.1:9/", metrics=["*"])
        assert not await client.send(down, partial)  # a dead processor is counted, not raised
    finally:
        await client.close()
        await runner.cleanup()
    assert received == [partial]
    assert (client.sent, client.errors) == (1, 1)

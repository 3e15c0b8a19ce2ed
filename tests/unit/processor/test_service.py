"""The processor's HTTP side on this host: validation naming fields, gzip, body caps, status, lines written.

InfluxDB is not needed here: the watermark reader is handed in, and InfluxDB itself is a port
where nothing listens, so windows land in the disk buffer, where the test reads them.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from observatory_agent import server
from observatory_agent.aggregation.series import tags_key
from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import PartialsAck, ProcessorState, ProcessorTarget, pack_floats, unpack_floats
from observatory_agent.processor import config, watermark
from observatory_agent.processor.service import Processor
from observatory_agent.processor.telemetry import ProcessorTelemetry
from observatory_agent.sinks import partials
from observatory_agent.sinks.buffer import DurableBuffer
from tests.unit.agent.test_server import _raw

WINDOW = 2.0


def write_config(path: Path, **overrides: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {
        "rule": "cpu-rollup",
        "namespace": "team-a",
        "metrics": ["system.cpu.*"],
        "group_by": ["zone"],
        "functions": ["count", "mean", "max", "p95"],
        "window": f"{WINDOW:g}s",
        "allowed_lateness": "500ms",
        "restart_grace": "100ms",
        "output": {"measurement": "cluster.cpu.usage"},
        "max_body_bytes": 64 * 1024,
        "cluster": "bed",
        "influxdb": {"url": "http://127.0.0.1:9", "org": "o", "bucket": "b", "token_env": "NO_SUCH_TOKEN"},
        "buffer_dir": str(path.parent / "buffer"),
        **overrides,
    }
    path.write_text(json.dumps(spec))
    return path


@dataclass
class Running:
    processor: Processor
    port: int

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    async def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(self.request, method, path, body, headers)


async def start(
    tmp_path: Path, *, floor: float | None = None, port: int = 0, **overrides: Any
) -> tuple[Running, asyncio.Event]:
    loaded = config.load(write_config(tmp_path / "processor.json", **overrides), None, {})
    processor = Processor(loaded, ProcessorTelemetry("test", "cpu-rollup"), version="test", reader=lambda *_: floor)
    processor.open(Path(loaded.effective.processor.buffer_dir))
    srv = await server.start(processor.app(), "127.0.0.1", port)
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))

    async def cleanup() -> None:
        await task
        await srv.cleanup()
        await processor.close()

    stop.cleanup = cleanup  # type: ignore[attr-defined]
    return Running(processor, srv.port), stop


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    run, stop = await start(tmp_path)
    for _ in range(100):
        if run.processor.ready:
            break
        await asyncio.sleep(0.02)
    try:
        yield run
    finally:
        stop.set()
        await stop.cleanup()  # type: ignore[attr-defined]


def partial_body(
    node: str = "node-1", *, end: float | None = None, zone: str = "a", values: tuple[float, ...] = (1.0, 3.0)
) -> bytes:
    """A partial as an agent builds it, for the agent window just closed (or ending at ``end``)."""
    end = end if end is not None else (time.time() // WINDOW) * WINDOW
    agg = WindowAggregator(WINDOW, exact_threshold=1024)
    for i, v in enumerate(values):
        agg.add("system.cpu.usage", tags_key({"zone": zone, "node": node}), v, end - WINDOW + 0.1 + i * 0.01)
    (window,) = agg.close(end)
    target = ProcessorTarget(rule="cpu-rollup", url="http://p", metrics=["system.cpu.*"])
    built = partials.build(window, target, node, "boot.0")
    assert built is not None
    return built.model_dump_json().encode()


def floats(data: dict[str, Any], column: str, change: Any) -> None:
    """Rewrite one packed float column of a partial's JSON."""
    packed = base64.urlsafe_b64decode(data["series"][column])
    data["series"][column] = base64.urlsafe_b64encode(pack_floats(change(list(unpack_floats(packed))))).decode()


def edit(body: bytes, change: Any) -> bytes:
    data = json.loads(body)
    change(data)
    return json.dumps(data).encode()


async def test_not_ready_until_the_watermark_is_read_back(tmp_path: Path) -> None:
    run, stop = await start(tmp_path)
    stop.set()  # never gets to read: stays not ready
    await asyncio.sleep(0.05)
    status, headers, body = await run.call("POST", "/v1/partials", partial_body())
    assert status == 503
    assert headers["retry-after"] == "2"
    assert b"not ready" in body
    assert (await run.call("GET", "/v1/partials"))[0] == 503
    assert (await run.call("GET", "/readyz"))[0] == 503
    await stop.cleanup()  # type: ignore[attr-defined]


async def test_a_partial_is_accepted_and_a_resend_is_a_harmless_duplicate(running: Running) -> None:
    body = partial_body()
    status, headers, answer = await running.call("POST", "/v1/partials", body, {"Content-Type": "application/json"})
    assert status == 202
    assert headers["connection"] == "close"
    ack = PartialsAck.model_validate_json(answer)
    assert ack.accepted
    assert ack.instance == running.processor.instance
    assert ack.watermark is None
    assert ack.window_end is not None
    assert ack.window_end % WINDOW == 0
    status, _, answer = await running.call("POST", "/v1/partials", body)
    assert status == 202
    assert PartialsAck.model_validate_json(answer).accepted
    state = ProcessorState.model_validate_json((await running.call("GET", "/v1/partials"))[2])
    assert state.instance == running.processor.instance
    partial_counts = json.loads((await running.call("GET", "/status"))[2])["partials"]
    assert (partial_counts["accepted"], partial_counts["duplicates"]) == (1, 1)


async def test_a_partial_for_another_rule_is_refused_with_a_reason(running: Running) -> None:
    body = edit(partial_body(), lambda d: d.update(rule="other"))
    status, _, answer = await running.call("POST", "/v1/partials", body)
    ack = PartialsAck.model_validate_json(answer)
    assert (status, ack.accepted, ack.reason) == (200, False, "mismatch")
    assert ack.message is not None
    assert "cpu-rollup" in ack.message


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda d: d.update(version=1), "version", "2"),
        (lambda d: d["series"]["count"].__setitem__(0, 0), "series.count.0", "greater than or equal to 1"),
        (lambda d: floats(d, "max", lambda xs: [-5.0]), "series.max", "below min"),
        (lambda d: floats(d, "values", lambda xs: [*xs, 1.0]), "series", "values has 3 entries"),
        (lambda d: floats(d, "sum", lambda xs: [*xs, 1.0]), "series.sum", "has 2 entries but name has 1"),
        (lambda d: floats(d, "sum", lambda xs: [math.nan]), "series.sum", "entry 0 is nan, not a finite number"),
        (lambda d: floats(d, "last", lambda xs: [math.inf]), "series.last", "entry 0 is inf"),
        (lambda d: d["series"].update(values="not base64!"), "series.values", "valid base64"),
        (lambda d: d["series"].update(values="AAAA"), "series.values", "not a whole number of 8-byte floats"),
        (lambda d: d.pop("node"), "node", "required"),
        (lambda d: d.update(extra=1), "extra", "not permitted"),
        (lambda d: d["series"]["tags"]["zone"].__setitem__(0, 1), "series.tags.zone.0", "string"),
        (lambda d: d["series"]["tags"]["zone"].append("b"), "series.tags", "tag 'zone' has 2 entries but name has 1"),
        (lambda d: d.update(window_end=d["window_start"]), "body", "window_end must be after window_start"),
    ],
)
async def test_invalid_partials_get_a_4xx_naming_the_field(
    running: Running, change: Any, field: str, words: str
) -> None:
    status, _, answer = await running.call("POST", "/v1/partials", edit(partial_body(), change))
    assert status == 422
    error = json.loads(answer)
    assert error["error"].startswith(f"{field}:" if field != "body" else "body:"), error
    assert words in error["error"]
    assert error["field"] == (None if field == "body" else field)


async def test_garbage_and_wrong_media_are_refused_and_the_server_goes_on(running: Running) -> None:
    status, _, answer = await running.call("POST", "/v1/partials", b"{not json")
    assert status == 400
    assert "not valid JSON" in json.loads(answer)["error"]
    assert (await running.call("POST", "/v1/partials", b"{}", {"Content-Type": "text/plain"}))[0] == 415
    assert (await running.call("POST", "/nope", b"{}"))[0] == 404
    status, headers, _ = await running.call("POST", "/status", b"{}")
    assert (status, headers["allow"]) == (405, "GET, HEAD")
    status, headers, _ = await running.call("PUT", "/v1/partials", b"{}")
    assert (status, headers["allow"]) == (405, "GET, HEAD, POST")
    assert (await running.call("GET", "/healthz"))[0] == 200
    assert json.loads((await running.call("GET", "/status"))[2])["partials"]["invalid"] == 1


async def test_gzip_bodies_are_accepted_and_bad_encodings_refused(running: Running) -> None:
    body = partial_body()
    status, _, _ = await running.call("POST", "/v1/partials", gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 202
    status, _, answer = await running.call("POST", "/v1/partials", b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"})
    assert status == 400
    assert "gzip" in json.loads(answer)["error"]
    status, _, _ = await running.call("POST", "/v1/partials", gzip.compress(body)[:-9], {"Content-Encoding": "gzip"})
    assert status == 400
    assert (await running.call("POST", "/v1/partials", body, {"Content-Encoding": "br"}))[0] == 415


async def test_bodies_over_the_cap_are_refused_before_and_after_decoding(running: Running) -> None:
    status, _, answer = await running.call("POST", "/v1/partials", b" " * (64 * 1024 + 1))
    assert status == 413
    assert "limit of 65536" in json.loads(answer)["error"]
    bomb = gzip.compress(b" " * (10 * 1024 * 1024))
    assert len(bomb) < 64 * 1024
    status, _, answer = await running.call("POST", "/v1/partials", bomb, {"Content-Encoding": "gzip"})
    assert status == 413
    assert "decodes to more" in json.loads(answer)["error"]
    assert (await running.call("GET", "/healthz"))[0] == 200


async def test_a_body_without_a_length_is_refused(running: Running) -> None:
    chunked = b"POST /v1/partials HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    assert (await asyncio.to_thread(_raw, running.port, chunked)).startswith(b"HTTP/1.1 411 ")
    missing = b"POST /v1/partials HTTP/1.1\r\nHost: x\r\n\r\n"
    assert (await asyncio.to_thread(_raw, running.port, missing)).startswith(b"HTTP/1.1 411 ")


async def test_status_and_metrics_say_what_happened(running: Running) -> None:
    await running.call("POST", "/v1/partials", partial_body())
    status = json.loads((await running.call("GET", "/status"))[2])
    assert set(status) == {
        "rule", "namespace", "instance", "ready", "watermark", "open_windows", "last_window", "partials",
        "windows_written", "windows_rewritten", "dropped_series", "dropped_groups", "buffered_points", "errors",
        "config_hash", "version",
    }  # fmt: skip
    assert (status["rule"], status["namespace"], status["ready"], status["open_windows"]) == (
        "cpu-rollup", "team-a", True, 1,
    )  # fmt: skip
    metrics = (await running.call("GET", "/metrics"))[2].decode()
    assert 'observatory_processor_partials_total{outcome="accepted"} 1.0' in metrics
    assert "observatory_processor_ready 1.0" in metrics
    assert 'observatory_processor_build_info{rule="cpu-rollup",version="test"} 1.0' in metrics


async def test_written_window_carries_points_marker_and_health_in_one_batch(tmp_path: Path) -> None:
    """InfluxDB is unreachable here, so the batch waits in the disk buffer: read it there."""
    run, stop = await start(tmp_path, allowed_lateness="100ms")
    try:
        for _ in range(100):
            if run.processor.ready:
                break
            await asyncio.sleep(0.02)
        end = (time.time() // WINDOW) * WINDOW
        for node, zone, values in (("n1", "a", (1.0, 3.0)), ("n2", "a", (5.0,)), ("n3", "b", (7.0,))):
            answer = await run.call("POST", "/v1/partials", partial_body(node, end=end, zone=zone, values=values))
            assert answer[0] == 202, answer
        for _ in range(200):
            # Buffered at once (before any request), then a failed attempt to send it.
            seen = json.loads((await run.call("GET", "/status"))[2])
            if seen["buffered_points"] and seen["errors"]["writes"].get("retryable"):
                break
            await asyncio.sleep(0.05)
        status = json.loads((await run.call("GET", "/status"))[2])
    finally:
        stop.set()
        await stop.cleanup()  # type: ignore[attr-defined]
    assert status["watermark"] is None  # nothing acknowledged by InfluxDB
    assert status["last_window"]["end"] == end
    assert status["last_window"]["acknowledged"] is False
    assert (status["last_window"]["series"], status["last_window"]["nodes"]) == (2, 3)
    assert status["last_window"]["node_names"] == ["n1", "n2", "n3"]
    assert status["errors"]["writes"]["retryable"] >= 1
    (record,) = DurableBuffer(tmp_path / "buffer", 1 << 20).peek_many(10)
    ms = round(end * 1000)
    lines = sorted(record.lines)
    head = "cluster.cpu.usage,cluster=bed,namespace=team-a,rule=cpu-rollup"
    assert lines[:2] == [
        f'{head},zone=a count=3i,max=5,mean=3,nodes=2i,p95=4.8,quantile_method="exact" {ms}',
        f'{head},zone=b count=1i,max=7,mean=7,nodes=1i,p95=7,quantile_method="exact" {ms}',
    ]
    health = next(line for line in lines if line.startswith("observatory.processor,"))
    assert health.startswith("observatory.processor,cluster=bed,namespace=team-a,rule=cpu-rollup ")
    for field in ("windows_written=1i", "series=2i", "nodes=3i", "late_partials=0i", "dropped_partials=0i",
                  "dropped_groups=0i", "buffered_points=0i", "write_errors=0i"):  # fmt: skip
        assert field in health
    (marker,) = watermark.markers(record.lines, "cpu-rollup", "team-a")
    assert (marker.window_end, marker.instance, marker.batch) == (end, status["instance"], 0)


async def test_points_dropped_from_a_full_buffer_are_not_counted_as_write_errors(tmp_path: Path) -> None:
    """``write_errors`` in ``observatory.processor`` counts failed requests, as the agents' own point does.

    The first window is too big for a 4 KiB buffer and is dropped whole (counted as dropped points);
    the next window's point must still say no write request has failed.
    """
    run, stop = await start(tmp_path, allowed_lateness="1500ms", buffer_max_bytes=4096)
    try:
        for _ in range(100):
            if run.processor.ready:
                break
            await asyncio.sleep(0.02)
        # Just after a window's end, so all 80 partials arrive well within its lateness (a busy machine is slow).
        first = (time.time() // WINDOW + 1) * WINDOW
        await asyncio.sleep(first - time.time() + 0.01)
        for zone in range(80):
            answer = await run.call("POST", "/v1/partials", partial_body(f"n{zone}", end=first, zone=f"z{zone}"))
            assert answer[0] == 202, answer
        for _ in range(200):
            writes = json.loads((await run.call("GET", "/status"))[2])["errors"]["writes"]
            if writes.get("dropped_buffer_full"):
                break
            await asyncio.sleep(0.05)
        assert writes == {"dropped_buffer_full": 82}, writes  # 80 groups, the marker and the health point
        second = first + WINDOW
        await asyncio.sleep(max(0.0, second - time.time()))
        answer = await run.call("POST", "/v1/partials", partial_body("n1", end=second))
        assert answer[0] == 202, answer
        for _ in range(200):
            if json.loads((await run.call("GET", "/status"))[2])["buffered_points"]:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await stop.cleanup()  # type: ignore[attr-defined]
    (record,) = DurableBuffer(tmp_path / "buffer", 1 << 20).peek_many(10)
    health = next(line for line in record.lines if line.startswith("observatory.processor,"))
    assert "windows_written=2i" in health, health
    assert "write_errors=0i" in health, health


async def test_more_agents_at_once_than_workers_are_all_answered(running: Running) -> None:
    """Connections beyond the server's workers wait in the backlog; none is refused or lost."""
    end = (time.time() // WINDOW) * WINDOW
    bodies = [partial_body(f"node-{i}", end=end) for i in range(40)]
    answers = await asyncio.gather(*(running.call("POST", "/v1/partials", b) for b in bodies))
    assert [status for status, _, _ in answers] == [202] * 40
    status = json.loads((await running.call("GET", "/status"))[2])
    assert status["partials"]["accepted"] == 40

"""The agent's side of the partials protocol: building, the durable outbox, and what each answer makes it do."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from observatory_agent.aggregation.series import tags_key
from observatory_agent.aggregation.windows import ClosedWindow, WindowAggregator
from observatory_agent.contract import (
    PartialsAck,
    ProcessorState,
    ProcessorTarget,
    RefusalReason,
    WindowPartial,
    unpack_floats,
)
from observatory_agent.sinks import partials
from tests.env.procs import free_port
from tests.unit.agent import peers
from tests.unit.processor.test_service import start

T0 = 1_800_000_000.0


def _window(start: float = 60.0, end: float = 120.0) -> ClosedWindow:
    agg = WindowAggregator(end - start, exact_threshold=1024)
    t = start + 1
    agg.add("system.cpu.usage", tags_key({"node": "a", "pool": "gpu", "host": "h"}), 10.0, t)
    agg.add("system.cpu.core.usage", tags_key({"node": "a", "pool": "gpu", "core": "0"}), 20.0, t)
    agg.add("system.memory.used", tags_key({"node": "a", "pool": "gpu"}), 30.0, t)
    agg.add("system.cpu.usage", tags_key({"node": "b", "pool": "general"}), 40.0, t + 1)
    (closed,) = agg.close(end)
    return closed


def _target(**extra: Any) -> ProcessorTarget:
    return ProcessorTarget.model_validate(
        {"rule": "cpu-rollup", "url": "http://p:9465/", "metrics": ["system.cpu.*"], **extra}
    )


# --- building -----------------------------------------------------------------------------


def test_processor_gets_only_series_matching_its_globs_and_tags() -> None:
    partial = partials.build(_window(), _target(match_tags={"pool": "gpu"}), "a", "boot.0")
    assert partial is not None
    assert sorted(partial.series.name) == ["system.cpu.core.usage", "system.cpu.usage"]
    assert (partial.window_start, partial.window_end, partial.rule, partial.source) == (
        60.0,
        120.0,
        "cpu-rollup",
        "boot.0",
    )
    assert WindowPartial.model_validate_json(partial.model_dump_json()) == partial


def test_with_group_by_only_the_tags_the_processor_reads_are_sent() -> None:
    partial = partials.build(_window(), _target(group_by=["pool"], match_tags={"node": "a"}), "a", "s")
    assert partial is not None
    assert partial.series.tags == {"node": ["a", "a"], "pool": ["gpu", "gpu"]}


def test_tags_travel_as_columns_with_null_where_a_series_lacks_one() -> None:
    partial = partials.build(_window(), _target(), "a", "s")
    assert partial is not None
    order = list(zip(partial.series.name, partial.series.tags["node"], strict=True))
    assert sorted(order) == [("system.cpu.core.usage", "a"), ("system.cpu.usage", "a"), ("system.cpu.usage", "b")]
    core = partial.series.name.index("system.cpu.core.usage")
    assert [v for i, v in enumerate(partial.series.tags["core"]) if i != core] == [None, None]
    assert partial.series.tags["core"][core] == "0"


def test_no_partial_when_nothing_matches() -> None:
    assert partials.build(_window(), _target(metrics=["app.*"]), "a", "s") is None


def test_a_series_past_the_agents_threshold_travels_as_a_sketch() -> None:
    agg = WindowAggregator(10.0, exact_threshold=5)
    for i in range(50):
        agg.add("system.cpu.usage", tags_key({"node": "a"}), float(i + 1), i * 0.1)
    for i in range(3):
        agg.add("system.cpu.user", tags_key({"node": "a"}), 1.0 + i, i * 0.1)
    (window,) = agg.close(10.0)
    partial = partials.build(window, _target(), "a", "s")
    assert partial is not None
    sketched = partial.series.name.index("system.cpu.usage")
    assert list(partial.series.sketches) == [sketched]
    assert partial.series.sketches[sketched].total == 50
    assert list(unpack_floats(partial.series.values)) == [1.0, 2.0, 3.0]  # the exact series' samples only


# --- the outbox ---------------------------------------------------------------------------


def _partial(end: float, source: str = "boot.0", node: str = "a") -> WindowPartial:
    built = partials.build(_window(end - 60.0, end), _target(), node, source)
    assert built is not None
    return built


def _put(outbox: partials.Outbox, partial: WindowPartial) -> int:
    return outbox.put(partial, partial.model_dump_json().encode())


def test_outbox_survives_a_restart_in_window_order_and_a_resent_key_replaces(tmp_path: Path) -> None:
    outbox = partials.Outbox(tmp_path, 1 << 20)
    for end in (180.0, 120.0, 240.0):
        _put(outbox, _partial(end))
    _put(outbox, _partial(120.0))
    _put(outbox, _partial(120.0, source="boot2.0"))
    (tmp_path / "000000000300000-000000000240000-x.json.tmp").write_bytes(b"half")  # a put cut short
    again = partials.Outbox(tmp_path, 1 << 20)
    assert [(e.window_end, e.name.split("-", 2)[2]) for e in again.entries()] == [
        (120.0, "boot.0.json"), (120.0, "boot2.0.json"), (180.0, "boot.0.json"), (240.0, "boot.0.json"),
    ]  # fmt: skip
    assert not list(tmp_path.glob("*.tmp"))
    first = again.entries()[0]
    assert WindowPartial.model_validate_json(again.read(first.name)) == _partial(120.0)
    assert again.remove_through(180.0) == 3
    assert [e.window_end for e in again.entries()] == [240.0]


def test_full_outbox_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    ends = (1200.0, 1800.0, 2400.0, 3000.0, 3600.0)
    size = max(len(_partial(end).model_dump_json()) for end in ends)
    outbox = partials.Outbox(tmp_path, size * 3 + 2)
    dropped = [_put(outbox, _partial(end)) for end in ends]
    assert dropped == [0, 0, 0, 1, 1]
    assert [e.window_end for e in outbox.entries()] == [2400.0, 3000.0, 3600.0]
    assert outbox.dropped == 2
    assert outbox.size <= size * 3 + 2
    tiny = partials.Outbox(tmp_path / "tiny", 10)
    assert _put(tiny, _partial(120.0)) == 1
    assert (len(tiny), tiny.dropped) == (0, 1)


# --- the sender, against scripted answers -------------------------------------------------


class Scripted(partials.Http):
    """The HTTP seam answering from a function: ``(method, body) -> (status, payload)`` or raising OSError."""

    def __init__(self, answer: Callable[[str, bytes | None], tuple[int, Any]]) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[tuple[str, float | None]] = []

    async def request(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        end = WindowPartial.model_validate_json(body).window_end if body else None
        self.requests.append((method, end))
        status, payload = self.answer(method, body)
        if method == "GET" and isinstance(payload, PartialsAck):  # GET answers the state only
            status = 200
            payload = ProcessorState(rule=payload.rule, instance=payload.instance, watermark=payload.watermark)
        raw = (
            payload.model_dump_json().encode() if hasattr(payload, "model_dump_json") else json.dumps(payload).encode()
        )
        return status, raw


def _ack(instance: str = "p1", watermark: float | None = None, **extra: Any) -> PartialsAck:
    return PartialsAck(rule="cpu-rollup", instance=instance, watermark=watermark, accepted=True, **extra)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def _sender(tmp_path: Path, http: partials.Http, *ends: float) -> tuple[partials.RuleSender, Clock]:
    outbox = partials.Outbox(tmp_path, 1 << 20)
    for end in ends:
        _put(outbox, _partial(end))
    clock = Clock()
    return partials.RuleSender(_target(), outbox, http, clock=clock), clock


async def test_an_accepted_partial_stays_until_the_watermark_passes_its_window(tmp_path: Path) -> None:
    marks = {"watermark": None}
    http = Scripted(lambda m, b: (202, _ack(watermark=marks["watermark"])))
    sender, _ = _sender(tmp_path, http, 120.0, 180.0)
    await sender.pump()
    assert http.requests == [("GET", None), ("POST", 120.0), ("POST", 180.0)]
    assert len(sender.outbox) == 2
    await sender.pump()
    assert len(http.requests) == 3  # delivered to this instance: not sent again
    marks["watermark"] = 120.0
    _put(sender.outbox, _partial(240.0))
    await sender.pump()
    assert [e.window_end for e in sender.outbox.entries()] == [180.0, 240.0]
    assert sender.stats.written == 1


async def test_a_new_processor_instance_gets_everything_above_its_watermark_again(tmp_path: Path) -> None:
    instance = {"id": "p1"}
    http = Scripted(lambda m, b: (202, _ack(instance["id"], watermark=60.0)))
    sender, _ = _sender(tmp_path, http, 120.0, 180.0)
    await sender.pump()
    instance["id"] = "p2"
    _put(sender.outbox, _partial(240.0))
    await sender.pump()  # the new window's answer names p2 ...
    await sender.pump()  # ... so the next round sends p2 the older ones again
    assert http.requests == [
        ("GET", None), ("POST", 120.0), ("POST", 180.0), ("POST", 240.0), ("POST", 120.0), ("POST", 180.0),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("reason", "kept", "resent"),
    [
        (RefusalReason.WRITTEN, True, False),
        (RefusalReason.TOO_LATE, False, False),
        (RefusalReason.CONFLICT, False, False),
        (RefusalReason.MISMATCH, False, False),
        (RefusalReason.BUSY, True, True),
    ],
)
async def test_each_refusal_keeps_or_drops_the_partial(
    tmp_path: Path, reason: RefusalReason, kept: bool, resent: bool
) -> None:
    refusal = PartialsAck(rule="cpu-rollup", instance="p1", accepted=False, reason=reason, message="why")
    http = Scripted(lambda m, b: (200, refusal))
    sender, clock = _sender(tmp_path, http, 120.0)
    sender.instance = "p1"  # known already: no first poll
    await sender.pump()
    assert len(sender.outbox) == (1 if kept else 0)
    clock.now += 30  # past a busy answer's backoff, short of an agent window (no watermark poll)
    await sender.pump()
    assert len(http.requests) == (2 if resent else 1)
    assert sender.stats.refused == {reason.value: 2 if resent else 1}


@pytest.mark.parametrize("status", [401, 403, 404, 405, 409])
async def test_an_answer_that_is_not_the_processors_refusal_keeps_the_partial(tmp_path: Path, status: int) -> None:
    """A 404 from a proxy or another server at the Service's address says nothing about the partial."""
    http = Scripted(lambda m, b: (status, {"error": "not here"}))
    sender, clock = _sender(tmp_path, http, 120.0)
    sender.instance = "p1"
    await sender.pump()
    assert (len(sender.outbox), sender.stats.rejected, sender.stats.errors) == (1, 0, 1)
    assert sender.report()["last_error"].startswith(f"HTTP {status}")
    http.answer = lambda m, b: (202, _ack(watermark=120.0))
    clock.now += 60
    await sender.pump()
    assert (len(sender.outbox), sender.stats.written) == (0, 1)


async def test_a_4xx_drops_the_partial_and_a_network_failure_keeps_it_and_backs_off(tmp_path: Path) -> None:
    http = Scripted(lambda m, b: (422, {"error": "series.count.0: bad", "field": "series.count.0"}))
    sender, _ = _sender(tmp_path, http, 120.0)
    sender.instance = "p1"
    await sender.pump()
    assert (len(sender.outbox), sender.stats.rejected) == (0, 1)

    def down(method: str, body: bytes | None) -> tuple[int, Any]:
        raise OSError("connection refused")

    http = Scripted(down)
    sender, clock = _sender(tmp_path / "b", http, 120.0, 180.0)
    sender.instance = "p1"
    await sender.pump()
    await sender.pump()
    assert http.requests == [("POST", 120.0)]  # the second round waits for the backoff
    assert sender.next_wakeup() > 0
    http.answer = lambda m, b: (202, _ack())
    clock.now += 60
    await sender.pump()
    assert http.requests[1:] == [("POST", 120.0), ("POST", 180.0)]
    assert (len(sender.outbox), sender.stats.errors) == (2, 1)


async def test_an_idle_sender_asks_for_the_watermark_once_per_agent_window(tmp_path: Path) -> None:
    http = Scripted(
        lambda m, b: (
            (202, _ack()) if m == "POST" else (200, ProcessorState(rule="cpu-rollup", instance="p1", watermark=120.0))
        )
    )
    sender, clock = _sender(tmp_path, http, 120.0)
    sender.instance = "p1"
    await sender.pump()
    await sender.pump()
    assert [m for m, _ in http.requests] == ["POST"]
    clock.now += 61  # one agent window (60 s) without contact
    await sender.pump()
    assert [m for m, _ in http.requests] == ["POST", "GET"]
    assert len(sender.outbox) == 0


async def test_a_restarted_agent_asks_first_and_sends_only_what_is_not_written(tmp_path: Path) -> None:
    http = Scripted(lambda m, b: (202, _ack(watermark=180.0)))
    sender, _ = _sender(tmp_path, http, 120.0, 180.0, 240.0)
    await sender.pump()
    assert http.requests == [("GET", None), ("POST", 240.0)]
    assert [e.window_end for e in sender.outbox.entries()] == [240.0]


async def test_a_window_closed_early_makes_the_rest_of_it_a_new_source(tmp_path: Path) -> None:
    manager = partials.Partials("a", tmp_path, 1 << 20, http=Scripted(lambda m, b: (503, {})))
    manager.configure([_target()])
    try:
        manager.store(_window(60.0, 120.0), now=100.0)  # SIGTERM at 100 s closed it early
        manager.store(_window(60.0, 120.0), now=121.0)  # the restarted aggregator closes it again
        names = [e.name for e in manager.senders["cpu-rollup"].outbox.entries()]
    finally:
        await manager.close(0.1)
    assert len(names) == 2
    assert names[0].endswith(f"-{manager.boot}.0.json")
    assert names[1].endswith(f"-{manager.boot}.1.json")


# --- against a real processor on this host ------------------------------------------------


def _submit_one(agent: partials.Partials, node: str, end: float) -> partials.RuleSender:
    """One 2 s window with one cpu sample closed and handed to ``agent``; its cpu-rollup sender."""
    agg = WindowAggregator(2.0, exact_threshold=1024)
    agg.add("system.cpu.usage", tags_key({"zone": "a", "node": node}), 42.0, end - 1.0)
    (window,) = agg.close(end)
    agent.submit(window, time.time())
    return agent.senders["cpu-rollup"]


async def _until(done: Callable[[], object], steps: int = 300) -> None:
    for _ in range(steps):
        if done():
            return
        await asyncio.sleep(0.02)


async def test_a_connection_that_reached_the_wrong_peer_is_not_reused_once_the_processor_answers(
    tmp_path: Path,
) -> None:
    """Issue 9's stall: an agent's first request to the processor's Service, sent before kube-proxy routed it,
    reached a proxy that answers 404 and keeps connections alive. Reusing that connection kept the agent
    talking to the proxy for good; each request now gets a connection of its own, routed afresh."""
    port = free_port()
    wrong = peers.serve(port, 404)  # what answered at the unrouted Service address
    end = (time.time() // 2.0) * 2.0
    agent = partials.Partials("node-2", tmp_path / "agent", 1 << 20)
    stop: asyncio.Event | None = None
    try:
        agent.configure([ProcessorTarget(rule="cpu-rollup", url=f"http://127.0.0.1:{port}", metrics=["system.*"])])
        sender = _submit_one(agent, "node-2", end)
        await _until(lambda: sender.stats.errors)
        assert sender.report()["last_error"] == "HTTP 404: "
        assert len(sender.outbox) == 1  # a 404 is not the processor refusing the partial: kept

        # kube-proxy routes the Service now: the proxy takes no new connection, the processor listens there.
        wrong.stop_listening()
        before = wrong.requests
        running, stop = await start(tmp_path / "p", floor=None, allowed_lateness="1500ms", port=port)
        await _until(lambda: sender.stats.accepted)
        assert sender.instance == running.processor.instance, sender.report()
        assert running.processor.status()["partials"]["accepted"] == 1
        assert wrong.requests == before  # nothing more went to the wrong peer
    finally:
        if stop is not None:
            stop.set()
            await stop.cleanup()  # type: ignore[attr-defined]
        await agent.close(0.1)
        wrong.server_close()


async def test_a_restarted_processor_gets_the_unwritten_partials_again(tmp_path: Path) -> None:
    end = (time.time() // 2.0) * 2.0
    first, stop = await start(tmp_path / "p1", floor=None, allowed_lateness="1500ms", restart_grace="2s")
    agent = partials.Partials("node-1", tmp_path / "agent", 1 << 20)
    try:
        target = ProcessorTarget(rule="cpu-rollup", url=f"http://127.0.0.1:{first.port}", metrics=["system.cpu.*"])
        agent.configure([target])
        sender = _submit_one(agent, "node-1", end)
        await _until(lambda: sender.stats.accepted)
        assert sender.instance == first.processor.instance
        assert first.processor.status()["partials"]["accepted"] == 1
        stop.set()
        await stop.cleanup()  # type: ignore[attr-defined]

        second, stop = await start(tmp_path / "p2", floor=None, allowed_lateness="1500ms", restart_grace="2s")
        sender.target = target.model_copy(update={"url": f"http://127.0.0.1:{second.port}"})
        sender.wake.set()
        await _until(lambda: second.processor.status()["partials"]["accepted"])
        assert sender.instance == second.processor.instance
        assert second.processor.status()["partials"]["accepted"] == 1
        assert len(sender.outbox) == 1  # nothing written to InfluxDB yet: still kept
        stop.set()
        await stop.cleanup()  # type: ignore[attr-defined]
    finally:
        await agent.close(0.1)


async def test_a_sender_that_cannot_deliver_says_why_and_what_waits(tmp_path: Path) -> None:
    refused = "ClientConnectorError: Cannot connect to host cpu-rollup-processor.team.svc:8080"

    def down(method: str, body: bytes | None) -> tuple[int, Any]:
        raise OSError(refused)

    http = Scripted(down)
    sender, clock = _sender(tmp_path, http, 120.0, 180.0)
    before = sender.report()
    assert (before["pending"], before["last_error"], before["errors"]) == (2, None, 0)
    await sender.pump()
    stalled = sender.report()
    assert stalled["pending"] == 2
    assert stalled["oldest_pending_window_end"] == 120.0
    assert stalled["instance"] is None
    assert stalled["last_contact"] is None
    assert stalled["last_error"] == f"OSError: {refused}"
    assert (stalled["last_error_at"], stalled["errors"]) == (clock.now, 1)
    assert stalled["processor"] == _target().url

    http.answer = lambda m, b: (202, _ack(watermark=180.0))
    clock.now += 60
    await sender.pump()
    await sender.pump()
    delivered = sender.report()
    assert (delivered["pending"], delivered["oldest_pending_window_end"], delivered["written"]) == (0, None, 2)
    assert delivered["last_contact"] == clock.now
    assert delivered["watermark"] == 180.0
    assert delivered["last_error"] is not None  # the last failure stays, with its time, for whoever looks later

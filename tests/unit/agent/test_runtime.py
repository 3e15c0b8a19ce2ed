"""The agent end to end on this host: cycles, endpoints, buffering without InfluxDB, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from observatory_agent import server
from observatory_agent.collectors.host import HostPaths
from observatory_agent.config import ConfigWatcher
from observatory_agent.runtime import SELF_FIELDS, Agent
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.telemetry import Telemetry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, **extra: object) -> Path:
    cfg = {
        "interval": "1s",
        "window": "1s",
        "buffer_dir": str(tmp_path / "buffer"),
        "collectors": [{"name": "memory", "kind": "memory"}, {"name": "load", "kind": "load"}],
        **extra,
    }
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(cfg))
    return path


async def test_agent_buffers_every_window_when_influxdb_is_not_configured(tmp_path: Path) -> None:
    watcher = ConfigWatcher(_config(tmp_path), None, environ={})
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="test", telemetry=Telemetry("test", "n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.5)
    assert agent.ready
    status = agent.status()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert status["ready"] is True
    assert status["node"] == "n1"
    assert watcher.current is not None
    assert status["config_hash"] == watcher.current.hash
    assert set(status) == {
        "schema_version",
        "collectors",
        "series",
        "buffer",
        "clock_steps",
        "last_successful_write",
        "buffered_points",
        "buffered_bytes",
        "errors",
        "config_hash",
        "version",
        "node",
        "ready",
        "enabled",
        "partials",
    }
    assert status["enabled"] is True
    assert status["partials"] == {}  # no AggregationRule names this collector
    buffer = DurableBuffer(tmp_path / "buffer", 1 << 26)
    lines = []
    while (record := buffer.peek()) is not None:
        lines.extend(record.lines)
        buffer.ack(record)
    assert any(line.startswith("system.memory.used,cluster=default,host=h1,node=n1 ") for line in lines)
    assert any(line.startswith("system.load.1,") for line in lines)


async def test_endpoints_report_health_readiness_status_and_metrics(tmp_path: Path) -> None:
    watcher = ConfigWatcher(_config(tmp_path), None, environ={})
    telemetry = Telemetry("test", "n1")
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="test", telemetry=telemetry)
    port = _free_port()
    http = await server.start(server.make_app(telemetry, agent.status, lambda: agent.ready), "127.0.0.1", port)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        assert (await asyncio.to_thread(get, "/healthz"))[0] == 200
        assert (await asyncio.to_thread(get, "/readyz"))[0] == 503  # no cycle yet
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        await asyncio.sleep(1.5)
        assert (await asyncio.to_thread(get, "/readyz"))[0] == 200
        code, body = await asyncio.to_thread(get, "/status")
        assert code == 200
        assert json.loads(body)["ready"] is True
        code, metrics = await asyncio.to_thread(get, "/metrics")
        assert "observatory_agent_cycles_total" in metrics
        assert "observatory_agent_cycle_duration_seconds_bucket" in metrics
        assert "observatory_agent_buffered_points" in metrics
        assert 'observatory_agent_collector_duration_seconds{collector="memory"}' in metrics
        assert 'observatory_agent_collector_last_success_timestamp_seconds{collector="load"}' in metrics
        assert f'observatory_agent_config_info{{hash="{json.loads(body)["config_hash"]}"}} 1.0' in metrics
        assert "observatory_agent_window_close_lateness_seconds_bucket" in metrics
        assert "observatory_agent_write_duration_seconds_bucket" in metrics
        assert "observatory_agent_buffer_corrupt_records_total" in metrics
        assert "observatory_agent_partials_errors_total" in metrics
        status = json.loads(body)
        assert status["schema_version"] == 3
        assert status["collectors"]["memory"]["last_error"] is None
        assert status["collectors"]["memory"]["last_success"] is not None
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    finally:
        await http.cleanup()


def test_sigterm_closes_the_window_early_flushes_and_exits_within_ten_seconds(tmp_path: Path) -> None:
    config = _config(tmp_path, window="1m", interval="10s", port=_free_port())
    env = {**os.environ, "NODE_NAME": "node-a", "POD_IP": "127.0.0.1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from observatory_agent.cli import main; main()", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    port = json.loads(config.read_text())["port"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    took = time.monotonic() - started
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
    assert took < 10
    buffer = DurableBuffer(tmp_path / "buffer", 1 << 26)
    record = buffer.peek()
    assert record is not None  # the open 1m window was closed early and kept
    assert any("node=node-a" in line for line in record.lines)


def _start(config: Path, pod: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NODE_NAME": "node-a", "POD_IP": "127.0.0.1", "POD_NAME": pod}
    return subprocess.Popen(
        [sys.executable, "-c", "from observatory_agent.cli import main; main()", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _status(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if value := check():
                return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_an_agent_started_while_the_old_one_holds_the_buffer_is_ready_then_takes_it_over(tmp_path: Path) -> None:
    """A rolling update with maxSurge starts the new pod first and stops the old one only once the new one is ready:
    the newcomer must not wait for the buffer, must not write to it while the old one does, and must lose nothing."""
    buffer_dir = tmp_path / "buffer"
    ports = {"old": _free_port(), "new": _free_port()}
    procs = {}
    for who in ("old", "new"):
        (tmp_path / who).mkdir()
        # A tag per process tells whose windows are whose in the buffer afterwards.
        config = _config(tmp_path / who, buffer_dir=str(buffer_dir), port=ports[who], tags={"agent": who})
        procs[who] = _start(config, f"agent-{who}")
        _poll(lambda port=ports[who]: _status(port)["ready"], 15, f"the {who} agent ready")
    try:
        waiting = _status(ports["new"])["buffer"]
        assert waiting["owned"] is False
        assert waiting["held_by"] == "agent-old"
        assert waiting["waiting_since"] is not None
        assert _poll(lambda: _status(ports["new"])["buffer"]["unpersisted_points"], 5, "windows held in memory")
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['new']}/metrics", timeout=2) as resp:
            assert "observatory_agent_buffer_owned 0.0" in resp.read().decode()

        procs["old"].send_signal(signal.SIGTERM)
        assert procs["old"].wait(timeout=10) == 0
        taken = _poll(lambda: (b := _status(ports["new"])["buffer"])["owned"] and b, 5, "the new agent owning it")
        assert taken["held_by"] is None
        assert taken["unpersisted_points"] == 0
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
    assert procs["new"].wait(timeout=10) == 0

    own = [line for line in _buffered(buffer_dir) if line.startswith("system.memory.used,")]
    whose = [("old" if ",agent=old," in line else "new", int(line.rsplit(" ", 1)[1])) for line in own]
    old_ends = [end for who, end in whose if who == "old"]
    new_ends = [end for who, end in whose if who == "new"]
    assert old_ends
    assert new_ends
    # The old agent's batches (its final flush included) come first, then what the new one held meanwhile.
    assert [who for who, _ in whose] == ["old"] * len(old_ends) + ["new"] * len(new_ends)
    assert min(new_ends) <= max(old_ends)  # the two overlapped: no window without an agent
    every = sorted({*old_ends, *new_ends})
    assert every == list(range(every[0], every[-1] + 1000, 1000))  # 1 s windows (ms timestamps), none missing


async def test_config_change_is_applied_without_restart(tmp_path: Path) -> None:
    path = _config(tmp_path)
    watcher = ConfigWatcher(path, None, environ={})
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.2)
    _config(tmp_path, tags={"team": "sre"}, collectors=[{"name": "uptime", "kind": "uptime"}])
    os.utime(path, ns=(10**9, 10**9))
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert watcher.reloads["success"] == 1
    buffer = DurableBuffer(tmp_path / "buffer", 1 << 26)
    lines = []
    while (record := buffer.peek()) is not None:
        lines.extend(record.lines)
        buffer.ack(record)
    assert any(line.startswith("system.uptime,") and ",team=sre" in line for line in lines)
    assert any(line.startswith("system.memory.used,") and "team=" not in line for line in lines)


async def test_disabled_agent_is_ready_and_collects_nothing(tmp_path: Path) -> None:
    watcher = ConfigWatcher(_config(tmp_path, enabled=False), None, environ={})
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(1.5)
    assert agent.ready
    assert agent.status()["enabled"] is False  # the operator reads this: "switched off", not "broken"
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert DurableBuffer(tmp_path / "buffer", 1 << 26).peek() is None


def test_malloc_arena_limit_leaves_an_explicit_setting_alone() -> None:
    from observatory_agent.cli import limit_malloc_arenas

    assert limit_malloc_arenas({"MALLOC_ARENA_MAX": "4"}) is False
    script = "from observatory_agent.cli import limit_malloc_arenas as f; print(f({}))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=30)
    assert result.stdout.strip() == ("True" if sys.platform.startswith("linux") else "False")


def _buffered(path: Path) -> list[str]:
    buffer = DurableBuffer(path, 1 << 26)
    lines = []
    while (record := buffer.peek()) is not None:
        lines.extend(record.lines)
        buffer.ack(record)
    return lines


def _field(line: str, name: str) -> str:
    fields = dict(f.split("=", 1) for f in line.split(" ")[1].split(","))
    return fields[name]


async def test_each_window_carries_the_agents_own_health_point(tmp_path: Path) -> None:
    watcher = ConfigWatcher(_config(tmp_path, collector="nodes", namespace="team-a"), None, environ={})
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.5)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    own = [line for line in _buffered(tmp_path / "buffer") if line.startswith("observatory.agent,")]
    assert len(own) >= 2
    tags = dict(t.split("=", 1) for t in own[-1].split(" ")[0].split(",")[1:])
    assert tags == {"cluster": "default", "collector": "nodes", "host": "h1", "namespace": "team-a", "node": "n1"}
    fields = {f.split("=", 1)[0] for f in own[-1].split(" ")[1].split(",")}
    assert fields == set(SELF_FIELDS)
    for name in ("series", "samples", "buffered_points", "write_errors", "dropped_samples", "dropped_series"):
        assert _field(own[-1], name).endswith("i"), name
    assert _field(own[-1], "collector_errors") == "0i"
    assert float(_field(own[-1], "last_write_age_seconds")) > 0  # nothing written: no InfluxDB configured
    samples = [int(_field(line, "samples")[:-1]) for line in own]
    assert samples == sorted(samples)
    assert samples[-1] > 0


async def test_a_backward_clock_step_drops_no_sample_and_is_counted(tmp_path: Path) -> None:
    """Issue 10: a backward step dropped every sample for its duration, silently."""
    offset = [0.0]
    watcher = ConfigWatcher(_config(tmp_path, window="2s"), None, environ={})
    telemetry = Telemetry("t", "n1")
    agent = Agent(
        watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=telemetry,
        wall=lambda: time.time() + offset[0],
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(2.2)
    offset[0] = -4.0
    await asyncio.sleep(6.0)
    status = agent.status()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    cycles = telemetry.cycles._value.get()
    loads = [line for line in _buffered(tmp_path / "buffer") if line.startswith("system.load.1,")]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in loads]
    assert stamps == sorted(set(stamps))  # every window once, in order: nothing overwritten
    assert sum(int(_field(line, "count")[:-1]) for line in loads) == cycles  # not one sample dropped
    assert status["clock_steps"] == {"backward": 1, "forward": 0}
    assert telemetry.dropped_samples.labels(reason="late")._value.get() == 0


async def test_a_forward_clock_step_closes_the_open_window_and_is_counted(tmp_path: Path) -> None:
    offset = [0.0]
    watcher = ConfigWatcher(_config(tmp_path, window="2s"), None, {})
    agent = Agent(
        watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n1"),
        wall=lambda: time.time() + offset[0],
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(3.5)
    offset[0] = 3600.0
    await asyncio.sleep(2.5)
    status = agent.status()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert status["clock_steps"] == {"backward": 0, "forward": 1}
    lines = [line for line in _buffered(tmp_path / "buffer") if line.startswith("system.load.1,")]
    stamps = [int(line.rsplit(" ", 1)[1]) for line in lines]
    assert stamps == sorted(set(stamps))
    assert stamps[-1] - stamps[0] >= 3600_000  # windows on both sides of the step, none rewritten
    assert stamps[0] < stamps[-1] - 3600_000 + 4000


async def test_the_series_limit_drops_new_series_counts_them_and_keeps_the_host_metrics(tmp_path: Path) -> None:
    from aiohttp import web

    async def many(_request: web.Request) -> web.Response:
        return web.Response(text="".join(f'big{{i="{i}"}} {i}\n' for i in range(500)))

    app = web.Application()
    app.router.add_get("/metrics", many)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
    collectors = [{"name": "memory", "kind": "memory"}, {"name": "apps", "kind": "application", "targets": [url]}]
    watcher = ConfigWatcher(_config(tmp_path, max_series=100, collectors=collectors), None, environ={})
    telemetry = Telemetry("t", "n1")
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=telemetry)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(2.5)
        status = agent.status()
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await runner.cleanup()
    assert status["series"]["limit"] == 100
    assert status["series"]["dropped_series"] >= 400
    assert telemetry.dropped_series._value.get() >= 400
    lines = _buffered(tmp_path / "buffer")
    assert any(line.startswith("system.memory.used,") for line in lines)
    assert len({line.split(" ")[0] for line in lines if line.startswith("app.big,")}) < 100
    own = [line for line in lines if line.startswith("observatory.agent,")]
    assert int(_field(own[-1], "dropped_series")[:-1]) >= 400
    assert status["collectors"]["apps"]["last_success"] is not None
    assert status["collectors"]["apps"]["last_error"] is None


def test_flush_jitter_spreads_writes_over_a_fifth_of_the_window_at_most_5s(tmp_path: Path) -> None:
    import random

    for window, configured, limit in (("10s", None, 2.0), ("1m", None, 5.0), ("10s", "3s", 3.0)):
        extra = {"window": window, "interval": "1s"} | ({"flush_jitter": configured} if configured else {})
        watcher = ConfigWatcher(_config(tmp_path, **extra), None, environ={})
        agent = Agent(
            watcher, node="n", host="h", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n"),
            rng=random.Random(1),
        )  # fmt: skip
        agent._loaded = watcher.start()
        delays = [agent._jitter() for _ in range(500)]
        assert 0.0 <= min(delays) < limit * 0.05
        assert limit * 0.95 < max(delays) <= limit


async def test_partials_of_windows_closed_while_the_buffer_was_held_elsewhere_are_kept_after_the_takeover(
    tmp_path: Path,
) -> None:
    """The partials' outboxes live in the buffer directory: the newcomer opens them only once it is its own."""
    old = DurableBuffer(tmp_path / "buffer", 1 << 20, owner="agent-old")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{s.getsockname()[1]}"  # closed again: the processor is down
    rule = {"rule": "mem", "url": nowhere, "metrics": ["system.memory.*"]}
    watcher = ConfigWatcher(_config(tmp_path, processors=[rule]), None, environ={})
    agent = Agent(watcher, node="n1", host="h1", paths=HostPaths(), version="t", telemetry=Telemetry("t", "n1"))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.sleep(2.5)
        assert agent.status()["buffer"]["owned"] is False
        assert not (tmp_path / "buffer" / "partials").exists()  # nothing written where the old agent owns
        released = time.time()
        old.close()
        await asyncio.sleep(1.5)
        assert agent.status()["buffer"]["owned"] is True
        await asyncio.sleep(1.0)
        # Nothing answers at the rule's URL: /status says what waits and why, per rule.
        stalled = agent.status()["partials"]["mem"]
        assert stalled["pending"] >= 2
        assert stalled["processor"] == nowhere
        assert stalled["last_contact"] is None
        assert stalled["errors"] >= 1
        assert "Cannot connect" in stalled["last_error"], stalled["last_error"]
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
    outbox = sorted((tmp_path / "buffer" / "partials" / "mem").iterdir())
    ends = sorted({int(p.name.split("-", 1)[0]) / 1000 for p in outbox})
    assert ends[0] < released - 1  # windows closed while the directory was held elsewhere were kept
    assert ends == [ends[0] + i for i in range(len(ends))]  # and none is missing since
    # The agent's own point says so too (InfluxDB keeps it when pod logs are gone): waiting partials, failed sends.
    own = [line for line in _buffered(tmp_path / "buffer") if line.startswith("observatory.agent,")]
    assert int(_field(own[-1], "partials_pending")[:-1]) >= 2
    assert int(_field(own[-1], "partials_errors")[:-1]) >= 1

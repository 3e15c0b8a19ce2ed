"""The agent end to end on this host: cycles, endpoints, buffering without InfluxDB, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from observatory_agent import server
from observatory_agent.collectors.host import HostPaths
from observatory_agent.config import ConfigWatcher
from observatory_agent.runtime import Agent
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
        "last_successful_write",
        "buffered_points",
        "buffered_bytes",
        "errors",
        "config_hash",
        "version",
        "node",
        "ready",
        "enabled",
    }
    assert status["enabled"] is True
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

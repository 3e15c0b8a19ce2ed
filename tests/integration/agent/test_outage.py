"""A real ``observatory-agent run`` through InfluxDB outages and its own SIGKILL: no window lost or doubled.

Interval 1 s, window 2 s. Each check reads the distinct window timestamps of one series
(``system.uptime`` of this agent's ``run`` tag) and wants every 2 s window end between the
first and the last, once each, with the samples of exactly one agent in it (count ≤ 2).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from observatory_agent.sinks.buffer import DurableBuffer
from tests.env import tools
from tests.env.influx import InfluxDB
from tests.env.procs import wait_for
from tests.integration.agent.conftest import WINDOW, AgentProcess, flux_string, query, window_times

pytestmark = pytest.mark.integration

SERIES = "system.uptime"
OUTAGE_WINDOWS = 4


def _assert_every_window_once(times: list[float], first: float, last: float) -> None:
    assert len(times) == len(set(times)), f"duplicate window timestamps: {sorted(times)}"
    want = [first + i * WINDOW for i in range(round((last - first) / WINDOW) + 1)]
    missing = sorted(set(want) - set(times))
    assert not missing, f"windows missing: {missing} (have {sorted(times)})"
    assert all(t % WINDOW == 0 for t in times), f"windows not aligned to {WINDOW}s: {times}"


def _counts(influx: InfluxDB, run: str, start: float, stop: float) -> dict[float, int]:
    flux = f"""
from(bucket: {flux_string(influx.bucket)})
  |> range(start: {int(start) - 60}, stop: {int(stop) + 60})
  |> filter(fn: (r) => r._measurement == {flux_string(SERIES)} and r.run == {flux_string(run)} and r._field == "count")
"""
    return {r["_time"].timestamp(): int(r["_value"]) for r in query(influx, flux)}


def _next_boundary(after: float) -> float:
    return math.floor(after / WINDOW) * WINDOW + WINDOW


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def test_influxdb_outage_every_window_written_once_and_buffer_drains(
    make_agent: Callable[..., AgentProcess], influx_restored: InfluxDB
) -> None:
    influx = influx_restored
    agent = make_agent("outage", tags={"purpose": "outage test"})
    agent.start()
    first_full = _next_boundary(agent.started_at) + WINDOW  # the first window the agent saw whole
    wait_for(lambda: agent.status()["last_successful_write"], timeout=15, what="a first successful write")
    assert agent.metric("observatory_agent_buffered_points") == 0

    influx.stop()
    outage_started = time.time()
    buffered_during: list[int] = []

    def buffering() -> bool:
        buffered_during.append(agent.status()["buffered_points"])
        return time.time() - outage_started >= OUTAGE_WINDOWS * WINDOW and buffered_during[-1] > 0

    wait_for(buffering, timeout=60, what="points buffered for the whole outage")
    gauge_during = agent.metric("observatory_agent_buffered_points")
    status_during = agent.status()
    influx.start()
    recovered_at = time.time()

    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=30, what="the buffer to drain")
    drained_after = time.time() - recovered_at
    # Two more windows after the replay, written directly again.
    _sleep_until(_next_boundary(time.time()) + 2 * WINDOW + 0.5)
    assert agent.metric("observatory_agent_buffered_points") == 0
    assert agent.metric("observatory_agent_buffered_bytes") == 0
    status_after = agent.status()
    assert agent.stop() == 0
    stopped_at = time.time()

    assert gauge_during > 0
    assert status_during["errors"]["writes"].get("retryable", 0) > 0
    # Buffered points only grew while InfluxDB was away (one window's worth at a time).
    assert buffered_during[-1] == max(buffered_during) > buffered_during[0]
    assert status_after["last_successful_write"] > recovered_at
    assert status_after["errors"]["writes"].get("dropped_buffer_full", 0) == 0

    times = window_times(influx, run=agent.run, measurement=SERIES, start=agent.started_at, stop=stopped_at)
    last_full = math.floor(stopped_at / WINDOW) * WINDOW  # the window SIGTERM closed early ends here or later
    _assert_every_window_once([t for t in times if first_full <= t <= last_full], first_full, last_full)
    assert any(outage_started < t < recovered_at for t in times), "no window from the outage itself"
    counts = _counts(influx, agent.run, agent.started_at, stopped_at)
    full = [c for t, c in counts.items() if first_full <= t < last_full]
    assert full
    assert all(c <= round(WINDOW / 1.0) for c in counts.values()), counts  # nothing folded twice
    print(
        f"\noutage: {len(times)} windows, {max(buffered_during)} points buffered at most, "
        f"drained {drained_after:.1f}s after InfluxDB returned"
    )


def test_sigkilled_agent_replays_its_buffer_after_restart(
    make_agent: Callable[..., AgentProcess], influx_restored: InfluxDB, tmp_path: Path
) -> None:
    influx = influx_restored
    influx.stop()
    agent = make_agent("sigkill")
    agent.start()
    # Let several windows close into the buffer, then kill mid-window, once the last close is fsynced.
    last_closed = _next_boundary(agent.started_at) + 3 * WINDOW
    _sleep_until(last_closed + WINDOW / 2)
    before_kill = agent.status()
    assert before_kill["buffered_points"] > 0
    agent.kill()
    killed_at = time.time()

    buffered_lines = _buffered_lines(agent.buffer_dir, tmp_path / "buffer-copy")
    assert len(buffered_lines) >= before_kill["buffered_points"]
    expected = sorted(
        {t for line in buffered_lines if line.startswith(SERIES + ",") and (t := _stamp(line)) <= last_closed}
    )
    # Every window since the agent's first full one survived the SIGKILL on disk.
    assert expected
    assert expected[0] <= _next_boundary(agent.started_at) + WINDOW
    assert expected == [expected[0] + i * WINDOW for i in range(round((last_closed - expected[0]) / WINDOW) + 1)]

    influx.start()
    agent.start()  # same buffer dir, same node and run tag
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=30, what="the replay to finish")
    _sleep_until(_next_boundary(time.time()) + 0.5)
    assert agent.stop() == 0

    times = window_times(influx, run=agent.run, measurement=SERIES, start=agent.started_at - 60, stop=time.time())
    assert len(times) == len(set(times)), f"duplicates: {times}"
    missing = sorted(set(expected) - set(times))
    assert not missing, f"buffered windows lost across SIGKILL: {missing}"
    # Every buffered line of every series is in InfluxDB, not just the one series checked above.
    flux = f"""
from(bucket: {flux_string(influx.bucket)})
  |> range(start: {int(expected[0]) - 60}, stop: {int(killed_at) + 60})
  |> filter(fn: (r) => r.run == {flux_string(agent.run)} and r._field == "count")
  |> filter(fn: (r) => r._time <= time(v: {int(last_closed * 1e9)}))
  |> group()
"""
    written = {(r["_measurement"], r["_time"].timestamp()) for r in query(influx, flux)}
    # (The agent's own observatory.agent point carries no configured tags, so no run tag: read by node below.)
    buffered = {
        (line.split(",", 1)[0], _stamp(line))
        for line in buffered_lines
        if _stamp(line) <= last_closed and not line.startswith("observatory.agent,")
    }
    assert len(buffered) > 10
    assert buffered <= written, sorted(buffered - written)[:5]


def _stamp(line: str) -> float:
    return int(line.rsplit(" ", 1)[1]) / 1000


def _buffered_lines(buffer_dir: Path, scratch: Path) -> list[str]:
    """Every line the buffer holds, read by the agent's own buffer code from a copy (the original is left as is)."""
    shutil.copytree(buffer_dir, scratch)
    buffer = DurableBuffer(scratch, 64 << 20)
    lines: list[str] = []
    while (record := buffer.peek()) is not None:
        lines += record.lines
        buffer.ack(record)
    buffer.close()
    return lines


def test_metrics_pass_promtool_check_metrics(make_agent: Callable[..., AgentProcess]) -> None:
    promtool = tools.promtool()
    agent = make_agent("promtool")
    agent.start()
    wait_for(lambda: agent.status()["last_successful_write"], timeout=15, what="a first write")
    body = agent.get("/metrics")
    agent.stop()
    assert b"observatory_agent_cycles_total" in body
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()

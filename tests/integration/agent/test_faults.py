"""A real ``observatory-agent run`` against the bed's real influxd through ordinary faults.

Each test pins the outcome a user would check afterwards: every 2 s window of the agent's
``system.uptime`` series present exactly once after recovery — or, where InfluxDB truly refuses
the data, the loss counted, logged with InfluxDB's own message and visible in ``/status`` and
``/metrics``. Network faults come from ``tests/env/faultproxy.py`` between the agent and influxd.
"""

from __future__ import annotations

import math
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.env.faultproxy import FaultProxy
from tests.env.influx import InfluxDB
from tests.env.procs import wait_for
from tests.integration.agent.conftest import WINDOW, AgentProcess, flux_string, query, window_times

pytestmark = pytest.mark.integration

SERIES = "system.uptime"


@pytest.fixture
def proxy(influxdb: InfluxDB) -> Iterator[FaultProxy]:
    host, port = influxdb.url.removeprefix("http://").rsplit(":", 1)
    with FaultProxy(host, int(port)) as p:
        yield p


@pytest.fixture
def bucket(influxdb: InfluxDB) -> Iterator[Callable[[str], str]]:
    """Fresh buckets for tests whose data must not touch the shared one (field types stick per shard)."""
    client = influxdb.client()
    made: list[object] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        made.append(client.buckets_api().create_bucket(bucket_name=name, org=influxdb.org))
        return name

    yield make
    for b in made:
        client.buckets_api().delete_bucket(b)
    client.close()


def _boundary(after: float) -> float:
    return math.floor(after / WINDOW) * WINDOW + WINDOW


def _sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


def _every_window_once(
    influx: InfluxDB, agent: AgentProcess, first: float, last: float, bucket: str | None = None
) -> None:
    times = window_times(influx, run=agent.run, measurement=SERIES, start=first - 60, stop=last + 60, bucket=bucket)
    times = [t for t in times if first <= t <= last]
    assert len(times) == len(set(times)), f"a window written twice: {sorted(times)}"
    want = {first + i * WINDOW for i in range(round((last - first) / WINDOW) + 1)}
    missing = sorted(want - set(times))
    assert not missing, f"windows lost: {missing} (have {sorted(times)})"


def _run_through(
    agent: AgentProcess, fault: Callable[[], None], recover: Callable[[], None], windows: int = 3
) -> tuple[float, float]:
    """Start, write once, fault for ``windows`` windows, recover, drain, stop: (first full, last full) window ends."""
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["last_successful_write"], timeout=20, what="a first write")
    fault()
    time.sleep(windows * WINDOW)
    recover()
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the buffer to drain")
    _sleep_until(_boundary(time.time()) + 0.3)
    last = math.floor(time.time() / WINDOW) * WINDOW
    assert agent.stop() == 0
    return first, last


def test_hung_influxdb_then_sigterm_then_restart_loses_no_window(
    make_agent: Callable[..., AgentProcess], proxy: FaultProxy, influxdb: InfluxDB
) -> None:
    """Issue 10, defect 1: windows queued behind 5 s timeouts were never buffered before SIGTERM."""
    agent = make_agent("hang", influx_url=proxy.url)
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["last_successful_write"], timeout=20, what="a first write")
    proxy.set_mode("hang")
    time.sleep(7 * WINDOW)
    hung_status = agent.status()
    stopping = time.time()
    assert agent.stop() == 0
    assert time.time() - stopping < 10  # within the pod's grace, with the hang still on
    last = math.floor(stopping / WINDOW) * WINDOW
    assert hung_status["buffered_points"] > 0
    proxy.set_mode("pass")
    agent.start()  # same buffer, same node and run tag
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the replay to finish")
    assert agent.stop() == 0
    _every_window_once(influxdb, agent, first, last)


def test_slow_influxdb_delays_writes_but_loses_nothing(
    make_agent: Callable[..., AgentProcess], proxy: FaultProxy, influxdb: InfluxDB
) -> None:
    agent = make_agent("slow", influx_url=proxy.url)
    proxy.slow_chunk, proxy.slow_delay = 256, 0.1

    first, last = _run_through(agent, lambda: proxy.set_mode("slow"), lambda: proxy.set_mode("pass"), windows=4)
    _every_window_once(influxdb, agent, first, last)


def test_connection_resets_are_retried_counted_and_lose_nothing(
    make_agent: Callable[..., AgentProcess], proxy: FaultProxy, influxdb: InfluxDB
) -> None:
    agent = make_agent("reset", influx_url=proxy.url)
    seen: dict[str, object] = {}

    def recover() -> None:
        seen["status"] = agent.status()
        seen["metric"] = agent.metric('observatory_agent_write_errors_total{kind="retryable"}')
        proxy.set_mode("pass")

    first, last = _run_through(agent, lambda: proxy.set_mode("reset"), recover)
    status = seen["status"]
    assert isinstance(status, dict)
    assert status["errors"]["writes"]["retryable"] > 0
    assert "Connection" in status["errors"]["last_write_error"] or "reset" in status["errors"]["last_write_error"]
    assert seen["metric"] == status["errors"]["writes"]["retryable"]
    assert status["buffered_points"] > 0
    _every_window_once(influxdb, agent, first, last)


def test_wrong_token_is_visible_and_a_rotated_token_file_replays_everything(
    make_agent: Callable[..., AgentProcess], influxdb: InfluxDB
) -> None:
    """401 until the mounted Secret is rotated; then, without a restart, every window arrives once."""
    agent = make_agent("token", token="not-the-token")
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["errors"]["writes"].get("config", 0) >= 2, timeout=30, what="401s")
    _sleep_until(_boundary(time.time()) + 2 * WINDOW)
    status = agent.status()
    assert status["last_successful_write"] is None
    assert status["buffered_points"] > 0
    assert "unauthorized" in status["errors"]["last_write_error"]
    assert agent.metric('observatory_agent_write_errors_total{kind="config"}') >= 2
    assert "unauthorized access" in agent.log_text()  # InfluxDB's own message, in the log
    assert influxdb.token not in agent.log_text()

    agent.rotate_token(influxdb.token)
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the replay after rotation")
    _sleep_until(_boundary(time.time()) + 0.3)
    last = math.floor(time.time() / WINDOW) * WINDOW
    assert agent.stop() == 0
    _every_window_once(influxdb, agent, first, last)


def test_missing_bucket_is_visible_and_its_windows_arrive_once_it_exists(
    make_agent: Callable[..., AgentProcess], influxdb: InfluxDB, bucket: Callable[[str], str]
) -> None:
    name = f"later-{secrets.token_hex(3)}"
    agent = make_agent("bucket", bucket=name)
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["errors"]["writes"].get("config", 0) >= 2, timeout=30, what="404s")
    status = agent.status()
    assert "not found" in status["errors"]["last_write_error"]
    assert f'bucket \\"{name}\\" not found' in agent.log_text() or f'"{name}" not found' in agent.log_text()
    assert status["buffered_points"] > 0
    client = influxdb.client()
    try:
        created = client.buckets_api().create_bucket(bucket_name=name, org=influxdb.org)
        wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the replay into the new bucket")
        _sleep_until(_boundary(time.time()) + 0.3)
        last = math.floor(time.time() / WINDOW) * WINDOW
        assert agent.stop() == 0
        _every_window_once(influxdb, agent, first, last, bucket=name)
    finally:
        client.buckets_api().delete_bucket(created)
        client.close()


def test_field_type_conflict_is_counted_with_influxdbs_message_and_other_series_are_written(
    make_agent: Callable[..., AgentProcess], influxdb: InfluxDB, bucket: Callable[[str], str]
) -> None:
    """422: InfluxDB writes a batch's good points and drops the conflicting ones; the rest of the window lands."""
    name = bucket("conflict")
    client = influxdb.client()
    try:
        # system.load.1's count was first written as a float in this shard: the agent's integer count conflicts.
        client.write_api().write(name, influxdb.org, f"system.load.1,host=x count=1.5 {int(time.time())}", "s")
        client.write_api().flush()
    finally:
        client.close()
    agent = make_agent("conflict", bucket=name)
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["errors"]["rejected_points"] >= 3, timeout=30, what="refused points")
    _sleep_until(_boundary(time.time()) + 0.3)
    status = agent.status()
    rejected = agent.metric("observatory_agent_rejected_points_total")
    last = math.floor(time.time() / WINDOW) * WINDOW
    # Refused data is not retried forever: the buffer empties between windows (a window in flight counts there).
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=3 * WINDOW, what="an empty buffer")
    assert agent.stop() == 0
    assert "field type conflict" in status["errors"]["last_write_error"]
    assert status["errors"]["writes"]["rejected"] >= 3
    assert rejected == status["errors"]["rejected_points"]
    assert "field type conflict" in agent.log_text()
    _every_window_once(influxdb, agent, first, last, bucket=name)  # its siblings in each batch were written
    loads = query(
        influxdb,
        f"""from(bucket: {flux_string(name)}) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == "system.load.1" and r.run == {flux_string(agent.run)})""",
    )
    assert loads == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 KiB tmpfs: the buffer directory of an agent whose node disk is full."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_counted_and_windows_wait_in_memory_until_influxdb_is_back(
    make_agent: Callable[..., AgentProcess], proxy: FaultProxy, influxdb: InfluxDB, small_disk: Path
) -> None:
    agent = make_agent("diskfull", influx_url=proxy.url, extra={"buffer_dir": str(small_disk / "buffer")})
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["last_successful_write"], timeout=20, what="a first write")
    proxy.set_mode("reset")
    wait_for(
        lambda: agent.status()["buffer"]["write_errors"].get("ENOSPC", 0) >= 2, timeout=60, what="the disk to fill"
    )
    status = agent.status()
    assert status["buffer"]["unpersisted_points"] > 0
    assert status["buffer"]["last_write_error"].startswith("ENOSPC")
    assert agent.metric('observatory_agent_buffer_write_errors_total{error="ENOSPC"}') >= 2
    assert agent.metric("observatory_agent_unpersisted_points") > 0
    proxy.set_mode("pass")
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the buffer to drain")
    _sleep_until(_boundary(time.time()) + 0.3)
    last = math.floor(time.time() / WINDOW) * WINDOW
    assert agent.stop() == 0
    _every_window_once(influxdb, agent, first, last)


def test_sigkill_in_the_middle_of_a_write_loses_and_doubles_nothing(
    make_agent: Callable[..., AgentProcess], proxy: FaultProxy, influxdb: InfluxDB
) -> None:
    agent = make_agent("midwrite", influx_url=proxy.url)
    agent.start()
    first = _boundary(agent.started_at) + WINDOW
    wait_for(lambda: agent.status()["last_successful_write"], timeout=20, what="a first write")
    proxy.slow_chunk, proxy.slow_delay = 32, 0.2  # a window's request takes seconds to get through
    proxy.set_mode("slow")
    connections = proxy.connections
    _sleep_until(_boundary(time.time()) + WINDOW)
    wait_for(
        lambda: proxy.connections > connections or agent.status()["buffered_points"] > 0,
        timeout=10,
        what="a write in flight",
    )
    time.sleep(0.5)
    agent.kill()
    killed = time.time()
    proxy.set_mode("pass")
    agent.start()
    wait_for(lambda: agent.status()["buffered_points"] == 0, timeout=40, what="the replay")
    assert agent.stop() == 0
    last = math.floor(killed / WINDOW) * WINDOW - WINDOW  # the window open at the kill is gone with the process
    _every_window_once(influxdb, agent, first, last)
    counts = query(
        influxdb,
        f"""from(bucket: {flux_string(influxdb.bucket)}) |> range(start: -1h)
  |> filter(fn: (r) => r._measurement == {flux_string(SERIES)} and r.run == {flux_string(agent.run)})
  |> filter(fn: (r) => r._field == "count")""",
    )
    assert all(int(r["_value"]) <= round(WINDOW) for r in counts)  # nothing folded twice


async def test_clock_steps_back_and_forward_write_every_sample_once(influxdb: InfluxDB, tmp_path: Path) -> None:
    """The agent's own timeline seam (``wall``): the machine's clock is left alone.

    A 5 s backward step used to drop every sample until the clock caught up (late for closed
    windows); a forward step must close the open window and carry on at the new time.
    """
    import asyncio
    import json

    from observatory_agent.collectors.host import HostPaths
    from observatory_agent.config import ConfigWatcher
    from observatory_agent.runtime import Agent
    from observatory_agent.telemetry import Telemetry

    run = secrets.token_hex(4)
    token = tmp_path / "token"
    token.write_text(influxdb.token)
    config = tmp_path / "agent.json"
    config.write_text(
        json.dumps(
            {
                "interval": "1s",
                "window": f"{WINDOW:g}s",
                "collectors": [{"name": "uptime", "kind": "uptime"}],
                "tags": {"run": run},
                "influxdb": {
                    "url": influxdb.url,
                    "org": influxdb.org,
                    "bucket": influxdb.bucket,
                    "token_file": str(token),
                },
                "buffer_dir": str(tmp_path / "buffer"),
                "flush_jitter": "1ms",
            }
        )
    )
    offset = [0.0]
    telemetry = Telemetry("t", f"clock-{run}")
    agent = Agent(
        ConfigWatcher(config, None, environ={}),
        node=f"clock-{run}",
        host="h",
        paths=HostPaths(),
        version="t",
        telemetry=telemetry,
        wall=lambda: time.time() + offset[0],
    )
    stop = asyncio.Event()
    started = time.time()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.sleep(3 * WINDOW)
    offset[0] = -5.0
    await asyncio.sleep(4 * WINDOW)
    offset[0] = -5.0 + 600.0
    await asyncio.sleep(2 * WINDOW)
    stop.set()
    await asyncio.wait_for(task, timeout=20)
    status = agent.status()
    assert status["clock_steps"] == {"backward": 1, "forward": 1}
    assert status["buffered_points"] == 0
    assert telemetry.dropped_samples.labels(reason="late")._value.get() == 0
    flux = f"""
from(bucket: {flux_string(influxdb.bucket)})
  |> range(start: {int(started) - 60}, stop: {int(time.time()) + 700})
  |> filter(fn: (r) => r._measurement == {flux_string(SERIES)} and r.run == {flux_string(run)} and r._field == "count")
"""
    rows = sorted((r["_time"].timestamp(), int(r["_value"])) for r in query(influxdb, flux))
    stamps = [t for t, _ in rows]
    assert len(stamps) == len(set(stamps))
    assert sum(c for _, c in rows) == telemetry.cycles._value.get()  # every sample written, once
    assert stamps[-1] - stamps[0] >= 590  # both sides of the forward step


def test_a_target_offering_200k_series_leaves_rss_bounded_and_host_metrics_flowing(
    make_agent: Callable[..., AgentProcess], influxdb: InfluxDB
) -> None:
    """Issue 10, defect 6: one large target (200k series) got the agent OOM-killed under its 128Mi limit."""
    import http.server
    import threading

    from tests.bench.peers import rss_bytes

    body = "".join(f'huge_metric{{pod="p{i % 997}",id="{i}"}} {i}\n' for i in range(200_000)).encode()
    medium = "".join(f'medium_metric{{id="{i}"}} {i}\n' for i in range(8_000)).encode()

    class Exposition(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            payload = body if self.path == "/huge" else medium
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exposition)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    targets = [f"{base}/huge", f"{base}/a", f"{base}/b"]
    agent = make_agent(
        "series",
        extra={
            "interval": "4s",
            "window": "8s",
            "max_series": 10_000,
            "collectors": [
                {"name": "memory", "kind": "memory"},
                {"name": "uptime", "kind": "uptime"},
                {"name": "apps", "kind": "application", "targets": targets, "timeout": "3s"},
            ],
        },
    )
    try:
        agent.start()
        assert agent.process is not None
        pid = agent.process.pid
        assert pid is not None
        peak = 0
        halfway = 0
        # Long enough for a dozen scrapes of the huge target: a leak per scrape would add up past the margin.
        deadline = time.time() + 60
        while time.time() < deadline:
            peak = max(peak, rss_bytes(pid))
            if not halfway and time.time() > deadline - 30:
                halfway = peak
            time.sleep(0.2)
        status = agent.status()
        up = {t: agent.metric(f'observatory_agent_scrape_target_up{{collector="apps",target="{t}"}}') for t in targets}
        dropped = agent.metric("observatory_agent_dropped_series_total")
        assert agent.stop() == 0
    finally:
        server.shutdown()
    assert peak < 110 * 1024 * 1024, f"RSS peaked at {peak / 2**20:.0f} MB"  # under the pod's 128Mi limit
    # Bounded, not flat: allocator noise moves the peak a few MB either way between scrapes.
    assert peak - halfway < 10 * 1024 * 1024, f"RSS still grew: {halfway / 2**20:.0f} → {peak / 2**20:.0f} MB"
    assert up == {targets[0]: 0, targets[1]: 1, targets[2]: 1}  # the flood refused, the others scraped
    assert status["series"]["limit"] == 10_000
    assert status["series"]["dropped_series"] > 0  # 2 × 8k series offered, 10k held
    assert dropped == status["series"]["dropped_series"]
    assert "sample_limit" in agent.log_text()
    times = window_times(
        influxdb, run=agent.run, measurement="system.memory.used", start=agent.started_at, stop=time.time()
    )
    assert len(times) >= 3  # host metrics kept flowing throughout

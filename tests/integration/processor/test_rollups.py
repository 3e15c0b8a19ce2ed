"""Real agents feeding a real processor into the bed's InfluxDB: right values, every window once, through failures.

Agents sample every second into 2 s windows; rules roll up 4 s windows (two agent windows each),
grouped by the agents' ``zone`` tag (two values). Every expectation is computed from the agents'
own node-level points of the same windows, read back from InfluxDB.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest

from observatory_agent.contract import PartialsAck, RefusalReason
from tests.env.influx import InfluxDB
from tests.env.procs import wait_for
from tests.integration.processor.conftest import (
    RULE_WINDOW,
    Bed,
    ProcessorProcess,
    RollupAgent,
    assert_rollup_matches,
    expected_windows,
    next_boundary,
    rule_window_end,
    sleep_until,
    wait_written,
)

pytestmark = pytest.mark.integration


def _start(bed: Bed, processors: list[ProcessorProcess], zones: str = "aabb") -> list[RollupAgent]:
    for processor in processors:
        processor.start()
    agents = [bed.agent(f"n{i}", zone, processors) for i, zone in enumerate(zones)]
    for agent in agents:
        agent.start()
    return agents


def _stop(agents: list[RollupAgent]) -> float:
    """SIGTERM every agent (each closes and sends its last window early); the newest rule window they fed."""
    for agent in agents:
        assert agent.stop() == 0
    return rule_window_end(time.time())


def _compare(bed: Bed, processor: ProcessorProcess, start: float, stop: float, threshold: int = 1024) -> int:
    """Every rule window of every zone, once, equal to the node-level computation; returns how many."""
    expected = expected_windows(bed.node_points(start, stop))
    rollups = bed.rollups(processor, start, stop)
    seen = [(r["_time"].timestamp(), r["zone"]) for r in rollups]
    assert len(seen) == len(set(seen)), f"a window written twice under different tags: {sorted(seen)}"
    assert set(seen) == set(expected), (sorted(set(expected) - set(seen)), sorted(set(seen) - set(expected)))
    for rollup in rollups:
        assert (rollup["rule"], rollup["cluster"]) == (processor.rule, "bed")
        want = expected[(rollup["_time"].timestamp(), rollup["zone"])]
        assert_rollup_matches(rollup, want, exact=want.count <= threshold)
    return len(rollups)


def test_rollups_equal_the_agents_node_level_points_exact_and_sketched(bed: Bed) -> None:
    exact = bed.processor("exact")
    sketched = bed.processor("sketched", exact_threshold=3)
    agents = _start(bed, [exact, sketched])
    began = min(a.started_at for a in agents)
    sleep_until(next_boundary(time.time()) + 3 * RULE_WINDOW)
    running = wait_written(exact, next_boundary(time.time()))
    last = _stop(agents)
    status = wait_written(exact, last)
    wait_written(sketched, last)

    windows = _compare(bed, exact, began, last)
    assert windows >= 2 * 4  # two zones, at least four windows
    sketched_windows = _compare(bed, sketched, began, last, threshold=3)
    assert sketched_windows == windows
    methods = {r["quantile_method"] for r in bed.rollups(sketched, began, last)}
    assert "sketch" in methods

    zones = {r["zone"] for r in bed.rollups(exact, began, last)}
    assert zones == {"a", "b"}
    assert (running["last_window"]["nodes"], running["last_window"]["expected_nodes"]) == (4, 4)
    assert running["last_window"]["series"] == 2
    assert running["last_window"]["quantile_methods"] == {"exact": 2, "sketch": 0}
    assert status["partials"]["dropped"] == {}
    health = bed.health(exact, began, last)
    assert health
    assert health[-1]["windows_written"] >= windows // 2
    assert {"series", "nodes", "late_partials", "dropped_partials", "dropped_groups", "buffered_points",
            "write_errors"} <= set(health[-1])  # fmt: skip
    assert exact.metric("observatory_processor_windows_written_total") >= windows // 2
    for agent in agents:
        agent.start()  # the same outbox directory: nothing left over once the watermark passed
        assert agent.metric("observatory_agent_partials_pending") == 0
        agent.stop()


def test_processor_killed_mid_window_and_down_two_windows_loses_nothing(bed: Bed) -> None:
    processor = bed.processor("killed")
    agents = _start(bed, [processor])
    began = min(a.started_at for a in agents)
    written = wait_written(processor, next_boundary(time.time()))
    before = written["instance"]
    sleep_until(next_boundary(time.time()) + RULE_WINDOW / 2)  # mid-window, partials of it accepted
    processor.kill()
    killed_at = time.time()
    sleep_until(killed_at + 2 * RULE_WINDOW)
    processor.start()  # same config and buffer directory: reads its watermark back
    status = processor.status()
    assert status["instance"] != before
    assert status["watermark"] is not None
    assert status["watermark"] <= killed_at
    sleep_until(next_boundary(time.time()) + 2 * RULE_WINDOW)
    last = _stop(agents)
    wait_written(processor, last)

    windows = _compare(bed, processor, began, last)
    outage = [e for e in {r["_time"].timestamp() for r in bed.rollups(processor, began, last)}
              if killed_at < e <= killed_at + 2 * RULE_WINDOW]  # fmt: skip
    assert len(outage) >= 2, "the windows that ended while the processor was down are there"
    assert windows >= 2 * 6
    status = processor.status()
    assert status["partials"]["kept"].get("written", 0) >= 0
    assert status["partials"]["dropped"] == {}


def test_influxdb_outage_is_buffered_then_every_window_written(bed: Bed, influx_restored: InfluxDB) -> None:
    processor = bed.processor("outage")
    agents = _start(bed, [processor])
    began = min(a.started_at for a in agents)
    before = wait_written(processor, next_boundary(time.time()))["watermark"]
    influx_restored.stop()
    stopped_at = time.time()

    def buffering() -> bool:
        status = processor.status()
        return time.time() - stopped_at >= 3 * RULE_WINDOW and status["buffered_points"] > 0

    wait_for(buffering, timeout=60, what="the processor buffering through the outage")
    during = processor.status()
    pending_during = max(a.metric("observatory_agent_partials_pending") for a in agents)
    influx_restored.start()
    assert during["watermark"] <= before + RULE_WINDOW
    assert during["errors"]["writes"].get("retryable", 0) > 0
    assert processor.metric("observatory_processor_buffered_points") > 0 or during["buffered_points"] > 0
    assert pending_during >= 3  # the agents keep what the processor has not written

    wait_for(lambda: processor.status()["buffered_points"] == 0, timeout=60, what="the processor's buffer to drain")
    sleep_until(next_boundary(time.time()) + RULE_WINDOW)
    last = _stop(agents)
    wait_written(processor, last)
    _compare(bed, processor, began, last)
    outage = {r["_time"].timestamp() for r in bed.rollups(processor, began, last)}
    assert any(stopped_at < e < stopped_at + 3 * RULE_WINDOW for e in outage)


def test_over_max_series_groups_are_dropped_and_counted_in_status_metrics_and_influxdb(bed: Bed) -> None:
    processor = bed.processor("capped", max_series=1)
    agents = _start(bed, [processor])
    began = min(a.started_at for a in agents)
    sleep_until(next_boundary(time.time()) + 3 * RULE_WINDOW)
    last = _stop(agents)
    status = wait_written(processor, last)

    assert status["last_window"]["series"] == 1
    assert status["last_window"]["dropped_series"] == 1
    assert status["dropped_groups"] >= 3
    assert processor.metric("observatory_processor_dropped_groups_total") == status["dropped_groups"]
    rollups = bed.rollups(processor, began, last)
    assert len({r["zone"] for r in rollups if r["_time"].timestamp() == last}) == 1
    health = bed.health(processor, began, last)
    assert health[-1]["dropped_groups"] >= 3


def test_a_restarted_processor_refuses_a_half_resent_window_an_earlier_instance_wrote(bed: Bed) -> None:
    """One node's partial of a window already written, sent to the next instance, changes nothing."""
    processor = bed.processor("floor")
    agents = _start(bed, [processor])
    began = min(a.started_at for a in agents)
    end = next_boundary(time.time()) + RULE_WINDOW
    outbox = agents[0].buffer_dir / "partials" / processor.rule
    prefix = f"{round(end * 1000):015d}-"
    copied = wait_for(
        lambda: next((f.read_bytes() for f in outbox.glob(prefix + "*.json")), None),
        timeout=3 * RULE_WINDOW,
        what="an agent's partial of the window, before the window is written",
    )
    wait_written(processor, end)
    processor.kill()
    processor.start()
    assert processor.status()["watermark"] >= end
    request = urllib.request.Request(
        f"{processor.url}/v1/partials", data=copied, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        status, ack = resp.status, PartialsAck.model_validate_json(resp.read())
    assert (status, ack.accepted, ack.reason) == (200, False, RefusalReason.WRITTEN)
    assert ack.window_end == end
    sleep_until(next_boundary(time.time()) + RULE_WINDOW)
    last = _stop(agents)
    wait_written(processor, last)
    _compare(bed, processor, began, last)  # the window still holds all four nodes


def test_processor_restarted_during_an_influxdb_outage_waits_for_its_watermark_and_loses_nothing(
    bed: Bed, influx_restored: InfluxDB
) -> None:
    processor = bed.processor("restarted-in-outage")
    agents = _start(bed, [processor])
    began = min(a.started_at for a in agents)
    before = wait_written(processor, next_boundary(time.time()))["watermark"]
    influx_restored.stop()
    wait_for(
        lambda: processor.status()["last_window"]["end"] >= before + 2 * RULE_WINDOW,
        timeout=60,
        what="two windows written into the processor's disk buffer",
    )
    processor.kill()
    processor.start(ready=False)
    time.sleep(2.0)
    with pytest.raises(urllib.error.HTTPError) as refused:
        processor.get("/readyz")
    assert refused.value.code == 503
    assert processor.status()["errors"]["watermark_read"]
    influx_restored.start()
    wait_for(processor.ready, timeout=60, what="the processor to read its watermark back")
    wait_for(lambda: processor.status()["buffered_points"] == 0, timeout=60, what="the disk buffer to drain")
    sleep_until(next_boundary(time.time()) + RULE_WINDOW)
    last = _stop(agents)
    wait_written(processor, last)
    _compare(bed, processor, began, last)


def test_a_changed_config_starts_the_processor_afresh_and_nothing_is_lost(bed: Bed) -> None:
    """A reload is the restart path: a new instance, the watermark read back, agents re-send."""
    processor = bed.processor("reloaded")
    agents = _start(bed, [processor], zones="ab")
    began = min(a.started_at for a in agents)
    before = wait_written(processor, next_boundary(time.time()))
    processor.spec["max_series"] = 500
    processor.write_config()
    after = wait_for(
        lambda: (s := processor.status())["instance"] != before["instance"] and s["ready"] and s,
        timeout=30,
        what="the processor to start afresh on its new config",
    )
    assert after["config_hash"] != before["config_hash"]
    sleep_until(next_boundary(time.time()) + RULE_WINDOW)
    last = _stop(agents)
    wait_written(processor, last)
    _compare(bed, processor, began, last)

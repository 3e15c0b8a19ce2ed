"""Run the agent's collection cycle N times in a fresh process and print its CPU time per cycle (JSON).

``python -m tests.bench.cycle_worker CYCLES SPACING`` — what ``Agent.cycle`` does, minus the
HTTP server and InfluxDB: every collector concurrently under its timeout (``runner.run_cycle``),
each sample folded into the window aggregator with its series tags, and every sixth cycle
(the default 10 s interval in a 1 m window) the window closed and encoded as line protocol.
CPU time is read from ``/proc/self/stat`` (all threads, like node_exporter's) after start-up
and a warm-up, so imports and the first reads are not counted.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.collectors import runner
from observatory_agent.collectors.base import COUNTER
from observatory_agent.collectors.host import HostPaths
from observatory_agent.contract import DEFAULT_QUANTILES, CollectorConfig
from observatory_agent.sinks import lineproto
from tests.bench.peers import AGENT_COLLECTORS, cpu_seconds

CYCLES_PER_WINDOW = 6
WARMUP = 6


async def main(cycles: int, spacing: float) -> dict[str, float]:
    paths = HostPaths.from_environ()
    paths.apply_to_psutil()
    configs = [CollectorConfig(name=k, kind=k) for k in AGENT_COLLECTORS]
    built = runner.build_collectors(configs, paths, max_timeout=5.0)
    assert not built.errors, built.errors
    identity = {"host": "bench", "node": "bench", "cluster": "bench"}
    base: dict[str, str] = {}
    window = CYCLES_PER_WINDOW * spacing
    agg = WindowAggregator(window, exact_threshold=1024)
    samples = points = 0

    async def one(i: int) -> None:
        nonlocal samples, points
        ts = time.time()
        result = await runner.run_cycle(built.collectors)
        assert not result.errors, result.errors
        for s in result.samples:
            key = runner.series_tags(s.tags, base, identity)
            if s.type is COUNTER:
                agg.add_counter(s.name, key, s.value, ts)
            else:
                agg.add(s.name, key, s.value, ts)
        samples += len(result.samples)
        if i % CYCLES_PER_WINDOW == CYCLES_PER_WINDOW - 1:
            for closed in agg.close_all(ts):
                points += len(lineproto.encode_many(closed.aggregates(DEFAULT_QUANTILES)))

    for i in range(WARMUP):
        await one(i)
        await asyncio.sleep(spacing)
    gc.collect()
    gc.freeze()
    samples = points = 0
    pid = os.getpid()
    cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
    for i in range(cycles):
        await one(i)
        await asyncio.sleep(spacing)
    cpu = cpu_seconds(pid) - cpu0
    return {
        "cycles": cycles,
        "cpu_seconds": cpu,
        "cpu_per_cycle": cpu / cycles,
        "samples_per_cycle": samples / cycles,
        "points": points,
        "wall_seconds": time.perf_counter() - wall0,
    }


if __name__ == "__main__":
    n, gap = int(sys.argv[1]), float(sys.argv[2])
    print(json.dumps(asyncio.run(main(n, gap))))

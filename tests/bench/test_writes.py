"""Points per second into the real influxd from one process: the agent's writer against influxdb-client's Point API.

Both sides start from the same ``AggregatedMetric`` objects (what a window close yields:
2,000 series × 50 windows, eleven fields each) and count from encoding to the last batch
acknowledged. Ours: ``lineproto.encode_many`` then ``InfluxWriter.write`` (5,000 lines per
gzip level 1, up to four requests in flight). Peer: the idiomatic influxdb-client path the old
service used — a ``Point`` per metric, written through a SYNCHRONOUS ``write_api`` in the same
batch size, also gzip'd. Each side writes its own series (a ``side`` tag) so neither
overwrites the other's points; both clients are warmed up (imported, connected) first.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import time

from observatory_agent.contract import AggregatedMetric
from observatory_agent.sinks import lineproto
from observatory_agent.sinks.influx import InfluxWriter, WriterSettings
from tests.bench.conftest import Report
from tests.env.influx import InfluxDB

SERIES = int(os.environ.get("BENCH_WRITE_SERIES", "2000"))
WINDOWS = int(os.environ.get("BENCH_WRITE_WINDOWS", "50"))
BATCH = 5000
T0 = 1_800_000_000.0 - 7 * 86400  # a fixed past week, inside the bucket's infinite retention


def _metrics(side: str, offset: float) -> list[AggregatedMetric]:
    rng = random.Random(1)
    out = []
    for w in range(WINDOWS):
        end = T0 + offset + (w + 1) * 60.0
        for s in range(SERIES):
            v = rng.lognormvariate(3.0, 1.0)
            out.append(
                AggregatedMetric(
                    name=f"bench.metric.{s % 40}",
                    tags={"side": side, "core": str(s // 40), "host": "node-1", "node": "node-1", "cluster": "bench"},
                    timestamp=end,
                    window_start=end - 60.0,
                    count=6,
                    sum=6 * v,
                    mean=v,
                    min=v * 0.5,
                    max=v * 2,
                    last=v,
                    quantiles={"p50": v, "p95": v * 1.8, "p99": v * 1.95},
                )
            )
    return out


def _ours(influx: InfluxDB, metrics: list[AggregatedMetric]) -> tuple[float, float]:
    """Seconds to encode, and seconds for the writer to get the lines acknowledged."""
    writer = InfluxWriter(
        WriterSettings(url=influx.url, org=influx.org, bucket=influx.bucket, token=influx.token, batch_size=BATCH)
    )
    try:
        asyncio.run(writer.write(lineproto.encode_many(metrics[:10]), budget=30))  # import + connect
        gc.collect()
        started = time.perf_counter()
        lines = lineproto.encode_many(metrics)
        encoded = time.perf_counter()
        asyncio.run(writer.write(lines, budget=120))
        return encoded - started, time.perf_counter() - encoded
    finally:
        writer.close()


def _peer(influx: InfluxDB, metrics: list[AggregatedMetric]) -> float:
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write.point import Point
    from influxdb_client.client.write_api import SYNCHRONOUS

    def points(batch: list[AggregatedMetric]) -> list[Point]:
        out = []
        for m in batch:
            p = Point(m.name).time(round(m.timestamp * 1000), write_precision="ms")
            for k, v in m.tags.items():
                p.tag(k, v)
            p.field("count", m.count).field("sum", m.sum).field("mean", m.mean).field("min", m.min)
            p.field("max", m.max).field("last", m.last)
            for q, value in m.quantiles.items():
                p.field(q, value)
            out.append(p)
        return out

    client = InfluxDBClient(url=influx.url, token=influx.token, org=influx.org, timeout=30_000, enable_gzip=True)
    try:
        api = client.write_api(write_options=SYNCHRONOUS)
        api.write(bucket=influx.bucket, record=points(metrics[:10]), write_precision="ms")
        gc.collect()
        started = time.perf_counter()
        for i in range(0, len(metrics), BATCH):
            api.write(bucket=influx.bucket, record=points(metrics[i : i + BATCH]), write_precision="ms")
        return time.perf_counter() - started
    finally:
        client.close()


def test_write_throughput_to_influxdb(report: Report, influxdb: InfluxDB) -> None:
    ours_metrics = _metrics("agent", 0.0)
    peer_metrics = _metrics("point", 0.0)
    n = len(ours_metrics)
    encode_s, write_s = _ours(influxdb, ours_metrics)
    peer_s = _peer(influxdb, peer_metrics)
    rate, peer_rate = n / (encode_s + write_s), n / peer_s
    report.add(
        f"writes to influxd, one process, AggregatedMetric → acknowledged ({n:,} points × 11 fields, "
        f"{BATCH:,}/request, gzip)",
        ours=f"{rate / 1e3:,.0f}k points/s (encode {n / encode_s / 1e3:,.0f}k/s, writer {n / write_s / 1e3:,.0f}k/s)",
        peer=f"influxdb-client Point API {peer_rate / 1e3:,.0f}k/s",
        ratio=f"{rate / peer_rate:.1f}×",
        target="≥ 50k points/s",
        met=rate >= 50_000,
    )

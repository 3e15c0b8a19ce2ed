"""Points per second into the real influxd from one process: the agent's writer against influxdb-client's Point API.

Both sides start from the same ``AggregatedMetric`` objects (what a window close yields:
2,000 series × 50 windows, eleven fields each) and count from encoding to the last batch
acknowledged, under the same terms: 5,000 points per request, gzip at level 9 (influxdb-client
compresses with ``gzip.compress``'s fixed default; the agent ships level 1, so this row runs
ours at 9), and four requests in flight. Ours: ``lineproto.encode_many`` then
``InfluxWriter.write``. Peer: the idiomatic influxdb-client path the old service used — a
``Point`` per metric, written through a SYNCHRONOUS ``write_api`` with gzip — from four threads.
Each side writes its own series (a ``side`` tag) so neither overwrites the other's points, and
afterwards both sides' stored points are counted back with Flux: a side that lost points fails.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
GZIP_LEVEL = 9
SHIPPED_GZIP_LEVEL = 1
IN_FLIGHT = 4
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


def _ours(influx: InfluxDB, metrics: list[AggregatedMetric], gzip_level: int) -> tuple[float, float]:
    """Seconds to encode, and seconds for the writer to get the lines acknowledged."""
    writer = InfluxWriter(
        WriterSettings(
            url=influx.url,
            org=influx.org,
            bucket=influx.bucket,
            token=influx.token,
            batch_size=BATCH,
            gzip_level=gzip_level,
            max_in_flight=IN_FLIGHT,
        )
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

        def batch(i: int) -> None:
            api.write(bucket=influx.bucket, record=points(metrics[i : i + BATCH]), write_precision="ms")

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(batch, range(0, len(metrics), BATCH)))
        return time.perf_counter() - started
    finally:
        client.close()


def _stored(influx: InfluxDB, side: str) -> int:
    """Points of one side in InfluxDB, counted back (one ``count`` field per point)."""
    flux = f"""
from(bucket: "{influx.bucket}")
  |> range(start: {int(T0) - 60}, stop: {int(T0 + (WINDOWS + 2) * 60)})
  |> filter(fn: (r) => r.side == "{side}" and r._field == "count")
  |> group()
  |> count()
"""
    client = influx.client()
    try:
        tables = client.query_api().query(flux, org=influx.org)
        return sum(int(record.get_value()) for table in tables for record in table.records)
    finally:
        client.close()


def test_write_throughput_to_influxdb(report: Report, influxdb: InfluxDB) -> None:
    side = f"{time.time_ns()}"  # this run's series only
    equal_metrics = _metrics(f"agent9-{side}", 0.0)
    shipped_metrics = _metrics(f"agent1-{side}", 0.0)
    peer_metrics = _metrics(f"point-{side}", 0.0)
    n = len(equal_metrics)
    encode_s, write_s = _ours(influxdb, equal_metrics, GZIP_LEVEL)
    shipped_encode_s, shipped_write_s = _ours(influxdb, shipped_metrics, SHIPPED_GZIP_LEVEL)
    peer_s = _peer(influxdb, peer_metrics)
    stored = _stored(influxdb, f"agent9-{side}")
    shipped_stored = _stored(influxdb, f"agent1-{side}")
    peer_stored = _stored(influxdb, f"point-{side}")
    rate, shipped_rate, peer_rate = n / (encode_s + write_s), n / (shipped_encode_s + shipped_write_s), n / peer_s
    report.add(
        f"writes to influxd, one process, AggregatedMetric → acknowledged and counted back ({n:,} points × 11 "
        f"fields; both sides {BATCH:,}/request, gzip level {GZIP_LEVEL}, {IN_FLIGHT} in flight)",
        ours=f"{rate / 1e3:,.0f}k points/s (encode {n / encode_s / 1e3:,.0f}k/s, writer {n / write_s / 1e3:,.0f}k/s; "
        f"stored {stored:,})",
        peer=f"influxdb-client Point API {peer_rate / 1e3:,.0f}k/s (stored {peer_stored:,})",
        ratio=f"{rate / peer_rate:.1f}×",
        target="≥ 1.0× the peer; every point stored",
        met=rate >= peer_rate and stored == n and peer_stored == n,
        key="writes.throughput",
        group="writes",
        values={"ours": rate, "peer": peer_rate, "stored": stored, "peer_stored": peer_stored},
    )
    report.add(
        f"writes to influxd as the agent ships them (gzip level {SHIPPED_GZIP_LEVEL}, {BATCH:,}/request, "
        f"{IN_FLIGHT} in flight), {n:,} points counted back",
        ours=f"{shipped_rate / 1e3:,.0f}k points/s (stored {shipped_stored:,})",
        target="≥ 50k points/s",
        met=shipped_rate >= 50_000 and shipped_stored == n,
        key="writes.shipped",
        group="writes",
        values={"ours": shipped_rate, "stored": shipped_stored},
    )
    assert stored == shipped_stored == n, f"ours: {stored:,} / {shipped_stored:,} of {n:,} points stored"
    assert peer_stored == n, f"peer: {peer_stored:,} of {n:,} points stored"
    assert rate >= peer_rate
    assert shipped_rate >= 50_000

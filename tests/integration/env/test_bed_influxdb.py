"""The bed's InfluxDB is a real InfluxDB 2: exact round trips through Flux, and an outage that keeps data."""

from __future__ import annotations

import time

import pytest
from influxdb_client import Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

from tests.env import realnodes
from tests.env.influx import InfluxDB

pytestmark = pytest.mark.integration


def query_values(db: InfluxDB, measurement: str, start_ns: int) -> list[tuple[str, int, float]]:
    flux = f"""
        from(bucket: "{db.bucket}")
          |> range(start: time(v: {start_ns - 60 * 10**9}))
          |> filter(fn: (r) => r._measurement == "{measurement}" and r._field == "value")
          |> sort(columns: ["_time"])
    """
    with db.client() as cl:
        tables = cl.query_api().query(flux)
    return [
        (rec.values["node"], int(rec.get_time().timestamp() * 1e9), rec.get_value())
        for table in tables
        for rec in table.records
    ]


def write(db: InfluxDB, points: list[Point]) -> None:
    with db.client() as cl:
        cl.write_api(write_options=SYNCHRONOUS).write(bucket=db.bucket, record=points)


def test_setup_write_and_flux_query_return_exact_values(influxdb: InfluxDB) -> None:
    # Loopback for simulated nodes; with real nodes the bed's address, which pods reach through their gateway.
    assert influxdb.url.startswith(("http://127.0.0.1:", f"http://{realnodes.BED_IP}:"))
    # Whole seconds in the past: exact through Flux's RFC3339 times, and inside range()'s default stop (now).
    t0 = (time.time_ns() // 10**9 - 30) * 10**9
    values = [0.1, 2.5, 1e-9, 123456.789]
    points = [
        Point("bed.roundtrip").tag("node", f"node-{i % 2}").field("value", v).time(t0 + i * 10**9, WritePrecision.NS)
        for i, v in enumerate(values)
    ]
    write(influxdb, points)
    got = sorted(query_values(influxdb, "bed.roundtrip", t0), key=lambda r: r[1])
    assert got == [(f"node-{i % 2}", t0 + i * 10**9, v) for i, v in enumerate(values)]


def test_outage_and_restart_keep_port_and_data(influxdb: InfluxDB) -> None:
    t0 = (time.time_ns() // 10**9 - 30) * 10**9
    write(influxdb, [Point("bed.outage").tag("node", "a").field("value", 1.0).time(t0, WritePrecision.NS)])
    url = influxdb.url
    influxdb.stop()
    try:
        with pytest.raises(Exception, match=r"(?i)connect|refused"):
            write(influxdb, [Point("bed.outage").tag("node", "a").field("value", 2.0).time(t0 + 1, WritePrecision.NS)])
    finally:
        influxdb.start()
    assert influxdb.url == url
    write(influxdb, [Point("bed.outage").tag("node", "a").field("value", 3.0).time(t0 + 10**9, WritePrecision.NS)])
    assert [v for _, _, v in query_values(influxdb, "bed.outage", t0)] == [1.0, 3.0]

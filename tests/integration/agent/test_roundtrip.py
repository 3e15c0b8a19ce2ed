"""What the agent writes is what InfluxDB returns: every aggregate, every awkward name, bit for bit.

The write path is the agent's own (``WindowAggregator`` → ``lineproto`` → ``Delivery`` with
``InfluxWriter`` and the durable buffer) against the bed's real InfluxDB; the expectations
are computed independently with numpy and the standard library.
"""

from __future__ import annotations

import math
import random
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from observatory_agent.aggregation.windows import WindowAggregator
from observatory_agent.contract import AggregatedMetric
from observatory_agent.sinks import lineproto
from observatory_agent.sinks.buffer import DurableBuffer
from observatory_agent.sinks.delivery import Delivery
from observatory_agent.sinks.influx import InfluxWriter, WriterSettings
from tests.env.influx import InfluxDB
from tests.integration.agent.conftest import flux_string, query

pytestmark = pytest.mark.integration

QUANTILES = (50.0, 95.0, 99.0)
WINDOW = 2.0
THRESHOLD = 1024

AWKWARD = [
    "plain",
    "with space",
    "a,comma",
    "equals=sign",
    'double "quotes"',
    "single 'quotes'",
    r"back\slash",
    r"two\\backslashes",
    r"\leading backslash",
    "ünïcödé ✓ 日本語 🚀",
    "mixed ,= \"'\\ ü",
    " leading and trailing ",
    "#hash",
    "new\nline\ttab\rreturn",
    "ends in a backslash\\",
    "_underscore first",
]
"""Tag values (and keys and measurement names) that line protocol must escape or leave alone."""


def _numpy_expected(values: list[float], quantiles: tuple[float, ...]) -> dict[str, float]:
    arr = np.array(values)
    out = {
        "count": float(len(values)),
        "sum": math.fsum(values),
        "mean": math.fsum(values) / len(values),
        "min": float(arr.min()),
        "max": float(arr.max()),
    }
    out.update({f"p{q:g}": float(np.percentile(arr, q)) for q in quantiles})
    return out


def _fields(metric: AggregatedMetric) -> dict[str, float]:
    return {
        "count": float(metric.count),
        "sum": metric.sum,
        "mean": metric.mean,
        "min": metric.min,
        "max": metric.max,
        "last": metric.last,
        **metric.quantiles,
    }


def _read_back(influx: InfluxDB, run: str, start: float) -> dict[tuple[str, tuple[tuple[str, str], ...]], Any]:
    flux = f"""
from(bucket: {flux_string(influx.bucket)})
  |> range(start: {int(start) - 3600}, stop: {int(time.time()) + 3600})
  |> filter(fn: (r) => r.run == {flux_string(run)})
  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")
"""
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
    for record in query(influx, flux):
        skip = {"result", "table", "_start", "_stop", "_time", "_measurement"}
        field_names = {"count", "sum", "mean", "min", "max", "last", *(f"p{q:g}" for q in QUANTILES)}
        tags = tuple(sorted((k, v) for k, v in record.items() if k not in skip | field_names and v is not None))
        key = (record["_measurement"], tags)
        assert key not in rows, f"two rows for one series and window: {key}"
        rows[key] = record
    return rows


async def test_aggregates_read_back_exactly_with_awkward_names(influxdb: InfluxDB, tmp_path: Path) -> None:
    run = secrets.token_hex(4)
    rng = random.Random(7)
    # A window well in the past (but inside the bucket's retention) so its end is final.
    start = math.floor((time.time() - 600) / WINDOW) * WINDOW
    agg = WindowAggregator(WINDOW, exact_threshold=THRESHOLD)
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]] = {}

    def add(name: str, tags: dict[str, str], values: list[float]) -> None:
        key = tuple(sorted({**tags, "run": run}.items()))
        for i, v in enumerate(values):
            agg.add(name, key, v, start + WINDOW * i / len(values))
        samples[(name, key)] = values

    for i, text in enumerate(AWKWARD):
        values = [rng.lognormvariate(2.0, 1.5) for _ in range(7 + i)]
        add("itest.value", {"label": text, "host": "node-1"}, values)  # awkward tag values
        add("itest.key", {text: "v", "host": "node-1"}, values[:3])  # awkward tag keys
        add(f"itest.measure {text}", {"host": "node-1"}, values[:5])  # awkward measurement names
    # Negative, zero, tiny and huge values; one sample; integers; and a series past the exact threshold.
    add("itest.signs", {"host": "node-1"}, [-3.5, 0.0, 1e-300, 2.5e300, -0.0, 42.0])
    add("itest.single", {"host": "node-1"}, [0.1 + 0.2])
    add("itest.sketch", {"host": "node-1"}, [rng.lognormvariate(3.0, 1.0) for _ in range(3 * THRESHOLD)])

    closed = agg.close(start + WINDOW)
    assert len(closed) == 1
    metrics = list(closed[0].aggregates(QUANTILES))
    lines = lineproto.encode_many(metrics)
    assert len(lines) == len(samples)

    buffer = DurableBuffer(tmp_path / "buffer", 1 << 20)
    writer = InfluxWriter(
        WriterSettings(url=influxdb.url, org=influxdb.org, bucket=influxdb.bucket, token=influxdb.token)
    )
    delivery = Delivery(writer, buffer)
    try:
        delivery.enqueue(lines)
        assert await delivery.drain(budget=10.0)
    finally:
        writer.close()
        buffer.close()
    assert delivery.stats.errors == {}, delivery.stats.errors
    assert delivery.stats.points_written == len(lines)
    assert buffer.points == 0

    rows = _read_back(influxdb, run, start)
    expected_keys = {
        (
            stored_measurement(m.name),
            tuple(sorted((stored_tag(k, key=True), stored_tag(v)) for k, v in m.tags.items())),
        ): m
        for m in metrics
    }
    assert set(rows) == set(expected_keys), set(rows) ^ set(expected_keys)
    for key, metric in expected_keys.items():
        row = rows[key]
        assert row["_time"].timestamp() == start + WINDOW, key  # the window end
        got = {k: float(row[k]) for k in _fields(metric)}
        assert got == _fields(metric), key  # bit-exact: floats survive line protocol's repr
        assert isinstance(row["count"], int), key
        values = samples[(metric.name, tuple(sorted(metric.tags.items())))]
        want = _numpy_expected(values, QUANTILES)
        assert got["last"] == values[-1]
        if metric.count <= THRESHOLD:
            for k, v in want.items():
                assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-300), (key, k)
        else:  # past the threshold: DDSketch, within 1% of numpy's lower closest-rank sample
            for q in QUANTILES:
                lower = float(np.percentile(np.array(values), q, method="lower"))
                assert got[f"p{q:g}"] == pytest.approx(lower, rel=0.01), (key, q)
            for k in ("count", "sum", "mean", "min", "max"):
                assert got[k] == pytest.approx(want[k], rel=1e-12), (key, k)


_CONTROL = str.maketrans({"\n": r"\n", "\t": r"\t", "\r": r"\r"})


def stored_measurement(name: str) -> str:
    """The measurement as InfluxDB keeps it, after the encoder's documented rewrites."""
    name = name.replace("\\", "_").translate(_CONTROL)
    return "_" + name[1:] if name.startswith("#") else name


def stored_tag(text: str, *, key: bool = False) -> str:
    """A tag key or value as InfluxDB keeps it: control characters spelled out, a trailing
    backslash (which line protocol cannot express before a separator) read back as a space,
    and keys starting with ``_`` (InfluxDB's own columns) renamed ``tag_…``."""
    text = text.translate(_CONTROL)
    if text.endswith("\\"):
        text = text[:-1] + " "
    return "tag" + text if key and text.startswith("_") else text

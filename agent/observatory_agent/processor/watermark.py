"""The processor's durable state in InfluxDB: the marker point written with each window, read back at start.

Each window's write carries one marker point::

    observatory.processor.watermark,namespace=<ns>,rule=<rule> batch=<n>i,instance="<id>",window_end=<s>i <end ms>

in the same request as the window's points. At start the newest marker's time is the newest
window an earlier instance wrote; ``batch`` and ``instance`` let the running processor tell,
from the oldest batch still in its disk buffer, which of its writes InfluxDB has acknowledged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from observatory_agent.contract import WATERMARK_MEASUREMENT
from observatory_agent.sinks import lineproto


@dataclass(frozen=True)
class Marker:
    window_end: float
    instance: str
    batch: int


def marker_line(rule: str, namespace: str, marker: Marker) -> str:
    fields: dict[str, lineproto.FieldValue] = {
        "window_end": round(marker.window_end),
        "instance": marker.instance,
        "batch": marker.batch,
    }
    return lineproto.encode_point(
        WATERMARK_MEASUREMENT, {"rule": rule, "namespace": namespace}, fields, marker.window_end
    )


_BATCH = re.compile(r"[ ,]batch=(\d+)i")
_INSTANCE = re.compile(r'[ ,]instance="([^"\\]*)"')


def markers(lines: Iterable[str], rule: str, namespace: str) -> list[Marker]:
    """The markers of this rule among ``lines`` (a buffered batch), in order."""
    prefix = marker_line(rule, namespace, Marker(0.0, "", 0)).split(" ", 1)[0] + " "
    out = []
    for line in lines:
        if not line.startswith(prefix):
            continue
        batch = _BATCH.search(line)
        instance = _INSTANCE.search(line)
        if batch is None or instance is None:
            continue
        out.append(Marker(int(line.rsplit(" ", 1)[1]) / 1000, instance.group(1), int(batch.group(1))))
    return out


def flux_query(bucket: str, rule: str, namespace: str) -> str:
    """The newest marker of ``rule`` in ``namespace``: one series, so ``last()`` reads one point."""
    return (
        f"from(bucket: {json.dumps(bucket)})\n"
        "  |> range(start: 0)\n"
        f"  |> filter(fn: (r) => r._measurement == {json.dumps(WATERMARK_MEASUREMENT)}"
        f" and r.rule == {json.dumps(rule)} and r.namespace == {json.dumps(namespace)}"
        ' and r._field == "window_end")\n'
        "  |> last()"
    )


@dataclass(frozen=True)
class Target:
    url: str
    org: str
    bucket: str
    token: str | None
    timeout: float = 5.0

    def __repr__(self) -> str:  # the token must never reach a log line
        return f"Target(url={self.url!r}, org={self.org!r}, bucket={self.bucket!r}, token=***)"


def read(target: Target, rule: str, namespace: str) -> float | None:
    """The newest window end written for the rule, or None when none was; raises on any failure.

    Blocking (influxdb-client's query API): run it in a thread.
    """
    from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415 - the query side, only here

    client: Any = InfluxDBClient(
        url=target.url, token=target.token or "", org=target.org, timeout=int(target.timeout * 1000)
    )
    try:
        tables = client.query_api().query(flux_query(target.bucket, rule, namespace), org=target.org)
        ends = [record.get_time().timestamp() for table in tables for record in table.records]
    finally:
        client.close()
    return max(ends) if ends else None

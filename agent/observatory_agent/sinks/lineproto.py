"""InfluxDB line protocol for ``AggregatedMetric``: one metric, one line, whatever its names hold.

Escaping follows influxdb-client's ``Point`` (commas, spaces and equals signs escaped by a
backslash; newline, tab and carriage return written as ``\\n``, ``\\t``, ``\\r``), plus the
cases ``Point`` leaves open, so no input can produce an extra line or a broken one:

- InfluxDB treats a separator right after a backslash as escaped, so a measurement, tag key
  or tag value ending in a backslash gets an escaped space appended (``Point`` does this
  for tag values only).
- A measurement starting with ``#`` would turn the line into a comment: ``#`` becomes ``_``.
- A backslash in a measurement becomes ``_``. InfluxDB 2.7 answers 204 to a measurement with
  a backslash before a space, comma, equals sign, quote or another backslash, then never
  returns the point (its index and its storage keys disagree on the unescaping); tag keys
  and values are not affected (tests/integration/agent/test_roundtrip.py pins both).
- Empty tag keys or values are left out (InfluxDB rejects them); tag keys starting with
  ``_`` are reserved by InfluxDB 2 and are written ``tag_<key>``.
- Non-finite field values are left out; ``count`` is an integer field.

The encoder is written out rather than built from ``Point`` objects: it is the write path's
hot loop and must not pull influxdb-client's import into ``observatory-agent once``; a
hypothesis test pins that it produces exactly what ``Point`` produces wherever ``Point`` is safe.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Final

from observatory_agent.contract import AggregatedMetric

_MEASUREMENT: Final = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r", "\\": "_"})
_KEY: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})

PRECISION: Final = "ms"
"""Timestamps are window ends in milliseconds: windows may be shorter than a second."""


def _close(text: str) -> str:
    # A trailing backslash would escape the separator that follows; an escaped space ends it safely.
    return text + " " if text.endswith("\\") else text


def escape_measurement(name: str) -> str:
    text = name.translate(_MEASUREMENT)
    if text.startswith("#"):
        text = "_" + text[1:]
    return _close(text)


def escape_key(key: str) -> str:
    return _close(key.translate(_KEY))


def _tag_key(key: str) -> str:
    return escape_key("tag" + key if key.startswith("_") else key)


def _float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def encode(metric: AggregatedMetric) -> str:
    """One line: measurement = metric name, tags sorted, aggregate fields, window end (ms)."""
    tags = "".join(f",{_tag_key(k)}={_close(v.translate(_KEY))}" for k, v in sorted(metric.tags.items()) if k and v)
    values = {
        "last": metric.last,
        "max": metric.max,
        "mean": metric.mean,
        "min": metric.min,
        "sum": metric.sum,
        **metric.quantiles,
    }
    encoded = [(k, f"{escape_key(k)}={_float(v)}") for k, v in values.items() if math.isfinite(v)]
    encoded.append(("count", f"count={metric.count}i"))
    encoded.sort()  # by key, the same field order as influxdb-client's Point
    fields = [text for _, text in encoded]
    timestamp = round(metric.timestamp * 1000)
    return f"{escape_measurement(metric.name)}{tags} {','.join(fields)} {timestamp}"


def encode_many(metrics: Iterable[AggregatedMetric]) -> list[str]:
    return [encode(m) for m in metrics]

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
  ``_`` are reserved by InfluxDB 2 and are written ``tag_<key>`` — or ``tagtag_<key>`` and so
  on while that name is taken, so ``_x`` and ``tag_x`` never become one key twice in a line.
- An empty measurement has no line: ``encode`` raises ``ValueError``, ``encode_many`` skips
  the metric and names it in ``skipped``.
- Non-finite field values are left out; ``count`` is an integer field.

The encoder is written out rather than built from ``Point`` objects: it is the write path's
hot loop and must not pull influxdb-client's import into ``observatory-agent once``; a
hypothesis test pins that it produces exactly what ``Point`` produces wherever ``Point`` is safe.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from orjson import dumps as _dumps

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


def _tag_items(tags: dict[str, str]) -> list[tuple[str, str]]:
    """Non-empty tags with InfluxDB's reserved ``_`` keys renamed to a key not otherwise used, sorted."""
    out: dict[str, str] = {}
    for key, v in tags.items():
        if not key or not v:
            continue
        k = key
        if k.startswith("_"):
            k = "tag" + k
            while k in tags or k in out:
                k = "tag" + k
        out[k] = v
    return sorted(out.items())


def _float(value: float) -> str:
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _tags(tags: dict[str, str]) -> str:
    return "".join(f",{escape_key(k)}={_close(v.translate(_KEY))}" for k, v in _tag_items(tags))


_BASE_FIELDS: Final = ("last", "max", "mean", "min", "sum")
_COUNT: Final = "count"


_WHOLE: Final = re.compile(r"\.0(?=,|$)")
"""A float field's trailing ``.0`` (``Point`` trims it too); keys end in ``=``, never here."""


class _Layout(NamedTuple):
    """One field set's line template, filled with ``%`` from the formatted values in line order."""

    template: str
    """``key=%s`` per float field and ``count=%di``, in key order."""
    order: Callable[[tuple[float, ...]], tuple[float, ...]]
    """``(last, max, mean, min, sum, *quantile values)`` → the float values in key order."""
    count_at: int
    """Where ``count`` goes among the formatted floats."""


def _layout(quantile_keys: tuple[str, ...]) -> _Layout | None:
    """The fields sorted by key (``Point``'s order), ``count`` as an integer, floats as ``repr`` writes them.

    ``encode_many`` gets a line's float texts from one ``orjson.dumps`` of its values: the same shortest
    digits as ``repr``, in C, at a quarter of the cost per value. orjson writes an exponent where
    ``repr`` does not and the reverse (``1e16`` against ``1e+16``, ``0.00001`` against ``1e-05``);
    InfluxDB reads both alike, but a line must not depend on which wrote it, so a line holding such a
    value goes through ``repr``. A unit test pins every line equal to ``encode``'s, and ``encode``'s
    equal to influxdb-client's ``Point``.

    None when a quantile key repeats a base field's name: ``encode`` handles that rare case.
    """
    if set(quantile_keys) & {*_BASE_FIELDS, _COUNT}:
        return None
    given = (*_BASE_FIELDS, *quantile_keys)
    keys = sorted((_COUNT, *given))
    parts = [f"{escape_key(k).replace('%', '%%')}={'%di' if k == _COUNT else '%s'}" for k in keys]
    floats = [k for k in keys if k != _COUNT]
    return _Layout(",".join(parts), operator.itemgetter(*(given.index(k) for k in floats)), keys.index(_COUNT))


def encode(metric: AggregatedMetric) -> str:
    """One line: measurement = metric name, tags sorted, aggregate fields, window end (ms)."""
    if not metric.name:
        raise ValueError("metric name is empty: InfluxDB has no line for an empty measurement")
    tags = _tags(metric.tags)
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


def encode_many(metrics: Iterable[AggregatedMetric], *, skipped: list[str] | None = None) -> list[str]:
    """``[encode(m) for m in metrics]``, sharing the escaping work between metrics.

    A window's series repeat their names and tag sets from window to window and share one
    field layout, so a batch spanning several windows (a catch-up) escapes each only once.
    The caches live for this call only.
    """
    names: dict[str, str] = {}
    tagsets: dict[tuple[tuple[str, str], ...], str] = {}
    layouts: dict[tuple[str, ...], _Layout | None] = {}
    isfinite = math.isfinite
    whole = _WHOLE.sub
    dumps = _dumps
    out: list[str] = []
    append = out.append
    for m in metrics:
        if not m.name:
            if skipped is not None:
                skipped.append(repr(m.name))
            continue
        quantiles = m.quantiles
        qkeys = tuple(quantiles)
        if qkeys in layouts:
            layout = layouts[qkeys]
        else:
            layout = layouts[qkeys] = _layout(qkeys)
        count = m.count
        floats = (m.last, m.max, m.mean, m.min, m.sum, *quantiles.values())
        # A finite sum means every value is finite; otherwise the general path drops the rest.
        if layout is None or count.__class__ is not int or not -_EXACT < count < _EXACT or not isfinite(sum(floats)):
            append(encode(m))
            continue
        name = m.name
        measurement = names.get(name)
        if measurement is None:
            measurement = names[name] = escape_measurement(name)
        tag_items = tuple(m.tags.items())
        tags = tagsets.get(tag_items)
        if tags is None:
            tags = tagsets[tag_items] = _tags(m.tags)
        # ``float`` for every value, in C: a float field prints as ``repr(float(v))`` even when an
        # int or a bool got into it.
        ordered = tuple(map(float, layout.order(floats)))
        text = dumps(ordered)
        texts = [repr(v) for v in ordered] if b"e" in text or b"0.0000" in text else text[1:-1].decode().split(",")
        at = layout.count_at
        fields = layout.template % (*texts[:at], count, *texts[at:])  # %d formats the count
        if ".0," in fields or fields.endswith(".0"):
            fields = whole("", fields)
        append(f"{measurement}{tags} {fields} {round(m.timestamp * 1000)}")
    return out


_EXACT: Final = 2**53
"""``count`` below this is exact as a float, so the fast path may format it from one."""


FieldValue = float | int | str | bool


def _field(value: FieldValue) -> str | None:
    """A field value: ``1i`` for an int, ``"…"`` for a string, None for a non-finite float."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _float(value) if math.isfinite(value) else None


def encode_point(measurement: str, tags: dict[str, str], fields: dict[str, FieldValue], timestamp: float) -> str:
    """One line for any point (the processor's roll-ups, markers and health), same escaping as ``encode``.

    Ints are integer fields, strings string fields; non-finite floats are left out.
    """
    if not measurement:
        raise ValueError("measurement is empty")
    encoded = sorted((k, text) for k, v in fields.items() if (text := _field(v)) is not None)
    body = ",".join(f"{escape_key(k)}={text}" for k, text in encoded)
    return f"{escape_measurement(measurement)}{_tags(tags)} {body} {round(timestamp * 1000)}"

"""What Grafana does to a dashboard's Flux query before InfluxDB sees it, for running dashboards without Grafana.

No Grafana server may run here (its licence rules it out for this project), so the dashboard
tests do its two steps themselves, following Grafana 11's sources:

1. The frontend's template service (``templateSrv.replace`` as the InfluxDB datasource calls it
   in Flux mode): ``$var``, ``${var}``, ``[[var]]`` and ``${var:format}``. Without a format a
   single value goes in as it is and several as a glob (``{a,b}``); ``regex`` escapes each value
   and joins several as ``(a|b)``; a variable's custom "all" value goes in unformatted.
2. The backend's Flux macros (``pkg/tsdb/influxdb/flux/macros.go``): ``v.timeRangeStart`` and
   ``v.timeRangeStop`` become RFC3339 UTC times, ``v.windowPeriod`` Go's duration string of the
   query interval (``1m0s``), ``v.bucket``/``v.defaultBucket``/``v.organization`` quoted strings
   from the datasource's settings, and ``$__interval``/``$__interval_ms`` the interval.

``Dashboard`` walks a dashboard's JSON the way Grafana loads one: query variables in order
(each run with the values chosen so far, its options the ``_value`` column of every row), then
every panel's targets, once per value of a repeat variable.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ALL = "$__all"
"""Grafana's stored value for "All"."""

_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")
_FLUX_VARIABLE = re.compile(r"([a-zA-Z]+)\.([a-zA-Z]+)")


@dataclass(frozen=True)
class Selection:
    """A variable's current value(s), as Grafana holds them after the user picked."""

    values: tuple[str, ...]
    all_value: str | None = None
    """The variable's custom "all" value when All is selected (inserted unformatted)."""


def escape_regex(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _format(values: Sequence[str], fmt: str | None) -> str:
    if fmt == "regex":
        escaped = [escape_regex(v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt in (None, "glob"):
        return values[0] if len(values) == 1 else "{" + ",".join(values) + "}"
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "raw":
        return ",".join(values)
    raise ValueError(f"variable format {fmt!r} is not emulated here")


def replace_variables(text: str, selections: Mapping[str, Selection]) -> str:
    """The template service's ``replace``: unknown names are left alone, as Grafana does."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        selection = selections.get(name)
        if selection is None:
            return match.group(0)
        if selection.all_value is not None:
            return selection.all_value
        return _format(selection.values, fmt)

    return _VARIABLE.sub(substitute, text)


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()`` for whole milliseconds and up: ``1m0s``, ``2s``, ``1h30m0s``, ``500ms``."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{secs}s"
    if hours or minutes:
        out = f"{minutes}m{out}"
    if hours:
        out = f"{hours}h{out}"
    return out


def format_interval(seconds: float) -> str:
    """gtime.FormatInterval: the rounded unit Grafana writes for ``$__interval`` (``10s``, ``1m``, ``500ms``)."""
    millis = round(seconds * 1000)
    for unit, size in (("y", 31_536_000_000), ("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if millis >= size:
            return f"{millis // size}{unit}"
    if millis >= 1000:
        return f"{millis // 1000}s"
    return f"{millis}ms"


@dataclass(frozen=True)
class DatasourceSettings:
    """The InfluxDB datasource's Flux settings (jsonData.organization and .defaultBucket)."""

    organization: str
    default_bucket: str


def interpolate_flux(
    query: str, *, start: dt.datetime, stop: dt.datetime, interval_seconds: float, datasource: DatasourceSettings
) -> str:
    """The backend's macro step, replacing every ``<word>.<name>`` match as Grafana's regex does."""

    def rfc3339(t: dt.datetime) -> str:
        # Go's RFC3339Nano: UTC, "Z", a fraction only when non-zero and without trailing zeros.
        utc = t.astimezone(dt.UTC)
        fraction = f"{utc.microsecond:06d}".rstrip("0")
        return utc.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"

    replacements = {
        "timeRangeStart": rfc3339(start),
        "timeRangeStop": rfc3339(stop),
        "windowPeriod": go_duration(interval_seconds),
        "bucket": f'"{datasource.default_bucket}"',
        "defaultBucket": f'"{datasource.default_bucket}"',
        "organization": f'"{datasource.organization}"',
    }
    flux = query
    for match in _FLUX_VARIABLE.finditer(query):
        value = replacements.get(match.group(2))
        if value is not None:
            flux = flux.replace(match.group(0), value)
    flux = flux.replace("$__interval_ms", str(round(interval_seconds * 1000)))
    return flux.replace("$__interval", format_interval(interval_seconds))


# --- walking a dashboard --------------------------------------------------------------------


@dataclass
class Target:
    """One panel target, ready to send: the panel, the repeat value it was rendered for, the final text."""

    panel: dict[str, Any]
    target: dict[str, Any]
    datasource_type: str
    query: str
    repeat: tuple[str, str] | None = None

    @property
    def title(self) -> str:
        title = str(self.panel.get("title", ""))
        return f"{title} [{self.repeat[0]}={self.repeat[1]}]" if self.repeat else title


Runner = Callable[[str], list[dict[str, Any]]]
"""Runs a final Flux query and returns its records (one dict per row, with ``table``)."""


@dataclass
class Dashboard:
    """A dashboard's variables and targets, resolved as Grafana would for one time range and interval."""

    data: dict[str, Any]
    start: dt.datetime
    stop: dt.datetime
    interval_seconds: float
    datasource: DatasourceSettings
    selections: dict[str, Selection] = field(default_factory=dict)
    options: dict[str, list[str]] = field(default_factory=dict)

    def finalize(self, text: str, scoped: Mapping[str, Selection] | None = None) -> str:
        selections = {**self.selections, **(scoped or {})}
        return interpolate_flux(
            replace_variables(text, selections),
            start=self.start,
            stop=self.stop,
            interval_seconds=self.interval_seconds,
            datasource=self.datasource,
        )

    def variables(self) -> list[dict[str, Any]]:
        return list(self.data.get("templating", {}).get("list", []))

    def resolve(self, run: Runner, choose: Callable[[dict[str, Any], list[str]], Selection]) -> None:
        """Run each query variable in order; ``choose`` picks from its options as a user would."""
        for variable in self.variables():
            if variable["type"] == "datasource":
                continue
            if variable["type"] != "query":
                raise AssertionError(f"variable {variable['name']}: type {variable['type']} is not emulated")
            query = variable["query"] if isinstance(variable["query"], str) else variable["query"]["query"]
            records = run(self.finalize(query))
            values = sorted({str(r["_value"]) for r in records if r.get("_value") is not None})
            self.options[variable["name"]] = values
            self.selections[variable["name"]] = choose(variable, values)

    def panels(self) -> Iterator[dict[str, Any]]:
        for panel in self.data.get("panels", []):
            yield panel
            yield from panel.get("panels", [])  # collapsed rows carry their panels inside

    def targets(self) -> Iterator[Target]:
        """Every target of every panel, once per value of its repeat variable."""
        for panel in self.panels():
            if panel.get("type") == "row":
                continue
            datasource_type = str((panel.get("datasource") or {}).get("type", ""))
            repeat = panel.get("repeat")
            scopes: list[tuple[str, str] | None] = [None]
            if repeat:
                chosen = self.selections[repeat]
                values = self.options[repeat] if chosen.all_value is not None else list(chosen.values)
                scopes = [(repeat, v) for v in values]
            for scope in scopes:
                scoped = {scope[0]: Selection((scope[1],))} if scope else {}
                for target in panel.get("targets", []):
                    text = target.get("query") if datasource_type == "influxdb" else target.get("expr")
                    yield Target(panel, target, datasource_type, self.finalize(str(text or ""), scoped), scope)


# --- what a query names ---------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """Measurements, measurement patterns, fields and tags a Flux query reads."""

    measurements: frozenset[str]
    patterns: frozenset[str]
    fields: frozenset[str]
    tags: frozenset[str]
    renames_field: bool
    """The query writes ``_field`` itself (``map(... _field: ...)``): its output fields are its own."""


_STRING = r'"((?:[^"\\]|\\.)*)"'


def flux_names(query: str) -> Names:
    """What a Flux query names, read from its text (templated names like ``${measurement}`` included)."""
    measurements = set(re.findall(r"r\._measurement\s*[!=]=\s*" + _STRING, query))
    measurements |= set(re.findall(r"\bmeasurement:\s*" + _STRING, query))
    patterns = set(re.findall(r"r\._measurement\s*[!=]~\s*/((?:[^/\\]|\\.)*)/", query))
    fields = set(re.findall(r"r\._field\s*[!=]=\s*" + _STRING, query))
    tags = set(re.findall(r"\br\.([A-Za-z][\w]*)", query))
    tags |= set(re.findall(r"\btag:\s*" + _STRING, query))
    for columns in re.findall(r"columns:\s*\[([^\]]*)\]", query):
        tags |= set(re.findall(_STRING, columns))
    tags = {t for t in tags if not t.startswith("_")}
    return Names(
        frozenset(measurements),
        frozenset(patterns),
        frozenset(fields),
        frozenset(tags),
        renames_field=bool(re.search(r"\bwith\b[^)]*\b_field\s*:", query)),
    )

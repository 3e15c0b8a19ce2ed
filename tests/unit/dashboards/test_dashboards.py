"""The committed dashboards are what the generator makes, and name only what the writers write (README.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from dashboards import generate

from tests.env.grafana import flux_names
from tests.readme_tables import Written, readme_schema

ROOT = Path(__file__).resolve().parents[3]

README_UNITS = {
    "%": {"percent"},
    "bytes": {"bytes"},
    "bytes/s": {"Bps"},
    "ops/s": {"ops"},
    "packets/s": {"pps"},
    "errors/s": {"pps", "cps"},
    "s/s": {"percentunit"},
    "s": {"s"},
    "—": {"short", "none"},
    "processes": {"short"},
    "inodes": {"short"},
}
"""README's unit column → the Grafana unit ids that show it."""


SCHEMA = readme_schema()
DASHBOARDS = {name: json.loads((ROOT / "dashboards" / name).read_text()) for name in generate.DASHBOARDS}


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in board["panels"] if p["type"] != "row"]


def _flux(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every Flux query: variables and panel targets."""
    out = [(f"variable {v['name']}", v["query"]) for v in board["templating"]["list"] if v["type"] == "query"]
    for panel in _panels(board):
        if panel["datasource"]["type"] == "influxdb":
            out += [(f"panel {panel['title']!r}", t["query"]) for t in panel["targets"]]
    return out


ALL_FLUX = [(name, where, query) for name, board in DASHBOARDS.items() for where, query in _flux(board)]


def test_committed_dashboards_are_what_the_generator_makes() -> None:
    stale = generate.stale()
    assert not stale, f"stale dashboards, run `make dashboards`: {[str(p.relative_to(ROOT)) for p in stale]}"


def test_the_readme_tables_parse_into_the_writers_schema() -> None:
    # Guards the parser below: a reworded README must not turn the cross-check into a no-op.
    assert len([m for m in SCHEMA.measurements if m.startswith("system.")]) >= 50
    assert SCHEMA.measurements["system.disk.usage"].tags >= {"mountpoint", "device", "node"}
    assert "last_write_age_seconds" in SCHEMA.measurements["observatory.agent"].fields
    assert "dropped_groups" in SCHEMA.measurements["observatory.processor"].fields
    assert SCHEMA.find("${measurement}") is not None


@pytest.mark.parametrize(("board", "where", "query"), ALL_FLUX, ids=[f"{b}:{w}" for b, w, _ in ALL_FLUX])
def test_every_query_names_only_what_is_written(board: str, where: str, query: str) -> None:
    names = flux_names(query)
    written: list[Written] = []
    for measurement in names.measurements:
        found = SCHEMA.find(measurement)
        assert found is not None, f"{board} {where}: measurement {measurement!r} is written by nothing (README.md)"
        written.append(found)
    for pattern in names.patterns:
        matched = [w for m, w in SCHEMA.measurements.items() if re.search(pattern, m)]
        assert matched, f"{board} {where}: /{pattern}/ matches no measurement in README.md"
        written += matched
    # A query that names no measurement (a variable over every rule output) reads any of them.
    candidates = written or list(SCHEMA.measurements.values())
    for name in names.fields - {f for f in names.fields if "${" in f}:  # a variable's: checked on real data
        ok = any(name in w.fields or (w.extra_fields and w.extra_fields.fullmatch(name)) for w in candidates)
        assert ok, f"{board} {where}: field {name!r} is not written to {sorted(names.measurements)}"
    for tag in names.tags:
        ok = any(tag in w.tags for w in candidates)
        assert ok, f"{board} {where}: tag {tag!r} is not written with {sorted(names.measurements)}"


@pytest.mark.parametrize(("board", "where", "query"), ALL_FLUX, ids=[f"{b}:{w}" for b, w, _ in ALL_FLUX])
def test_every_query_is_bounded_by_the_dashboard_time_range(board: str, where: str, query: str) -> None:
    assert "v.timeRangeStart" in query, f"{board} {where}"
    assert "v.timeRangeStop" in query, f"{board} {where}"
    assert "v.defaultBucket" in query, f"{board} {where}: read the datasource's bucket"


def test_every_time_series_aggregates_on_grafanas_interval_and_has_a_unit() -> None:
    checked = 0
    for name, board in DASHBOARDS.items():
        for panel in _panels(board):
            if panel["type"] not in {"timeseries", "stat"}:
                continue
            checked += 1
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{name} {panel['title']!r} has no unit"
            for target in panel["targets"]:
                if panel["datasource"]["type"] == "influxdb":
                    assert "aggregateWindow(every: v.windowPeriod" in target["query"], f"{name} {panel['title']!r}"
                else:
                    assert "$__rate_interval" in target["expr"], f"{name} {panel['title']!r}"
    assert checked >= 30


def test_node_panels_show_the_unit_readme_gives_their_metrics() -> None:
    checked = 0
    for panel in _panels(DASHBOARDS["observatory-nodes.json"]):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        for target in panel["targets"]:
            for measurement in flux_names(target["query"]).measurements:
                readme_unit = SCHEMA.measurements[measurement].unit
                assert unit in README_UNITS[readme_unit], (
                    f"{panel['title']!r}: {measurement} is {readme_unit} in README.md, the panel shows {unit}"
                )
                checked += 1
    assert checked >= 40


def test_the_units_the_issue_names_are_all_in_use() -> None:
    units = {
        p["fieldConfig"]["defaults"].get("unit") for b in DASHBOARDS.values() for p in _panels(b) if "fieldConfig" in p
    }
    assert {"percent", "bytes", "Bps", "ops"} <= units


def test_the_nodes_dashboard_covers_every_collector_family() -> None:
    named = {m for _, _, q in ALL_FLUX for m in flux_names(q).measurements}
    families = {
        "cpu",
        "cpu.core",
        "memory",
        "swap",
        "load",
        "disk",
        "disk.io",
        "network",
        "filesystem.inodes",
        "processes",
    }
    for family in families:
        assert any(m.startswith(f"system.{family}.") for m in named), f"no panel reads system.{family}.*"


def test_variables_cluster_and_node_come_from_tag_values() -> None:
    variables = {v["name"]: v for v in DASHBOARDS["observatory-nodes.json"]["templating"]["list"]}
    for name in ("cluster", "node"):
        assert variables[name]["type"] == "query"
        assert f'schema.tagValues(bucket: v.defaultBucket, tag: "{name}"' in variables[name]["query"]
    assert variables["node"]["multi"]
    assert variables["node"]["includeAll"]
    rollups = {v["name"] for v in DASHBOARDS["observatory-rollups.json"]["templating"]["list"]}
    assert "measurement" in rollups


def test_the_operator_panel_names_only_metrics_and_labels_readme_lists() -> None:
    prometheus = {name: w for name, w in SCHEMA.measurements.items() if w.prometheus}
    assert len(prometheus) >= 2, prometheus
    exprs = [
        t["expr"]
        for p in _panels(DASHBOARDS["observatory-health.json"])
        if p["datasource"]["type"] == "prometheus"
        for t in p["targets"]
    ]
    assert len(exprs) == 2, exprs
    for expr in exprs:
        (metric,) = re.findall(r"\b(observatory_operator_\w+)", expr)
        assert metric in prometheus, f"{expr}: {metric} is not in README's Grafana table"
        labels = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        labels |= set(re.findall(r"(\w+)=~", expr))
        assert labels <= prometheus[metric].tags, f"{expr}: labels {labels - prometheus[metric].tags} not in README"

"""Every dashboard query, filled in as Grafana fills it, runs on the bed's InfluxDB and returns the series it graphs.

The data: real agents feeding a real processor (``conftest.py``); nothing is seeded. Each dashboard is walked as
Grafana walks it (``tests/env/grafana.py``): query variables run in order, panels once per repeat
value, Grafana's variable formats and Flux macros substituted.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest
from dashboards import generate

from tests.env.grafana import Dashboard, DatasourceSettings, Selection, Target, flux_names
from tests.env.influx import InfluxDB
from tests.integration.agent.conftest import WINDOW, query
from tests.integration.dashboards.conftest import ROLLUP_FUNCTIONS, ZONES, Written

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
BOARDS = {name: json.loads((ROOT / "dashboards" / name).read_text()) for name in generate.DASHBOARDS}


def _datasource(influx: InfluxDB) -> DatasourceSettings:
    return DatasourceSettings(organization=influx.org, default_bucket=influx.bucket)


def _pick(written: Written) -> Any:
    """What a user picks: this module's cluster, then All, after checking each list is exactly what was written."""

    def pick(variable: dict[str, Any], options: list[str]) -> Selection:
        name = variable["name"]
        expected = {
            "node": sorted(written.nodes),
            "measurement": [written.rollup],
            "rule": [written.rule],
            "function": sorted(ROLLUP_FUNCTIONS),
        }
        if name == "cluster":
            assert written.cluster in options, f"variable cluster: {written.cluster} not among {options}"
            return Selection((written.cluster,))
        assert options == expected[name], f"variable {name}: options {options}, written {expected[name]}"
        if variable.get("includeAll"):
            return Selection(tuple(options), all_value=variable.get("allValue") or None)
        return Selection((options[0],))

    return pick


def _walk(board: dict[str, Any], influx: InfluxDB, written: Written, interval: float) -> Dashboard:
    dashboard = Dashboard(
        board,
        start=written.start,
        stop=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1),
        interval_seconds=interval,
        datasource=_datasource(influx),
    )
    dashboard.resolve(lambda flux: query(influx, flux), _pick(written))
    return dashboard


def _check_series(target: Target, records: list[dict[str, Any]], written: Written) -> None:
    """The series a panel draws are there: its measurements, fields, legend labels, every node and group."""
    title = target.title
    assert records, f"{title}: no data for\n{target.query}"
    names = flux_names(target.query)
    returned = {r.get("_measurement") for r in records}
    assert names.measurements <= returned, f"{title}: {sorted(names.measurements - returned)} returned nothing"
    if not names.renames_field:
        fields = {r.get("_field") for r in records}
        assert names.fields <= fields, f"{title}: fields {sorted(names.fields - fields)} returned nothing"
    legend = str(target.panel.get("fieldConfig", {}).get("defaults", {}).get("displayName", ""))
    for label in re.findall(r"__field\.labels\.(\w+)", legend):
        missing = [r for r in records if r.get(label) in (None, "")]
        assert not missing, f"{title}: the legend shows {label}, which {len(missing)} rows lack"
    if target.panel.get("type") != "table":
        values = [r["_value"] for r in records]
        assert all(isinstance(v, int | float) for v in values), f"{title}: non-numeric values {values[:5]}"
    if "node" in records[0]:
        assert {r["node"] for r in records} == set(written.nodes), f"{title}: not every node has a series"
    if "zone" in records[0]:
        assert {r["zone"] for r in records} == set(ZONES), f"{title}: not every roll-up group has a series"


@pytest.mark.parametrize("interval", [WINDOW, 60.0], ids=["interval=window", "interval=1m0s"])
@pytest.mark.parametrize("name", list(BOARDS))
def test_every_panel_query_returns_the_series_it_graphs(
    name: str, interval: float, written: Written, influxdb: InfluxDB
) -> None:
    dashboard = _walk(BOARDS[name], influxdb, written, interval)
    ran = 0
    for target in dashboard.targets():
        if target.datasource_type != "influxdb":
            assert target.datasource_type == "prometheus", f"{target.title}: datasource {target.datasource_type}"
            continue  # the operator's Prometheus metrics: tests/integration/dashboards/test_prometheus.py
        assert "v." not in re.sub(r'"[^"]*"', "", target.query), f"{target.title}: a Flux macro left unreplaced"
        assert "${" not in target.query, f"{target.title}: a variable left unreplaced"
        _check_series(target, query(influxdb, target.query), written)
        ran += 1
    panels = [p for p in dashboard.panels() if p["type"] != "row" and p["datasource"]["type"] == "influxdb"]
    assert ran >= len(panels)


def test_picking_nodes_narrows_every_node_panel_to_them(written: Written, influxdb: InfluxDB) -> None:
    dashboard = _walk(BOARDS["observatory-nodes.json"], influxdb, written, WINDOW)
    first, both = (written.nodes[0],), written.nodes
    for chosen in (first, both):
        dashboard.selections["node"] = Selection(chosen)  # ${node:regex}: one escaped value, or (a|b)
        for target in dashboard.targets():
            nodes = {r["node"] for r in query(influxdb, target.query)}
            assert nodes == set(chosen), f"{target.title}: picked {chosen}, drew {sorted(nodes)}"


def test_all_is_every_node_as_grafana_sends_it_without_a_custom_all_value(written: Written, influxdb: InfluxDB) -> None:
    # A dashboard edited to drop the custom ".*" sends All as every option, regex-joined.
    dashboard = _walk(BOARDS["observatory-nodes.json"], influxdb, written, WINDOW)
    dashboard.selections["node"] = Selection(tuple(dashboard.options["node"]))
    assert dashboard.selections["node"].all_value is None
    target = next(t for t in dashboard.targets() if t.panel["title"] == "CPU usage")
    assert {r["node"] for r in query(influxdb, target.query)} == set(written.nodes)


@pytest.mark.parametrize(
    ("wrong", "right"),
    [
        ('"system.cpu.usage"', '"system.cpu.busy"'),  # a measurement nothing writes
        ('r._field == "mean"', 'r._field == "average"'),  # a field nothing writes
        ('"node"]', '"hostname"]'),  # a legend tag nothing writes
    ],
    ids=["measurement", "field", "tag"],
)
def test_a_query_naming_what_nothing_writes_fails_the_check(
    wrong: str, right: str, written: Written, influxdb: InfluxDB
) -> None:
    board = json.loads(
        json.dumps(BOARDS["observatory-nodes.json"]).replace(json.dumps(wrong)[1:-1], json.dumps(right)[1:-1])
    )
    dashboard = _walk(board, influxdb, written, WINDOW)
    target = next(t for t in dashboard.targets() if t.panel["title"] == "CPU usage")
    assert right in target.query
    with pytest.raises(AssertionError):
        _check_series(target, query(influxdb, target.query), written)

"""README.md's tables of what is written are exactly what real agents and a real processor wrote.

The dashboards' unit tests check every query against README's tables; this checks the tables
against InfluxDB after the writers ran (``conftest.py``): each measurement's tag keys and field
keys, in every table that documents it, with nothing written that README does not list.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import pytest

from tests.env.influx import InfluxDB
from tests.integration.agent.conftest import flux_string, query
from tests.integration.dashboards.conftest import COLLECTORS, ROLLUP_FUNCTIONS, Written
from tests.readme_tables import PLACEHOLDERS, readme_schema

pytestmark = pytest.mark.integration

SCHEMA = readme_schema()
META = {"result", "table", "_start", "_stop", "_time", "_value", "_field", "_measurement"}
CONFIGURED_TAGS = {"run", "zone"}
"""The agents' configured tags (conftest.py): README says every node metric carries them."""
GROUP_BY = {"zone"}
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


@pytest.fixture(scope="module")
def seen(written: Written, influxdb: InfluxDB) -> dict[str, dict[str, set[str]]]:
    """measurement → {"tags": tag keys of any of its series, "fields": field keys} as InfluxDB holds them."""
    stop = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    flux = f"""
from(bucket: {flux_string(influxdb.bucket)})
  |> range(start: {written.start.strftime(RFC3339)}, stop: {stop.strftime(RFC3339)})
  |> filter(fn: (r) => r.cluster == {flux_string(written.cluster)} or r.rule == {flux_string(written.rule)})
  |> last()
"""
    out: dict[str, dict[str, set[str]]] = defaultdict(lambda: {"tags": set(), "fields": set()})
    records: list[dict[str, Any]] = query(influxdb, flux)
    for record in records:
        entry = out[record["_measurement"]]
        entry["fields"].add(record["_field"])
        entry["tags"] |= {k for k, v in record.items() if k not in META and v not in (None, "")}
    return dict(out)


def _name(measurement: str, written: Written) -> str:
    return written.rollup if measurement == "<rule output>" else measurement


ROWS = [r for r in SCHEMA.rows if not r[2].prometheus]


@pytest.mark.parametrize(("section", "measurement", "readme"), ROWS, ids=[f"{s}:{m}" for s, m, _ in ROWS])
def test_each_readme_row_names_exactly_the_tags_and_fields_written(
    section: str, measurement: str, readme: Any, seen: dict[str, dict[str, set[str]]], written: Written
) -> None:
    name = _name(measurement, written)
    if readme.collector and readme.collector not in COLLECTORS:
        assert name not in seen, f"{name}: written, though its collector {readme.collector} did not run"
        return  # cpuinfo: not run by these agents (no panel reads it); its table row is checked by unit tests
    assert name in seen, f"README {section}: {name} was never written (written: {sorted(seen)})"
    got = seen[name]
    want_tags = set(readme.tags) - PLACEHOLDERS
    if measurement.startswith("system."):
        want_tags |= CONFIGURED_TAGS
    if readme.templated:
        want_tags |= GROUP_BY
        assert readme.extra_fields is not None
        documented = {f for f in got["fields"] if f in readme.fields or readme.extra_fields.fullmatch(f)}
        assert documented == got["fields"], f"README {section}: {name} fields {sorted(got['fields'] - documented)}"
        assert got["fields"] == {*ROLLUP_FUNCTIONS, "nodes", "quantile_method"}, got["fields"]
    else:
        assert got["fields"] == readme.fields, (
            f"README {section}: {name} fields differ: "
            f"written, not documented {sorted(got['fields'] - readme.fields)}; "
            f"documented, not written {sorted(readme.fields - got['fields'])}"
        )
    assert got["tags"] == want_tags, (
        f"README {section}: {name} tags differ: written, not documented {sorted(got['tags'] - want_tags)}; "
        f"documented, not written {sorted(want_tags - got['tags'])}"
    )


def test_everything_written_is_in_a_readme_table(seen: dict[str, dict[str, set[str]]], written: Written) -> None:
    documented = {_name(m, written) for _, m, w in ROWS}
    assert len(seen) >= 50, sorted(seen)
    assert set(seen) <= documented, f"written but in no README table: {sorted(set(seen) - documented)}"

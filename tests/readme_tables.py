"""README.md's tables of what the writers write, parsed: node metrics, self-telemetry, roll-up outputs.

The dashboards' unit tests check every query against these, and the dashboard integration tests
check them against what real agents and a real processor wrote, so README, dashboards and
writers cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


@dataclass
class Written:
    """One measurement as README.md says it is written."""

    tags: set[str]
    fields: set[str]
    unit: str = ""
    collector: str = ""
    """The agent collector that writes it (node metrics)."""
    templated: bool = False
    extra_fields: re.Pattern[str] | None = None
    prometheus: bool = False
    """Exported for Prometheus (the operator's /metrics), not written to InfluxDB."""


@dataclass
class Schema:
    measurements: dict[str, Written] = field(default_factory=dict)
    rows: list[tuple[str, str, Written]] = field(default_factory=list)
    """Every table row as (README section, measurement, what it says), the same measurement once per table."""

    def find(self, name: str) -> Written | None:
        if "${" in name:  # a roll-up's output measurement, chosen by a variable
            return next((w for w in self.measurements.values() if w.templated), None)
        return self.measurements.get(name)

    def add(self, section: str, name: str, written: Written) -> None:
        self.measurements[name] = written
        self.rows.append((section, name, written))


def _ticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def _unbracketed(text: str) -> str:
    """Without parenthesised asides (``(string: `exact` or `sketch`)`` names values, not fields)."""
    return re.sub(r"\([^)]*\)", "", text)


PLACEHOLDERS = {"groupBy", "functions", "pNN"}
"""Words README's roll-up rows use for what each rule decides: its groupBy tags, its functions, quantiles."""


def _rule_output(tags: set[str], fields: set[str]) -> Written:
    return Written(tags, fields - {"pNN"}, templated=True, extra_fields=re.compile(r"p\d+(\.\d+)?"))


def _cells(line: str) -> list[str]:
    line = line.strip()
    return [c.strip() for c in line.strip("|").split("|")] if line.startswith("|") else []


def readme_schema() -> Schema:
    """The metric table (agents' node metrics), the roll-up section's and the Grafana section's tables."""
    metrics = README.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    intro = metrics.split("| metric |", 1)[0]
    node_fields = set(_ticked(intro.split("with the fields", 1)[1].split(", timestamped", 1)[0]))
    base_tags = set(_ticked(intro.split("carries the tags", 1)[1].split("plus", 1)[0]))
    assert {"mean", "last", "p95"} <= node_fields, node_fields
    assert base_tags == {"host", "node", "cluster"}, base_tags
    schema = Schema()
    for line in metrics.splitlines():
        cells = _cells(line)
        if len(cells) != 6 or not cells[0].startswith("`system."):
            continue
        tags = set() if cells[3] == "—" else {t.strip() for t in cells[3].split(",")}
        written = Written(base_tags | tags, set(node_fields), unit=cells[1], collector=cells[4])
        schema.add("Metrics", cells[0].strip("`"), written)
    # The agent's own point: its tags in prose, its fields in the table after it.
    own = metrics.split("`observatory.agent`, tagged", 1)[1].split("System collectors take", 1)[0]
    own_tags = set(_ticked(_unbracketed(own.split("timestamped", 1)[0])))
    own_fields = {c[0].strip("`") for c in map(_cells, own.splitlines()) if len(c) == 3 and c[0].startswith("`")}
    schema.add("Metrics", "observatory.agent", Written(own_tags, own_fields))
    # The roll-up output: its parts (part | content).
    rollups = metrics.split("### Cluster roll-ups", 1)[1]
    parts = {c[0]: set(_ticked(_unbracketed(c[1]))) for c in map(_cells, rollups.splitlines()) if len(c) == 2}
    schema.add("Cluster roll-ups", "<rule output>", _rule_output(parts["tags"], parts["fields"]))
    # The roll-up section's table of the processor's own points (measurement | tags | fields) and the
    # Grafana section's table (measurement | written by | tags | fields).
    grafana = README.split("## Grafana", 1)[1].split("\n## ", 1)[0]
    rows = [("Cluster roll-ups", c[0], c[1], c[2]) for c in map(_cells, rollups.splitlines()) if len(c) == 3]
    rows += [("Grafana", c[0], c[2], c[3]) for c in map(_cells, grafana.splitlines()) if len(c) == 4]
    for section, name, tag_cell, field_cell in rows:
        if not name.startswith(("`", "the rule")):
            continue
        tags, fields = set(_ticked(tag_cell)), set(_ticked(field_cell))
        if name.startswith("the rule"):
            schema.add(section, "<rule output>", _rule_output(tags, fields))
        else:
            schema.add(section, _ticked(name)[0], Written(tags, fields, prometheus="(Prometheus" in name))
    return schema

"""Build the Grafana dashboards as code and write them as JSON: ``python -m dashboards.generate [--check]``.

Why the Grafana Foundation SDK (``grafana-foundation-sdk``, pinned to its Grafana 11.6 flavour,
``1769699379!11.6.0``) rather than typed dictionaries: its builders are generated from Grafana's
own dashboard schema, so a misspelt option (``fieldConfig.defaults.unit``, ``gridPos``,
``templating``) is a Python error here instead of a setting Grafana silently ignores, and the
JSON carries the ``schemaVersion`` of the Grafana it was generated for, so Grafana 11.6 and later
import it without a migration. The flavour is pinned because each flavour speaks one Grafana
version's schema. The SDK has no InfluxDB query type; a Flux target is just ``refId`` + ``query``
(Grafana's InfluxDB query model in Flux mode), which ``FluxTarget`` below provides.

Every query reads what the writers write (README.md's metric table and its "Grafana" section):
agents' node metrics (one measurement per metric; fields count, sum, mean, min, max, last,
p50/p95/p99; tags host, node, cluster + the metric's own), the agents' ``observatory.agent``
and processors' ``observatory.processor`` self-telemetry, and each AggregationRule's roll-up
measurement. Queries use only what Grafana's InfluxDB (Flux) backend substitutes:
``v.timeRangeStart``/``v.timeRangeStop``, ``v.windowPeriod``, ``v.defaultBucket``, and the
dashboard's variables (``${name:regex}`` inside regex literals, so any value is escaped).

The output is written twice, like ``crds/``: ``dashboards/*.json`` (import by hand) and the
chart's ``files/dashboards/`` (provisioned as ConfigMaps); ``--check`` fails when either is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as models

from observatory_operator import metrics as operator_metrics
from observatory_operator.reasons import Outcome

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (ROOT / "dashboards", ROOT / "helm" / "happy-observatory" / "files" / "dashboards")

INFLUX = models.DataSourceRef(type_val="influxdb", uid="${datasource}")
PROMETHEUS = models.DataSourceRef(type_val="prometheus", uid="${prometheus}")
TAGS = ["happy-observatory"]
NODE_TAGS = ("host", "node", "cluster")
"""Tags every agent point carries."""


# --- Flux targets ---------------------------------------------------------------------------


class FluxQuery(cogvariants.Dataquery):
    """Grafana's InfluxDB query model in Flux mode: the raw query and its refId."""

    def __init__(self, ref_id: str, query: str) -> None:
        self.ref_id = ref_id
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {"refId": self.ref_id, "query": self.query, "datasource": INFLUX.to_json()}


class FluxTarget(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: str, ref_id: str = "A") -> None:
        self._query = FluxQuery(ref_id, query)

    def build(self) -> cogvariants.Dataquery:
        return self._query


def _or(column: str, values: Sequence[str]) -> str:
    return " or ".join(f"r.{column} == {json.dumps(v)}" for v in values)


SOURCE = "from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)\n"
NODE_FILTER = "  |> filter(fn: (r) => r.cluster =~ /^${cluster:regex}$/ and r.node =~ /^${node:regex}$/)\n"


def _keep(columns: Sequence[str]) -> str:
    return f"  |> keep(columns: {json.dumps(['_time', '_value', '_field', '_measurement', *columns])})\n"


def _window(fn: str) -> str:
    # Points are stamped at their window's end; labelling a bucket by its start keeps a point
    # at its own time whenever the panel's interval is no wider than the agents' window.
    return f'  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false, timeSrc: "_start")\n'


def node_query(measurements: Sequence[str], *, by: Sequence[str] = (), field: str = "mean", fn: str = "mean") -> str:
    """One series per node (and ``by`` tag values) and measurement, averaged over Grafana's interval."""
    return (
        SOURCE
        + f"  |> filter(fn: (r) => {_or('_measurement', measurements)})\n"
        + f"  |> filter(fn: (r) => r._field == {json.dumps(field)})\n"
        + NODE_FILTER
        + _window(fn)
        + _keep(["node", *by])
    )


def counter_rate_query(measurement: str, fields: Sequence[str], *, by: Sequence[str], scope: str) -> str:
    """Per-second rate of cumulative integer counters (restarts reset them: negative steps are dropped)."""
    return (
        SOURCE
        + f"  |> filter(fn: (r) => r._measurement == {json.dumps(measurement)})\n"
        + f"  |> filter(fn: (r) => {_or('_field', fields)})\n"
        + scope
        + "  |> derivative(unit: 1s, nonNegative: true)\n"
        + _window("mean")
        + _keep(by)
    )


def gauge_query(measurement: str, fields: Sequence[str], *, by: Sequence[str], scope: str, fn: str = "max") -> str:
    return (
        SOURCE
        + f"  |> filter(fn: (r) => r._measurement == {json.dumps(measurement)})\n"
        + f"  |> filter(fn: (r) => {_or('_field', fields)})\n"
        + scope
        + _window(fn)
        + _keep(by)
    )


def tag_values(tag: str, predicate: str) -> str:
    return (
        'import "influxdata/influxdb/schema"\n\n'
        f"schema.tagValues(bucket: v.defaultBucket, tag: {json.dumps(tag)}, predicate: (r) => {predicate}, "
        "start: v.timeRangeStart, stop: v.timeRangeStop)"
    )


# --- panels ---------------------------------------------------------------------------------


class Unit:
    """Grafana unit ids for what the writers write."""

    PERCENT = "percent"  # 0-100
    FRACTION = "percentunit"  # 0-1 (busy seconds per second)
    BYTES = "bytes"
    BYTES_PER_SECOND = "Bps"
    OPS_PER_SECOND = "ops"
    PACKETS_PER_SECOND = "pps"
    PER_SECOND = "cps"  # counts per second
    SECONDS = "s"
    COUNT = "short"


def _legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs(["mean", "max", "lastNotNull"])
    )


def graph(
    title: str,
    query: str,
    *,
    unit: str,
    legend: str,
    description: str,
    span: int = 12,
    minimum: float | None = 0,
    maximum: float | None = None,
    datasource: models.DataSourceRef = INFLUX,
    targets: Sequence[cogbuilder.Builder[cogvariants.Dataquery]] = (),
) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).description(description).datasource(datasource)
    for target in targets or [FluxTarget(query)]:
        panel = panel.with_target(target)
    panel = (
        panel.unit(unit)
        .legend(_legend())
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(10)
        .span(span)
        .height(8)
    )
    if legend:  # else Grafana names each series from its labels (a roll-up's groupBy tags)
        panel = panel.display_name(legend)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def node_graph(
    title: str,
    measurements: Sequence[str],
    *,
    unit: str,
    description: str,
    by: Sequence[str] = (),
    field: str = "mean",
    fn: str = "mean",
    span: int = 12,
    maximum: float | None = None,
) -> timeseries.Panel:
    parts = ["${__field.labels.node}", *(f"${{__field.labels.{t}}}" for t in by)]
    if len(measurements) > 1:
        parts.append("${__series.name}")  # the frame name is the measurement
    return graph(
        title,
        node_query(measurements, by=by, field=field, fn=fn),
        unit=unit,
        legend=" ".join(parts),
        description=description,
        span=span,
        maximum=maximum,
    )


# --- variables ------------------------------------------------------------------------------


def datasource_variable(name: str, plugin: str, label: str) -> builders.DatasourceVariable:
    return builders.DatasourceVariable(name).label(label).type(plugin)


def query_variable(name: str, label: str, query: str, *, multi: bool, description: str) -> builders.QueryVariable:
    variable = (
        builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(INFLUX)
        .query(query)
        .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(models.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        # A custom "all" value keeps the regex short on big clusters; Grafana leaves it unescaped.
        variable = variable.multi(True).include_all(True).all_value(".*")
    return variable


def _dashboard(uid: str, title: str, description: str) -> builders.Dashboard:
    return (
        builders.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .time("now-1h", "now")
        .refresh("1m")
        .timezone("browser")
        .tooltip(models.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable("datasource", "influxdb", "InfluxDB"))
    )


def _cluster_variable(predicate: str) -> builders.QueryVariable:
    return query_variable(
        "cluster",
        "Cluster",
        tag_values("cluster", predicate),
        multi=False,
        description="The cluster tag (shared-config cluster_name).",
    )


# --- 1. Nodes -------------------------------------------------------------------------------

SYSTEM = "r._measurement =~ /^system\\./"


def nodes() -> builders.Dashboard:
    d = (
        _dashboard(
            "happy-observatory-nodes",
            "Observatory / Nodes",
            "What the agents measure on each node: CPU, memory, swap, load, disks, network, inodes, processes.",
        )
        .with_variable(_cluster_variable(SYSTEM))
        .with_variable(
            query_variable(
                "node",
                "Node",
                tag_values("node", SYSTEM + " and r.cluster =~ /^${cluster:regex}$/"),
                multi=True,
                description="Nodes whose agents wrote in the time range.",
            )
        )
    )
    pct, b = Unit.PERCENT, Unit.BYTES
    rows: list[tuple[str, list[timeseries.Panel]]] = [
        (
            "CPU",
            [
                node_graph(
                    "CPU usage",
                    ["system.cpu.usage"],
                    unit=pct,
                    maximum=100,
                    description="Busy share of all CPUs (mean of the agents' windows).",
                ),
                node_graph(
                    "CPU time by mode",
                    ["system.cpu.user", "system.cpu.system", "system.cpu.iowait", "system.cpu.steal"],
                    unit=pct,
                    maximum=100,
                    description="User, kernel, I/O wait and steal shares.",
                ),
                node_graph(
                    "CPU usage per core",
                    ["system.cpu.core.usage"],
                    by=["core"],
                    unit=pct,
                    maximum=100,
                    span=24,
                    description="Busy share of each logical core.",
                ),
            ],
        ),
        (
            "Memory and swap",
            [
                node_graph(
                    "Memory usage",
                    ["system.memory.usage"],
                    unit=pct,
                    maximum=100,
                    description="(total - available) / total.",
                ),
                node_graph(
                    "Memory",
                    [
                        "system.memory.total",
                        "system.memory.used",
                        "system.memory.available",
                        "system.memory.cached",
                        "system.memory.buffers",
                        "system.memory.free",
                    ],
                    unit=b,
                    fn="last",
                    field="last",
                    description="Physical memory by use.",
                ),
                node_graph(
                    "Swap usage", ["system.swap.usage"], unit=pct, maximum=100, description="Share of swap in use."
                ),
                node_graph(
                    "Swap traffic",
                    ["system.swap.in", "system.swap.out"],
                    unit=Unit.BYTES_PER_SECOND,
                    description="Swapped in from and out to disk.",
                ),
            ],
        ),
        (
            "Load and processes",
            [
                node_graph(
                    "Load average",
                    ["system.load.1", "system.load.5", "system.load.15"],
                    unit=Unit.COUNT,
                    description="1, 5 and 15-minute load averages.",
                ),
                node_graph(
                    "Processes by state",
                    [
                        "system.processes.total",
                        "system.processes.running",
                        "system.processes.sleeping",
                        "system.processes.blocked",
                        "system.processes.zombie",
                        "system.processes.stopped",
                        "system.processes.idle",
                    ],
                    unit=Unit.COUNT,
                    fn="last",
                    field="last",
                    description="Processes per state (R, S, D, Z, T, I) and in total.",
                ),
            ],
        ),
        (
            "Disks",
            [
                node_graph(
                    "Disk usage",
                    ["system.disk.usage"],
                    by=["mountpoint"],
                    unit=pct,
                    maximum=100,
                    description="used / (used + free) per filesystem, as df.",
                ),
                node_graph(
                    "Disk space",
                    ["system.disk.used", "system.disk.free"],
                    by=["mountpoint"],
                    unit=b,
                    fn="last",
                    field="last",
                    description="Used and available bytes per filesystem.",
                ),
                node_graph(
                    "Disk operations",
                    ["system.disk.io.reads", "system.disk.io.writes"],
                    by=["device"],
                    unit=Unit.OPS_PER_SECOND,
                    description="Completed reads and writes per second.",
                ),
                node_graph(
                    "Disk throughput",
                    ["system.disk.io.read_bytes", "system.disk.io.write_bytes"],
                    by=["device"],
                    unit=Unit.BYTES_PER_SECOND,
                    description="Bytes read and written per second.",
                ),
                node_graph(
                    "Disk busy",
                    ["system.disk.io.busy_time"],
                    by=["device"],
                    unit=Unit.FRACTION,
                    description="Share of time each device was busy doing I/O.",
                ),
                node_graph(
                    "Inode usage",
                    ["system.filesystem.inodes.usage"],
                    by=["mountpoint"],
                    unit=pct,
                    maximum=100,
                    description="Share of inodes in use per filesystem.",
                ),
            ],
        ),
        (
            "Network",
            [
                node_graph(
                    "Network traffic",
                    ["system.network.bytes_recv", "system.network.bytes_sent"],
                    by=["interface"],
                    unit=Unit.BYTES_PER_SECOND,
                    description="Bytes received and sent.",
                ),
                node_graph(
                    "Network packets",
                    ["system.network.packets_recv", "system.network.packets_sent"],
                    by=["interface"],
                    unit=Unit.PACKETS_PER_SECOND,
                    description="Packets received and sent.",
                ),
                node_graph(
                    "Network errors and drops",
                    [
                        "system.network.errors_in",
                        "system.network.errors_out",
                        "system.network.drops_in",
                        "system.network.drops_out",
                    ],
                    by=["interface"],
                    unit=Unit.PACKETS_PER_SECOND,
                    description="Receive/transmit errors and dropped packets.",
                ),
                node_graph(
                    "Uptime",
                    ["system.uptime"],
                    unit=Unit.SECONDS,
                    fn="last",
                    field="last",
                    description="Seconds since boot: a drop is a reboot.",
                ),
            ],
        ),
    ]
    return _with_rows(d, rows)


def _with_rows(
    d: builders.Dashboard, rows: Sequence[tuple[str, Sequence[cogbuilder.Builder[models.Panel]]]]
) -> builders.Dashboard:
    for title, panels in rows:
        d = d.with_row(builders.Row(title))
        for panel in panels:
            d = d.with_panel(panel)
    return d


# --- 2. Cluster roll-ups ---------------------------------------------------------------------

ROLLUP_META_FIELDS = ("nodes", "quantile_method")
"""Fields a processor writes beside the rule's functions."""
ROLLUP_SCOPE = "  |> filter(fn: (r) => r.cluster =~ /^${cluster:regex}$/ and r.rule =~ /^${rule:regex}$/)\n"
ROLLUP_PREDICATE = 'r._field == "nodes" and r.rule != "" and r._measurement != "observatory.processor"'
ROLLUP_GROUP = '  |> drop(columns: ["_start", "_stop", "cluster"])\n'


def rollups() -> builders.Dashboard:
    d = (
        _dashboard(
            "happy-observatory-rollups",
            "Observatory / Cluster roll-ups",
            "Each AggregationRule's output: its functions over time, one series per group.",
        )
        .with_variable(_cluster_variable('r._field == "nodes" and r.rule != ""'))
        .with_variable(
            query_variable(
                "measurement",
                "Rule output",
                tag_values("_measurement", ROLLUP_PREDICATE + " and r.cluster =~ /^${cluster:regex}$/"),
                multi=False,
                description="An AggregationRule's spec.output.measurement.",
            )
        )
        .with_variable(
            query_variable(
                "rule",
                "Rule",
                tag_values("rule", 'r._measurement == "${measurement}" and r.cluster =~ /^${cluster:regex}$/'),
                multi=True,
                description="Rules writing that measurement.",
            )
        )
        .with_variable(
            query_variable(
                "function",
                "Function",
                'import "influxdata/influxdb/schema"\n\n'
                'schema.measurementFieldKeys(bucket: v.defaultBucket, measurement: "${measurement}", '
                "start: v.timeRangeStart, stop: v.timeRangeStop)\n"
                f"  |> filter(fn: (r) => {' and '.join(f'r._value != {json.dumps(f)}' for f in ROLLUP_META_FIELDS)})",
                multi=True,
                description="The rule's functions (count, sum, mean, min, max, last, pNN): one panel each.",
            )
        )
    )
    measurement = '  |> filter(fn: (r) => r._measurement == "${measurement}")\n'
    function_query = (
        SOURCE
        + measurement
        + '  |> filter(fn: (r) => r._field == "${function}")\n'
        + ROLLUP_SCOPE
        + _window("mean")
        + ROLLUP_GROUP
    )
    nodes_query = (
        SOURCE
        + measurement
        + '  |> filter(fn: (r) => r._field == "nodes")\n'
        + ROLLUP_SCOPE
        + _window("min")
        + ROLLUP_GROUP
    )
    method_query = (
        SOURCE
        + measurement
        + '  |> filter(fn: (r) => r._field == "quantile_method")\n'
        + ROLLUP_SCOPE
        + "  |> last()\n"
        + ROLLUP_GROUP
        + "  |> group()\n"
    )
    per_function = (
        graph(
            "${measurement} ${function}",
            function_query,
            unit="none",
            legend="",
            minimum=None,
            description="The rule's function over time, one series per group (the rule's groupBy tags).",
        )
        .repeat("function")
        .repeat_direction("h")
        .max_per_row(2)
    )
    rows: list[tuple[str, Sequence[cogbuilder.Builder[models.Panel]]]] = [
        ("Functions", [per_function]),
        (
            "Merge",
            [
                graph(
                    "Nodes merged per window",
                    nodes_query,
                    unit=Unit.COUNT,
                    legend="",
                    description="How many nodes' partials each group's window merged (fewest in the interval).",
                ),
                table.Panel()
                .title("Quantile method per group")
                .description("exact while every partial was exact and under the threshold, else sketch (1%).")
                .datasource(INFLUX)
                .with_target(FluxTarget(method_query))
                .span(12)
                .height(8),
            ],
        ),
    ]
    return _with_rows(d, rows)


# --- 3. Observatory health ------------------------------------------------------------------

AGENT = "observatory.agent"
PROCESSOR = "observatory.processor"
AGENT_SCOPE = "  |> filter(fn: (r) => r.cluster =~ /^${cluster:regex}$/ and r.node =~ /^${node:regex}$/)\n"
PROCESSOR_SCOPE = "  |> filter(fn: (r) => r.cluster =~ /^${cluster:regex}$/ and r.rule =~ /^${rule:regex}$/)\n"
RECONCILES = operator_metrics.RECONCILES.describe()[0].name + "_total"
"""The operator's rounds by ``kind`` and ``outcome`` (Prometheus, from its /metrics; not written to InfluxDB)."""
RECONCILE_ERRORS = operator_metrics.RECONCILE_ERRORS.describe()[0].name + "_total"
"""The operator's rounds that raised (retried with backoff), by ``kind`` and ``error`` (temporary, unexpected)."""
FAILED_OUTCOMES = tuple(o.value for o in Outcome if o.failed)
"""Outcomes of rounds that ended without applying: the spec is invalid, a prerequisite is missing, the API
server refused the children. Counted in ``RECONCILES``, not in ``RECONCILE_ERRORS``: the round itself ran."""


def operator_error_queries() -> list[prometheus.Dataquery]:
    """The two ways a round fails: it ended with a failed outcome, or it raised."""
    outcomes = "|".join(FAILED_OUTCOMES)
    exprs = (
        (
            f'sum by (kind, outcome) (increase({RECONCILES}{{outcome=~"{outcomes}"}}[$__rate_interval]))',
            "{{kind}} {{outcome}}",
        ),
        (f"sum by (kind, error) (increase({RECONCILE_ERRORS}[$__rate_interval]))", "{{kind}} raised ({{error}})"),
    )
    return [
        prometheus.Dataquery().expr(expr).legend_format(legend).range().ref_id(ref).datasource(PROMETHEUS)
        for ref, (expr, legend) in zip("AB", exprs, strict=True)
    ]


def health() -> builders.Dashboard:
    agent_any = f"r._measurement == {json.dumps(AGENT)}"
    d = (
        _dashboard(
            "happy-observatory-health",
            "Observatory / Health",
            "Is the observatory itself working: agents reporting, write errors, drops, processors, operator.",
        )
        .with_variable(datasource_variable("prometheus", "prometheus", "Prometheus (operator metrics)"))
        .with_variable(_cluster_variable(agent_any))
        .with_variable(
            query_variable(
                "node",
                "Node",
                tag_values("node", agent_any + " and r.cluster =~ /^${cluster:regex}$/"),
                multi=True,
                description="Nodes whose agents reported in the time range.",
            )
        )
        .with_variable(
            query_variable(
                "rule",
                "Rule",
                tag_values(
                    "rule", f"r._measurement == {json.dumps(PROCESSOR)} and r.cluster =~ /^${{cluster:regex}}$/"
                ),
                multi=True,
                description="AggregationRules whose processors reported in the time range.",
            )
        )
    )
    reporting = (
        SOURCE
        + f"  |> filter(fn: (r) => r._measurement == {json.dumps(AGENT)})\n"
        + '  |> filter(fn: (r) => r._field == "last_write_age_seconds")\n'
        + AGENT_SCOPE
        + '  |> group(columns: ["_measurement", "node"])\n'
        + _window("count")
        + '  |> map(fn: (r) => ({r with _value: 1, _field: "agents"}))\n'
        + '  |> group(columns: ["_measurement", "_field"])\n'
        + _window("sum")
        + _keep([])
    )
    agent_label = "${__field.labels.node} ${__field.labels.collector}"
    rows: list[tuple[str, Sequence[cogbuilder.Builder[models.Panel]]]] = [
        (
            "Agents",
            [
                stat.Panel()
                .title("Agents reporting")
                .description("Nodes whose agent wrote its self-telemetry in the last interval.")
                .datasource(INFLUX)
                .with_target(FluxTarget(reporting))
                .unit(Unit.COUNT)
                .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
                .graph_mode(common.BigValueGraphMode.AREA)
                .span(6)
                .height(8),
                graph(
                    "Agents reporting over time",
                    reporting,
                    unit=Unit.COUNT,
                    legend="agents",
                    span=6,
                    description="Nodes with at least one agent point per interval.",
                ),
                graph(
                    "Last-write age per node",
                    gauge_query(AGENT, ["last_write_age_seconds"], by=["node", "collector"], scope=AGENT_SCOPE),
                    unit=Unit.SECONDS,
                    legend=agent_label,
                    description="Seconds since the agent's last successful write: more than two windows is stale.",
                ),
                graph(
                    "Buffered points",
                    gauge_query(AGENT, ["buffered_points"], by=["node", "collector"], scope=AGENT_SCOPE),
                    unit=Unit.COUNT,
                    legend=agent_label,
                    description="Points waiting in the agents' on-disk buffers (an InfluxDB outage shows here).",
                ),
                graph(
                    "Write errors",
                    counter_rate_query(AGENT, ["write_errors"], by=["node", "collector"], scope=AGENT_SCOPE),
                    unit=Unit.PER_SECOND,
                    legend=agent_label,
                    description="Failed writes to InfluxDB per second (buffered, then replayed).",
                ),
                graph(
                    "Dropped samples and series",
                    counter_rate_query(
                        AGENT,
                        ["dropped_samples", "dropped_series", "collector_errors"],
                        by=["node", "collector"],
                        scope=AGENT_SCOPE,
                    ),
                    unit=Unit.PER_SECOND,
                    legend=agent_label + " ${__field.name}",
                    description="Samples and series dropped (limits, bad values) and collector errors per second.",
                ),
                graph(
                    "Series per agent",
                    gauge_query(AGENT, ["series"], by=["node", "collector"], scope=AGENT_SCOPE),
                    unit=Unit.COUNT,
                    legend=agent_label,
                    description="Series each agent wrote in its last window.",
                ),
            ],
        ),
        (
            "Processors",
            [
                graph(
                    "Windows written",
                    counter_rate_query(PROCESSOR, ["windows_written"], by=["rule"], scope=PROCESSOR_SCOPE),
                    unit=Unit.PER_SECOND,
                    legend="${__field.labels.rule}",
                    description="Roll-up windows each rule's processor wrote per second.",
                ),
                graph(
                    "Late partials and dropped groups",
                    counter_rate_query(
                        PROCESSOR,
                        ["late_partials", "dropped_partials", "dropped_groups"],
                        by=["rule"],
                        scope=PROCESSOR_SCOPE,
                    ),
                    unit=Unit.PER_SECOND,
                    legend="${__field.labels.rule} ${__field.name}",
                    description="Partials after the allowed lateness, partials refused, groups over maxSeries.",
                ),
                graph(
                    "Processor series and nodes",
                    gauge_query(PROCESSOR, ["series", "nodes"], by=["rule"], scope=PROCESSOR_SCOPE),
                    unit=Unit.COUNT,
                    legend="${__field.labels.rule} ${__field.name}",
                    description="Groups written and nodes merged in the last window.",
                ),
                graph(
                    "Processor buffered points and write errors",
                    gauge_query(PROCESSOR, ["buffered_points", "write_errors"], by=["rule"], scope=PROCESSOR_SCOPE),
                    unit=Unit.COUNT,
                    legend="${__field.labels.rule} ${__field.name}",
                    description="Points waiting to be written and the cumulative count of failed writes.",
                ),
            ],
        ),
        (
            "Operator",
            [
                graph(
                    "Operator reconcile errors",
                    "",
                    unit=Unit.COUNT,
                    legend="",  # each query's legendFormat names kind and outcome or error
                    span=24,
                    datasource=PROMETHEUS,
                    targets=operator_error_queries(),
                    description="Failed reconcile rounds per kind in each interval, from the operator's /metrics "
                    "(Prometheus; the operator does not write to InfluxDB): rounds that ended Invalid, Blocked or "
                    "Rejected (the object's Reconciled condition says why), and rounds that raised and are "
                    "retried with backoff (the operator's log says why).",
                ),
            ],
        ),
    ]
    return _with_rows(d, rows)


# --- output ---------------------------------------------------------------------------------

DASHBOARDS = {
    "observatory-nodes.json": nodes,
    "observatory-rollups.json": rollups,
    "observatory-health.json": health,
}


def _number_panels(data: dict[str, object]) -> dict[str, object]:
    # Stable, unique ids: Grafana keys panel links and repeats on them.
    panels = data.get("panels")
    assert isinstance(panels, list)
    for index, panel in enumerate(panels, start=1):
        panel["id"] = index
    return data


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    out: dict[str, str] = {}
    for name, build in DASHBOARDS.items():
        data = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        out[name] = json.dumps(_number_panels(data), indent=2, sort_keys=True) + "\n"
    return out


def stale(rendered: dict[str, str] | None = None) -> list[Path]:
    """Committed files that differ from what the code generates (or are missing, or extra)."""
    rendered = rendered or render()
    wrong: list[Path] = []
    for directory in OUTPUTS:
        for name, text in rendered.items():
            path = directory / name
            if not path.is_file() or path.read_text() != text:
                wrong.append(path)
        if directory.is_dir():
            wrong.extend(p for p in sorted(directory.glob("*.json")) if p.name not in rendered)
    return wrong


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed dashboard is stale")
    args = parser.parse_args(argv)
    rendered = render()
    if args.check:
        wrong = stale(rendered)
        for path in wrong:
            print(f"stale: {path.relative_to(ROOT)} (run `make dashboards`)", file=sys.stderr)
        return 1 if wrong else 0
    for directory in OUTPUTS:
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.json"):
            if old.name not in rendered:
                old.unlink()
        for name, text in rendered.items():
            (directory / name).write_text(text)
            print(f"wrote {(directory / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

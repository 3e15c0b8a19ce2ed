"""Typed API of observatory.happypatterns.org/v1alpha1: the single source of truth for both CRDs.

Field names are camelCase on the wire (aliases) and snake_case in Python. Every field has
a description, because descriptions flow into the CRD (``kubectl explain``) and the chart's
docs. Rules a schema alone cannot say are CEL ``x-kubernetes-validations`` attached with
``cel()``; ``api.schema`` turns these models into structural OpenAPI.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator
from pydantic.alias_generators import to_camel

from observatory_agent.contract import (
    DEFAULT_METRICS_PORT,
    DEFAULT_ROLLUP_FUNCTIONS,
    DURATION_PATTERN,
    ROLLUP_FUNCTION_PATTERN,
    SYSTEM_COLLECTORS,
    UNGROUPABLE_TAGS,
    parse_duration,
)

GROUP: Final = "observatory.happypatterns.org"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

DEFAULT_SHARED_CONFIG: Final = "observatory-shared-config"
DEFAULT_QUANTILES: Final = (50.0, 95.0, 99.0)

CEL_KEY: Final = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None, reason: str = "FieldValueInvalid") -> dict[str, str]:
    """One CEL validation rule with the message the API server returns when it fails."""
    out = {"rule": rule, "message": message, "reason": reason}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _cel_list(items: tuple[str, ...]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _extra(*rules: dict[str, str], **more: Any) -> dict[str, Any]:
    """Schema-only keys of a field: CEL rules and, for default_factory fields, the schema default."""
    return {CEL_KEY: list(rules), **more} if rules else dict(more)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True)


Duration = Annotated[
    str,
    Field(pattern=DURATION_PATTERN, max_length=32),
]
"""A duration string such as ``10s``, ``1m`` or ``1h30m`` (units ms, s, m, h)."""

QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
"""A Kubernetes resource quantity (``100m``, ``128Mi``, ``2``)."""

IntOrPercent = Annotated[
    int | str,
    WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}),
]

PassThrough = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A core Kubernetes type passed through to the pod spec unchanged (validated by the API server there)."""

COLLECTOR_NAME: Final = r"^[a-z0-9]([-_a-z0-9]*[a-z0-9])?$"


# --- shared pieces ------------------------------------------------------------------------


class SecretKeyRef(_Model):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name, in the same namespace.")
    key: str = Field(default="token", min_length=1, max_length=253, description="Key inside the Secret.")


class InfluxDBTarget(_Model):
    """Where aggregates are written. Unset fields fall back to the shared-config ConfigMap."""

    url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        max_length=2048,
        description="InfluxDB 2 base URL, e.g. http://influxdb.monitoring:8086. Default: shared-config influxdb_url.",
    )
    org: str | None = Field(default=None, max_length=256, description="Organization. Default: shared-config.")
    bucket: str | None = Field(default=None, max_length=256, description="Bucket. Default: shared-config.")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding the API token. It is mounted into the pods and never copied into a ConfigMap.",
    )


class SharedConfigRef(_Model):
    """The shared-config ConfigMap with org-wide defaults."""

    name: str = Field(default=DEFAULT_SHARED_CONFIG, max_length=253, description="ConfigMap name.")
    optional: bool = Field(
        default=False,
        description="When true a missing ConfigMap is not an error; built-in defaults apply.",
    )


class Toleration(_Model):
    """A pod toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=317, description="Taint key; empty with Exists matches all.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class ResourceRequirements(_Model):
    """Compute resources of the container (core/v1 ResourceRequirements)."""

    requests: dict[str, Quantity] | None = Field(default=None, description="Minimum resources, e.g. cpu: 20m.")
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources, e.g. memory: 128Mi.")


class RollingUpdate(_Model):
    """Rolling update parameters of the agent DaemonSet."""

    max_unavailable: IntOrPercent | None = Field(default=None, description="Pods unavailable during an update.")
    max_surge: IntOrPercent | None = Field(default=None, description="Pods above desired during an update.")


class UpdateStrategy(_Model):
    """How agent pods are replaced when the pod template changes (apps/v1 DaemonSetUpdateStrategy)."""

    type: Literal["RollingUpdate", "OnDelete"] = Field(default="RollingUpdate", description="Update strategy type.")
    rolling_update: RollingUpdate | None = Field(default=None, description="RollingUpdate parameters.")


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """A status condition; lastTransitionTime changes only when status changes."""

    type: str = Field(max_length=316, description="Ready, Reconciled, DataFlowing, ...")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(default="", max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime | None = Field(default=None, description="When status last changed.")
    observed_generation: int | None = Field(default=None, description="The generation this was computed for.")


class Phase(enum.StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    READY = "Ready"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    FAILED = "Failed"


CONDITIONS_SCHEMA_EXTRA: Final[dict[str, Any]] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


# --- ObservatoryCollector -----------------------------------------------------------------


CollectorKind = Literal[
    "cpu",
    "cpu_core",
    "memory",
    "swap",
    "load",
    "disk_usage",
    "disk_io",
    "network",
    "filesystem",
    "uptime",
    "processes",
    "cpuinfo",
    "application",
    "custom",
]
"""The agent's collector kinds (``contract.COLLECTOR_KINDS``; a unit test keeps the two equal)."""


class CollectorSpec(_Model):
    """One collector run by every agent."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            cel(
                "has(self.kind) || self.name in " + _cel_list(SYSTEM_COLLECTORS),
                "kind is required when name is not a system collector (" + ", ".join(SYSTEM_COLLECTORS) + ")",
                ".kind",
            ),
            cel(
                "(has(self.kind) ? self.kind : self.name) != 'application' || "
                "(has(self.targets) && size(self.targets) > 0)",
                "an application collector needs at least one target URL in targets",
                ".targets",
            ),
            cel(
                "(has(self.kind) ? self.kind : self.name) != 'custom' || "
                "(has(self.entryPoint) && size(self.entryPoint) > 0)",
                "a custom collector needs entryPoint (a name in the observatory.collectors entry-point group)",
                ".entryPoint",
            ),
        )
    )

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=COLLECTOR_NAME,
        description="Unique collector name (lower case, digits, - and _).",
    )
    kind: CollectorKind | None = Field(
        default=None,
        description=(
            "What to collect: a system collector (" + ", ".join(SYSTEM_COLLECTORS) + "), 'application' "
            "(scrape Prometheus text endpoints) or 'custom' (a plugin). Default: the name."
        ),
    )
    enabled: bool = Field(default=True, description="Set false to keep the entry but not run it.")
    timeout: Duration = Field(default="5s", description="A collection slower than this is abandoned for the cycle.")
    targets: list[Annotated[str, Field(max_length=2048)]] | None = Field(
        default=None, max_length=32, description="application: Prometheus text endpoint URLs to scrape."
    )
    entry_point: str | None = Field(
        default=None,
        max_length=253,
        description="custom: entry-point name in the observatory.collectors group.",
    )
    options: dict[str, Annotated[str, Field(max_length=1024)]] | None = Field(
        default=None, description="Collector-specific options."
    )

    @property
    def effective_kind(self) -> str:
        return self.kind or self.name

    @model_validator(mode="after")
    def _same_rules_as_cel(self) -> CollectorSpec:
        # Mirrors the CEL rules, for objects that reached the operator some other way.
        if self.kind is None and self.name not in SYSTEM_COLLECTORS:
            raise ValueError(f"kind is required when name is not a system collector ({', '.join(SYSTEM_COLLECTORS)})")
        if self.effective_kind == "application" and not self.targets:
            raise ValueError("an application collector needs at least one target URL in targets")
        if self.effective_kind == "custom" and not self.entry_point:
            raise ValueError("a custom collector needs entryPoint")
        return self


class AggregationSpec(_Model):
    """How each window is summarised per series."""

    quantiles: list[float] = Field(
        default_factory=lambda: list(DEFAULT_QUANTILES),
        max_length=16,
        description="Quantiles (percent, strictly between 0 and 100) written as pXX fields.",
        json_schema_extra=_extra(
            cel(
                "self.all(q, q > 0.0 && q < 100.0)",
                "every quantile must be strictly between 0 and 100 (percent), e.g. 50, 95, 99.9",
            ),
            default=list(DEFAULT_QUANTILES),
        ),
    )
    exact_threshold: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        description=(
            "Quantiles are exact up to this many samples per series and window; "
            "above it a DDSketch (1% relative error)."
        ),
    )

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, v: list[float]) -> list[float]:
        for q in v:
            if not 0 < q < 100:
                raise ValueError("every quantile must be strictly between 0 and 100 (percent), e.g. 50, 95, 99.9")
        return v


def _default_collectors() -> list[CollectorSpec]:
    return [CollectorSpec(name=k) for k in SYSTEM_COLLECTORS]


class ObservatoryCollectorSpec(_Model):
    """Desired state: which collectors run where, how often, and where data goes."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            cel(
                "!has(self.interval) || !has(self.window) || "
                "duration(self.window).getMilliseconds() % duration(self.interval).getMilliseconds() == 0",
                "window must be a whole multiple of interval (e.g. interval 10s, window 1m)",
                ".window",
            ),
        )
    )

    collectors: list[CollectorSpec] = Field(
        default_factory=_default_collectors,
        min_length=1,
        max_length=64,
        description="Collectors to run. Default: every system collector.",
        json_schema_extra=_extra(
            cel(
                "self.all(c, self.exists_one(d, d.name == c.name))",
                "collector names must be unique",
            ),
            default=[{"name": k} for k in SYSTEM_COLLECTORS],
        ),
    )
    interval: Duration | None = Field(
        default=None,
        description="Sampling interval. Default: shared-config observatory_collection_interval, else 10s.",
    )
    window: Duration | None = Field(
        default=None,
        description=(
            "Aggregation window, a whole multiple of interval. "
            "Default: shared-config observatory_aggregation_window, else 1m."
        ),
    )
    aggregations: AggregationSpec = Field(
        default_factory=AggregationSpec,
        description="Per-window summaries (count, sum, mean, min, max, last and quantiles).",
        json_schema_extra={"default": {}},
    )
    tags: dict[str, Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, description="Extra tags on every point; override shared-config tags of the same key."
    )
    shared_config: SharedConfigRef = Field(
        default_factory=SharedConfigRef,
        description="The shared-config ConfigMap with org-wide defaults.",
        json_schema_extra={"default": {}},
    )
    influxdb: InfluxDBTarget = Field(
        default_factory=InfluxDBTarget,
        description="Where node aggregates are written.",
        json_schema_extra={"default": {}},
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Agent image. Default: the operator's configured agent image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="Image pull policy of the agent container."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Run agents only on nodes with these labels."
    )
    tolerations: list[Toleration] | None = Field(default=None, description="Taints the agents tolerate.")
    affinity: PassThrough | None = Field(default=None, description="core/v1 Affinity for the agent pods.")
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Agent container resources. Default: requests cpu 20m, memory 64Mi; limit memory 128Mi.",
    )
    priority_class_name: str | None = Field(default=None, max_length=253, description="PriorityClass of agent pods.")
    update_strategy: UpdateStrategy | None = Field(default=None, description="DaemonSet update strategy.")
    metrics_port: int = Field(
        default=DEFAULT_METRICS_PORT,
        ge=1024,
        le=65535,
        description=(
            "Port of the agents' /metrics, /healthz, /readyz and /status. With the network collector the "
            "agents share the node's network, so two collectors on the same nodes need different ports."
        ),
    )
    paused: bool = Field(default=False, description="When true the operator stops reconciling and says so in status.")

    @model_validator(mode="after")
    def _same_rules_as_cel(self) -> ObservatoryCollectorSpec:
        names = [c.name for c in self.collectors]
        if len(set(names)) != len(names):
            raise ValueError("collector names must be unique")
        if self.interval and self.window:
            window_ms = round(parse_duration(self.window, key="window") * 1000)
            interval_ms = round(parse_duration(self.interval, key="interval") * 1000)
            if window_ms % interval_ms:
                raise ValueError("window must be a whole multiple of interval (e.g. interval 10s, window 1m)")
        return self


class UncoveredNode(_Model):
    """A node that runs no ready agent, and why."""

    node: str = Field(description="Node name.")
    reason: str = Field(description="NotTolerated, SelectorMismatch, AffinityMismatch, PodPending or PodFailing.")
    message: str = Field(default="", description="Detail, e.g. the taint not tolerated.")


class _Status(_Model):
    """What both kinds' status carries: the reconciled generation, a phase and the conditions."""

    observed_generation: int | None = Field(default=None, description="The spec generation last reconciled.")
    phase: Phase | None = Field(default=None, description="Pending, Progressing, Ready, Degraded, Paused or Failed.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Reconciled and DataFlowing.",
        json_schema_extra=CONDITIONS_SCHEMA_EXTRA,
    )


class ObservatoryCollectorStatus(_Status):
    """Observed state, including whether data actually reaches InfluxDB."""

    desired_agents: int | None = Field(default=None, description="Nodes that should run an agent.")
    current_agents: int | None = Field(default=None, description="Nodes running an agent pod.")
    updated_agents: int | None = Field(default=None, description="Agent pods on the current template.")
    ready_agents: int | None = Field(default=None, description="Agent pods that are ready.")
    ready: str | None = Field(default=None, description="ready/desired, e.g. 3/3.")
    reporting_agents: int | None = Field(
        default=None, description="Agents that wrote to InfluxDB within the last two windows."
    )
    reporting: str | None = Field(default=None, description="reporting/desired, e.g. 3/3.")
    last_write: datetime | None = Field(default=None, description="The newest successful write of any agent.")
    buffered_points: int | None = Field(default=None, description="Points waiting in agents' on-disk buffers.")
    uncovered_nodes: list[UncoveredNode] | None = Field(
        default=None,
        description=(
            "Nodes without a ready agent, each with a reason: at most 10, the ones to act on first "
            "(failing, pending, not tolerated before selector or affinity mismatches); uncoveredNodeCounts counts all."
        ),
        max_length=10,
    )
    uncovered_node_counts: dict[str, int] | None = Field(
        default=None,
        description="Every node without a ready agent, counted by reason (e.g. SelectorMismatch: 4812).",
    )
    config_hash: str | None = Field(default=None, description="Hash of the rendered agent config and pod template.")


class ObservatoryCollector(_Model):
    """Runs an agent on every selected node, collecting system metrics into InfluxDB."""

    api_version: Literal["observatory.happypatterns.org/v1alpha1"] = "observatory.happypatterns.org/v1alpha1"
    kind: Literal["ObservatoryCollector"] = "ObservatoryCollector"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ObservatoryCollectorSpec = Field(default_factory=ObservatoryCollectorSpec)
    status: ObservatoryCollectorStatus | None = None


# --- AggregationRule ----------------------------------------------------------------------

DEFAULT_FUNCTIONS: Final = DEFAULT_ROLLUP_FUNCTIONS
FUNCTION_PATTERN: Final = ROLLUP_FUNCTION_PATTERN
GROUP_BY_MESSAGE: Final = (
    "groupBy tags must be non-empty and neither 'rule' nor 'namespace' (every output point carries the rule's"
    " own) nor start with '_' (reserved by InfluxDB)"
)


class OutputSpec(_Model):
    """Where cluster-level aggregates are written."""

    measurement: str = Field(
        min_length=1,
        max_length=256,
        description="InfluxDB measurement of the rolled-up series, e.g. cluster.cpu.usage.",
    )
    bucket: str | None = Field(
        default=None, max_length=256, description="Bucket. Default: the feeding collector's bucket."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "The processor's InfluxDB token. It must read and write the output bucket: the processor reads"
            " its watermark back at start. Default: the feeding collector's token."
        ),
    )


class AggregationRuleSpec(_Model):
    """A cluster-wide roll-up: which series, grouped how, summarised how."""

    model_config = ConfigDict(
        json_schema_extra=_extra(
            cel(
                "duration(self.allowedLateness) < duration(self.window)",
                "allowedLateness must be shorter than window",
                ".allowedLateness",
            ),
            cel("self.maxSeries >= 1", "maxSeries must be at least 1", ".maxSeries"),
            cel(
                "size(self.metrics) > 0 && self.metrics.all(m, size(m) > 0)",
                "metrics must list at least one non-empty metric name pattern",
                ".metrics",
            ),
            cel(
                "!has(self.groupBy) || self.groupBy.all(t, size(t) > 0 && !t.startsWith('_')"
                + "".join(f" && t != '{tag}'" for tag in UNGROUPABLE_TAGS)
                + ")",
                GROUP_BY_MESSAGE,
                ".groupBy",
            ),
        )
    )

    collectors: list[Annotated[str, Field(max_length=253)]] = Field(
        min_length=1,
        max_length=32,
        description="ObservatoryCollectors (same namespace) whose agents feed this rule.",
    )
    metrics: list[Annotated[str, Field(max_length=256)]] = Field(
        max_length=64,
        description="Metric name patterns (shell globs), e.g. system.cpu.usage or system.disk.*.",
    )
    match_tags: dict[str, Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, description="Only series whose tags equal these values."
    )
    window: Duration = Field(default="1m", description="Roll-up window; agents align windows to wall-clock multiples.")
    allowed_lateness: Duration = Field(
        default="15s",
        description="How long after a window ends partials are still accepted. Shorter than window.",
    )
    group_by: list[Annotated[str, Field(max_length=256)]] = Field(
        default_factory=list,
        max_length=16,
        description=(
            "Tags kept in the output; all others are merged across. Not 'rule' or 'namespace': every output"
            " point carries the rule's own."
        ),
        json_schema_extra={"default": []},
    )
    functions: list[Annotated[str, Field(pattern=FUNCTION_PATTERN, max_length=16)]] = Field(
        default_factory=lambda: list(DEFAULT_FUNCTIONS),
        min_length=1,
        max_length=16,
        description="Fields written: count, sum, mean, min, max, last, pXX.",
        json_schema_extra={"default": list(DEFAULT_FUNCTIONS)},
    )
    output: OutputSpec = Field(description="Measurement and bucket of the output.")
    max_series: int = Field(
        default=10000, description="Most output series per window; more are dropped, counted and reported."
    )
    image: str | None = Field(default=None, max_length=1024, description="Processor image. Default: the operator's.")
    resources: ResourceRequirements | None = Field(default=None, description="Processor container resources.")
    paused: bool = Field(default=False, description="When true the operator stops reconciling this rule.")

    @model_validator(mode="after")
    def _same_rules_as_cel(self) -> AggregationRuleSpec:
        if parse_duration(self.allowed_lateness, key="allowedLateness") >= parse_duration(self.window, key="window"):
            raise ValueError("allowedLateness must be shorter than window")
        if self.max_series < 1:
            raise ValueError("maxSeries must be at least 1")
        if not self.metrics or not all(self.metrics):
            raise ValueError("metrics must list at least one non-empty metric name pattern")
        if any(not t or t in UNGROUPABLE_TAGS or t.startswith("_") for t in self.group_by):
            raise ValueError(GROUP_BY_MESSAGE)
        return self


class AggregationRuleStatus(_Status):
    """Observed state of the rule's processor and of the roll-ups it writes (read from its /status)."""

    ready: str | None = Field(default=None, description="ready/desired processor replicas, e.g. 1/1.")
    ready_replicas: int | None = Field(default=None, description="Processor replicas that are ready.")
    last_window: datetime | None = Field(
        default=None, description="End of the newest window written to InfluxDB (the processor's watermark)."
    )
    series: int | None = Field(default=None, description="Series (groups) written in the newest window.")
    contributing_nodes: int | None = Field(default=None, description="Nodes whose partials the newest window merged.")
    expected_nodes: int | None = Field(
        default=None, description="Nodes running a ready agent of the rule's collectors (those that should contribute)."
    )
    dropped_series: int | None = Field(
        default=None, description="Series dropped by maxSeries in the newest window (CardinalityLimited says more)."
    )
    late_partials: int | None = Field(
        default=None, description="Partials that arrived after their window's horizon since the processor started."
    )
    buffered_points: int | None = Field(default=None, description="Roll-up points waiting in the processor's buffer.")
    missing_collectors: list[str] | None = Field(
        default=None, description="Collectors the rule names that do not exist in its namespace.", max_length=32
    )
    config_hash: str | None = Field(default=None, description="Hash of the rendered processor config and pod template.")


class AggregationRule(_Model):
    """Rolls node-level aggregates up across the cluster through a processor Deployment."""

    api_version: Literal["observatory.happypatterns.org/v1alpha1"] = "observatory.happypatterns.org/v1alpha1"
    kind: Literal["AggregationRule"] = "AggregationRule"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AggregationRuleSpec
    status: AggregationRuleStatus | None = None
